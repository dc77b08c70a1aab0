"""Vision pre-training, the "encoders first" stage: a vision tower alone learns to classify per-image labels
(e.g. the shape and colour of an easy-VQA image) before the whole model is trained on its real task.

Measured on easy-VQA with a similar small model: a vision transformer trained end to end from random
weights learns colours but stays near chance on shapes, while pre-training the tower to classify the
shape (random horizontal flips + small shifts, ~15 epochs, lr 1e-3) reaches >99%. The next stage then
starts from a tower that already sees shapes.

One recipe on transformers' ``Trainer`` (:func:`train_vision_classifier`: AdamW, warm-up + linear decay, gradient
clipping, mixed precision and multi-GPU from the Trainer), with two entry points:

* :func:`pretrain_vision` (BLIP captioners, :mod:`training.captioner_finetune`): images or paths decoded batch by
  batch, one label set, a shift per image;
* :func:`pretrain_vision_tower` (the CLIP tower of a VLE, :mod:`training.bundle`): preprocessed pixels, several
  label sets at once (``-100`` = unknown), one shift per batch and an accuracy per epoch on evaluation pixels.

The tower is trained as a copy (so no wrapper or hook leaks into the next stage) whose weights are then copied back.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments

from captioner.errors import CaptionerError

from .caption_data import ImageLike, LabelCollator
from .common import logs_by_epoch, optimizer_steps, trainer_precision, warmup_steps

logger = logging.getLogger(__name__)


def augment(
    pixel_values: torch.Tensor, max_shift: int, flip: bool, generator: torch.Generator, shift_each_image: bool = True
) -> torch.Tensor:
    """Random horizontal flips (per image) and random circular shifts of up to ``max_shift`` pixels: one per image,
    or with ``shift_each_image=False`` one for the whole batch. The flips are drawn first, then the shifts."""
    out = pixel_values.clone()
    n = out.shape[0]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(out.device)
        out[mask] = out[mask].flip(-1)
    if max_shift > 0:
        if shift_each_image:
            shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)
            for i, (dy, dx) in enumerate(shifts.tolist()):
                out[i] = out[i].roll((dy, dx), dims=(-2, -1))
        else:
            dx, dy = torch.randint(-max_shift, max_shift + 1, (2,), generator=generator).tolist()
            out = out.roll((dy, dx), dims=(-2, -1))
    return out


@dataclass
class Augmentation:
    """Training-time augmentation of :func:`augment` (drawn from its own generator seeded with ``seed``)."""

    max_shift: int = 8
    flip: bool = True
    shift_each_image: bool = True
    seed: int = 0


class VisionClassifier(nn.Module):
    """A vision tower with one linear head per label set on its pooled (CLS) output; the loss is the sum of the
    heads' cross-entropies (label ``-100``: unknown). In training mode the input is augmented first, like dropout:
    only while training."""

    accepts_loss_kwargs = False  # the Trainer must not add num_items_in_batch to the labels taken by **labels

    def __init__(self, vision_model: nn.Module, num_classes: dict[str, int], augmentation: Augmentation):
        super().__init__()
        self.vision_model = vision_model
        hidden = vision_model.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in num_classes.items()})
        self.augmentation = augmentation
        self.generator = torch.Generator().manual_seed(augmentation.seed)

    def forward(self, pixel_values: torch.Tensor, **labels: torch.Tensor) -> dict[str, torch.Tensor | None]:
        if self.training:
            a = self.augmentation
            pixel_values = augment(pixel_values, a.max_shift, a.flip, self.generator, a.shift_each_image)
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        logits = {name: head(pooled) for name, head in self.heads.items()}
        losses = [F.cross_entropy(logits[name], target) for name, target in labels.items()]
        return {"loss": sum(losses) if losses else None, **{f"logits_{name}": v for name, v in logits.items()}}


class PixelLabels(Dataset):
    """Preprocessed pixels with one label tensor per label set, as ``{"pixel_values", <label set>: label}`` items."""

    def __init__(self, pixel_values: torch.Tensor, labels: dict[str, torch.Tensor]):
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.pixel_values)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], **{k: v[index] for k, v in self.labels.items()}}


@dataclass
class VisionRun:
    """Optimisation settings of a vision pre-training run."""

    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (resolved, see training.common.mixed_precision_mode)
    progress: bool = True


def train_vision_classifier(
    classifier: VisionClassifier, train: Dataset, run: VisionRun, collator=None, evaluation: Dataset | None = None,
) -> list[dict[str, Any]]:
    """Train ``classifier`` with transformers' ``Trainer``; returns per epoch the mean loss and, with
    ``evaluation``, the accuracy per label set. No checkpoints: the stage takes minutes and the run after it
    checkpoints.
    """
    names = list(classifier.heads)

    def top1(logits, labels):
        return tuple(x.argmax(-1) for x in (logits if isinstance(logits, tuple) else (logits,)))

    def accuracy(prediction) -> dict[str, float]:
        targets = prediction.label_ids if isinstance(prediction.label_ids, tuple) else (prediction.label_ids,)
        scores = {}
        for name, predicted, target in zip(names, prediction.predictions, targets, strict=True):
            known = target != -100
            scores[name] = float((predicted[known] == target[known]).mean()) if known.any() else float("nan")
        return {"accuracy": scores}

    with tempfile.TemporaryDirectory() as scratch:  # save_strategy "no": the Trainer writes nothing there
        args = TrainingArguments(
            output_dir=scratch, num_train_epochs=run.epochs, per_device_train_batch_size=run.batch_size,
            per_device_eval_batch_size=256, learning_rate=run.learning_rate, weight_decay=run.weight_decay,
            lr_scheduler_type="linear", warmup_steps=run.warmup_steps, max_grad_norm=1.0, seed=run.seed,
            data_seed=run.seed, **trainer_precision(run.mixed_precision), logging_strategy="epoch",
            save_strategy="no", eval_strategy="epoch" if evaluation is not None else "no", label_names=names,
            remove_unused_columns=False, report_to=[], disable_tqdm=not run.progress,
            dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
        )
        trainer = Trainer(model=classifier, args=args, train_dataset=train, eval_dataset=evaluation,
                          data_collator=collator, compute_metrics=accuracy if evaluation is not None else None,
                          preprocess_logits_for_metrics=top1)
        trainer.train()
    records = [{"epoch": logs["epoch"], "loss": logs["loss"],
                **({"accuracy": logs["eval_accuracy"]} if "eval_accuracy" in logs else {})}
               for logs in logs_by_epoch(trainer.state.log_history) if "loss" in logs]
    for record in records:
        logger.info("vision pre-training %s", record)
    return records


def pretrain_vision(
    model,
    image_processor,
    images: Sequence[ImageLike],
    labels: Sequence[str],
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    max_shift: int = 8,
    flip: bool = True,
    seed: int = 0,
    progress: bool = True,
    mixed_precision: str = "no",
) -> list[dict]:
    """Train ``model.vision_model`` (a BLIP model) to classify ``labels`` (one per image); update it in place.

    Returns one ``{"epoch", "loss"}`` dict per epoch.
    """
    if len(images) != len(labels):
        raise CaptionerError(f"Vision pre-training got {len(images)} images but {len(labels)} labels.")
    classes = sorted({str(y) for y in labels})
    if len(classes) < 2:
        raise CaptionerError("Vision pre-training needs at least two distinct labels.")
    index = {c: i for i, c in enumerate(classes)}
    torch.manual_seed(seed)
    classifier = VisionClassifier(copy.deepcopy(model.vision_model), {"labels": len(classes)},
                                  Augmentation(max_shift, flip, shift_each_image=True, seed=seed + 1))
    total = optimizer_steps(len(images), batch_size, epochs)
    run = VisionRun(epochs, batch_size, lr, weight_decay, warmup_steps(warmup_ratio, total), seed, mixed_precision,
                    progress)
    items = [(image, index[str(y)]) for image, y in zip(images, labels, strict=True)]
    history = train_vision_classifier(classifier, items, run, collator=LabelCollator(image_processor))
    model.vision_model.load_state_dict(classifier.vision_model.state_dict())
    return history


def pretrain_vision_tower(
    vision_model: nn.Module,
    pixel_values: torch.Tensor,
    labels: dict[str, torch.Tensor],
    eval_pixel_values: torch.Tensor | None = None,
    eval_labels: dict[str, torch.Tensor] | None = None,
    epochs: int = 15,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    max_shift: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a CLIP vision tower alone to classify per-image labels (one linear head per label set; -100 = unknown).

    Heads read the ``post_layernorm`` CLS output (CLIP's pooled output). Augmentation: random horizontal flip
    and a random roll of up to ``max_shift`` pixels (one per batch). Returns per-epoch loss and, with eval data,
    accuracy per label set. The heads are discarded; the tower keeps what it learned.
    """
    torch.manual_seed(seed)
    classifier = VisionClassifier(copy.deepcopy(vision_model), {n: int(y.max()) + 1 for n, y in labels.items()},
                                  Augmentation(max_shift, True, shift_each_image=False, seed=seed))
    steps = optimizer_steps(len(pixel_values), batch_size, epochs)
    run = VisionRun(epochs, batch_size, learning_rate, 0.01, min(100, steps // 10), seed)
    evaluation = PixelLabels(eval_pixel_values, eval_labels) if eval_pixel_values is not None and eval_labels else None
    history = train_vision_classifier(classifier, PixelLabels(pixel_values, labels), run, evaluation=evaluation)
    vision_model.load_state_dict(classifier.vision_model.state_dict())
    vision_model.eval()
    return {"epochs": history}
