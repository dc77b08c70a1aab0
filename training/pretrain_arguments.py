"""The settings of VLE pretraining (:mod:`training.pretrain`): the task's own options (:class:`PretrainArguments`)
and the task's defaults for transformers' ``TrainingArguments`` (the bundle recipe's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .arguments import runtime_defaults, task_arguments


@dataclass
class PretrainArguments:
    """The starting VLE and the images of a pretraining run (the optimisation settings are transformers'
    ``TrainingArguments``)."""

    init: str | None = field(default=None, metadata={
        "help": "VLE checkpoint (folder or Hub id) whose backbone and processor the run starts from; the ITM, PBC "
                "and MLM heads are new unless it has them"})
    train: str = field(default="easy-vqa", metadata={
        "help": "training images: their colour, shape and the shape's pixels are read from the image",
        "choices": ["easy-vqa"]})
    train_limit: int | None = field(default=None, metadata={"help": "train on the first N images only"})


def training_defaults() -> dict[str, Any]:
    """VLE pretraining's ``TrainingArguments`` defaults: the bundle recipe (6 epochs of batch 64, AdamW lr 3e-4,
    50 warm-up steps, linear decay), the loss and training-batch accuracies logged per epoch, no checkpoints (the
    run takes minutes)."""
    return {
        **runtime_defaults(), "num_train_epochs": 6, "per_device_train_batch_size": 64, "learning_rate": 3e-4,
        "weight_decay": 0.01, "warmup_steps": 50, "max_grad_norm": 1.0, "logging_strategy": "epoch",
        "save_strategy": "no", "remove_unused_columns": False, "dataloader_pin_memory": torch.cuda.is_available(),
    }


def pretrain_arguments(**options) -> tuple[PretrainArguments, TrainingArguments]:
    """(PretrainArguments, TrainingArguments) as the CLI builds them, ``options`` naming fields of either."""
    return task_arguments(PretrainArguments, training_defaults(), **options)
