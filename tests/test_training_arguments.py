"""The training CLIs' one stack: each task's arguments dataclass parsed with transformers' TrainingArguments by
HfArgumentParser, the standard flags in --help, the old spellings still accepted (one deprecation line each) and
building the same TrainingArguments values; the one warm-up rule and step count."""

import dataclasses

import pytest

from training import captioner_finetune, pretrain, refiner, vcr_finetune, vqa_finetune
from training.arguments import modernise, parse
from training.captioner_arguments import RENAMES as CAPTIONER_RENAMES
from training.common import optimizer_steps, planned_steps, run_arguments, warmup_steps
from training.refiner_arguments import RENAMES as REFINER_RENAMES
from training.vqa_arguments import RENAMES as VQA_RENAMES
from training.vqa_arguments import vqa_arguments

STANDARD_FLAGS = ("--output_dir", "--learning_rate", "--per_device_train_batch_size", "--gradient_accumulation_steps",
                  "--bf16", "--fp16", "--num_train_epochs", "--warmup_steps", "--save_total_limit", "--seed")


def _parsed(module, argv, renamed):
    parsed = parse(module.build_parser(), argv, renamed)
    return [dataclasses.asdict(d) if not hasattr(d, "to_dict") else d.to_dict() for d in parsed]


@pytest.mark.parametrize("module", [vqa_finetune, captioner_finetune, refiner, vcr_finetune, pretrain])
def test_help_shows_the_standard_training_arguments(module, capsys):
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in STANDARD_FLAGS:
        assert flag in text, flag


def test_vqa_old_flags_build_the_same_arguments(tmp_path, capsys):
    old = ["--train", "easy-vqa", "--out", str(tmp_path), "--epochs", "3", "--batch-size", "16", "--lr", "1e-3",
           "--grad-accum", "2", "--mixed-precision", "no", "--keep-checkpoints", "0", "--num-workers", "2",
           "--warmup-steps", "7", "--weight-decay", "0.1", "--freeze-vision", "--seed", "3"]
    new = ["--train", "easy-vqa", "--output_dir", str(tmp_path), "--num_train_epochs", "3",
           "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--gradient_accumulation_steps", "2",
           "--bf16", "false", "--fp16", "false", "--save_total_limit", "0", "--dataloader_num_workers", "2",
           "--warmup_steps", "7", "--weight_decay", "0.1", "--freeze_vision", "--seed", "3"]
    assert _parsed(vqa_finetune, old, VQA_RENAMES) == _parsed(vqa_finetune, new, VQA_RENAMES)
    err = capsys.readouterr().err.splitlines()
    assert "Deprecated: --lr is now --learning_rate; the old spelling goes in the next release." in err
    assert "Deprecated: --mixed-precision no is now --bf16 false --fp16 false; the old spelling goes in the next " \
           "release." in err
    assert len(err) == 8 and all(line.startswith("Deprecated: ") for line in err)  # one per old flag
    assert _parsed(vqa_finetune, new, VQA_RENAMES) and not capsys.readouterr().err


def test_vqa_defaults_are_the_previous_release_s(tmp_path):
    """The CLI's defaults (and the Python callers' through vqa_arguments) are what the old TrainingConfig had."""
    args, training = parse(vqa_finetune.build_parser(), ["--output_dir", str(tmp_path)], VQA_RENAMES)
    assert (training.num_train_epochs, training.per_device_train_batch_size, training.per_device_eval_batch_size,
            training.learning_rate, training.weight_decay, training.warmup_steps, training.gradient_accumulation_steps,
            training.max_grad_norm, training.seed, training.save_total_limit) == (5, 64, 256, 5e-4, 0.01, 200, 1, 1.0,
                                                                                   0, 2)
    assert training.bf16 is None and training.fp16 is None  # auto: picked by the run's hardware
    assert vqa_arguments(output_dir=str(tmp_path))[1].to_dict() == training.to_dict()
    assert vqa_arguments(output_dir=str(tmp_path))[0] == args


