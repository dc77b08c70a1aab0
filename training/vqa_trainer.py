"""The transformers ``Trainer`` pieces of :func:`training.vqa_finetune.train_vqa` (checkpoints and ``--resume``,
mixed precision, gradient accumulation, an evaluation per epoch and multi-GPU with ``accelerate launch`` all come
from the Trainer): its settings, the VQA loss inputs with the frozen-vision cache, the per-epoch log. Imported
when a run starts (transformers' trainer module pulls in bitsandbytes, whose import-time warning would otherwise
precede a mistyped command's one-line error)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .common import logs_by_epoch, mixed_precision_mode, optimizer_steps, trainer_precision, world_size
from .vqa_finetune import FrozenVisionCache, TrainingConfig, data_workers


def training_arguments(config: TrainingConfig, train_size: int, evaluate_each_epoch: bool) -> TrainingArguments:
    """The Trainer's settings for ``config``: a checkpoint and (with an evaluation set) an evaluation per epoch,
    the epoch's mean loss logged, warm-up at most half of the run."""
    total = optimizer_steps(train_size, config.batch_size, config.epochs, config.gradient_accumulation_steps)
    on_cuda = torch.cuda.is_available()
    workers = data_workers(config.num_workers, torch.device("cuda" if on_cuda else "cpu"), world_size())
    return TrainingArguments(
        output_dir=config.output_dir, num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size, learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, lr_scheduler_type="linear", warmup_steps=min(config.warmup_steps, total // 2),
        gradient_accumulation_steps=config.gradient_accumulation_steps, max_grad_norm=config.max_grad_norm,
        seed=config.seed, **trainer_precision(mixed_precision_mode(config.mixed_precision)),
        logging_strategy="epoch", save_strategy="epoch",
        save_total_limit=config.keep_checkpoints or None, eval_strategy="epoch" if evaluate_each_epoch else "no",
        label_names=["index"], remove_unused_columns=False, report_to=[],
        dataloader_num_workers=workers,
        dataloader_pin_memory=on_cuda, use_cpu=not on_cuda,
    )


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
