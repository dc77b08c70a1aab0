"""VQA fine-tuning (training.vqa_finetune): loss goes down, checkpoints resume, the vision pre-training stage
(training.vision_pretrain) learns."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_vle import build_tiny_vle_vqa
from training.vision_pretrain import pretrain_vision_tower
from training.vqa_arguments import vqa_arguments
from training.vqa_finetune import answer_vocabulary, latest_checkpoint, main, train_vqa
from vle import VLEForVQA, VLEProcessor
from vle.vqa_data import VQAExample

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Images of one flat colour; questions 'what color is it?' and 'is it <colour>?'."""
    root = tmp_path_factory.mktemp("colours")
    examples = []
    for i in range(24):
        name = list(COLOURS)[i % 3]
        path = root / f"{i}.png"
        Image.new("RGB", (32, 32), COLOURS[name]).save(path)
        examples.append(VQAExample(2 * i, str(i), str(path), "what color is it?", [name] * 10, "other", "color"))
        other = list(COLOURS)[(i + i // 3) % 3]
        answer = "yes" if other == name else "no"
        examples.append(VQAExample(2 * i + 1, str(i), str(path), f"is it {other}?", [answer] * 10, "yes/no", "yes/no"))
    return examples


@pytest.fixture()
def model_and_processor(tmp_path, dataset):
    directory = build_tiny_vle_vqa(tmp_path / "init")
    id2label = answer_vocabulary(dataset)
    model = VLEForVQA.from_pretrained(directory, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                                      ignore_mismatched_sizes=True)
    return model, VLEProcessor.from_pretrained(directory)


def _train(model, processor, dataset, out, eval_examples=None, **kw):
    args, training_args = vqa_arguments(output_dir=str(out), per_device_train_batch_size=8, learning_rate=3e-3,
                                        warmup_steps=2, seed=0, **kw)
    return train_vqa(model, processor, dataset, args, training_args, eval_examples)


def test_answer_vocabulary_comes_from_training_answers(dataset):
    assert set(answer_vocabulary(dataset).values()) == {"red", "blue", "green", "yes", "no"}


def test_training_lowers_the_loss_and_saves_model_and_processor(tmp_path, dataset, model_and_processor):
    model, processor = model_and_processor
    log = _train(model, processor, dataset, tmp_path / "run", dataset, num_train_epochs=8)
    losses = [epoch["train_loss"] for epoch in log["epochs"]]
    assert losses[-1] < losses[0] * 0.7
    assert log["epochs"][-1]["eval"]["vqa_score"] > log["epochs"][0]["eval"]["vqa_score"] - 1e-9
    assert set(log["epochs"][-1]["eval"]["per_question_type"]) == {"color", "yes/no"}
    reloaded = VLEForVQA.from_pretrained(tmp_path / "run")
    assert reloaded.config.id2label == model.config.id2label
    assert VLEProcessor.from_pretrained(tmp_path / "run").tokenizer.pad_token_id == processor.tokenizer.pad_token_id
    assert json.loads((tmp_path / "run" / "training_log.json").read_text())["epochs"][-1]["epoch"] == 8


def test_resume_continues_from_the_last_checkpoint(tmp_path, dataset, model_and_processor):
    model, processor = model_and_processor
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    straight = _train(model, processor, dataset, tmp_path / "straight", num_train_epochs=2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(initial)
    # Stopped after the first epoch (6 steps) of a 2-epoch run, as a killed job would be.
    _train(model, processor, dataset, tmp_path / "interrupted", num_train_epochs=2, stop_after_steps=6)
    assert latest_checkpoint(tmp_path / "interrupted")[1] == 1
    model.load_state_dict(initial)  # a new process would start from scratch weights; resume must restore them
    resumed = _train(model, processor, dataset, tmp_path / "interrupted", num_train_epochs=2, resume=True)
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["epochs"][1]["train_loss"] == pytest.approx(straight["epochs"][1]["train_loss"], rel=1e-4)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=1e-4)


def test_frozen_vision_tower_is_not_updated(tmp_path, dataset, model_and_processor):
    model, processor = model_and_processor
    vision_before = {k: v.clone() for k, v in model.vle.vision_model.state_dict().items()}
    fusion_before = model.vle.cross_modal_text_layers[0].output.dense.weight.clone()
    _train(model, processor, dataset, tmp_path / "frozen", num_train_epochs=1, freeze_vision=True)
    for key, value in model.vle.vision_model.state_dict().items():
        assert torch.equal(value, vision_before[key]), key
    assert not torch.equal(model.vle.cross_modal_text_layers[0].output.dense.weight, fusion_before)


def test_vision_pretraining_learns_image_labels(model_and_processor):
    model, processor = model_and_processor
    rng = np.random.default_rng(0)
    labels = torch.arange(60) % 3
    noisy = [np.array(COLOURS[list(COLOURS)[int(y)]]) + rng.integers(-20, 20, (32, 32, 3)) for y in labels]
    images = [Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)) for pixels in noisy]
    pixels = torch.from_numpy(processor.preprocess_images(images))
    log = pretrain_vision_tower(model.vle.vision_model.vision_model, pixels, {"colour": labels}, pixels,
                                {"colour": labels}, epochs=6, batch_size=16, learning_rate=3e-3, max_shift=2)
    assert log["epochs"][-1]["loss"] < log["epochs"][0]["loss"]
    assert log["epochs"][-1]["accuracy"]["colour"] == 1.0


def test_cli_requires_a_starting_point(tmp_path, capsys):
    assert main(["--train", "easy-vqa", "--output_dir", str(tmp_path), "--num_train_epochs", "0"]) == 2
    assert capsys.readouterr().err.startswith("Error: Pass --init")
