"""The transformers ``Trainer`` run behind :func:`training.captioner_finetune.train_captioner`: checkpoints and
``--resume``, mixed precision, gradient accumulation, the evaluation loss per epoch and multi-GPU
(``accelerate launch``) come from the Trainer; this module adds the exact match of generated captions to each
evaluation and turns the Trainer's log into the per-epoch history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import Trainer, TrainingArguments

from captioner import BlipCaptioner

from .caption_data import CaptionCollator, CaptionPair, ListDataset, load_image
from .captioner_finetune import TrainConfig, exact_match, mixed_precision_mode, warmup_steps
from .common import logs_by_epoch, optimizer_steps, trainer_precision

#: how many (reference, prediction) examples each evaluation logs
LOGGED_SAMPLES = 5


def training_arguments(config: TrainConfig, checkpoints: Path, train_size: int, evaluate: bool) -> TrainingArguments:
    """The Trainer's settings for ``config``: the epoch's mean loss logged, a checkpoint (and with held-out pairs an
    evaluation) per epoch, warm-up from :func:`~training.captioner_finetune.warmup_steps`."""
    total = optimizer_steps(train_size, config.batch_size, config.epochs, config.grad_accum)
    return TrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=config.epochs, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, learning_rate=config.lr, weight_decay=config.weight_decay,
        lr_scheduler_type="linear", warmup_steps=warmup_steps(config, total),
        gradient_accumulation_steps=config.grad_accum, max_grad_norm=config.max_grad_norm, seed=config.seed,
        data_seed=config.seed, **trainer_precision(mixed_precision_mode(config.mixed_precision)),
        logging_strategy="epoch", save_strategy="epoch", save_total_limit=config.keep_checkpoints or None,
        eval_strategy="epoch" if evaluate else "no", remove_unused_columns=False, report_to=[],
        dataloader_num_workers=config.num_workers, dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=not config.progress, use_cpu=not torch.cuda.is_available(),
    )


class CaptionTrainer(Trainer):
    """transformers' ``Trainer`` whose evaluation also captions the held-out images (each process its share) and
    logs the exact match with a few examples."""

    def __init__(self, *args, held_out: Sequence[CaptionPair], config: TrainConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.held_out = list(held_out)
        self.config = config

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        rank, world = self.args.process_index, self.args.world_size
        shard = list(range(rank, len(self.held_out), world))
        captioner = BlipCaptioner(
            self.accelerator.unwrap_model(self.model), self.processing_class, "training", prompt=self.config.prompt,
            num_beams=self.config.eval_num_beams, max_new_tokens=self.config.eval_max_new_tokens,
        )
        with torch.no_grad(), self.autocast_smart_context_manager():
            captions = captioner.caption([load_image(self.held_out[i].image) for i in shard],
                                         batch_size=self.config.batch_size)
        found = list(zip(shard, captions, strict=True))
        predictions = [caption for _, caption in sorted(gather_object(found) if world > 1 else found)]
        references = [pair.caption for pair in self.held_out]
        extra = {
            f"{metric_key_prefix}_exact_match": exact_match(predictions, references),
            f"{metric_key_prefix}_samples": [{"reference": r, "prediction": p}
                                             for r, p in list(zip(references, predictions))[:LOGGED_SAMPLES]],
        }
        self.log(extra)
        return {**metrics, **extra}


def history(log_history: Sequence[dict]) -> list[dict]:
    """Per epoch from the Trainer's log: the mean training loss, the learning rate of the epoch's last step and
    the optimiser steps so far, and the evaluation (loss, exact match, samples)."""
    return [
        {"epoch": logs["epoch"], "train_loss": logs["loss"], "lr": logs["learning_rate"], "global_step": logs["step"],
         **{k: v for k, v in logs.items() if k in ("eval_loss", "eval_exact_match", "eval_samples")}}
        for logs in logs_by_epoch(log_history) if "loss" in logs
    ]


def fit(model, processor, pairs: list[CaptionPair], held_out: list[CaptionPair], config: TrainConfig,
        checkpoints: Path, resume_from: Path | None) -> list[dict]:
    """Train ``model`` on ``pairs`` with checkpoints in ``checkpoints`` (continuing from ``resume_from``); return
    the per-epoch history."""
    collator = CaptionCollator(processor, model.config.text_config.bos_token_id, config.max_caption_tokens,
                               config.prompt)
    trainer = CaptionTrainer(
        model=model,
        args=training_arguments(config, checkpoints, len(pairs), bool(held_out)),
        train_dataset=ListDataset(pairs),
        eval_dataset=ListDataset(held_out) if held_out else None,
        data_collator=collator,
        processing_class=processor,
        held_out=held_out,
        config=config,
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return history(trainer.state.log_history)
