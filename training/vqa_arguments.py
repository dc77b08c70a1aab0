"""The settings of VQA fine-tuning (:mod:`training.vqa_finetune`): the task's own options (:class:`VQAArguments`),
the task's defaults for transformers' ``TrainingArguments`` and the flags of the previous release."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from .arguments import COMMON_RENAMES, MIXED_PRECISION_RENAMES, Renamed, runtime_defaults, task_arguments


@dataclass
class VQAArguments:
    """The starting model, the data and the VQA options of a fine-tuning run (the optimisation settings are
    transformers' ``TrainingArguments``)."""

    init: str | None = field(default=None, metadata={
        "help": "VLE checkpoint (Hub id or folder) to fine-tune; its processor is used too"})
    vision_model: str | None = field(default=None, metadata={"help": "CLIP model for a new VLE (with --text_model)"})
    text_model: str | None = field(default=None, metadata={
        "help": "DeBERTa-v2/v3 model for a new VLE (with --vision_model)"})
    processor: str | None = field(default=None, metadata={"help": "VLE processor folder (default: the --init folder)"})
    image_size: int | None = field(default=None, metadata={
        "help": "resize the vision position embeddings to this size"})
    train: str | None = field(default=None, metadata={"help": "built-in training set", "choices": ["easy-vqa"]})
    train_questions: str | None = field(default=None, metadata={"help": "VQAv2-format training questions"})
    train_annotations: str | None = field(default=None, metadata={"help": "VQAv2-format training annotations"})
    train_images: str | None = field(default=None, metadata={"help": "folder of the training images"})
    train_limit: int | None = field(default=None, metadata={"help": "train on the first N questions only"})
    eval: str | None = field(default=None, metadata={"help": "built-in evaluation set (its test split)",
                                                      "choices": ["easy-vqa"]})
    eval_questions: str | None = field(default=None, metadata={"help": "VQAv2-format evaluation questions"})
    eval_annotations: str | None = field(default=None, metadata={"help": "VQAv2-format evaluation annotations"})
    eval_images: str | None = field(default=None, metadata={"help": "folder of the evaluation images"})
    eval_limit: int | None = field(default=None, metadata={"help": "evaluate on the first N questions only"})
    min_answer_count: int = field(default=1, metadata={
        "help": "answers seen fewer times are left out of the vocabulary"})
    freeze_vision: bool = field(default=False, metadata={
        "help": "keep the vision tower fixed (its outputs are cached)"})
    image_cache_mb: float = field(default=1024, metadata={
        "help": "preprocessed images kept in memory per data process, least recently used dropped first (0: none; "
                "a 576 px image takes 4 MB)"})
    vision_cache_mb: float = field(default=1024, metadata={
        "help": "with --freeze_vision: vision-tower outputs kept on the device (0: none)"})
    lr_multipliers: dict[str, float] = field(default_factory=dict, metadata={
        "help": "learning-rate factor per parameter-name prefix (Python API)"})
    stop_after_steps: int | None = field(default=None, metadata={
        "help": "stop after this many optimiser steps, the schedule unchanged (smoke tests, a job cut short)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in --output_dir"})


#: ``--dataloader_num_workers`` default: up to 4 per process on CUDA (within the CPUs), 0 on the CPU
AUTO_WORKERS = -1


def training_defaults() -> dict[str, Any]:
    """VQA fine-tuning's ``TrainingArguments`` defaults: a checkpoint, a logged mean loss and (with an evaluation
    set) an evaluation per epoch; warm-up at most half of the run (:func:`training.common.warmup_steps`)."""
    return {
        **runtime_defaults(), "num_train_epochs": 5, "per_device_train_batch_size": 64,
        "per_device_eval_batch_size": 256, "learning_rate": 5e-4, "weight_decay": 0.01, "warmup_steps": 200,
        "logging_strategy": "epoch", "save_strategy": "epoch", "save_total_limit": 2, "eval_strategy": "epoch",
        "label_names": ["index"], "remove_unused_columns": False, "dataloader_num_workers": AUTO_WORKERS,
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


#: the flags of the previous release
RENAMES: dict[str, Renamed] = {**COMMON_RENAMES, **MIXED_PRECISION_RENAMES}


def vqa_arguments(**options) -> tuple[VQAArguments, TrainingArguments]:
    """(VQAArguments, TrainingArguments) as the CLI builds them, ``options`` naming fields of either."""
    return task_arguments(VQAArguments, training_defaults(), **options)
