"""Train a VLE pretraining checkpoint (ITM, PBC and MLM heads, the layout of hfl/vle-base) on easy-VQA images.

It starts from a VLE VQA checkpoint's backbone (the bundled ``vle-easyvqa``: its encoders and fusion layers) with
new heads, and trains the three pretraining tasks together on the training images of easy-VQA, whose content is
read from the pixels (:mod:`training.shape_scenes`):

* ITM: an image with one of its captions (:data:`~training.pretrain_texts.TEMPLATES`) or, half of the time, with
  a caption that differs in colour, in shape or in both;
* PBC: for a matching caption, the patches the shape covers (:func:`~training.shape_scenes.patch_labels`);
* MLM: for half of each batch's images, a caption with its colour or its shape word masked (and each other word
  with probability 0.15).

Each step runs the ITM/PBC batch and the MLM batch through :class:`vle.VLEForPreTraining` and sums the losses
(transformers' ``Trainer``: AdamW, warm-up and linear decay, gradient clipping; random horizontal flips of image
and patch labels). Seeds
are fixed; the result is saved with the starting model's processor, so ``VLEForITM``, ``VLEForPBC``,
``VLEForMLM`` and ``VLEModel`` all load from the folder.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from vle import VLEForPreTraining
from vle.processing_vle import VLEProcessor
from vqa_llm.tasks import LABELS_FILE

from .common import logs_by_epoch, optimizer_steps
from .pretrain_texts import NEGATIVE_KINDS, TEMPLATES, caption, mask_words, mismatch, zero_shot_labels
from .shape_scenes import patch_labels, read_scene

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Optimisation settings of :func:`train_pretraining`."""

    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    seed: int = 0
    max_steps: int | None = None


@dataclass
class SceneData:
    """The training images, preprocessed once: ``pixels`` ``[N, 3, H, W]``, colour and shape names,
    ``patches`` ``[N, rows, cols]`` 0/1 PBC labels."""

    pixels: torch.Tensor
    colors: list[str]
    shapes: list[str]
    patches: torch.Tensor


