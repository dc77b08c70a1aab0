"""The LLM refiner's fine-tuning CLI (``python -m training.refiner``) end to end on a tiny random chat model, with
evidence from the bundled VLE and BLIP on a few easy-VQA training questions; its user errors; the targets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from llm import TransformersChatLLM
from prompts import parse_answer
from tiny_models import build_tiny_chat_lm, single_thread_fixture
from training.refiner import main as refiner_main
from training.refiner import tokenize_example
from training.refiner_data import Evidence, answer_from_attributes, target_reply

REPO = Path(__file__).resolve().parents[1]
BUNDLED_VQA = REPO / "assets" / "models" / "vle-easyvqa"
BUNDLED_BLIP = REPO / "assets" / "models" / "blip-easyvqa"

one_thread = single_thread_fixture()


@pytest.fixture(scope="module")
def chat_lm(tmp_path_factory) -> str:
    return build_tiny_chat_lm(tmp_path_factory.mktemp("chat"), max_position_embeddings=2048)


def _argv(chat_lm: str, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["--llm", chat_lm, "--vqa-model", str(BUNDLED_VQA), "--captioner", str(BUNDLED_BLIP), "--limit", "24",
            "--eval_share", "0.2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--learning_rate", "5e-3", "--save_steps", "2", "--output_dir", str(out), "--cache", str(cache), *extra]


def _mean_reply_loss(model, tokenizer, chats: list[dict]) -> float:
    losses = []
    with torch.no_grad():
        for chat in chats:
            item = tokenize_example(tokenizer, chat)
            out = model(input_ids=torch.tensor([item["input_ids"]]), labels=torch.tensor([item["labels"]]))
            losses.append(out.loss.item())
    return sum(losses) / len(losses)


class _StopAfterSave(TrainerCallback):
    """Interrupts training right after the checkpoint of ``step`` is written, like a Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_finetuning_end_to_end_resume_and_the_adapter(chat_lm, tmp_path, one_thread):
    cache = tmp_path / "cache"
    full, split = tmp_path / "full", tmp_path / "split"
    assert refiner_main(_argv(chat_lm, full, cache, "--max_steps", "4")) == 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "training_log.json", "templates/short.user.txt",
                 "templates/long.system.txt"):
        assert (full / name).is_file(), name
    log = json.loads((full / "training_log.json").read_text())
    assert log["steps"] == 4 and log["data"]["train"] > 0 and log["data"]["eval"] > 0
    assert any("eval_loss" in entry for entry in log["log_history"])  # evaluated at the end of the epoch
    assert str(REPO) not in json.dumps(log)  # paths inside the repository are written relative to it
    assert (full / "README.md").read_text().startswith("# VQA answer refiner")  # the stub card, no machine paths
    # evidence is cached on disk and reused
    assert len(list(cache.glob("evidence-*.jsonl"))) == 1

    # interrupted after step 2, then resumed: the same adapter as the uninterrupted run
    assert refiner_main(_argv(chat_lm, split, cache, "--max_steps", "4"), callbacks=[_StopAfterSave(2)]) == 130
    assert not (split / "adapter_model.safetensors").exists()
    (split / "README.md").write_text("# a maintained card\n")
    assert refiner_main(_argv(chat_lm, split, cache, "--max_steps", "4", "--resume")) == 0
    assert (split / "README.md").read_text() == "# a maintained card\n"  # kept, not rewritten by peft
    a, b = load_file(full / "adapter_model.safetensors"), load_file(split / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)  # B starts at zero: it trained

    # the reply loss falls on the training chats, and the adapter loads back and changes the output
    from training.arguments import parse
    from training.refiner import RENAMES, build_parser, make_examples

    train_chats, _, _ = make_examples(parse(build_parser(), _argv(chat_lm, full, cache), RENAMES)[0])
    tokenizer = AutoTokenizer.from_pretrained(chat_lm)
    base = AutoModelForCausalLM.from_pretrained(chat_lm).eval()
    tuned = TransformersChatLLM.from_pretrained(chat_lm, device="cpu", adapter=full)
    chats = train_chats[:8]
    assert _mean_reply_loss(tuned.model, tokenizer, chats) < _mean_reply_loss(base, tokenizer, chats)
    plain = TransformersChatLLM.from_pretrained(chat_lm, device="cpu")
    # what training guarantees: the loaded adapter changes the model's logits. (Its first greedy tokens need not
    # change after 4 steps of a tiny random model: whether they do depends on the CPU's rounding.)
    ids = torch.tensor([tokenize_example(tokenizer, train_chats[0])["input_ids"]])
    with torch.no_grad():
        gap = (tuned.model(input_ids=ids).logits - plain.model(input_ids=ids).logits).abs().max().item()
    assert gap > 1e-3
    assert tuned.template_dir == full / "templates" and plain.template_dir is None
    assert tuned.model_id.endswith("+ full")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.refiner", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def _no_chat_template(tmp_path: Path, chat_lm: str) -> str:
    folder = tmp_path / "plain-lm"
    tokenizer = AutoTokenizer.from_pretrained(chat_lm)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    for file in (tmp_path / "plain-lm").glob("chat_template*"):
        file.unlink()
    AutoModelForCausalLM.from_pretrained(chat_lm).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-questions", "not found"),
        ("empty-dataset", "no questions"),
        ("no-chat-template", "no chat template"),
        ("unknown-template", "Unknown template"),
        ("fewshot-without-bank", "needs --example_bank"),
        ("bank-missing", "--example_bank"),
        ("out-under-a-file", "under the file"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(case, message, chat_lm, tmp_path):
    out = ["--output_dir", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    models = ["--vqa-model", str(BUNDLED_VQA), "--captioner", str(BUNDLED_BLIP)]
    if case == "missing-questions":
        args = ["--llm", chat_lm, *models, "--dataset", "vqav2", "--questions", str(tmp_path / "nope.json"),
                "--annotations", str(tmp_path / "nope2.json"), "--images", str(tmp_path), *out]
    elif case == "empty-dataset":
        questions, annotations = tmp_path / "q.json", tmp_path / "a.json"
        questions.write_text(json.dumps({"questions": []}))
        annotations.write_text(json.dumps({"annotations": []}))
        args = ["--llm", chat_lm, *models, "--dataset", "vqav2", "--questions", str(questions),
                "--annotations", str(annotations), "--images", str(tmp_path), *out]
    elif case == "no-chat-template":
        args = ["--llm", _no_chat_template(tmp_path, chat_lm), *models, "--limit", "4", *out]
    elif case == "unknown-template":
        args = ["--llm", chat_lm, *models, "--template", "short", "nonesuch", *out]
    elif case == "fewshot-without-bank":
        args = ["--llm", chat_lm, *models, "--template", "short", "fewshot", *out]
    elif case == "bank-missing":
        args = ["--llm", chat_lm, *models, "--template", "fewshot", "--example_bank", str(tmp_path / "nope"),
                "--limit", "4", *out]
    else:
        (tmp_path / "file.txt").write_text("x")
        args = ["--llm", chat_lm, *models, "--output_dir", str(tmp_path / "file.txt" / "run")]
    result = _run_cli(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message.lower() in errors[0].lower(), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ targets
NEGATED = ["is there not a red shape?", "does the image not contain a circle?", "is no blue shape present?"]


@pytest.mark.parametrize("question", NEGATED + ["is there a red shape?", "does the image contain a circle?"])
@pytest.mark.parametrize("color, shape", [("red", "circle"), ("blue", "triangle")])
def test_long_targets_work_the_answer_out_first_and_the_parser_reads_it_back(question, color, shape):
    truth = answer_from_attributes(question, "yes/no", color, shape)
    ev = Evidence(1, "img.png", question, [truth] * 10, "yes/no", f"a {color} {shape}",
                  [("yes", 0.6), ("no", 0.4), ("red", 0.0)], "vle")
    reply = target_reply(ev, "long", {"color": color, "shape": shape})
    assert "\n" not in reply
    # the evidence comes first: the score as the prompt shows it, then the caption
    assert reply.startswith('The top candidate "yes" scores 0.60, below 1.00; the caption ')
    parsed = parse_answer(reply, ev.candidates, "long", question=question)
    assert parsed.short_answer == truth
    # the shown answer is a person's sentence: it starts with the answer, names no evidence, and is not the reasoning
    assert parsed.answer.startswith(f"{truth.capitalize()}, there is ") and parsed.answer.endswith(" in the image.")
    assert not re.search(r"candidate|score|caption|vqa", parsed.answer, re.IGNORECASE)
    assert parsed.explanation.startswith("The top candidate") and parsed.answer not in parsed.explanation
    # "no <thing>" exactly where the image lacks it
    asked = "red shape" if "red" in question else ("blue shape" if "blue" in question else "circle")
    present = asked.split()[0] in (color, shape)
    assert (f"there is no {asked}" in parsed.answer) is (not present)


def test_long_targets_keep_a_sure_top_candidate_and_read_colours_from_the_caption():
    attributes = {"color": "red", "shape": "circle"}
    sure = _evidence(1, "a blue circle", top="yes")  # caption wrong, VQA sure and right
    sentence = target_reply(sure, "long", attributes)
    assert sentence == ('The top candidate "yes" scores 1.00, so the VQA model is sure. '
                        'Yes, there is a red shape in the image.')
    colour = Evidence(2, "i.png", "what color is the circle?", ["red"] * 10, "color", "a red circle",
                      [("blue", 0.55), ("red", 0.4), ("circle", 0.05)], "weak")
    sentence = target_reply(colour, "long", attributes)
    assert sentence == ('The top candidate "blue" scores 0.55, below 1.00; the caption "a red circle" names the '
                        'colour red. The circle is red.')
    parsed = parse_answer(sentence, colour.candidates, "long", question=colour.question)
    assert (parsed.short_answer, parsed.answer) == ("red", "The circle is red.")
    shape = Evidence(3, "i.png", "what is the red shape?", ["circle"] * 10, "shape", "a red circle",
                     [("triangle", 0.6), ("circle", 0.3), ("red", 0.1)], "weak")
    parsed = parse_answer(target_reply(shape, "long", attributes), shape.candidates, "long", question=shape.question)
    assert (parsed.short_answer, parsed.answer) == ("circle", "The red shape is a circle.")
    # a sure but wrong top candidate: no sentence that works the truth out from the evidence, so none is taught
    wrong = _evidence(3, "a red circle", top="no")
    assert target_reply(wrong, "long", attributes) is None


def test_negation_decides_the_yes_no_answer():
    assert answer_from_attributes("is there not a red shape?", "yes/no", "red", "circle") == "no"
    assert answer_from_attributes("is there not a red shape?", "yes/no", "blue", "circle") == "yes"
    assert answer_from_attributes("is no circle present?", "yes/no", "blue", "circle") == "no"
    assert answer_from_attributes("what color is the shape?", "color", "blue", "circle") == "blue"


def test_short_targets_cite_the_evidence_and_skip_unsupported_answers():
    attributes = {"color": "red", "shape": "circle"}
    # the caption is right and the top candidate wrong: the target corrects it and says why
    ev = Evidence(1, "i.png", "is there a red shape?", ["yes"] * 10, "yes/no", "a red circle",
                  [("no", 0.7), ("yes", 0.3)], "weak")
    reply = target_reply(ev, "short", attributes)
    assert reply == ('Explanation: The top candidate "no" scores 0.70, below 1.00; the caption "a red circle" names '
                     'red and circle, so "a red shape" is true.\nAnswer: yes')
    parsed = parse_answer(reply, ev.candidates)
    assert parsed.answer == "yes" and not parsed.fallback and "Answer" not in parsed.explanation
    # a negated question: the sentence says so, and the answer follows from it
    negated = Evidence(3, "i.png", "is there not a triangle?", ["yes"] * 10, "yes/no", "a red circle",
                       [("no", 0.9), ("yes", 0.1)], "weak")
    reply = target_reply(negated, "short", attributes)
    assert reply.startswith('Explanation: The top candidate "no" scores 0.90, below 1.00; the caption "a red circle" '
                            'names red and circle, so "no triangle" is true.')
    assert parse_answer(reply, negated.candidates).answer == "yes"
    # neither the caption nor the top candidate supports the truth: left out (no guessing taught)
    wrong = Evidence(2, "i.png", "is there a red shape?", ["yes"] * 10, "yes/no", "a blue circle",
                     [("no", 0.7), ("yes", 0.3)], "weak")
    assert target_reply(wrong, "short", attributes) is None


def test_evidence_cache_tells_checkpoints_of_one_size_and_time_apart(tmp_path):
    # two checkpoints of one architecture: equal sizes, and a fresh clone gives them equal modification times
    from training.refiner_data import evidence_key
    from vle.vqa_data import VQAExample

    first, second = tmp_path / "bundled", tmp_path / "weak"
    for folder, byte in ((first, b"\x01"), (second, b"\x02")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(byte * 64)
        os.utime(folder / "model.safetensors", (1_700_000_000, 1_700_000_000))
    questions = [VQAExample(1, "1", "img.png", "what shape?", ["circle"] * 10, "other", "shape")]
    assert evidence_key(questions, str(first), "blip", 5) != evidence_key(questions, str(second), "blip", 5)
    assert evidence_key(questions, str(first), "blip", 5) == evidence_key(questions, str(first), "blip", 5)


def _evidence(qid: int, caption: str, top: str = "yes", score: float = 0.999) -> Evidence:
    return Evidence(qid, f"{qid}.png", "is there a red shape?", ["yes"] * 10, "yes/no", caption,
                    [(top, score), ("no" if top == "yes" else "yes", round(1 - score, 4))], "vle")


def test_caption_noise_names_one_wrong_colour_or_shape_and_is_reproducible():
    from training.refiner_data import add_caption_noise, caption_attributes

    evidence = [_evidence(i, "a red circle") for i in range(200)] + [_evidence(999, "a picture")]
    noisy = add_caption_noise(evidence, 1.0, seed=3)
    assert noisy == add_caption_noise(evidence, 1.0, seed=3)
    assert noisy[-1].caption == "a picture"  # nothing to swap: left as it is
    kinds = set()
    for before, after in zip(evidence[:-1], noisy[:-1]):
        color, shape = caption_attributes(after.caption)
        assert color is not None and shape is not None
        assert (color != "red") != (shape != "circle")  # exactly one of the two is now wrong
        kinds.add("color" if color != "red" else "shape")
        assert after.candidates == before.candidates and after.question == before.question
    assert kinds == {"color", "shape"}
    some = add_caption_noise(evidence, 0.1, seed=3)
    assert 5 <= sum(a.caption != b.caption for a, b in zip(evidence, some)) <= 40
    assert add_caption_noise(evidence, 0.0) == evidence
    unsure = [_evidence(i, "a red circle", score=0.98) for i in range(50)]  # shown as 0.98 in the prompt
    assert add_caption_noise(unsure, 1.0, seed=3) == unsure  # only captions beside a sure candidate change


def test_noisy_caption_with_a_right_top_candidate_teaches_to_trust_the_candidate():
    attributes = {"color": "red", "shape": "circle"}
    ev = _evidence(1, "a blue circle", top="yes")  # caption wrong, VQA right
    reply = target_reply(ev, "short", attributes)
    assert reply == 'Explanation: The top candidate "yes" scores 1.00, so the VQA model is sure.\nAnswer: yes'
    # "sure" is what the prompt shows: 0.995 (a float just below it) reads 0.99, so it is not sure
    assert _evidence(1, "a red circle", score=0.9951).top_is_sure
    assert not _evidence(1, "a red circle", score=0.995).top_is_sure
    shown = target_reply(_evidence(1, "a red circle", score=0.995), "short", attributes)
    assert shown.startswith('Explanation: The top candidate "yes" scores 0.99, below 1.00; the caption ')
    unsure = _evidence(1, "a blue circle", top="yes", score=0.9)  # not sure: no step-by-step sentence leads there
    assert target_reply(unsure, "short", attributes).startswith("Answer: yes\nExplanation: ")


def test_selection_keeps_every_disagreement_of_caption_and_top_candidate_and_a_share_of_agreements():
    from training.refiner_data import build_examples, select_chats

    attributes = {f"{i}.png": {"color": "red", "shape": "circle"} for i in range(100)}
    evidence = ([_evidence(i, "a red circle") for i in range(70)]  # all evidence right
                + [_evidence(i, "a red circle", top="no", score=0.9) for i in range(70, 80)]  # VQA wrong
                + [_evidence(i, "a blue circle") for i in range(80, 90)]  # caption wrong about the colour asked
                + [_evidence(i, "a red square") for i in range(90, 100)])  # caption wrong, but not about red
    chats = build_examples(evidence, ["short"], None, attributes)
    hard = {c["question_id"] for c in chats if c["conflict"]}
    assert hard == set(range(70, 90))
    chosen = select_chats(chats, 0.5, seed=0)
    assert {c["question_id"] for c in chosen} >= hard and len(chosen) == 40
    assert [c["question_id"] for c in chosen] == sorted(c["question_id"] for c in chosen)  # original order
    assert select_chats(chats, None) == chats and len(select_chats(chats, 1.0)) == 100


def test_per_confidence_selection_balances_disagreements_within_sure_and_unsure_candidates():
    from training.refiner_data import build_examples, select_chats

    attributes = {f"{i}.png": {"color": "red", "shape": "circle"} for i in range(200)}
    evidence = ([_evidence(i, "a red circle") for i in range(100)]  # sure, all evidence agrees
                + [_evidence(i, "a blue circle") for i in range(100, 110)]  # sure, caption wrong
                + [_evidence(i, "a red circle", score=0.8) for i in range(110, 170)]  # unsure, agrees
                + [_evidence(i, "a red circle", top="no", score=0.8) for i in range(170, 200)])  # unsure, top wrong
    chats = build_examples(evidence, ["short"], None, attributes)
    chosen = select_chats(chats, 0.5, seed=0, per_confidence=True)
    for sure, conflicts in ((True, 10), (False, 30)):
        group = [c for c in chosen if c["top1_sure"] == sure]
        assert sum(c["conflict"] for c in group) == conflicts and len(group) == 2 * conflicts
    # without it, the share counts over all chats: the sure agreements outnumber the sure disagreements
    pooled = select_chats(chats, 0.5, seed=0)
    assert len(pooled) == 80 and sum(c["conflict"] for c in pooled) == 40


def test_reply_weights_put_the_answer_weight_on_the_first_reply_line_only():
    from training.refiner import IGNORE_INDEX, reply_weights

    newline = 9
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6, newline, 7, 8, newline, 3],
                           [IGNORE_INDEX] * 6 + [5, 6, 3]])  # second row: a one-line (long) reply
    weights = reply_weights(labels, newline, 4.0)
    assert weights.tolist() == [[0, 0, 4, 4, 4, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 4, 4, 4]]
    assert torch.equal(reply_weights(labels, newline, 1.0), (labels != IGNORE_INDEX).float())


def test_reply_loss_on_kept_logits_equals_the_models_own_loss_on_left_padded_batches(chat_lm, tmp_path):
    from transformers import DataCollatorForSeq2Seq, TrainingArguments

    from training.refiner import IGNORE_INDEX, ReplyLossTrainer

    tokenizer = AutoTokenizer.from_pretrained(chat_lm)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(chat_lm).eval()
    chats = [{"messages": [{"role": "user", "content": "is there a red shape?" * (i + 1)}],
              "reply": f"Answer: {'yes' if i else 'no'}\nExplanation: The caption says so{'!' * i}."} for i in range(3)]
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)(
        [tokenize_example(tokenizer, c) for c in chats])
    assert (batch["attention_mask"][:, 0] == 0).any()  # really left-padded
    newline = tokenizer("\n", add_special_tokens=False).input_ids[-1]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with torch.no_grad():
        expected = model(**batch).loss  # the model's own loss: every logit, mean over reply tokens
        plain = ReplyLossTrainer(model=model, args=args, newline_id=newline).compute_loss(model, dict(batch))
        weighted = ReplyLossTrainer(model=model, args=args, newline_id=newline,
                                    answer_weight=5.0).compute_loss(model, dict(batch))
    assert torch.allclose(plain, expected, atol=1e-5)
    assert not torch.allclose(weighted, expected, atol=1e-3)  # the answer line counts more


