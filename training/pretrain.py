"""Train a VLE pretraining checkpoint (ITM, PBC, MLM heads; the layout of hfl/vle-base) on easy-VQA images.

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
and patch labels). Seeds are fixed; the result is saved with the starting model's processor, so ``VLEForITM``,
``VLEForPBC``, ``VLEForMLM`` and ``VLEModel`` all load from the folder.

    python -m training.pretrain --init assets/models/vle-easyvqa --output_dir runs/pretrain [TrainingArguments flags]

takes :class:`~training.pretrain_arguments.PretrainArguments` and transformers' ``TrainingArguments`` (the bundle
recipe as defaults); ``python -m training.bundle build --only pretrain`` calls the same :func:`train`.
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from project_base.errors import BadSettingError, ModelUnavailableError, VQALLMError
from project_base.hub_probe import check_hub
from project_base.output_folder import check_output_folder
from project_base.paths import portable_path
from vle import VLEForPreTraining
from vle.errors import VLEError
from vle.processing_vle import VLEProcessor
from vle.vqa_data import load_easy_vqa
from vqa_llm.tasks import LABELS_FILE

from .arguments import build_parser as task_parser
from .arguments import parse
from .common import logs_by_epoch, run_arguments
from .pretrain_arguments import PretrainArguments, training_defaults
from .pretrain_texts import NEGATIVE_KINDS, TEMPLATES, caption, mask_words, mismatch, zero_shot_labels
from .shape_scenes import patch_labels, read_scene

logger = logging.getLogger(__name__)


EXIT_USER_ERROR = 2
#: the ``TrainingArguments`` a run's log records (after :func:`training.common.run_arguments`)
SETTINGS_LOGGED = ("num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
                   "learning_rate", "weight_decay", "warmup_steps", "max_grad_norm", "seed", "bf16", "fp16")


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
                      training_args: TrainingArguments) -> dict[str, Any]:
    """Train ``model`` in place on ``data`` with transformers' ``Trainer`` as ``training_args`` say (AdamW, warm-up
    by :func:`training.common.warmup_steps` and linear decay, gradient clipping, mixed precision and multi-GPU from
    it); returns per-epoch losses and training-batch accuracies.

    Each step runs the ITM/PBC batch and the MLM batch that :class:`BatchMaker` draws for the step's images (seeded
    by ``training_args.seed``) and sums the two losses. With the task's defaults no checkpoint is written.
    """
    make = BatchMaker(data, processor, random.Random(training_args.seed))
    run_args = run_arguments(training_args, len(data.pixels), evaluate_each_epoch=False)
    started = time.time()
    trainer = PretrainTrainer(
        model=model, args=run_args, train_dataset=list(range(len(data.pixels))),
        data_collator=lambda index: dict(zip(("itm", "mlm"), make(torch.tensor(index)))),
    )
    trainer.train()
    history = [{"epoch": logs["epoch"], "steps": logs["step"], "loss": logs["loss"],
                **{name: logs[name] for name in ("itm", "pbc", "mlm")}}
               for logs in logs_by_epoch(trainer.state.log_history) if "loss" in logs]
    for record in history:
        logger.info("pretraining %s", record)
    model.eval()
    settings = {name: getattr(run_args, name) for name in SETTINGS_LOGGED}
    return {"settings": settings, "epochs": history, "steps": trainer.state.global_step,
            "seconds": round(time.time() - started, 1)}


def write_labels(out_dir: str | Path) -> None:
    """The default zero-shot labels of the app (``vqa_llm.tasks.LABELS_FILE``): the 24 "a <colour> <shape>"."""
    (Path(out_dir) / LABELS_FILE).write_text("\n".join(zero_shot_labels()) + "\n", encoding="utf-8")


def _starting_model(init: str) -> tuple[VLEForPreTraining, VLEProcessor]:
    """The model (``init``'s backbone; its ITM/PBC/MLM heads when it has them, else new ones) and processor."""
    local = check_hub([init]).local_only  # ModelUnavailableError within seconds when the Hub does not answer
    try:
        processor = VLEProcessor.from_pretrained(init, local_files_only=local)
        model = VLEForPreTraining.from_pretrained(init, local_files_only=local)
    except (OSError, ValueError) as exc:  # transformers: no such folder or repo, no config, damaged weights
        raise ModelUnavailableError(f"Could not load the starting VLE {init} ({exc}). Pass --init a VLE folder "
                                    "saved with save_pretrained or a Hub id such as hfl/vle-base.") from None
    model.config.num_labels = 2  # no VQA answers: the heads have fixed sizes
    return model, processor


def training_images(args: PretrainArguments) -> list[str]:
    """The image paths of ``args.train`` (the easy-VQA train split), in a fixed order, at most ``train_limit``."""
    return sorted({example.image_path for example in load_easy_vqa("train")})[: args.train_limit]


def train(args: PretrainArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """Start from the VLE ``args.init``, train the three pretraining tasks on ``args.train``'s images and save
    model + processor + the app's zero-shot labels to ``training_args.output_dir`` (the CLI and the bundle build);
    returns the training log. User errors (no --init, an unusable output folder or starting model) raise
    BadSettingError or ModelUnavailableError before any training starts."""
    if not args.init:
        raise BadSettingError("Pass --init, the VLE checkpoint to start from (a folder or a Hub id such as "
                              "hfl/vle-base).")
    out = check_output_folder(training_args.output_dir, "--output_dir")
    started, cpu_started = time.time(), time.process_time()
    torch.manual_seed(training_args.seed)
    model, processor = _starting_model(args.init)
    paths = training_images(args)
    data = load_scene_data(paths, processor, model.config.vision_config.patch_size)
    log = train_pretraining(model, processor, data, training_args)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    write_labels(out)
    return {**log, "init": portable_path(args.init), "images": len(paths), "seconds": round(time.time() - started, 1),
            "cpu_seconds": round(time.process_time() - cpu_started, 1), "threads": torch.get_num_threads()}


def build_parser() -> HfArgumentParser:
    """The ``python -m training.pretrain`` parser: :class:`PretrainArguments` and ``TrainingArguments``."""
    return task_parser(PretrainArguments, training_defaults(), prog="python -m training.pretrain",
                       description=__doc__.split("\n\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 done, 2 a user error: one ``Error:`` line on stderr)."""
    args, training_args = parse(build_parser(), argv, {})
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        log = train(args, training_args)
    except (VQALLMError, VLEError) as exc:
        print("Error: " + " ".join(str(exc).split()), file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    print(json.dumps(log["epochs"][-1] if log["epochs"] else {}))  # the last line: the last epoch's figures
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
