"""The transformers ``Trainer`` run behind :func:`training.captioner_finetune.train`: checkpoints and
``--resume``, mixed precision, gradient accumulation, the evaluation loss per epoch and multi-GPU
(``accelerate launch``) come from the Trainer; this module adds the exact match of generated captions to each
evaluation and turns the Trainer's log into the per-epoch history."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import Trainer, TrainingArguments

from captioner import BlipCaptioner

from .caption_data import CaptionCollator, CaptionPair, ListDataset, load_image
from .captioner_arguments import CaptionerArguments
from .common import logs_by_epoch, run_arguments

#: how many (reference, prediction) examples each evaluation logs
LOGGED_SAMPLES = 5


def normalise_caption(text: str) -> str:
    """Lower-case, drop punctuation, collapse spaces: the form compared by exact match."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after :func:`normalise_caption`."""
    if not references:
        return 0.0
    return sum(
        normalise_caption(p) == normalise_caption(r) for p, r in zip(predictions, references, strict=True)
    ) / len(references)


class CaptionTrainer(Trainer):
    """transformers' ``Trainer`` whose evaluation also captions the held-out images (each process its share) and
    logs the exact match with a few examples."""

    def __init__(self, *args, held_out: Sequence[CaptionPair], task: CaptionerArguments, **kwargs):
        super().__init__(*args, **kwargs)
        self.held_out = list(held_out)
        self.task = task

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        rank, world = self.args.process_index, self.args.world_size
        shard = list(range(rank, len(self.held_out), world))
        captioner = BlipCaptioner(
            self.accelerator.unwrap_model(self.model), self.processing_class, "training", prompt=self.task.prompt,
            num_beams=self.task.eval_num_beams, max_new_tokens=self.task.eval_max_new_tokens,
        )
        with torch.no_grad(), self.autocast_smart_context_manager():
            captions = captioner.caption([load_image(self.held_out[i].image) for i in shard],
                                         batch_size=self.args.per_device_eval_batch_size)
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


def fit(model, processor, pairs: list[CaptionPair], held_out: list[CaptionPair], args: CaptionerArguments,
        training_args: TrainingArguments, resume_from: Path | None) -> list[dict]:
    """Train ``model`` on ``pairs`` with checkpoints in ``training_args.output_dir`` (continuing from
    ``resume_from``); return the per-epoch history."""
    collator = CaptionCollator(processor, model.config.text_config.bos_token_id, args.max_caption_tokens, args.prompt)
    trainer = CaptionTrainer(
        model=model,
        args=run_arguments(training_args, len(pairs), bool(held_out)),
        train_dataset=ListDataset(pairs),
        eval_dataset=ListDataset(held_out) if held_out else None,
        data_collator=collator,
        processing_class=processor,
        held_out=held_out,
        task=args,
    )
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return history(trainer.state.log_history)
