"""The transformers ``Trainer`` pieces of :func:`training.vqa_finetune.train_vqa` (checkpoints and ``--resume``,
mixed precision, gradient accumulation, an evaluation per epoch and multi-GPU with ``accelerate launch`` all come
from the Trainer): the run's final ``TrainingArguments``, the VQA loss inputs with the frozen-vision cache, the
per-epoch log."""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .common import logs_by_epoch, run_arguments, world_size
from .vision_cache import FrozenVisionCache
from .vqa_arguments import AUTO_WORKERS


def data_workers(requested: int | None, device: torch.device, num_processes: int = 1) -> int:
    """DataLoader workers: ``requested``, else 4 per process on CUDA (within the CPUs) and 0 on the CPU."""
    if requested is not None:
        return max(0, requested)
    if device.type != "cuda":
        return 0
    return max(0, min(4, (os.cpu_count() or 1) // max(1, num_processes) - 1))



def vqa_run_arguments(training_args: TrainingArguments, train_size: int, evaluate_each_epoch: bool
                      ) -> TrainingArguments:
    """:func:`training.common.run_arguments` with the data workers picked where not given (:func:`data_workers`)."""
    workers = training_args.dataloader_num_workers
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return run_arguments(training_args, train_size, evaluate_each_epoch, dataloader_num_workers=data_workers(
        None if workers == AUTO_WORKERS else workers, device, world_size()))


class StopAfterSteps(TrainerCallback):
    """Stops a run after ``steps`` optimiser steps without shortening its schedule (smoke tests, or a job cut
    short); the epoch still ends with its evaluation and checkpoint."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True
        return control


class VQATrainer(Trainer):
    """transformers' ``Trainer`` with the VQA loss inputs (dense soft-score targets) and, with a frozen vision
    tower, the tower's cached outputs in place of the pixels; each epoch's wall time is logged with its loss."""

    def __init__(self, *args, vision_cache: FrozenVisionCache | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.vision_cache = vision_cache
        self._clock = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {key: inputs[key] for key in ("input_ids", "attention_mask", "token_type_ids", "vqa_targets")}
        if self.vision_cache is not None:
            model_inputs["image_embeds"] = self.vision_cache.image_embeds(inputs["pixel_values"], inputs["image_id"])
        else:
            model_inputs["pixel_values"] = inputs["pixel_values"]
        outputs = model(**model_inputs, return_loss=True)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:  # logged once per epoch: the time since the previous epoch's (its evaluation included)
            now = time.perf_counter()
            logs = {**logs, "epoch_seconds": round(now - self._clock, 1)}
            self._clock = now
        super().log(logs, *args, **kwargs)


def top1(logits, labels) -> torch.Tensor:
    """``preprocess_logits_for_metrics``: keep each question's top answer only, not its logits."""
    return (logits[0] if isinstance(logits, tuple) else logits).argmax(-1)


def epoch_records(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch from the Trainer's log: the mean training loss, the wall time and the evaluation."""
    records = []
    for logs in logs_by_epoch(log_history):
        if "loss" in logs:
            record = {"epoch": logs["epoch"], "train_loss": logs["loss"], "seconds": logs.get("epoch_seconds")}
            if "eval_vqa_score" in logs:
                record["eval"] = {key: logs[f"eval_{key}"] for key in ("vqa_score", "count", "per_question_type")}
            records.append(record)
    return records
