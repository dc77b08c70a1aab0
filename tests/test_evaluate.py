"""The batch evaluator ``python -m vqa_llm.evaluate`` with tiny random models (no downloads).

Covers: the output files and their fields, summary figures equal to a recomputation from predictions.jsonl,
the fixed ``--limit/--seed`` sample, resuming after an interruption (and after a line cut short by a kill)
to the same files as an uninterrupted run, a 2-process ``accelerate launch`` run merging to the 1-process
result, ``--no-llm``, and VQAv2-format files with answer-type / question-type breakdowns and a bad image.

Candidate scores are compared with a tolerance: the same question batched with other questions gives scores
that differ in the 7th digit (float round-off of padded batches); every other field must be identical.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from tiny_models import build_tiny_blip, build_tiny_chat_lm
from tiny_vle import build_tiny_vle_vqa
from vle.vqa_data import load_easy_vqa
from vqa_llm.evaluate import EXIT_INTERRUPTED, EXIT_USER_ERROR, main
from vqa_llm.evaluation.data import sample_examples
from vqa_llm.evaluation.errors import EvaluationError
from vqa_llm.evaluation.store import (
    OutputLayout,
    RecordWriter,
    current_records,
    done_question_ids,
    merge_records,
    read_records,
    repair_tail,
)
from vqa_llm.evaluation.summary import build_summary, without_timings
from vqa_llm.metrics import summarise_accuracy, vqa_accuracy
from vqa_llm.pipeline import VQALLMPipeline

REPO = Path(__file__).resolve().parents[1]
LIMIT = 20
RECORD_FIELDS = {
    "question_id", "image_id", "image", "question", "answers", "answer_type", "question_type", "candidates",
    "vqa_answer", "caption", "template", "llm_reply", "llm_answer", "llm_explanation", "llm_fallback", "changed",
    "raw_accuracy", "llm_accuracy", "error", "timings",
}
LLM_FIELDS = ("template", "llm_reply", "llm_answer", "llm_explanation", "llm_fallback", "changed", "llm_accuracy")
GROUP_FIELDS = {"n", "raw_accuracy", "llm_accuracy", "fixed", "broke", "changed_no_effect", "changed", "flips",
                "failed", "llm_errors", "latency_s"}


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    # This random model answers mostly its 5th label: "yes" here, so its accuracy is neither 0 nor 100%.
    labels = ("red", "no", "green", "blue", "yes", "circle", "rectangle", "triangle")
    return ["--profile", "bundled",
            "--vqa-model", build_tiny_vle_vqa(root / "vle", labels=labels),
            "--captioner", build_tiny_blip(root / "blip"),
            "--llm", build_tiny_chat_lm(root / "chat", max_position_embeddings=2048)]


def easy_args(models, out, *extra):
    return ["-q", "--dataset", "easy-vqa", "--limit", str(LIMIT), "--seed", "3", "--max-new-tokens", "6",
            "--out", str(out), *models, *extra]


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    """An uninterrupted 1-process run with the LLM, batch size 4."""
    out = tmp_path_factory.mktemp("reference")
    assert main(easy_args(models, out, "--batch-size", "4")) == 0
    return out


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_same_predictions(got, want):
    """Identical records apart from timings; candidate scores equal up to float round-off."""
    assert [r["question_id"] for r in got] == [r["question_id"] for r in want]
    for a, b in zip(got, want):
        a, b = dict(a), dict(b)
        a.pop("timings"), b.pop("timings")
        scores_a, scores_b = a.pop("candidates"), b.pop("candidates")
        assert a == b
        assert [c[0] for c in scores_a] == [c[0] for c in scores_b]
        assert [c[1] for c in scores_a] == pytest.approx([c[1] for c in scores_b], abs=1e-5)


def summary_of(out):
    return json.loads((Path(out) / "summary.json").read_text())


# ------------------------------------------------------------------------------------------- tests
def test_outputs_have_every_field_and_the_summary_equals_a_recomputation(reference):
    out = Path(reference)
    for name in ("predictions.jsonl", "summary.json", "summary.md", "accuracy_by_question_type.png", "run.json"):
        assert (out / name).is_file(), name
    assert (out / "accuracy_by_question_type.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.part-*")) and not list(out.glob("*.tmp"))

    records = lines(out / "predictions.jsonl")
    assert len(records) == LIMIT
    ids = [r["question_id"] for r in records]
    assert ids == sorted(ids) and len(set(ids)) == LIMIT
    for r in records:
        assert set(r) == RECORD_FIELDS
        assert len(r["candidates"]) == 5 and r["vqa_answer"] == r["candidates"][0][0]
        assert r["template"] == "short" and isinstance(r["llm_reply"], str) and r["caption"]
        assert r["raw_accuracy"] == vqa_accuracy(r["vqa_answer"], r["answers"])
        assert r["llm_accuracy"] == vqa_accuracy(r["llm_answer"], r["answers"])
        assert r["timings"]["total"] > 0 and r["error"] is None
    assert any(r["raw_accuracy"] > 0 for r in records)  # not a degenerate all-zero check

    summary = summary_of(out)
    raw = summarise_accuracy([r["raw_accuracy"] for r in records], [r["question_type"] for r in records],
                             [r["answer_type"] for r in records])
    llm = summarise_accuracy([r["llm_accuracy"] for r in records], [r["question_type"] for r in records],
                             [r["answer_type"] for r in records])
    assert summary["overall"]["raw_accuracy"] == raw.overall and summary["overall"]["llm_accuracy"] == llm.overall
    for key, raw_groups, llm_groups, field in (("per_question_type", raw.per_question_type, llm.per_question_type,
                                                "question_type"),
                                               ("per_answer_type", raw.per_answer_type, llm.per_answer_type,
                                                "answer_type")):
        groups = summary[key]
        assert set(groups) == set(raw_groups)
        for name, stats in groups.items():
            mine = [r for r in records if r[field] == name]
            assert set(stats) == GROUP_FIELDS
            assert stats["n"] == len(mine)
            assert (stats["raw_accuracy"], stats["llm_accuracy"]) == (raw_groups[name], llm_groups[name])
            assert stats["fixed"] == sum(r["raw_accuracy"] < r["llm_accuracy"] for r in mine)
            assert stats["broke"] == sum(r["raw_accuracy"] > r["llm_accuracy"] for r in mine)
            assert stats["changed_no_effect"] == sum(r["changed"] and r["raw_accuracy"] == r["llm_accuracy"]
                                                     for r in mine)
            mean_llm = sum(r["timings"]["llm"] for r in mine) / len(mine)
            assert stats["latency_s"]["llm"] == pytest.approx(mean_llm, abs=1e-5)
    assert set(summary["per_question_type"]) <= {"yes/no", "color", "shape"}
    assert summary["overall"]["n"] == LIMIT and summary["settings"]["limit"] == LIMIT
    assert summary["models"]["llm"].endswith("chat") and summary["wall_time_s"] > 0
    assert summary["settings"]["template"] == "short" and summary["settings"]["top_k"] == 5

    md = (out / "summary.md").read_text()
    assert "## Per answer type" in md and "## Per question type" in md and "| color |" in md
    assert f"{raw.overall:.2f}" in md and "accuracy_by_question_type.png" in md


def test_summary_counts_fixed_broke_and_unchanged_answers():
    def rec(qid, qtype, raw, llm, changed, error=None, candidates=(("a", 0.9),)):
        return {"question_id": qid, "question_type": qtype, "answer_type": "other", "raw_accuracy": raw,
                "llm_accuracy": llm, "changed": changed, "error": error, "candidates": [list(c) for c in candidates],
                "timings": {"total": 1.0, "llm": 0.5}}

    records = [rec(1, "a", 0.0, 1.0, True), rec(2, "a", 1.0, 0.3, True), rec(3, "a", 0.3, 0.3, True),
               rec(4, "b", 1.0, 1.0, False), rec(5, "b", 1.0, 1.0, False, error="LLM timed out"),
               rec(6, "b", 0.0, 0.0, False, error="image unreadable", candidates=())]
    summary = build_summary(records, {"sessions": [{"wall_time_s": 2.0, "answered": 6}]})
    assert {k: summary["overall"][k] for k in ("n", "fixed", "broke", "changed_no_effect", "changed", "failed",
                                               "llm_errors")} == {
        "n": 6, "fixed": 1, "broke": 1, "changed_no_effect": 1, "changed": 3, "failed": 1, "llm_errors": 1}
    assert summary["overall"]["raw_accuracy"] == round(100 * 3.3 / 6, 2)
    assert summary["overall"]["llm_accuracy"] == round(100 * 3.6 / 6, 2)
    assert summary["per_question_type"]["a"]["fixed"] == 1 and summary["per_question_type"]["b"]["failed"] == 1
    assert summary["overall"]["latency_s"] == {"llm": 0.5, "total": 1.0}
    assert summary["questions_per_s"] == 3.0
    # flips: 1 wrong->right (q1), 1 right->wrong (q2); q3 stays partly right (0.3 is not right: < 3 annotators)
    assert summary["overall"]["flips"] == {"right_to_wrong": 1, "right_to_wrong_pct": round(100 / 6, 2),
                                           "wrong_to_right": 1, "wrong_to_right_pct": round(100 / 6, 2)}
    assert summary["per_question_type"]["b"]["flips"]["right_to_wrong"] == 0
    assert build_summary([rec(1, "a", 0.9, 0.6, True)], {})["overall"]["flips"]["right_to_wrong"] == 1
    assert build_summary([{**rec(1, "a", 1.0, None, False)}], {})["overall"]["flips"] is None  # without the LLM
    with pytest.raises(ValueError):
        build_summary([], {})


def test_limit_and_seed_give_a_fixed_nested_sample_in_dataset_order():
    examples = load_easy_vqa("test")
    first = [e.question_id for e in sample_examples(examples, 50, seed=7)]
    assert first == [e.question_id for e in sample_examples(examples, 50, seed=7)]
    assert first == sorted(first) and len(set(first)) == 50
    assert first != [e.question_id for e in sample_examples(examples, 50, seed=8)]
    bigger = {e.question_id for e in sample_examples(examples, 500, seed=7)}
    assert set(first) <= bigger  # samples of one seed are nested
    assert len(sample_examples(examples, None)) == len(examples) == len(sample_examples(examples, 10**9))
    with pytest.raises(EvaluationError):
        sample_examples(examples, 0)


def test_resume_after_an_interruption_gives_the_uninterrupted_result(models, reference, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real_run_batch = VQALLMPipeline.run_batch
    calls = []

    def interrupted_run_batch(self, *args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the third batch
        return real_run_batch(self, *args, **kwargs)

    monkeypatch.setattr(VQALLMPipeline, "run_batch", interrupted_run_batch)
    assert main(easy_args(models, out, "--batch-size", "4")) == EXIT_INTERRUPTED
    monkeypatch.setattr(VQALLMPipeline, "run_batch", real_run_batch)
    partial = lines(out / "predictions.jsonl")
    assert len(partial) == 8 and not (out / "summary.json").exists()  # two batches were safely on disk

    # then a kill in the middle of writing the next line
    with (out / "predictions.jsonl").open("a") as handle:
        handle.write(json.dumps(lines(reference / "predictions.jsonl")[-1])[:57])
    assert len(read_records(out / "predictions.jsonl")) == 8

    # without --resume the folder is protected; with other settings it cannot be resumed
    assert main(easy_args(models, out, "--batch-size", "4")) == EXIT_USER_ERROR
    assert main(easy_args(models, out, "--batch-size", "4", "--resume", "--top-k", "3")) == EXIT_USER_ERROR

    answered = []
    monkeypatch.setattr(VQALLMPipeline, "run_batch",
                        lambda self, images, questions, **kw: answered.extend(questions)
                        or real_run_batch(self, images, questions, **kw))
    # a different batch size is fine: it does not change the sample or the answers
    assert main(easy_args(models, out, "--batch-size", "5", "--resume")) == 0
    assert len(answered) == LIMIT - 8

    assert_same_predictions(lines(out / "predictions.jsonl"), lines(reference / "predictions.jsonl"))
    assert without_timings(summary_of(out)) == without_timings(summary_of(reference))
    assert (out / "summary.md").is_file() and (out / "accuracy_by_question_type.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert [s["answered"] for s in run["sessions"]] == [LIMIT - 8]

    # resuming a finished run answers nothing and rewrites the same files
    answered.clear()
    assert main(easy_args(models, out, "--batch-size", "5", "--resume")) == 0
    assert answered == [] and len(lines(out / "predictions.jsonl")) == LIMIT
    assert without_timings(summary_of(out)) == without_timings(summary_of(reference))


def test_retry_errors_answers_the_timed_out_questions_again(models, reference, tmp_path, monkeypatch):
    import vqa_llm.stages.llm as llm_stage
    from vqa_llm.errors import LLMFailure

    out = tmp_path / "retried"
    real_generate = llm_stage.generate_batch_with_deadline
    calls = []

    def second_batch_times_out(llm, chats, timeout, **options):
        calls.append(len(chats))
        if len(calls) == 2:
            raise LLMFailure("The LLM did not answer within 1 s.", timed_out=True)
        return real_generate(llm, chats, timeout, **options)

    monkeypatch.setattr(llm_stage, "generate_batch_with_deadline", second_batch_times_out)
    assert main(easy_args(models, out, "--batch-size", "4")) == 0
    monkeypatch.setattr(llm_stage, "generate_batch_with_deadline", real_generate)
    failed = [r["question_id"] for r in lines(out / "predictions.jsonl") if r["error"]]
    assert len(failed) == 4 and summary_of(out)["overall"]["llm_errors"] == 4  # the second batch kept VQA answers

    assert main(easy_args(models, out, "--retry-errors")) == EXIT_USER_ERROR  # only with --resume
    answered = []
    real_run_batch = VQALLMPipeline.run_batch
    monkeypatch.setattr(VQALLMPipeline, "run_batch",
                        lambda self, images, questions, **kw: answered.extend(questions)
                        or real_run_batch(self, images, questions, **kw))
    assert main(easy_args(models, out, "--resume")) == 0 and answered == []  # plain resume keeps them
    assert main(easy_args(models, out, "--resume", "--retry-errors")) == 0
    by_id = {r["question_id"]: r["question"] for r in lines(reference / "predictions.jsonl")}
    assert sorted(answered) == sorted(by_id[i] for i in failed)  # those four, nothing else
    assert_same_predictions(lines(out / "predictions.jsonl"), lines(reference / "predictions.jsonl"))
    assert summary_of(out)["overall"]["llm_errors"] == 0


def test_the_good_record_of_a_retried_question_wins_in_any_file_order(tmp_path):
    layout = OutputLayout(tmp_path)
    failed, good = {"question_id": 7, "error": "timed out"}, {"question_id": 7, "error": None, "llm_answer": "red"}
    with RecordWriter(layout.part(0, 3)) as writer:  # the retry, in a file read before the first answer's
        writer.write([good, {"question_id": 8, "error": None}])
    with RecordWriter(layout.part(1, 2)) as writer:
        writer.write([failed, {"question_id": 9, "error": "unreadable image"}])
    assert current_records(layout)[7] == good
    records = current_records(layout)
    assert done_question_ids(records) == {7, 8, 9} and done_question_ids(records, retry_errors=True) == {7, 8}
    assert [r["question_id"] for r in merge_records(layout)] == [7, 8, 9] and not layout.parts()
    assert read_records(layout.predictions)[0] == good


def test_a_run_extends_to_a_larger_limit_with_resume(models, reference, tmp_path):
    out = tmp_path / "grown"
    assert main(easy_args(models, out, "--limit", "7", "--batch-size", "4")) == 0  # the later --limit wins
    assert len(lines(out / "predictions.jsonl")) == 7
    assert main(easy_args(models, out, "--limit", "5", "--resume")) == EXIT_USER_ERROR  # would drop answers
    assert main(easy_args(models, out, "--batch-size", "4", "--resume")) == 0
    assert_same_predictions(lines(out / "predictions.jsonl"), lines(reference / "predictions.jsonl"))
    assert without_timings(summary_of(out)) == without_timings(summary_of(reference))


def test_store_drops_a_cut_line_and_refuses_a_corrupt_one(tmp_path):
    path = tmp_path / "p.jsonl"
    with RecordWriter(path) as writer:
        writer.write([{"question_id": 1}, {"question_id": 2}])
    path.write_text(path.read_text() + '{"question_id": 3, "ans')
    assert [r["question_id"] for r in read_records(path)] == [1, 2]
    with RecordWriter(path) as writer:  # appending first cuts the partial line off
        writer.write([{"question_id": 4}])
    assert path.read_text().splitlines() == ['{"question_id": 1}', '{"question_id": 2}', '{"question_id": 4}']
    path.write_text(path.read_text() + '{"question_id": 5}')  # complete record, newline missing
    repair_tail(path)
    assert [r["question_id"] for r in read_records(path)] == [1, 2, 4, 5]
    path.write_text('{"question_id": 1}\nnot json\n{"question_id": 2}\n')
    with pytest.raises(EvaluationError, match="line 2"):
        read_records(path)


def test_no_llm_gives_raw_accuracy_only(models, reference, tmp_path):
    out = tmp_path / "raw"
    assert main(easy_args(models, out, "--no-llm", "--batch-size", "8")) == 0
    records = lines(out / "predictions.jsonl")
    assert [r["question_id"] for r in records] == [r["question_id"] for r in lines(reference / "predictions.jsonl")]
    for r, ref in zip(records, lines(reference / "predictions.jsonl")):
        assert all(r[field] is None for field in LLM_FIELDS)
        assert r["raw_accuracy"] == ref["raw_accuracy"] and r["vqa_answer"] == ref["vqa_answer"]
        assert r["timings"]["llm"] == 0.0
    summary = summary_of(out)
    assert summary["overall"]["llm_accuracy"] is None and summary["overall"]["fixed"] is None
    assert summary["overall"]["raw_accuracy"] == summary_of(reference)["overall"]["raw_accuracy"]
    assert summary["models"]["llm"] is None and summary["settings"]["use_llm"] is False
    assert (out / "accuracy_by_question_type.png").read_bytes()[:4] == b"\x89PNG"


def write_vqav2(root: Path):
    """A VQAv2-format split: 4 images (one unreadable), 7 questions of 3 answer types, 10 answers each."""
    images = root / "val2014"
    images.mkdir(parents=True)
    for image_id, colour in ((1, (0, 160, 0)), (2, (200, 0, 0)), (3, (0, 0, 200))):
        Image.new("RGB", (40, 30), colour).save(images / f"COCO_val2014_{image_id:012d}.jpg")
    (images / "COCO_val2014_000000000004.jpg").write_bytes(b"this is not a jpeg")
    rows = [  # question_id, image_id, question, answers, answer_type, question_type
        (101, 1, "What color is the picture?", ["green"] * 4 + ["dark green"] * 6, "other", "what color is the"),
        (102, 1, "Is there a shape?", ["yes"] * 10, "yes/no", "is there a"),
        (103, 1, "How many shapes are there?", ["2"] * 2 + ["two"] * 2 + ["3"] * 6, "number", "how many"),
        (201, 2, "What color is the picture?", ["red"] * 10, "other", "what color is the"),
        (202, 2, "Is there a circle?", ["no"] * 7 + ["yes"] * 3, "yes/no", "is there a"),
        (301, 3, "What color is the square?", ["blue"] * 9 + ["navy"], "other", "what color is the"),
        (401, 4, "Is there a triangle?", ["no"] * 10, "yes/no", "is there a"),
    ]
    questions = {"data_subtype": "val2014", "questions": [
        {"question_id": q, "image_id": i, "question": text} for q, i, text, *_ in rows]}
    annotations = {"data_subtype": "val2014", "annotations": [
        {"question_id": q, "image_id": i, "answer_type": a_type, "question_type": q_type,
         "multiple_choice_answer": answers[0], "answers": [{"answer": a, "answer_id": n + 1, "answer_confidence": "yes"}
                                                           for n, a in enumerate(answers)]}
        for q, i, _, answers, a_type, q_type in rows]}
    (root / "questions.json").write_text(json.dumps(questions))
    (root / "annotations.json").write_text(json.dumps(annotations))
    return ["--dataset", "vqav2", "--questions", str(root / "questions.json"),
            "--annotations", str(root / "annotations.json"), "--images", str(images)]


def test_vqav2_files_give_answer_type_and_question_type_breakdowns(models, tmp_path):
    out = tmp_path / "out"
    data = write_vqav2(tmp_path / "data")
    assert main(["-q", *data, *models, "--max-new-tokens", "6", "--batch-size", "3", "--out", str(out)]) == 0
    records = {r["question_id"]: r for r in lines(out / "predictions.jsonl")}
    assert sorted(records) == [101, 102, 103, 201, 202, 301, 401]

    bad = records[401]  # the unreadable image fails its question only, and scores 0
    assert bad["candidates"] == [] and bad["raw_accuracy"] == 0.0 and bad["llm_accuracy"] == 0.0
    assert "COCO_val2014_000000000004.jpg" in bad["error"] or "image" in bad["error"].lower()
    good = [r for r in records.values() if r["question_id"] != 401]
    assert all(len(r["candidates"]) == 5 and r["error"] is None for r in good)
    assert all(len(r["answers"]) == 10 for r in records.values())
    for r in good:
        assert r["raw_accuracy"] == vqa_accuracy(r["vqa_answer"], r["answers"])
    assert records[102]["raw_accuracy"] == (1.0 if records[102]["vqa_answer"] == "yes" else 0.0)
    assert records[202]["raw_accuracy"] == pytest.approx({"yes": 0.9, "no": 1.0}.get(records[202]["vqa_answer"], 0.0))

    summary = summary_of(out)
    assert set(summary["per_answer_type"]) == {"yes/no", "number", "other"}
    assert set(summary["per_question_type"]) == {"what color is the", "is there a", "how many"}
    by_type = defaultdict(list)
    for r in records.values():
        by_type[r["question_type"]].append(r["raw_accuracy"])
    for name, accuracies in by_type.items():
        stats = summary["per_question_type"][name]
        assert stats["n"] == len(accuracies)
        assert stats["raw_accuracy"] == round(100 * sum(accuracies) / len(accuracies), 2)
    assert Counter(r["answer_type"] for r in records.values()) == {
        name: stats["n"] for name, stats in summary["per_answer_type"].items()}
    assert summary["per_question_type"]["is there a"]["failed"] == 1 and summary["overall"]["failed"] == 1
    assert summary["settings"]["questions"] == str((tmp_path / "data" / "questions.json").resolve())
    md = (out / "summary.md").read_text()
    assert "| what color is the | 3 |" in md and "| number | 1 |" in md


def test_unusable_data_or_options_are_refused_before_any_answer(models, tmp_path, capsys):
    data = write_vqav2(tmp_path / "data")
    out = ["--out", str(tmp_path / "out")]
    assert main(["-q", *data, *models, "--template", "nope", *out]) == EXIT_USER_ERROR
    assert "Unknown prompt template" in capsys.readouterr().err
    assert main(["-q", *data, *models, "--top-k", "0", *out]) == EXIT_USER_ERROR
    missing = list(data)
    missing[missing.index("--annotations") + 1] = str(tmp_path / "missing.json")
    assert main(["-q", *missing, *models, *out]) == EXIT_USER_ERROR
    assert "annotations file not found" in capsys.readouterr().err
    assert main(["-q", "--dataset", "vqav2", *models, *out]) == EXIT_USER_ERROR
    assert "--questions, --annotations, --images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_processes_wait_hours_for_the_slowest_block(monkeypatch):
    # torch's default barrier timeout (30 min) would kill a long sharded run whose blocks finish far apart
    import accelerate

    from vqa_llm.evaluation import command

    seen = {}
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: seen.update(kwargs))
    command.accelerate_state(command.build_parser().parse_args(["--out", "x"]))
    assert seen["timeout"].total_seconds() >= 12 * 3600


def test_two_accelerate_processes_merge_to_the_one_process_result(models, reference, tmp_path):
    out = tmp_path / "two"
    # On a CPU-only machine `--multi_gpu` is what starts N processes (torchrun); they talk over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               "-m", "vqa_llm.evaluate", *easy_args(models, out, "--batch-size", "4")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(out.glob("predictions.part-*"))  # parts were merged away
    assert_same_predictions(lines(out / "predictions.jsonl"), lines(reference / "predictions.jsonl"))
    assert without_timings(summary_of(out)) == without_timings(summary_of(reference))
    session = json.loads((out / "run.json").read_text())["sessions"][-1]
    assert session["processes"] == 2 and session["answered"] == LIMIT
    assert OutputLayout(out).record_files() == [out / "predictions.jsonl"]


class _Broadcast:
    """accelerate's broadcast_object_list between two processes called one after the other: the main process's
    list is kept, and the other process gets it."""

    def __init__(self):
        self.sent = None

    def __call__(self, objects, from_process=0):
        if self.sent is None:
            self.sent = list(objects)
        objects[:] = self.sent
        return objects


def test_the_profile_is_resolved_once_and_shared_by_every_process(monkeypatch):
    """``auto`` asks the Hub: were each process to ask, two could disagree and mix profiles in one run. The
    main process decides, the others take its profile, each on its own device."""
    import accelerate.utils

    import vqa_llm.evaluation.command as command_module
    from vqa_llm import BadSettingError
    from vqa_llm.profiles import BASE, bundled_profile

    answers = iter([BASE, bundled_profile()])  # what two separate Hub probes could have said
    resolved = []

    def resolve(name, overrides, *args, **kwargs):
        resolved.append(name)
        return next(answers), "the Hub answered"

    monkeypatch.setattr(command_module, "resolve_profile", resolve)
    monkeypatch.setattr(command_module, "check_profile_hub", lambda profile, use_llm: (profile, ""))
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", _Broadcast())
    args = command_module.build_parser().parse_args(["--out", "x", "--profile", "auto"])
    main_process = SimpleNamespace(is_main_process=True, num_processes=2, device="cuda:0")
    other_process = SimpleNamespace(is_main_process=False, num_processes=2, device="cuda:1")
    first, reason = command_module.resolve_run_profile(args, main_process, use_llm=True)
    second, _ = command_module.resolve_run_profile(args, other_process, use_llm=True)
    assert resolved == ["auto"] and reason == "the Hub answered"
    assert first.name == second.name == "base" and (first.device, second.device) == ("cuda:0", "cuda:1")

    # a refusal on the main process stops the others with the same message
    def refuse(*args, **kwargs):
        raise BadSettingError("Unknown profile 'nope'")

    monkeypatch.setattr(command_module, "resolve_profile", refuse)
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", _Broadcast())
    for state in (main_process, other_process):
        with pytest.raises(BadSettingError, match="Unknown profile 'nope'"):
            command_module.resolve_run_profile(args, state, use_llm=True)
