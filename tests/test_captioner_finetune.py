"""Tests for captioner training: the from-scratch builder, the training loop, resume, vision pre-training, CLI."""

import json
import random
import shutil

import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image, ImageDraw

from captioner import BlipCaptioner, CaptionerError
from tiny_models import single_thread
from training.blip_scratch import new_blip
from training.caption_data import CaptionPair, read_pairs_jsonl
from training.captioner_arguments import ScratchConfig, captioner_arguments
from training.captioner_finetune import latest_checkpoint, main, split_pairs, train
from training.captioner_trainer import exact_match
from training.common import mixed_precision_mode
from training.vision_pretrain import pretrain_vision

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 170, 30)}
SHAPES = ("circle", "square")
TINY = ScratchConfig(
    vocab_size=60,
    image_size=32,
    patch_size=8,
    vision_hidden=32,
    vision_layers=1,
    vision_heads=2,
    text_hidden=32,
    text_layers=1,
    text_heads=2,
)
FAST = {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "learning_rate": 3e-3,
        "disable_tqdm": True, "warmup_steps": 1}


def train_captioner(pairs, out_dir, scratch=None, model=None, processor=None, **options):
    """:func:`train` on in-memory ``pairs``, ``options`` naming fields of CaptionerArguments or TrainingArguments."""
    in_memory = model if model is not None and not isinstance(model, str) else None
    args, training_args = captioner_arguments(output_dir=str(out_dir), model=None if in_memory else model, **options)
    return train(args, training_args, scratch, pairs=pairs, model=in_memory, processor=processor)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with single_thread():
        yield


def shape_image(colour: str, shape: str, seed: int, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    offset = random.Random(seed).randint(0, 8)
    box = (3 + offset, 3 + offset, 19 + offset, 19 + offset)
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


@pytest.fixture(scope="module")
def pairs() -> list[tuple]:
    """24 (image, caption, shape label) triples: 4 of each colour/shape combination."""
    return [(shape_image(c, s, seed=i), f"a {c} {s}", s) for i in range(4) for c in COLOURS for s in SHAPES]


def test_new_blip_trains_a_vocabulary_and_a_small_config(pairs, tmp_path):
    model, processor = new_blip([c for _, c, _ in pairs], **vars(TINY))
    tokenizer = processor.tokenizer
    assert tokenizer.bos_token == "[DEC]" and tokenizer.unk_token_id not in tokenizer("a green square").input_ids
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.bos_token_id, text.sep_token_id, text.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
    )
    assert text.vocab_size == len(tokenizer) and text.hidden_size == 32 and vision.image_size == 32
    assert processor.image_processor.size["height"] == 32
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    captions = BlipCaptioner.from_pretrained(str(tmp_path), device="cpu", max_new_tokens=4).caption([pairs[0][0]])
    assert isinstance(captions[0], str)


def test_training_lowers_the_loss_and_saves_a_captioner(pairs, tmp_path):
    result = train_captioner(pairs, tmp_path, scratch=TINY, num_train_epochs=3, eval_fraction=0.25, **FAST)
    first, last = result.history[0], result.history[-1]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert last["train_loss"] < first["train_loss"]
    assert last["eval_loss"] < first["eval_loss"]
    assert 0.0 <= result.exact_match <= 1.0 and len(last["eval_samples"]) == 5
    # the Trainer's checkpoints (18 training pairs, 3 steps per epoch), the newest two kept
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-6", "checkpoint-9"]
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert len(log["history"]) == 3 and log["training_arguments"]["num_train_epochs"] == 3
    captioner = BlipCaptioner.from_pretrained(str(tmp_path), device="cpu", max_new_tokens=5)
    assert all(isinstance(c, str) for c in captioner.caption([p[0] for p in pairs[:3]]))


def test_resume_continues_exactly_where_a_checkpoint_left_off(pairs, tmp_path):
    options = dict(scratch=TINY, num_train_epochs=2, eval_fraction=0.0, save_total_limit=0, **FAST)
    straight = train_captioner(pairs, tmp_path / "a", **options)
    # Simulate a run interrupted after epoch 1: only its first checkpoint exists.
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-3", tmp_path / "b" / "checkpoints" / "checkpoint-3")
    with pytest.raises(CaptionerError, match="resume"):
        train_captioner(pairs, tmp_path / "b", **options)
    resumed = train_captioner(pairs, tmp_path / "b", resume=True, **options)
    assert resumed.history == straight.history
    a = BlipCaptioner.from_pretrained(str(tmp_path / "a"), device="cpu").model.state_dict()
    b = BlipCaptioner.from_pretrained(str(tmp_path / "b"), device="cpu").model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-6"


def test_gradient_accumulation_and_schedule(pairs, tmp_path):
    result = train_captioner(
        pairs, tmp_path, scratch=TINY, num_train_epochs=2, eval_fraction=0.0, gradient_accumulation_steps=2,
        **{**FAST, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4}
    )
    assert [h["global_step"] for h in result.history] == [3, 6]  # 24 pairs / 4 per batch / 2 per step
    # the rate of the last step: 1 warm-up step, then linear decay to zero over 5, so 1/5 of the peak
    assert result.history[-1]["lr"] == pytest.approx(FAST["learning_rate"] / 5)
    assert "eval_loss" not in result.history[-1] and result.exact_match is None


