"""VCR fine-tuning (``python -m training.vcr_finetune``): tiny random models, the hand-written VCR fixture and
generated shape scenes; the saved model has the published checkpoints' layout and loads into the VCR pipelines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app_testing import BUNDLED_PRETRAIN
from tiny_vle import tiny_vle_config
from training import vcr_finetune
from training.vcr_finetune import extend_vocabulary, grow_token_types, training_texts
from training.vcr_scenes import write_scenes
from vcr_testing import VCR_FIXTURE, build_tiny_vcr_model
from vle import (
    VLEForPreTraining,
    VLEForVCRQ2A,
    VLEForVCRQ2APipeline,
    VLEForVCRQA2R,
    VLEForVCRQA2RPipeline,
    VLEProcessor,
)
from vle.vcr_data import load_vcr
from vle.vcr_encoding import collate_vcr, encode_vcr_item
from vle_reference import manifest_path

SMALL_RUN = ["--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3",
             "--use_cpu", "true", "--dataloader_num_workers", "0"]
CLASSES = {"q2a": (VLEForVCRQ2A, VLEForVCRQ2APipeline), "qa2r": (VLEForVCRQA2R, VLEForVCRQA2RPipeline)}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    write_scenes(folder, seed=11, count=24, split="train")
    write_scenes(folder, seed=12, count=8, split="val")
    return folder


def _data_args(annotations: Path, images: Path, out: Path, task: str, init: str) -> list[str]:
    return ["--task", task, "--init", init, "--train_annotations", str(annotations), "--train_images", str(images),
            "--eval_annotations", str(annotations), "--eval_images", str(images), "--output_dir", str(out),
            *SMALL_RUN]


@pytest.mark.parametrize("task", ["q2a", "qa2r"])
def test_a_random_model_in_the_published_layout_trains_on_the_fixture_and_loads_into_its_pipeline(tmp_path, task):
    init = build_tiny_vcr_model(tmp_path / "init", task)
    out = tmp_path / "out"
    argv = _data_args(VCR_FIXTURE / "val.jsonl", VCR_FIXTURE / "images", out, task, init)
    assert vcr_finetune.main([*argv, "--num_train_epochs", "2"]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert log["weights_changed"] and [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert log["epochs"][-1]["eval"]["count"] == 2  # both fixture items scored after each epoch

    # The saved weights carry exactly the published checkpoint's parameter names.
    published = json.loads(manifest_path(f"vle-base-for-vcr-{task}").read_text())
    (spec,) = published["classes"].values()
    def layout(names):  # parameter names with layer numbers left out (the tiny model has fewer layers)
        return {re.sub(r"\.\d+\.", ".N.", name) for name in names if not name.endswith("position_ids")}

    saved = load_file(out / "model.safetensors")
    assert layout(saved) == layout(name for name, _shape, _dtype in spec["state_dict"])
    assert saved["vle.token_type_embeddings.weight"].shape[0] == 83  # text, image and 81 objects, as published
    model_class, pipeline_class = CLASSES[task]
    pipe = pipeline_class(model=model_class.from_pretrained(out), vle_processor=VLEProcessor.from_pretrained(out),
                          device="cpu")
    item = load_vcr(VCR_FIXTURE / "val.jsonl", VCR_FIXTURE / "images")[0]
    (result,) = pipe(meta_inputs=item.annotation(), image=item.image_path, metadata=item.metadata())
    assert len(result["score"]) == 4 and abs(sum(result["score"]) - 1) < 1e-5


def test_from_a_pretraining_checkpoint_the_token_types_grow_and_the_new_words_join_the_vocabulary(tmp_path, scenes):
    pretrained = str(BUNDLED_PRETRAIN)  # the bundled one: a word-level vocabulary without the scenes' words
    out = tmp_path / "out"
    argv = _data_args(scenes / "train.jsonl", scenes / "images", out, "q2a", pretrained)
    assert vcr_finetune.main([*argv, "--num_train_epochs", "1", "--extend_vocabulary", "true",
                              "--num_token_types", "9", "--learning_rate", "0"]) == 0
    start = VLEForPreTraining.from_pretrained(pretrained)
    model = VLEForVCRQ2A.from_pretrained(out)
    assert model.config.num_token_types == 9 and model.vle.token_type_embeddings.weight.shape[0] == 9
    # With a zero learning rate the text and image rows are the starting model's, the word embeddings of every
    # word the starting tokenizer knew too; the scene words it lacked now have their own ids.
    assert torch.equal(model.vle.token_type_embeddings.weight[:2], start.vle.token_type_embeddings.weight)
    old, new = VLEProcessor.from_pretrained(pretrained).tokenizer, VLEProcessor.from_pretrained(out).tokenizer
    old_rows = start.vle.text_model.get_input_embeddings().weight
    new_rows = model.vle.text_model.get_input_embeddings().weight
    for piece, old_id in old.get_vocab().items():
        assert torch.equal(new_rows[new.get_vocab()[piece]], old_rows[old_id]), piece
    words = {w for text in training_texts(load_vcr(scenes / "train.jsonl", scenes / "images")) for w in text.split()}
    unknown_before = [w for w in words if old.unk_token_id in old(w, add_special_tokens=False)["input_ids"]]
    assert "left" in {w.lower() for w in unknown_before}  # the easy-VQA vocabulary lacks the relation words
    assert all(new.unk_token_id not in new(w, add_special_tokens=False)["input_ids"] for w in words)
    assert model.config.text_config.vocab_size == len(new) == new_rows.shape[0]


def test_batched_inputs_score_each_item_as_the_pipeline_does(tmp_path, scenes):
    init = build_tiny_vcr_model(tmp_path / "m", "qa2r", seed=3)
    model, processor = VLEForVCRQA2R.from_pretrained(init).eval(), VLEProcessor.from_pretrained(init)
    items = load_vcr(scenes / "val.jsonl", scenes / "images")[:5]
    encoded = [encode_vcr_item(i.annotation(), i.image_path, i.metadata(), processor, model.config, "qa2r")
               for i in items]
    assert len({len(choice.input_ids) for item in encoded for choice in item.choices}) > 1  # texts differ in length
    with torch.no_grad():
        batched = model(**collate_vcr(encoded, pad_id=processor.tokenizer.pad_token_id)).logits
    pipe = VLEForVCRQA2RPipeline(model=model, vle_processor=processor, device="cpu")
    for row, item in zip(batched, items):
        (one,) = pipe(meta_inputs=item.annotation(), image=item.image_path, metadata=item.metadata())
        torch.testing.assert_close(row, torch.tensor(one["logits"]), atol=1e-4, rtol=1e-4)


def test_training_lowers_the_loss_and_resume_continues_the_run(tmp_path, scenes):
    init = build_tiny_vcr_model(tmp_path / "init", "q2a")
    out = tmp_path / "out"
    argv = [*_data_args(scenes / "train.jsonl", scenes / "images", out, "q2a", init), "--num_train_epochs", "6"]
    assert vcr_finetune.main([*argv, "--max_steps_this_run", "12"]) == 0  # stopped after 2 of 6 epochs
    first = json.loads((out / "training_log.json").read_text())
    assert len(first["epochs"]) == 2
    assert vcr_finetune.main(argv) == 2  # checkpoints there: refused without --resume
    assert vcr_finetune.main([*argv, "--resume", "true"]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3, 4, 5, 6]  # the first two epochs came from the checkpoint
    losses = [e["train_loss"] for e in log["epochs"]]
    assert losses[-1] < losses[0]


def test_the_ablation_trains_and_scores_without_object_tokens(tmp_path, scenes):
    init = build_tiny_vcr_model(tmp_path / "init", "q2a")
    out = tmp_path / "out"
    argv = _data_args(scenes / "train.jsonl", scenes / "images", out, "q2a", init)
    assert vcr_finetune.main([*argv, "--num_train_epochs", "1", "--object_tokens", "false"]) == 0
    model, processor = VLEForVCRQ2A.from_pretrained(out), VLEProcessor.from_pretrained(out)
    assert model.config.vcr_object_tokens is False
    item = load_vcr(scenes / "val.jsonl", scenes / "images")[0]
    encoded = encode_vcr_item(item.annotation(), item.image_path, item.metadata(), processor, model.config, "q2a")
    assert all(not c.patch_ids and not c.added_types and set(c.text_types) == {0} for c in encoded.choices)
    with_objects = encode_vcr_item(item.annotation(), item.image_path, item.metadata(), processor,
                                   VLEForVCRQ2A.from_pretrained(init).config, "q2a")
    assert any(c.patch_ids for c in with_objects.choices)  # the same item names objects when they are on


def test_grow_token_types_keeps_the_text_and_image_rows():
    model = VLEForVCRQ2A(tiny_vle_config())
    before = model.vle.token_type_embeddings.weight.detach().clone()
    grow_token_types(model, 6)
    after = model.vle.token_type_embeddings.weight
    assert after.shape[0] == 6 and torch.equal(after[:2], before) and not torch.equal(after[2], after[3])


@pytest.mark.parametrize("extra,message", [
    (["--train_annotations", "/no/such/file.jsonl"], "No VCR annotation file"),
    (["--eval_images", ""], "go together"),
    (["--num_token_types", "2"], "at least 3"),
    (["--init", "/no/such/model"], "Could not load the starting model"),
])
def test_user_errors_stop_with_one_line(tmp_path, capsys, extra, message):
    base = _data_args(VCR_FIXTURE / "val.jsonl", VCR_FIXTURE / "images", tmp_path / "out", "q2a",
                      build_tiny_vcr_model(tmp_path / "init"))
    assert vcr_finetune.main([*base, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("Error: ") and message in err[-1]


def test_extend_vocabulary_refuses_sub_word_tokenizers(tmp_path):
    init = build_tiny_vcr_model(tmp_path / "init")  # its sentencepiece model is a unigram one (sub-words)
    model, processor = VLEForVCRQ2A.from_pretrained(init), VLEProcessor.from_pretrained(init)
    with pytest.raises(vcr_finetune.VCRFinetuneError, match="word-level tokenizer"):
        extend_vocabulary(model, processor, ["zyxwv qqq"], tmp_path / "work")


def test_help_shows_the_standard_training_arguments(capsys):
    with pytest.raises(SystemExit):
        vcr_finetune.main(["--help"])
    shown = capsys.readouterr().out
    for flag in ("--learning_rate", "--per_device_train_batch_size", "--gradient_accumulation_steps", "--bf16",
                 "--num_train_epochs", "--task", "--extend_vocabulary", "--object_tokens"):
        assert flag in shown