def use_bf16(*flags: str) -> bool:
    """Whether a refiner run with these precision flags trains under bf16."""
    from training.arguments import parse
    from training.refiner import RENAMES, build_parser, refiner_precision

    given = parse(build_parser(), ["--output_dir", "out", *flags], RENAMES)[1] if flags else None
    return refiner_precision(given or SimpleNamespace(bf16=None, fp16=None))["bf16"]  # no flags: the run picks


def test_bf16_is_used_where_asked_and_fp32_where_asked():
    assert use_bf16("--bf16") and not use_bf16("--bf16", "false")
    assert use_bf16("--precision", "bf16") and not use_bf16("--precision", "fp32")  # the previous release's flags


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    """One rule for every trainer: native bf16 GPUs get bf16, older ones fp16 (the refiner: fp32), the CPU bf16 only
    where a trainer asks for it (the refiner) and the CPU computes it natively."""
    from training.common import mixed_precision_mode

    gpu = {"present": False, "native": False}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu["present"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
                        or gpu["native"])
    cpu_native = {"value": False}
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: cpu_native["value"], raising=False)
    assert mixed_precision_mode("auto") == "no" and not use_bf16()
    cpu_native["value"] = True
    assert mixed_precision_mode("auto") == "no" and mixed_precision_mode("auto", cpu_bf16=True) == "bf16"
    assert use_bf16()
    gpu["present"] = True
    assert mixed_precision_mode("auto") == "fp16" and not use_bf16()
    gpu["native"] = True
    assert mixed_precision_mode("auto") == "bf16" and use_bf16()
    assert mixed_precision_mode("fp16") == "fp16"
    with pytest.raises(ValueError, match="mixed precision"):
        mixed_precision_mode("fp8")