def test_vision_pretraining_learns_and_only_touches_the_vision_tower(pairs):
    model, processor = new_blip([c for _, c, _ in pairs], **vars(TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    colours = [c.split()[1] for _, c, _ in pairs]
    history = pretrain_vision(
        model,
        processor.image_processor,
        [p[0] for p in pairs],
        colours,
        epochs=8,
        lr=3e-3,
        batch_size=8,
        max_shift=2,
        progress=False,
    )
    assert len(history) == 8 and history[-1]["loss"] < history[0]["loss"]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("vision_model.") for k in changed)


def test_vision_stage_in_training_needs_labels(pairs, tmp_path):
    result = train_captioner(
        pairs, tmp_path / "ok", scratch=TINY, num_train_epochs=1, eval_fraction=0.0,
        vision_epochs=2, vision_batch_size=8, **FAST
    )
    assert [h["epoch"] for h in result.vision_history] == [1, 2]
    unlabelled = [(image, caption) for image, caption, _ in pairs]
    with pytest.raises(CaptionerError, match="label"):
        train_captioner(unlabelled, tmp_path / "bad", scratch=TINY, num_train_epochs=1, vision_epochs=1, **FAST)


def test_fine_tunes_an_existing_checkpoint(pairs, tmp_path):
    model, processor = new_blip([c for _, c, _ in pairs], **vars(TINY))
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    result = train_captioner(
        pairs, tmp_path / "tuned", model=str(tmp_path / "base"), num_train_epochs=1, eval_fraction=0.0, **FAST
    )
    assert len(result.history) == 1
    with pytest.raises(CaptionerError, match="Could not load the BLIP model"):
        train_captioner(pairs, tmp_path / "x", model=str(tmp_path / "missing"), num_train_epochs=1, **FAST)
    with pytest.raises(TypeError, match="Unknown training option"):
        train_captioner(pairs, tmp_path / "y", scratch=TINY, epoch=1)


def test_command_line(pairs, tmp_path):
    (tmp_path / "img").mkdir()
    lines = []
    for i, (image, caption, label) in enumerate(pairs):
        image.save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": caption, "label": label}))
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = [
        "--pairs", str(tmp_path / "pairs.jsonl"), "--output_dir", str(out), "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--learning_rate", "3e-3", "--eval_fraction", "0.25", "--disable_tqdm",
        "true", "--vocab_size", "60", "--image_size", "32", "--vision_hidden", "32", "--vision_layers", "1",
        "--vision_heads", "2", "--text_hidden", "32", "--text_layers", "1", "--text_heads", "2",
    ]
    assert main(args + ["--num_train_epochs", "1"]) == 0
    assert main(args + ["--num_train_epochs", "2", "--resume"]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert [h["epoch"] for h in log["history"]] == [1, 2]
    assert BlipCaptioner.from_pretrained(str(out), device="cpu").caption([pairs[0][0]])
    (tmp_path / "broken.jsonl").write_text('{"image": "img/0.png"}\n')
    assert main(["--pairs", str(tmp_path / "broken.jsonl"), "--output_dir", str(tmp_path / "o2")]) == 2


def test_read_pairs_jsonl_resolves_relative_paths(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"image": "a.png", "caption": "a cat", "label": "cat"}\n\n')
    with pytest.raises(CaptionerError, match=r"pairs.jsonl:1: no image file at .*a.png .relative image paths are "
                                             "relative to the folder of pairs.jsonl"):
        read_pairs_jsonl(tmp_path / "pairs.jsonl")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (pair,) = read_pairs_jsonl(tmp_path / "pairs.jsonl")
    assert pair == CaptionPair(tmp_path / "a.png", "a cat", "cat")
    with pytest.raises(CaptionerError, match="does not exist"):
        read_pairs_jsonl(tmp_path / "nope.jsonl")


def test_exact_match_and_split():
    assert (
        exact_match(["A red circle.", "a blue  square", "a cat"], ["a red circle", "a blue square", "a dog"]) == 2 / 3
    )
    items = [CaptionPair(f"{i}.png", str(i)) for i in range(20)]
    train, held = split_pairs(items, 0.2, seed=1)
    assert len(held) == 4 and len(train) == 16 and not set(map(id, train)) & set(map(id, held))
    assert split_pairs(items, 0.2, seed=1) == (train, held)
    assert split_pairs(items, 0.0, seed=1) == (items, [])


def test_bf16_mixed_precision_path(pairs, tmp_path):
    """The autocast path used on CUDA also runs on CPU: training and evaluation work under bf16."""
    try:
        result = train_captioner(
            pairs, tmp_path, scratch=TINY, num_train_epochs=2, eval_fraction=0.25, bf16=True, **FAST
        )
    finally:
        AcceleratorState._reset_state()  # accelerate's state is process-wide: leave no bf16 behind for others
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert BlipCaptioner.from_pretrained(str(tmp_path), device="cpu").model.dtype == torch.float32  # saved in fp32
    if not torch.cuda.is_available():
        assert mixed_precision_mode("auto") == "no"
    with pytest.raises(ValueError, match="mixed precision"):
        mixed_precision_mode("fp8")


def test_mixed_precision_auto_is_fp16_on_gpus_without_native_bf16(monkeypatch):
    """A T4/V100 would get emulated bf16 from torch.cuda.is_bf16_supported() (emulation counts by default)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    native = {"value": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
                        or native["value"])
    assert mixed_precision_mode("auto") == "fp16"
    native["value"] = True
    assert mixed_precision_mode("auto") == "bf16"
