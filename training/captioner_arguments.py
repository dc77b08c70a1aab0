"""The settings of captioner training (:mod:`training.captioner_finetune`): the task's own options
(:class:`CaptionerArguments`), the sizes of a new small BLIP (:class:`ScratchConfig`), the task's defaults for
transformers' ``TrainingArguments`` and the flags of the previous release."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .arguments import (
    COMMON_RENAMES,
    MIXED_PRECISION_RENAMES,
    SHARED_BATCH_RENAMES,
    Renamed,
    runtime_defaults,
    task_arguments,
)


@dataclass
class CaptionerArguments:
    """What to train on and the captioner's own options (the optimisation settings are ``TrainingArguments``)."""

    pairs: str | None = field(default=None, metadata={
        "help": 'JSONL file of {"image": path, "caption": str[, "label": str]} lines; a relative image path is '
                "relative to the JSONL file's folder"})
    model: str | None = field(
        default=None, metadata={"help": "BLIP Hub id or folder to fine-tune (default: new small BLIP)"})
    eval_pairs: str | None = field(
        default=None, metadata={"help": "held-out JSONL, same format (default: eval_fraction of --pairs)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --output_dir"})
    prompt: str | None = field(default=None, metadata={"help": "conditional prefix, e.g. 'a picture of'"})
    max_caption_tokens: int = field(default=40, metadata={"help": "captions are truncated to this many tokens"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share when no eval pairs are given"})
    eval_max: int = field(default=500, metadata={"help": "evaluate on at most this many held-out pairs"})
    eval_num_beams: int = field(default=1, metadata={"help": "beams for evaluation captions (1 = greedy)"})
    eval_max_new_tokens: int = field(default=30, metadata={"help": "max new tokens for evaluation captions"})
    vision_epochs: int = field(default=0, metadata={"help": "vision pre-training epochs on the labels (0 = off)"})
    vision_lr: float = field(default=1e-3, metadata={"help": "vision pre-training learning rate"})
    vision_batch_size: int = field(default=64, metadata={"help": "vision pre-training batch size"})
    vision_max_shift: int = field(default=8, metadata={"help": "vision pre-training random shift in pixels"})
    vision_flip: bool = field(default=True, metadata={"help": "vision pre-training random horizontal flips"})


@dataclass
class ScratchConfig:
    """Sizes of a NEW small BLIP built when no model is given (see :func:`training.blip_scratch.new_blip`)."""

    vocab_size: int = field(default=1000, metadata={"help": "WordPiece vocabulary size (upper bound)"})
    image_size: int = field(default=64, metadata={"help": "input image size in pixels"})
    patch_size: int = field(default=8, metadata={"help": "vision patch size"})
    vision_hidden: int = field(default=128, metadata={"help": "vision width"})
    vision_layers: int = field(default=3, metadata={"help": "vision layers"})
    vision_heads: int = field(default=4, metadata={"help": "vision attention heads"})
    text_hidden: int = field(default=128, metadata={"help": "text decoder width"})
    text_layers: int = field(default=2, metadata={"help": "text decoder layers"})
    text_heads: int = field(default=4, metadata={"help": "text decoder attention heads"})


def training_defaults() -> dict[str, Any]:
    """Captioner training's ``TrainingArguments`` defaults: the epoch's mean loss logged, a checkpoint and (with
    held-out pairs) an evaluation per epoch, warm-up a tenth of the run (:func:`training.common.warmup_steps`)."""
    return {
        **runtime_defaults(), "num_train_epochs": 3, "per_device_train_batch_size": 32,
        "per_device_eval_batch_size": 32, "learning_rate": 5e-5, "weight_decay": 0.01, "warmup_steps": 0.1,
        "logging_strategy": "epoch", "save_strategy": "epoch", "save_total_limit": 2, "eval_strategy": "epoch",
        "remove_unused_columns": False, "dataloader_num_workers": 0, "dataloader_pin_memory": torch.cuda.is_available(),
    }


_NO_PROGRESS = ("--disable_tqdm", "true")
#: the flags of the previous release (its batch size was the evaluation's too)
RENAMES: dict[str, Renamed] = {
    **COMMON_RENAMES, **MIXED_PRECISION_RENAMES, **SHARED_BATCH_RENAMES,
    "--no_progress": {None: _NO_PROGRESS}, "--no-progress": {None: _NO_PROGRESS},
    "--progress": {None: (), "true": (), "True": (), "false": _NO_PROGRESS, "False": _NO_PROGRESS},
}


def captioner_arguments(**options) -> tuple[CaptionerArguments, TrainingArguments]:
    """(CaptionerArguments, TrainingArguments) as the CLI builds them, ``options`` naming fields of either."""
    return task_arguments(CaptionerArguments, training_defaults(), **options)
