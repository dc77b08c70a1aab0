"""A short fine-tuning run trains (warm-up never swallows it), and a run that changed no weight says so
(issue 19, item 5). Tiny models, one optimiser step each."""

import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file

from tiny_models import build_tiny_blip, single_thread
from tiny_vle import build_tiny_vle_vqa
from training.captioner_finetune import main
from training.common import warmup_steps
from training.vqa_arguments import vqa_arguments
from training.vqa_finetune import train_vqa
from vle.modeling_vle import VLEForVQA
from vle.processing_vle import VLEProcessor
from vle.vqa_data import VQAExample


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with single_thread():
        yield
    AcceleratorState._reset_state()


@pytest.fixture(scope="module")
def eight_pairs(tmp_path_factory):
    """A pairs file of 8 captioned images (relative paths) and a tiny BLIP to fine-tune."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "img").mkdir()
    lines = []
    for i, colour in enumerate(["red", "green", "blue", "black"] * 2):
        Image.new("RGB", (32, 32), colour).save(root / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "caption": f"a {colour} picture"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root / "pairs.jsonl", build_tiny_blip(root / "blip")


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[name], after[name]) for name in before)


def test_one_epoch_on_eight_pairs_changes_the_weights(eight_pairs, tmp_path, capsys):
    pairs, model = eight_pairs
    out = tmp_path / "run"
    code = main(["--pairs", str(pairs), "--model", model, "--output_dir", str(out), "--num_train_epochs", "1",
                 "--per_device_train_batch_size", "32", "--eval_fraction", "0", "--disable_tqdm", "true",
                 "--learning_rate", "1e-3"])
    assert code == 0
    # before: one optimiser step, all of it warm-up at learning rate 0: the saved weights equal the input
    assert _changed(_weights(Path(model)), _weights(out))
    assert json.loads((out / "training_log.json").read_text())["weights_changed"] is True
    assert "Warning" not in capsys.readouterr().err


def test_a_run_that_changes_nothing_says_so(eight_pairs, tmp_path, capsys):
    pairs, model = eight_pairs
    out = tmp_path / "run"
    assert main(["--pairs", str(pairs), "--model", model, "--output_dir", str(out), "--num_train_epochs", "1",
                 "--learning_rate", "0", "--eval_fraction", "0", "--disable_tqdm", "true"]) == 0
    assert json.loads((out / "training_log.json").read_text())["weights_changed"] is False
    assert "Warning: the saved model equals the starting model" in capsys.readouterr().err


@pytest.mark.parametrize("total, requested, expected", [
    (1, 0.1, 0),      # one step: no warm-up, it trains at the full rate
    (2, 0.1, 1),
    (10, 0.1, 1),
    (10, 200, 5),     # an explicit warm-up longer than the run is capped at half of it
    (1000, 0.1, 100),
    (1000, 200, 200),
    (1000, 0, 0),
])
def test_warmup_is_at_most_half_of_the_run(total, requested, expected):
    """The one warm-up rule: TrainingArguments.warmup_steps (below 1: a share of the run), capped at half of it."""
    assert warmup_steps(requested, total) == expected


def test_vle_short_run_trains_and_reports_it(tmp_path):
    folder = tmp_path / "vle"
    build_tiny_vle_vqa(folder)
    model = VLEForVQA.from_pretrained(folder)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    processor = VLEProcessor.from_pretrained(folder)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), "red").save(image)
    label = model.config.id2label[0]
    examples = [VQAExample(question_id=i, image_id="x", image_path=str(image), question="what colour is it?",
                           answers=[label] * 10) for i in range(8)]
    log = train_vqa(model, processor, examples, *vqa_arguments(output_dir=str(tmp_path / "out"), num_train_epochs=1,
                                                            per_device_train_batch_size=64, learning_rate=1e-3))
    assert log["weights_changed"] is True
    assert _changed(before, dict(model.named_parameters()))
    frozen = VLEForVQA.from_pretrained(folder)
    log = train_vqa(frozen, processor, examples, *vqa_arguments(output_dir=str(tmp_path / "out0"), num_train_epochs=1,
                                                             per_device_train_batch_size=64, learning_rate=0.0))
    assert log["weights_changed"] is False