# ------------------------------------------------------------------------------------------ few-shot chats
def _bank_entry(image_id: str, question: str, caption: str, qtype: str = "yes/no", answer: str = "yes") -> dict:
    return {"image_id": image_id, "question": question, "caption": caption, "question_type": qtype,
            "candidates": [(answer, 1.0), ("no", 0.0)], "answer": answer}


def test_solved_examples_are_the_most_alike_and_never_about_the_question_s_own_image():
    from training.refiner_data import solved_examples

    ev = _evidence(7, "a red circle")  # image 7.png, "is there a red shape?"
    bank = [_bank_entry("7", "is there a red shape?", "a red circle"),        # own image: never
            _bank_entry("1", "what color is the shape?", "a red circle", "color", "red"),  # other type: never
            _bank_entry("2", "is there a blue shape?", "a green circle"),     # same type only
            _bank_entry("3", "is there a red shape?", "a green circle"),      # same wording
            _bank_entry("4", "is there a blue shape?", "a red circle"),       # same caption
            _bank_entry("5", "is there a red shape?", "a red circle")]        # same caption and wording
    chosen = solved_examples(ev, bank, 8)
    assert [e["image_id"] for e in chosen] == ["5", "4", "3", "2"]
    assert [e["image_id"] for e in solved_examples(ev, bank, 2)] == ["5", "4"]