def load_scene_data(paths: Sequence[str], processor: VLEProcessor, patch_size: int) -> SceneData:
    """Read each image's scene and preprocess its pixels; patch labels on the processor's patch grid."""
    scenes = [read_scene(path) for path in paths]
    pixels = torch.cat([torch.from_numpy(processor.preprocess_images(list(paths[i:i + 500])))
                        for i in range(0, len(paths), 500)])
    rows, cols = (side // patch_size for side in pixels.shape[-2:])
    patches = torch.stack([torch.from_numpy(patch_labels(scene.mask, rows, cols)) for scene in scenes])
    return SceneData(pixels, [s.color for s in scenes], [s.shape for s in scenes], patches)


class BatchMaker:
    """Turns a batch of image indices into the ITM/PBC inputs and the MLM inputs (texts drawn with ``rng``)."""

    def __init__(self, data: SceneData, processor: VLEProcessor, rng: random.Random):
        self.data, self.rng = data, rng
        self.tokenizer = processor.tokenizer
        self.special = set(self.tokenizer.all_special_ids)
        self.mask_id = self.tokenizer.mask_token_id
        words = {*data.colors, *data.shapes}
        self.word_ids = {w: self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in words}

    def _encode(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
        attention = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
        return input_ids, attention

    def __call__(self, index: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        data, rng = self.data, self.rng
        pixels, patches = data.pixels[index], data.patches[index]
        flip = torch.tensor([rng.random() < 0.5 for _ in index])
        pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        patches = torch.where(flip[:, None, None], patches.flip(-1), patches)
        texts, itm, pbc = [], [], []
        for i, j in enumerate(index.tolist()):
            color, shape = data.colors[j], data.shapes[j]
            matched = rng.random() < 0.5
            if not matched:
                color, shape = mismatch(color, shape, rng.choice(NEGATIVE_KINDS), rng)
            texts.append(caption(color, shape, rng.randrange(len(TEMPLATES))))
            itm.append(int(matched))
            pbc.append(patches[i].reshape(-1) if matched else torch.full((patches[i].numel(),), -100))
        input_ids, attention = self._encode(self.tokenizer(texts)["input_ids"])
        itm_batch = {"pixel_values": pixels, "input_ids": input_ids, "attention_mask": attention,
                     "itm_labels": torch.tensor(itm), "pbc_labels": torch.stack(pbc)}
        masked, labels = [], []
        mlm_index = index[: max(1, len(index) // 2)]  # MLM on half the batch: a third less compute per step
        for j in mlm_index.tolist():
            color, shape = data.colors[j], data.shapes[j]
            ids = self.tokenizer(caption(color, shape, rng.randrange(len(TEMPLATES))))["input_ids"]
            word = self.word_ids[rng.choice((color, shape))]
            must = {q + k for q in range(len(ids)) if ids[q:q + len(word)] == word for k in range(len(word))}
            row, label = mask_words(ids, must, self.mask_id, self.special, rng)
            masked.append(row)
            labels.append(label)
        input_ids, attention = self._encode(masked)
        mlm_labels, _ = self._encode(labels)
        mlm_labels[attention == 0] = -100
        mlm_batch = {"pixel_values": pixels[: len(mlm_index)], "input_ids": input_ids, "attention_mask": attention,
                     "mlm_labels": mlm_labels}
        return itm_batch, mlm_batch


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    known = labels != -100
    return (logits.argmax(-1)[known] == labels[known]).float().mean().item() if known.any() else float("nan")


class PretrainTrainer(Trainer):
    """transformers' ``Trainer`` for :class:`BatchMaker`'s two batches per step (ITM/PBC and MLM), their losses
    summed; the training batches' ITM/PBC/MLM accuracies are logged with each epoch's loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sums: dict[str, float] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out, mlm_out = model(**inputs["itm"]), model(**inputs["mlm"])
        if model.training:
            for name, value in (("itm", _accuracy(out.itm_logits, inputs["itm"]["itm_labels"])),
                                ("pbc", _accuracy(out.pbc_logits, inputs["itm"]["pbc_labels"])),
                                ("mlm", _accuracy(mlm_out.mlm_logits, inputs["mlm"]["mlm_labels"])),
                                ("batches", 1)):
                self.sums[name] = self.sums.get(name, 0.0) + value
        loss = out.loss + mlm_out.loss
        return (loss, out) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self.sums:  # logged once per epoch
            batches = self.sums.pop("batches")
            logs = {**logs, **{name: round(total / batches, 4) for name, total in self.sums.items()}}
            self.sums = {}
        super().log(logs, *args, **kwargs)


def train_pretraining(model: VLEForPreTraining, processor: VLEProcessor, data: SceneData,
                      config: PretrainConfig) -> dict[str, Any]:
    """Train ``model`` in place on ``data`` with transformers' ``Trainer`` (AdamW, warm-up + linear decay, gradient
    clipping, mixed precision and multi-GPU from it); returns per-epoch losses and training-batch accuracies.

    Each step runs the ITM/PBC batch and the MLM batch that :class:`BatchMaker` draws for the step's images and
    sums the two losses. No checkpoints: the run takes minutes.
    """
    make = BatchMaker(data, processor, random.Random(config.seed))
    total = optimizer_steps(len(data.pixels), config.batch_size, config.epochs)
    if config.max_steps is not None:
        total = min(config.max_steps, total)
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:  # save_strategy "no": the Trainer writes nothing there
        args = TrainingArguments(
            output_dir=scratch, num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
            per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
            weight_decay=config.weight_decay, lr_scheduler_type="linear",
            warmup_steps=min(config.warmup_steps, total // 10), max_grad_norm=config.max_grad_norm, seed=config.seed,
            data_seed=config.seed, logging_strategy="epoch", save_strategy="no", remove_unused_columns=False,
            report_to=[], dataloader_pin_memory=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(),
        )
        trainer = PretrainTrainer(
            model=model, args=args, train_dataset=list(range(len(data.pixels))),
            data_collator=lambda index: dict(zip(("itm", "mlm"), make(torch.tensor(index)))),
        )
        trainer.train()
    history = [{"epoch": logs["epoch"], "steps": logs["step"], "loss": logs["loss"],
                **{name: logs[name] for name in ("itm", "pbc", "mlm")}}
               for logs in logs_by_epoch(trainer.state.log_history) if "loss" in logs]
    for record in history:
        logger.info("pretraining %s", record)
    model.eval()
    return {"config": asdict(config), "epochs": history, "steps": trainer.state.global_step,
            "seconds": round(time.time() - started, 1)}


def write_labels(out_dir: str | Path) -> None:
    """The default zero-shot labels of the app (``vqa_llm.tasks.LABELS_FILE``): the 24 "a <colour> <shape>"."""
    (Path(out_dir) / LABELS_FILE).write_text("\n".join(zero_shot_labels()) + "\n", encoding="utf-8")


def build_pretrained(start: str | Path, out_dir: str | Path, paths: Sequence[str], config: PretrainConfig) -> dict:
    """Start from the VLE checkpoint ``start`` (its backbone; new ITM/PBC/MLM heads), train on the images at
    ``paths`` and save model + processor to ``out_dir``; returns the training log."""
    started, cpu_started = time.time(), time.process_time()
    torch.manual_seed(config.seed)
    processor = VLEProcessor.from_pretrained(start)
    model = VLEForPreTraining.from_pretrained(start)
    model.config.num_labels = 2  # no VQA answers: the heads have fixed sizes
    data = load_scene_data(paths, processor, model.config.vision_config.patch_size)
    log = train_pretraining(model, processor, data, config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    write_labels(out_dir)
    return {**log, "images": len(paths), "seconds": round(time.time() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1), "threads": torch.get_num_threads()}
