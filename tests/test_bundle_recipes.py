"""The bundle build hands the tasks' train(...) functions dataclasses (no argv strings), with the settings of the
previous release's recipes: the committed models stay what their recipes say."""

import dataclasses
from pathlib import Path

import training.captioner_finetune as captioner_finetune
import training.pretrain as pretrain
import training.refiner as refiner
from training import bundle
from training.arguments import parse


def _captured(monkeypatch, module, result=None):
    seen = []

    def fake_train(args, training_args, *rest, **kwargs):
        seen.append((args, training_args, kwargs))
        return result

    monkeypatch.setattr(module, "train", fake_train)
    return seen


def test_the_refiner_recipe_is_its_command_line(monkeypatch, tmp_path):
    seen = _captured(monkeypatch, refiner)
    bundle.build_refiner(tmp_path / "out", tmp_path / "work", tmp_path / "models")
    ((args, training_args, _),) = seen
    models = [str(tmp_path / "models" / name) for name in bundle.REFINER_EVIDENCE]
    previous = ["--llm", "smollm2", "--limit", "6000", "--seed", "0",
                "--template", "short", "long", "short", "long", "fewshot",
                "--example_bank", str(bundle.BUNDLED_BANK_DIR), "--fewshot_examples", "8", "--batch_by_prompt_shape",
                "--fewshot_negated",
                "--caption-noise", "0.8", "--easy-share", "0.5", "--per-confidence", "--answer-weight", "5",
                "--epochs", "1", "--batch-size", "8", "--lr", "1.5e-3", "--lora-r", "16", "--lora-alpha", "32",
                "--vqa-model", *models, "--captioner", str(tmp_path / "models" / bundle.BLIP_DIR_NAME),
                "--out", str(tmp_path / "out"), "--overwrite", "--checkpoints", str(tmp_path / "work" / "checkpoints"),
                "--cache", str(tmp_path / "work" / "evidence")]
    old_args, old_training = parse(refiner.build_parser(), previous, refiner.RENAMES)
    assert dataclasses.asdict(args) == dataclasses.asdict(old_args)
    assert training_args.to_dict() == old_training.to_dict()


def test_the_captioner_recipe_gets_dataclasses_and_pairs(monkeypatch, tmp_path):
    result = captioner_finetune.TrainResult(out_dir=str(tmp_path), history=[], vision_history=[])
    seen = _captured(monkeypatch, captioner_finetune, result)
    bundle.build_blip(tmp_path, epochs=20, vision_epochs=15)
    ((args, training_args, kwargs),) = seen
    assert (args.vision_epochs, training_args.num_train_epochs, training_args.per_device_train_batch_size,
            training_args.per_device_eval_batch_size, training_args.learning_rate, training_args.seed,
            training_args.save_total_limit, training_args.warmup_steps) == (15, 20, 64, 64, 5e-4, 0, 1, 0.1)
    assert Path(training_args.output_dir) == tmp_path
    assert len(kwargs["eval_pairs"]) == 500 and kwargs["pairs"][0][1].startswith("a ")


def test_the_pretraining_recipe_gets_dataclasses(monkeypatch, tmp_path):
    seen = _captured(monkeypatch, pretrain, {"steps": 378})
    start = tmp_path / "vle"
    start.mkdir()
    (start / "config.json").write_text("{}")
    assert bundle.build_pretrain(tmp_path / "out", start, epochs=6) == {"steps": 378}
    ((args, training_args, _),) = seen
    assert (args.init, args.train, args.train_limit) == (str(start), "easy-vqa", None)
    assert (training_args.num_train_epochs, training_args.per_device_train_batch_size, training_args.learning_rate,
            training_args.weight_decay, training_args.warmup_steps, training_args.max_grad_norm,
            training_args.seed) == (6, 64, 3e-4, 0.01, 50, 1.0, 0)
    assert Path(training_args.output_dir) == tmp_path / "out"


def test_a_step_built_alone_starts_from_the_models_built_into_out_else_the_committed_ones(tmp_path):
    out = tmp_path / "out"
    assert bundle.upstream_models(out, [bundle.VLE_DIR_NAME]) == bundle.MODELS_DIR
    (out / bundle.VLE_DIR_NAME).mkdir(parents=True)
    (out / bundle.VLE_DIR_NAME / "config.json").write_text("{}")
    assert bundle.upstream_models(out, [bundle.VLE_DIR_NAME]) == out
    # the refiner learns from three models: all must be in --out
    assert bundle.upstream_models(out, [*bundle.REFINER_EVIDENCE, bundle.BLIP_DIR_NAME]) == bundle.MODELS_DIR