def test_captioner_old_flags_build_the_same_arguments(tmp_path, capsys):
    old = ["--pairs", "p.jsonl", "--out", str(tmp_path), "--epochs", "4", "--batch_size", "8", "--lr", "3e-3",
           "--grad_accum", "2", "--warmup_ratio", "0.2", "--mixed_precision", "bf16", "--no_progress",
           "--keep_checkpoints", "1", "--num_workers", "1", "--vocab-size", "60"]
    new = ["--pairs", "p.jsonl", "--output_dir", str(tmp_path), "--num_train_epochs", "4",
           "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--learning_rate", "3e-3",
           "--gradient_accumulation_steps", "2", "--warmup_steps", "0.2", "--bf16", "--disable_tqdm", "true",
           "--save_total_limit", "1", "--dataloader_num_workers", "1", "--vocab_size", "60"]
    assert _parsed(captioner_finetune, old, CAPTIONER_RENAMES) == _parsed(captioner_finetune, new, CAPTIONER_RENAMES)
    err = capsys.readouterr().err
    assert "--batch_size is now --per_device_train_batch_size --per_device_eval_batch_size" in err
    assert "--no_progress is now --disable_tqdm true" in err


def test_refiner_old_flags_build_the_same_arguments(tmp_path, capsys):
    old = ["--out", str(tmp_path), "--epochs", "0.5", "--batch-size", "4", "--grad-accum", "2", "--lr", "5e-3",
           "--warmup-ratio", "0.1", "--precision", "fp32", "--train-seed", "3", "--max-steps", "9", "--save-steps", "2",
           "--eval-share", "0.2", "--vqa-model", "a", "b", "--lora-r", "4"]
    new = ["--output_dir", str(tmp_path), "--num_train_epochs", "0.5", "--per_device_train_batch_size", "4",
           "--per_device_eval_batch_size", "4", "--gradient_accumulation_steps", "2", "--learning_rate", "5e-3",
           "--warmup_steps", "0.1", "--bf16", "false", "--fp16", "false", "--seed", "3", "--max_steps", "9",
           "--save_steps", "2", "--eval_share", "0.2", "--vqa_model", "a", "b", "--lora_r", "4"]
    assert _parsed(refiner, old, REFINER_RENAMES) == _parsed(refiner, new, REFINER_RENAMES)
    assert "Deprecated: --train-seed is now --seed" in capsys.readouterr().err
    args, training = parse(refiner.build_parser(), ["--output_dir", str(tmp_path)], REFINER_RENAMES)
    assert (training.num_train_epochs, training.per_device_train_batch_size, training.learning_rate,
            training.warmup_steps, training.save_steps, training.save_total_limit, training.seed,
            args.sample_seed) == (1.0, 8, 1e-3, 0.03, 100, 2, 0, 0)  # the previous release's defaults


def test_old_values_without_a_new_spelling_are_refused(capsys):
    with pytest.raises(ValueError, match="fp8"):
        modernise(["--mixed-precision", "fp8"], VQA_RENAMES)
    assert modernise(["--lr=0.1", "--out", "x"], VQA_RENAMES) == ["--learning_rate=0.1", "--output_dir", "x"]
    with pytest.raises(SystemExit):
        parse(vqa_finetune.build_parser(), ["--output_dir", "x", "--mixed-precision", "fp8"], VQA_RENAMES)


def test_one_step_count_and_warmup_rule(tmp_path):
    assert optimizer_steps(100, 8, 3, 2) == 21  # 13 batches, 7 steps an epoch
    assert optimizer_steps(100, 8, 1.5, 2) == 11  # a fraction of an epoch counts its share
    assert optimizer_steps(100, 8, 3, 2, max_steps=5) == 5
    args, training = vqa_arguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=3,
                                   gradient_accumulation_steps=2, warmup_steps=200)
    assert planned_steps(100, training) == 21
    final = run_arguments(training, 100, evaluate_each_epoch=False)
    assert final.warmup_steps == warmup_steps(200, 21) == 10 and final.eval_strategy == "no"
    assert final.bf16 in (True, False) and final.fp16 in (True, False)
