"""The bundled VCR checkpoints: ``python -m training.bundle build --only vcr``.

``vle-shapes-vcr-q2a`` and ``vle-shapes-vcr-qa2r`` are fine-tuned by :func:`training.vcr_finetune.train` from the
bundled VLE pretraining checkpoint (``vle-easyvqa-pretrain``) on shape scenes in the VCR layout generated here
(:mod:`training.vcr_scenes`, train seed :data:`TRAIN_SEED`, per-epoch check on seed :data:`VAL_SEED`). The words
of the scenes that the easy-VQA vocabulary lacks are added to it (``extend_vocabulary``). Measured afterwards on
scenes of a seed never used here, through the evaluator (``python -m vqa_llm.evaluate --dataset vcr``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from vqa_llm.paths import portable_path

from .vcr_finetune import TRAINING_DEFAULTS, VCRFinetuneArguments, train
from .vcr_scenes import write_scenes

logger = logging.getLogger(__name__)

VCR_DIR_NAMES = {"q2a": "vle-shapes-vcr-q2a", "qa2r": "vle-shapes-vcr-qa2r"}
TRAIN_SEED, VAL_SEED = 0, 1
TRAIN_ITEMS, VAL_ITEMS = 12000, 600
#: seed of the scenes the committed checkpoints are measured on (never used for training or the per-epoch check)
TEST_SEED, TEST_ITEMS = 2026, 500
EPOCHS = 3
BATCH_SIZE = 32
LEARNING_RATE = 3e-4
SEED = 0


def scenes(work_dir: Path) -> Path:
    """The training and per-epoch check scenes under ``work_dir/scenes`` (generated once, reused after)."""
    folder = work_dir / "scenes"
    for split, seed, count in (("train", TRAIN_SEED, TRAIN_ITEMS), ("val", VAL_SEED, VAL_ITEMS)):
        if not (folder / f"{split}.jsonl").is_file():
            write_scenes(folder, seed, count, split)
    return folder


def vcr_run_arguments(task: str, start: Path, data: Path, out: Path, object_tokens: bool = True,
                      epochs: int = EPOCHS, train_annotations: Path | None = None) -> tuple[VCRFinetuneArguments,
                                                                                           TrainingArguments]:
    """The arguments of one VCR fine-tuning run of the bundle recipe (also used by the ablation)."""
    args = VCRFinetuneArguments(
        task=task, init=str(start), train_annotations=str(train_annotations or data / "train.jsonl"),
        train_images=str(data / "images"), eval_annotations=str(data / "val.jsonl"), eval_images=str(data / "images"),
        extend_vocabulary=True, object_tokens=object_tokens,
    )
    training = TrainingArguments(**{
        **TRAINING_DEFAULTS, "output_dir": str(out), "num_train_epochs": epochs,
        "per_device_train_batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE, "seed": SEED,
        "save_total_limit": 1,
    })
    return args, training


def build_vcr(out: Path, work_dir: Path, start: Path) -> dict[str, Any]:
    """Fine-tune both VCR checkpoints from the pretraining checkpoint at ``start`` into ``out``; the build log."""
    data = scenes(work_dir)
    report: dict[str, Any] = {}
    for task, name in VCR_DIR_NAMES.items():
        started, cpu = time.time(), time.process_time()
        shutil.rmtree(work_dir / task, ignore_errors=True)  # a run never resumes an older build's checkpoints
        args, training = vcr_run_arguments(task, start, data, work_dir / task)
        log = train(args, training)
        (out / name).mkdir(parents=True, exist_ok=True)
        for path in (work_dir / task).iterdir():
            if path.is_file() and path.name != "training_log.json":
                (out / name / path.name).write_bytes(path.read_bytes())
        log.update({"start": portable_path(start), "seconds": time.time() - started,
                    "cpu_seconds": time.process_time() - cpu, "threads": torch.get_num_threads(),
                    "train_seed": TRAIN_SEED, "train_items": TRAIN_ITEMS, "val_seed": VAL_SEED, "val_items": VAL_ITEMS,
                    "epochs_run": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE})
        (out / name / "build_log.json").write_text(json.dumps(log, indent=1))
        report[task] = log
    return {**report, "seconds": sum(log["seconds"] for log in report.values())}