def test_fewshot_chats_put_solved_examples_first_and_get_the_reasoning_reply(tmp_path):
    from prompts.templates import TEMPLATE_DIR
    from training.refiner_data import build_examples

    attributes = {f"{i}.png": {"color": "red", "shape": "circle"} for i in range(40)}
    evidence = [_evidence(i, "a red circle", score=0.9) for i in range(40)]
    bank = [_bank_entry(str(100 + i), "is there a red shape?", "a red circle") for i in range(20)]
    chats = build_examples(evidence, ["short", "fewshot"], TEMPLATE_DIR / "refiner", attributes, bank=bank,
                           fewshot=["fewshot"], n_examples=5)
    fewshot = [c for c in chats if c["template"] == "fewshot"]
    assert len(fewshot) == 20
    counts = {(len(c["messages"]) - 2) // 2 for c in fewshot}  # system + example pairs + the question
    assert counts <= set(range(1, 6)) and len(counts) > 1
    for chat in fewshot:
        assert [m["role"] for m in chat["messages"][1:3]] == ["user", "assistant"]
        assert chat["messages"][2]["content"] == "Answer: yes"  # an example's turn, as the app renders it
        assert chat["reply"].startswith("Explanation: The top candidate") and chat["reply"].endswith("Answer: yes")
    assert all(len(c["messages"]) == 2 for c in chats if c["template"] == "short")
    with pytest.raises(ValueError, match="bank"):
        build_examples(evidence, ["fewshot"], TEMPLATE_DIR / "refiner", attributes, fewshot=["fewshot"])


def test_negated_questions_beside_an_unsure_candidate_also_get_a_fewshot_chat_that_quotes_the_negation():
    from dataclasses import replace

    from prompts.templates import TEMPLATE_DIR
    from training.refiner_data import build_examples

    attributes = {f"{i}.png": {"color": "red", "shape": "circle"} for i in range(8)}
    negated = replace(_evidence(0, "a red circle", top="no", score=0.9), question="is there not a red shape?",
                      answers=["no"] * 10)
    sure_negated = replace(negated, question_id=1, image="1.png", candidates=[("no", 1.0), ("yes", 0.0)])
    plain = _evidence(2, "a red circle", score=0.9)
    bank = [_bank_entry(str(100 + i), "is there not a red shape?", "a red circle", answer="no") for i in range(4)]
    kwargs = dict(bank=bank, fewshot=["fewshot"], n_examples=3)
    evidence = [negated, sure_negated, plain]
    templates = ["short", "long", "short", "long", "fewshot"]
    without = build_examples(evidence, templates, TEMPLATE_DIR / "refiner", attributes, **kwargs)
    chats = build_examples(evidence, templates, TEMPLATE_DIR / "refiner", attributes, fewshot_negated=True, **kwargs)
    assert [(c["question_id"], c["template"]) for c in without] == [(0, "short"), (1, "long"), (2, "short")]
    # only the unsure negated question gets its second, few-shot chat; its reply keeps the negation
    assert [(c["question_id"], c["template"]) for c in chats] == [(0, "short"), (0, "fewshot"), (1, "long"),
                                                                   (2, "short")]
    extra = chats[1]
    assert len(extra["messages"]) > 2 and extra["messages"][-1]["content"].endswith(
        "<question>is there not a red shape?</question>")
    assert '"no red shape" is false' in extra["reply"] and extra["reply"].endswith("Answer: no")
    assert extra["reply"] == chats[0]["reply"]


def test_prompt_shape_batches_hold_one_shape_each_drawn_at_random():
    from training.refiner import prompt_shape_batches

    def chat(i, template, examples):
        return {"template": template, "messages": [{}] * (2 + 2 * examples), "reply": f"r{i}"}

    chats = ([chat(i, "short", 0) for i in range(20)] + [chat(100 + i, "fewshot", 3) for i in range(16)]
             + [chat(200 + i, "fewshot", 5) for i in range(5)])
    ordered = prompt_shape_batches(chats, 4, seed=0)
    assert sorted(c["reply"] for c in ordered) == sorted(c["reply"] for c in chats)  # nothing lost or repeated
    batches = [ordered[i:i + 4] for i in range(0, len(ordered), 4)]
    shapes = [{(c["template"], len(c["messages"])) for c in batch} for batch in batches]
    assert all(len(shape) == 1 for shape in shapes[:9])  # 5 + 4 + 1 full batches, one shape each
    assert len(batches[-1]) == 1 and len(batches[-2]) == 4  # the incomplete one last
    assert [len(s) for s in shapes[:9]] == [1] * 9
    # random: another seed gives another order, and the short chats are not in their original order
    assert prompt_shape_batches(chats, 4, seed=1) != ordered
    assert [c["reply"] for c in ordered if c["template"] == "short"] != [f"r{i}" for i in range(20)]


def test_fewshot_chats_train_in_batches_of_one_shape_and_the_adapter_brings_the_fewshot_template(
        chat_lm, tmp_path, one_thread, monkeypatch):
    import training.refiner as refiner

    seen = []
    original = refiner.prompt_shape_batches
    monkeypatch.setattr(refiner, "prompt_shape_batches", lambda *a: seen.append(a) or original(*a))
    trims = []  # steps of changing shapes leave holes in the allocator: each step hands its freed memory back
    monkeypatch.setattr(refiner, "release_freed_memory", lambda: trims.append(1))
    out = tmp_path / "out"
    bank = REPO / "assets" / "models" / "easyvqa-example-bank"
    assert refiner_main(_argv(chat_lm, out, tmp_path / "cache", "--max_steps", "2", "--template", "short", "fewshot",
                              "--example_bank", str(bank), "--fewshot_examples", "3", "--batch_by_prompt_shape")) == 0
    ((chats, batch_size, _),) = seen
    assert batch_size == 4 and {c["template"] for c in chats} == {"short", "fewshot"}
    assert any(len(c["messages"]) > 2 for c in chats)  # few-shot chats carry solved examples
    assert (out / "templates" / "fewshot.system.txt").is_file()
    assert len(trims) == 2
