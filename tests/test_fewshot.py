"""Answer-aware few-shot prompting with voting (the ``fewshot`` template) on tiny random models.

Covers: building an example bank from a tiny VQAv2-format dataset and reloading it; nearest-neighbour
selection and round-robin run splitting on hand-made keys; leaving out the query's own image; the fewshot
template (examples in the question's format, most similar last) and fitting the LLM's context by dropping
the least similar examples; the voting and tie-break rules; the pipeline (batched and streamed) with voting
runs; and the wiring of the evaluator and the ``ask`` command.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from captioner import BlipCaptioner
from llm import ChatLLM, TransformersChatLLM
from prompts import build_fitted_messages, build_messages
from tiny_models import build_tiny_blip, build_tiny_chat_lm, single_thread_fixture
from tiny_vle import build_tiny_vle_vqa
from vle import VLEForVQA
from vle.image_io import image_sha256, load_image
from vle.processing_vle import VLEProcessor
from vqa_llm import cli
from vqa_llm.errors import BadSettingError
from vqa_llm.evaluate import EXIT_USER_ERROR
from vqa_llm.evaluate import main as evaluate_main
from vqa_llm.example_bank import main as bank_main
from vqa_llm.fewshot import (
    ExampleBank,
    ExampleBankError,
    FewShotSettings,
    join_replies,
    nearest,
    plan_runs,
    split_runs,
    vote,
)
from vqa_llm.pipeline import VQALLMPipeline
from vqa_llm.uploads import UploadPolicy

LABELS = ("yes", "no", "red", "blue", "green", "circle", "rectangle", "triangle")
SHAPES = [("red", "circle"), ("blue", "rectangle"), ("green", "triangle"), ("red", "rectangle")]


# ------------------------------------------------------------------------------------------- helpers
def shape_image(colour: str, shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (6, 6, size - 6, size - 6)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "rectangle":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, 4), (4, size - 4), (size - 4, size - 4)], fill=colour)
    return image


def hand_bank(vectors, image_hashes=None) -> ExampleBank:
    """A bank whose fused keys are the given vectors (normalised), with simple records."""
    keys = torch.nn.functional.normalize(torch.tensor(vectors, dtype=torch.float32), dim=-1).half()
    records = [{"id": f"hand:{i}", "source": "hand", "question_id": i, "image_id": str(i),
                "image_hash": (image_hashes or [f"{i:016x}" for i in range(len(vectors))])[i],
                "question": f"question {i}?", "caption": f"caption {i}",
                "candidates": [[f"answer{i}", 0.9], ["other", 0.1]], "answer": f"answer{i}",
                "answers": [f"answer{i}"]}
               for i in range(len(vectors))]
    return ExampleBank(records=records, keys={"fused": keys}, meta={"source": "hand"})


def angle(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


class RunScriptedLLM(ChatLLM):
    """Answers every chat of its n-th call (a streamed run, or one batched run) with ``replies[n]``."""

    model_id = "run-scripted"

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def _next(self) -> str:
        reply = self.replies[len(self.calls) % len(self.replies)]
        if isinstance(reply, Exception):
            self.calls.append(reply)
            raise reply
        self.calls.append(reply)
        return reply

    def _generate(self, messages, opts):
        return self._next()

    def _stream(self, messages, opts):
        reply = self._next()
        yield reply[:3]
        yield reply[3:]

    def _generate_batch(self, batch, opts):
        reply = self._next()
        return [reply] * len(batch)


# ------------------------------------------------------------------------------------------ fixtures
_one_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fewshot_models")
    return {"vqa": build_tiny_vle_vqa(root / "vle", labels=LABELS), "captioner": build_tiny_blip(root / "blip"),
            "llm": build_tiny_chat_lm(root / "chat", max_position_embeddings=2048)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A VQAv2-format dataset: 4 images, 3 questions each (answers from the drawn colour and shape)."""
    root = tmp_path_factory.mktemp("fewshot_data")
    (root / "images").mkdir()
    questions, annotations = [], []
    for image_id, (colour, shape) in enumerate(SHAPES, start=1):
        shape_image(colour, shape).save(root / "images" / f"COCO_train2014_{image_id:012d}.png")
        for n, (text, answer, kind) in enumerate([("What color is the shape?", colour, "other"),
                                                  ("What shape is in the image?", shape, "other"),
                                                  (f"Is there a {colour} shape?", "yes", "yes/no")]):
            qid = image_id * 10 + n
            questions.append({"question_id": qid, "image_id": image_id, "question": text})
            # 10 human answers with a minority answer, to check the majority is kept as the gold answer
            humans = [answer] * 7 + ["no"] * 3 if answer != "no" else [answer] * 10
            annotations.append({"question_id": qid, "image_id": image_id, "answer_type": kind,
                                "question_type": text.split()[0].lower(),
                                "answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(humans)]})
    (root / "questions.json").write_text(json.dumps({"data_subtype": "train2014", "questions": questions}))
    (root / "annotations.json").write_text(json.dumps({"data_subtype": "train2014", "annotations": annotations}))
    return {"root": root, "questions": questions, "annotations": annotations,
            "args": ["--dataset", "vqav2", "--questions", str(root / "questions.json"),
                     "--annotations", str(root / "annotations.json"), "--images", str(root / "images")]}


def model_args(model_dirs, llm=False):
    args = ["--profile", "bundled", "--vqa-model", model_dirs["vqa"], "--captioner", model_dirs["captioner"]]
    return args + ["--llm", model_dirs["llm"]] if llm else args


@pytest.fixture(scope="module")
def bank_dir(model_dirs, dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank") / "bank"
    assert bank_main(["build", *dataset["args"], "--top-k", "4", "--with-scores", "--batch-size", "5", "-q",
                      "--out", str(out), *model_args(model_dirs)]) == 0
    return out


@pytest.fixture(scope="module")
def parts(model_dirs):
    return (VLEForVQA.from_pretrained(model_dirs["vqa"]), VLEProcessor.from_pretrained(model_dirs["vqa"]),
            BlipCaptioner.from_pretrained(model_dirs["captioner"], device="cpu"))


def make_pipe(parts, llm=None, **kwargs) -> VQALLMPipeline:
    return VQALLMPipeline(*parts, llm, **kwargs)


def dataset_image(dataset, image_id: int) -> Path:
    return dataset["root"] / "images" / f"COCO_train2014_{image_id:012d}.png"


# ---------------------------------------------------------------------------------------- the bank
def test_bank_build_and_reload(bank_dir, dataset, parts, capsys):
    bank = ExampleBank.load(bank_dir)
    questions = dataset["questions"]
    assert len(bank) == len(questions) == bank.meta["size"]
    assert [r["question_id"] for r in bank.records] == [q["question_id"] for q in questions]  # dataset order
    assert bank.meta["source"] == "vqav2/questions" and bank.meta["top_k"] == 4
    assert bank.records[0]["id"] == f"vqav2/questions:{questions[0]['question_id']}"
    fused, scores = bank.key("fused"), bank.key("scores")
    assert fused.dtype == scores.dtype == torch.float16
    assert fused.shape == (len(questions), 64) and scores.shape == (len(questions), len(LABELS))
    assert torch.allclose(fused.float().norm(dim=-1), torch.ones(len(questions)), atol=1e-2)
    for name in ("bank.json", "keys.safetensors", "records.jsonl", "README.md"):
        assert (bank_dir / name).is_file()

    # each record equals what the pipeline computes for that question, and carries the gold answers
    pipe = make_pipe(parts)
    for row, (record, q) in enumerate(zip(bank.records, questions)):
        path = dataset_image(dataset, q["image_id"])
        [enc] = pipe.encode_questions([path], [q["question"]], top_k=4)
        assert torch.allclose(fused[row].float(), enc.fused, atol=2e-3)
        assert [a for a, _ in record["candidates"]] == [a for a, _ in enc.candidates]
        assert record["caption"] == enc.caption == pipe.caption(path)
        assert record["image_hash"] == image_sha256(load_image(path))[:16]
        assert record["image_id"] == str(q["image_id"])
        human = [a["answer"] for a in dataset["annotations"][row]["answers"]]
        assert record["answer"] == max(set(human), key=human.count)
        assert record["answers"][0] == record["answer"] and set(record["answers"]) == set(human)

    # the optional answer-score keys retrieve too (queries are score vectors then)
    [by_scores] = plan_runs(FewShotSettings(bank, n_examples=2), enc.scores[None], [enc.image_hash], 4, key="scores")
    assert len(by_scores[0]) == 2
    own_image = {r["id"] for r in bank.records if r["image_hash"] == enc.image_hash[:16]}
    assert not own_image & {e["id"] for e in by_scores[0]}

    # an existing bank is not overwritten by accident; info reads it
    assert bank_main(["build", *dataset["args"], "-q", "--out", str(bank_dir)]) == EXIT_USER_ERROR
    capsys.readouterr()
    assert bank_main(["info", str(bank_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == len(questions)


def test_loading_a_missing_or_damaged_bank_says_how_to_build_one(tmp_path, bank_dir):
    with pytest.raises(ExampleBankError, match="example_bank build"):
        ExampleBank.load(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("bank.json", "records.jsonl"):
        (broken / name).write_bytes((bank_dir / name).read_bytes())
    (broken / "keys.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ExampleBankError, match="damaged"):
        ExampleBank.load(broken)


# -------------------------------------------------------------------------------------- selection
def test_nearest_neighbours_by_cosine_similarity():
    bank = hand_bank([angle(0), angle(10), angle(20), angle(45), angle(90), angle(180)])
    query = torch.tensor([angle(12)]) * 5.0  # the query's length does not matter
    [found] = nearest(bank.key(), query, 4)
    assert [row for row, _ in found] == [1, 2, 0, 3]
    assert [s for _, s in found] == pytest.approx([math.cos(math.radians(d)) for d in (2, 8, 12, 33)], abs=2e-3)
    # several queries at once; k larger than the bank gives every row
    both = nearest(bank.key(), torch.tensor([angle(12), angle(170)]), 10)
    assert [row for row, _ in both[1]][:2] == [5, 4] and len(both[0]) == 6


def test_round_robin_runs_are_disjoint_and_balanced():
    neighbours = [(row, 1.0 - row / 10) for row in range(7)]
    runs = split_runs(neighbours, runs=3, per_run=2)
    assert [[row for row, _ in run] for run in runs] == [[0, 3], [1, 4], [2, 5]]
    assert [[row for row, _ in run] for run in split_runs(neighbours, 2, 5)] == [[0, 2, 4, 6], [1, 3, 5]]


def test_examples_about_the_query_image_are_left_out():
    hashes = ["a" * 16, "b" * 16, "b" * 16, "c" * 16, "d" * 16]
    bank = hand_bank([angle(0), angle(5), angle(7), angle(30), angle(60)], image_hashes=hashes)
    settings = FewShotSettings(bank, runs=2, n_examples=1)
    query = torch.tensor([angle(6), angle(6)])
    # the second query's image is the one of rows 1 and 2 (the pipeline passes the full SHA-256)
    plans = plan_runs(settings, query, ["f" * 64, "b" * 64], top_k=1)
    assert [[e["id"] for e in run] for run in plans[0]] == [["hand:2"], ["hand:1"]]
    assert [[e["id"] for e in run] for run in plans[1]] == [["hand:0"], ["hand:3"]]
    assert plans[1][0][0]["candidates"] == [("answer0", 0.9)]  # cut to the query's top-k


# --------------------------------------------------------------------------------------- prompting
CANDIDATES = [("red", 0.7), ("blue", 0.2), ("green", 0.1)]
QUESTION = "What color is the big shape on the left side of the picture?"


def examples(n):
    return [{"id": f"ex{i}", "caption": f"a shape number {i}", "question": f"What color is shape {i}?",
             "candidates": [("blue", 0.6), ("red", 0.3)], "answer": f"colour{i}"} for i in range(n)]


def test_fewshot_template_renders_examples_in_the_question_format():
    chosen = examples(3)
    messages, kept = build_fitted_messages("fewshot", "a red circle", QUESTION, CANDIDATES, chosen)
    assert kept == chosen
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    # the most similar example sits right before the question
    assert [m["content"] for m in messages[2:7:2]] == ["Answer: colour2", "Answer: colour1", "Answer: colour0"]
    for message, example in zip(messages[1:7:2], chosen[::-1]):
        alone = build_messages("fewshot", example["caption"], example["question"], example["candidates"])
        assert message["content"] == alone[-1]["content"]  # same format as a question of its own
        assert "Caption: " in message["content"] and "A. blue (0.60)" in message["content"]
    assert messages[-1]["content"] == build_messages("fewshot", "a red circle", QUESTION, CANDIDATES)[-1]["content"]


def test_fitting_drops_the_least_similar_examples_and_keeps_the_whole_question():
    def words(messages):
        return sum(len(m["content"].split()) for m in messages)

    chosen = examples(4)
    bare = build_messages("fewshot", "a red circle", QUESTION, CANDIDATES)
    full, _ = build_fitted_messages("fewshot", "a red circle", QUESTION, CANDIDATES, chosen)
    per_example = (words(full) - words(bare)) // 4
    limit = words(bare) + 2 * per_example + 1
    messages, kept = build_fitted_messages("fewshot", "a red circle", QUESTION, CANDIDATES, chosen, words, limit)
    assert [e["id"] for e in kept] == ["ex0", "ex1"] and words(messages) <= limit
    assert messages[-1] == bare[-1] and QUESTION in messages[-1]["content"]
    # even no example fits: the question is still sent whole (the backend then reports the length)
    messages, kept = build_fitted_messages("fewshot", "a red circle", QUESTION, CANDIDATES, chosen, words, 5)
    assert kept == [] and messages == bare


def test_pipeline_keeps_the_prompt_within_the_llm_context(parts, bank_dir, model_dirs, dataset):
    bank = ExampleBank.load(bank_dir)
    question, image = "What shape is in the image?", dataset_image(dataset, 1)
    unlimited = TransformersChatLLM.from_pretrained(model_dirs["llm"], device="cpu")
    full = make_pipe(parts, unlimited).run(image, question, template="fewshot", n_examples=3, example_bank=bank,
                                           max_new_tokens=2)
    assert len(full.runs[0]["examples"]) == 3 and full.runs[0]["dropped"] == 0
    limit = unlimited.count_tokens(full.messages) - 1
    limited = TransformersChatLLM.from_pretrained(model_dirs["llm"], device="cpu", max_prompt_tokens=limit)
    result = make_pipe(parts, limited).run(image, question, template="fewshot", n_examples=3,
                                           example_bank=bank, max_new_tokens=2)
    run = result.runs[0]
    assert result.error is None and run["dropped"] == 1 and len(run["examples"]) == 2
    assert run["examples"] == full.runs[0]["examples"][:len(run["examples"])]  # the least similar went first
    assert limited.count_tokens(result.messages) <= limit
    assert result.messages[-1] == full.messages[-1] and question in result.messages[-1]["content"]


# ----------------------------------------------------------------------------------------- voting
def test_majority_vote_on_normalised_answers():
    outcome = vote(["red", "Blue", "red."], [("blue", 0.9), ("red", 0.1)])
    assert outcome.answer == "red" and outcome.run == 0 and outcome.votes == {"red": 2, "blue": 1}
    outcome = vote(["Two", "three", "2"], [])
    assert outcome.answer == "Two" and outcome.votes == {"2": 2, "3": 1}


def test_ties_go_to_the_answer_vle_scores_higher():
    candidates = [("red", 0.6), ("blue", 0.3)]
    assert vote(["blue", "red"], candidates).answer == "red"
    # an answer that is not a candidate scores 0
    assert vote(["purple", "blue"], candidates).answer == "blue"
    # equal scores (both not candidates): the earliest run wins
    assert vote(["purple", "orange"], candidates).answer == "purple"


def test_runs_without_an_answer_do_not_vote():
    outcome = vote([None, "blue", None], [("red", 0.9), ("blue", 0.1)])
    assert outcome.answer == "blue" and outcome.run == 1 and outcome.votes == {"blue": 1}
    assert vote([None, None], [("red", 0.9)]).answer is None


# ------------------------------------------------------------------------------------- pipeline
def test_batched_fewshot_runs_vote_and_record_their_examples(parts, bank_dir, dataset):
    bank = ExampleBank.load(bank_dir)
    llm = RunScriptedLLM(["Answer: red", "Answer: blue", "Answer: Red."])
    pipe = make_pipe(parts, llm, example_bank=bank_dir)
    images = [dataset_image(dataset, 1), dataset_image(dataset, 2)]
    questions = ["What color is the shape?", "What shape is in the image?"]
    results = pipe.run_batch(images, questions, top_k=3, template="fewshot", runs=3, n_examples=2)
    assert len(llm.calls) == 3  # one generate_batch per run, for both questions
    encodings = pipe.encode_questions(images, questions, top_k=3)
    for result, enc in zip(results, encodings):
        assert result.llm_answer == "red" and result.votes == {"red": 2, "blue": 1} and not result.llm_fallback
        assert result.changed == (result.vqa_answer != "red")
        assert [run["answer"] for run in result.runs] == ["red", "blue", "Red"]
        expected = plan_runs(FewShotSettings(bank, runs=3, n_examples=2), enc.fused[None], [enc.image_hash], 3)[0]
        assert [run["examples"] for run in result.runs] == [[e["id"] for e in run] for run in expected]
        used = [i for run in result.runs for i in run["examples"]]
        assert len(used) == 6 and len(set(used)) == 6  # disjoint sets
        own = {r["id"] for r in bank.records if r["image_hash"] == enc.image_hash[:16]}
        assert own and not own & set(used)  # never an example about the question's own image
        assert result.llm_reply == join_replies(["Answer: red", "Answer: blue", "Answer: Red."])
        assert result.llm_reply.startswith("[run 1/3] Answer: red\n[run 2/3] ")
        # the first run's prompt is kept, with its examples' gold answers as assistant turns
        first_id = result.runs[0]["examples"][0]
        first = bank.example(bank.records.index(next(r for r in bank.records if r["id"] == first_id)))
        assert result.messages[-2] == {"role": "assistant", "content": f"Answer: {first['answer']}"}


def test_streamed_fewshot_runs_and_a_failed_run(parts, bank_dir, dataset):
    llm = RunScriptedLLM(["Answer: green", RuntimeError("backend crashed"), "Answer: green"])
    pipe = make_pipe(parts, llm)
    updates = list(pipe.stream(dataset_image(dataset, 3), "What color is the shape?", template="fewshot",
                               runs=3, n_examples=1, example_bank=bank_dir))
    result = updates[-1].result
    chunks = "".join(u.chunk for u in updates if u.stage == "llm")
    assert chunks == result.llm_reply == "[run 1/3] Answer: green\n[run 2/3] \n[run 3/3] Answer: green"
    assert [u.chunk for u in updates if u.stage == "llm"][:2] == ["[run 1/3] Ans", "wer: green"]
    assert result.llm_answer == "green" and result.votes == {"green": 2} and result.error is None
    assert result.runs[1]["answer"] is None and "backend crashed" in result.runs[1]["error"]
    assert any("run 2 of 3 failed" in note for note in result.notes)
    # every run failing keeps the VQA answer and reports the error
    failing = make_pipe(parts, RunScriptedLLM([RuntimeError("down")]), example_bank=bank_dir)
    result = failing.run(dataset_image(dataset, 3), "What color is the shape?", template="fewshot", runs=2)
    assert result.error and result.llm_fallback and result.llm_answer == result.vqa_answer


def test_fewshot_needs_a_usable_bank(parts, dataset):
    pipe = make_pipe(parts, RunScriptedLLM(["Answer: red"]))
    with pytest.raises(BadSettingError, match="--example-bank"):
        pipe.run(dataset_image(dataset, 1), "What color is the shape?", template="fewshot")
    with pytest.raises(ExampleBankError, match="build a bank with this VQA model"):
        pipe.run(dataset_image(dataset, 1), "What color is it?", template="fewshot", example_bank=hand_bank([[1, 0]]))
    with pytest.raises(BadSettingError, match="runs"):
        pipe.run(dataset_image(dataset, 1), "What color is it?", template="fewshot", runs=0,
                 example_bank=hand_bank([[1.0] * 64]))
    # without the LLM no bank is needed; other templates note that runs were ignored
    assert pipe.run(dataset_image(dataset, 1), "What color?", template="fewshot", use_llm=False).runs == []
    assert "runs=3 ignored" in pipe.run(dataset_image(dataset, 1), "What color?", runs=3).notes[0]


# ---------------------------------------------------------------------------------------- wiring
def test_evaluator_fewshot_runs_write_votes_and_example_ids(model_dirs, dataset, bank_dir, tmp_path):
    out = tmp_path / "eval"
    assert evaluate_main(["-q", *dataset["args"], "--template", "fewshot", "--runs", "2", "--examples", "2",
                          "--example-bank", str(bank_dir), "--max-new-tokens", "4", "--batch-size", "5",
                          "--out", str(out), *model_args(model_dirs, llm=True)]) == 0
    bank = ExampleBank.load(bank_dir)
    image_of = {r["id"]: r["image_id"] for r in bank.records}
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(dataset["questions"])
    for record in records:
        assert record["template"] == "fewshot" and isinstance(record["votes"], dict)
        assert len(record["runs"]) == 2
        used = [i for run in record["runs"] for i in run["examples"]]
        assert len(used) == 4 and len(set(used)) == 4
        assert all(image_of[i] != record["image_id"] for i in used)
        assert sum(record["votes"].values()) == sum(run["answer"] is not None for run in record["runs"])
        assert record["llm_reply"].startswith("[run 1/2] ")
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert (settings["runs"], settings["n_examples"], settings["example_bank_size"]) == (2, 2, len(bank))
    assert (out / "summary.json").is_file()
    # --runs without the fewshot template is refused before anything runs
    assert evaluate_main(["-q", *dataset["args"], "--runs", "2", "--out", str(tmp_path / "no"),
                          *model_args(model_dirs)]) == EXIT_USER_ERROR


def test_ask_command_prints_the_votes(model_dirs, dataset, bank_dir):
    out = io.StringIO()
    assert cli.main(["ask", str(dataset_image(dataset, 4)), "What color is the shape?", "--template", "fewshot",
                     "--runs", "2", "--examples", "1", "--example-bank", str(bank_dir), "--max-new-tokens", "3",
                     "-q", *model_args(model_dirs, llm=True)], out=out) == 0
    assert "Votes: " in out.getvalue() and "over 2 run(s) of 1, 1 example(s)" in out.getvalue()


def test_app_offers_fewshot_and_votes_its_runs_only_with_a_bank(parts, bank_dir, dataset):
    import gradio as gr

    import app
    from vqa_llm.profiles import resolve_profile

    profile, _ = resolve_profile("bundled")

    def template_choices(pipe):
        demo = app.build_demo(pipe, profile, "test", app.VLETasks(note="none"), examples=[])
        [dropdown] = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown) and b.label == "Prompt template"]
        return [value for _, value in dropdown.choices]

    llm = RunScriptedLLM(["Answer: red", "Answer: blue"])
    with_bank = make_pipe(parts, llm, example_bank=bank_dir)
    assert "fewshot" in template_choices(with_bank)
    without_bank = template_choices(make_pipe(parts, llm))
    assert "fewshot" not in without_bank and "short" in without_bank
    image = str(dataset_image(dataset, 2))
    handlers = app.DemoHandlers(with_bank, app.VLETasks(note="none"), UploadPolicy([Path(image).parent]))
    final = list(handlers.answer(image, "What color is the shape?", 3, True, "fewshot", 0, 8, 2))[-1]
    assert final["template"] == "fewshot" and len(final["runs"]) == 2 and final["votes"] == {"red": 1, "blue": 1}
    # the runs setting is not passed to the other templates (no "ignored" note)
    final = list(handlers.answer(image, "What color is the shape?", 3, True, "short", 0, 8, 3))[-1]
    assert final["runs"] == [] and not any("ignored" in note for note in final["notes"])
