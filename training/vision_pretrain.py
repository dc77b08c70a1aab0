"""Vision pre-training, the "encoders first" stage: a vision tower alone learns to classify per-image labels
(e.g. the shape and colour of an easy-VQA image) before the whole model is trained on its real task.

Measured on easy-VQA with a similar small model: a vision transformer trained end to end from random
weights learns colours but stays near chance on shapes, while pre-training the tower to classify the
shape (random horizontal flips + small shifts, ~15 epochs, lr 1e-3) reaches >99%. The next stage then
starts from a tower that already sees shapes.

Two recipes, one per model family, sharing the augmentation (:func:`augment`):

* :func:`pretrain_vision` (BLIP captioners, :mod:`training.captioner_finetune`): images or paths decoded batch by
  batch, one label set, accelerate; the tower is trained as a copy (so no wrapper or hook leaks into the caption
  stage) and its weights are copied back into the model. Each image gets its own shift.
* :func:`pretrain_vision_tower` (the CLIP tower of a VLE, :mod:`training.bundle`): preprocessed pixels, several
  label sets at once (``-100`` = unknown) and an accuracy per epoch on evaluation pixels; the tower is trained in
  place. One shift per batch.

They stay two functions because each drives its random numbers in its own order (data order and augmentation
from one generator or from two, per-image or per-batch shifts, warm-up length): one loop for both would change
the bundled models that these recipes built.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captioner.errors import CaptionerError

from .caption_data import ImageLike, LabelCollator, ListDataset
from .common import linear_schedule

logger = logging.getLogger(__name__)


class VisionClassifier(nn.Module):
    """A BLIP vision tower with a linear head on its pooled (CLS) output."""

    def __init__(self, vision_model: nn.Module, num_classes: int):
        super().__init__()
        self.vision_model = vision_model
        self.head = nn.Linear(vision_model.config.hidden_size, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.vision_model(pixel_values=pixel_values).pooler_output)


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


def pretrain_vision(
    model,
    image_processor,
    images: Sequence[ImageLike],
    labels: Sequence[str],
    accelerator: Accelerator | None = None,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.05,
    max_shift: int = 8,
    flip: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Train ``model.vision_model`` (a BLIP model) to classify ``labels`` (one per image); update it in place.

    Returns one ``{"epoch", "loss", "accuracy"}`` dict per epoch (training accuracy, augmented inputs).
    """
    if len(images) != len(labels):
        raise CaptionerError(f"Vision pre-training got {len(images)} images but {len(labels)} labels.")
    classes = sorted({str(y) for y in labels})
    if len(classes) < 2:
        raise CaptionerError("Vision pre-training needs at least two distinct labels.")
    accelerator = accelerator or Accelerator()
    index = {c: i for i, c in enumerate(classes)}
    items = [(im, index[str(y)]) for im, y in zip(images, labels, strict=True)]
    torch.manual_seed(seed)
    classifier = VisionClassifier(copy.deepcopy(model.vision_model), len(classes))
    loader = DataLoader(
        ListDataset(items),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=LabelCollator(image_processor),
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * len(loader)
    scheduler = linear_schedule(optimizer, math.ceil(warmup_ratio * total), total)
    classifier, optimizer, loader, scheduler = accelerator.prepare(classifier, optimizer, loader, scheduler)
    generator = torch.Generator().manual_seed(seed + 1)
    history = []
    for epoch in range(1, epochs + 1):
        classifier.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            loader,
            desc=f"vision {epoch}/{epochs}",
            disable=not (progress and accelerator.is_local_main_process),
            leave=False,
        )
        for batch in bar:
            logits = classifier(augment(batch["pixel_values"], max_shift, flip, generator))
            loss = nn.functional.cross_entropy(logits, batch["labels"])
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(classifier.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            loss_sum += loss.item() * len(batch["labels"])
            correct += (logits.argmax(-1) == batch["labels"]).sum().item()
            seen += len(batch["labels"])
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch, "loss": loss_sum / seen, "accuracy": correct / seen})
        accelerator.print(
            f"vision pre-training epoch {epoch}: loss {loss_sum / seen:.4f}, accuracy {correct / seen:.3f}"
        )
    trained = accelerator.unwrap_model(classifier).vision_model
    model.vision_model.load_state_dict(trained.state_dict())
    accelerator.free_memory()
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
    and a random roll of up to ``max_shift`` pixels. Returns per-epoch loss and, with eval data, accuracy per
    label set. The heads are discarded; the tower keeps what it learned.
    """
    set_seed(seed)
    hidden = vision_model.config.hidden_size
    heads = nn.ModuleDict({name: nn.Linear(hidden, int(y.max()) + 1) for name, y in labels.items()})
    params = list(vision_model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    steps = epochs * math.ceil(len(pixel_values) / batch_size)
    scheduler = linear_schedule(optimizer, min(100, steps // 10), steps)
    generator = torch.Generator().manual_seed(seed)  # the data order and the augmentation, drawn in turn
    history = []
    for epoch in range(epochs):
        vision_model.train()
        order = torch.randperm(len(pixel_values), generator=generator)
        total = 0.0
        for start in tqdm(range(0, len(order), batch_size), desc=f"vision {epoch + 1}/{epochs}", leave=False):
            idx = order[start : start + batch_size]
            x = augment(pixel_values[idx], max_shift, True, generator, shift_each_image=False)
            pooled = vision_model(pixel_values=x).pooler_output
            loss = sum(F.cross_entropy(head(pooled), labels[name][idx]) for name, head in heads.items())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": total / len(order)}
        if eval_pixel_values is not None and eval_labels is not None:
            vision_model.eval()
            with torch.no_grad():
                pooled = torch.cat([vision_model(pixel_values=eval_pixel_values[i : i + 256]).pooler_output
                                    for i in range(0, len(eval_pixel_values), 256)])
            record["accuracy"] = {}
            for name, head in heads.items():
                known = eval_labels[name] != -100
                correct = head(pooled).argmax(-1) == eval_labels[name]
                record["accuracy"][name] = correct[known].float().mean().item()
        logger.info("vision pre-training %s", record)
        history.append(record)
    vision_model.eval()
    return {"epochs": history}
