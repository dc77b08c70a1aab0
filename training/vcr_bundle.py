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

from vqa_llm.paths import portable_path

from .vcr_finetune import TRAINING_DEFAULTS, VCRFinetuneArguments, train
from .vcr_scenes import write_scenes

logger = logging.getLogger(__name__)

VCR_DIR_NAMES = {"q2a": "vle-shapes-vcr-q2a", "qa2r": "vle-shapes-vcr-qa2r"}
TRAIN_SEED, VAL_SEED = 0, 1
TRAIN_ITEMS, VAL_ITEMS = 12000, 600
#: seed of the scenes the committed checkpoints are measured on (never used for training or the per-epoch check)
TEST_SEED, TEST_ITEMS = 2026, 500
EPOCHS = 2
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
SEED = 0


def scenes(work_dir: Path) -> Path:
    """The training and per-epoch check scenes under ``work_dir/scenes`` (generated once, reused after)."""
    folder = work_dir / "scenes"
    for split, seed, count in (("train", TRAIN_SEED, TRAIN_ITEMS), ("val", VAL_SEED, VAL_ITEMS)):
        if not (folder / f"{split}.jsonl").is_file():
            write_scenes(folder, seed, count, split)
    return folder


def vcr_run_arguments(task: str, start: Path, data: Path, out: Path, object_tokens: bool = True,
                      epochs: int = EPOCHS, train_annotations: Path | None = None) -> tuple[VCRFinetuneArguments, Any]:
    """The arguments of one VCR fine-tuning run of the bundle recipe (also used by the ablation): the task's
    and transformers' ``TrainingArguments`` (imported here: its import pulls in bitsandbytes, whose import-time
    notice would precede a mistyped ``training.bundle`` command's one-line error)."""
    from transformers import TrainingArguments

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
        log.update({"init": portable_path(start), "seconds": time.time() - started,
                    "cpu_seconds": time.process_time() - cpu, "threads": torch.get_num_threads(),
                    "train_seed": TRAIN_SEED, "train_items": TRAIN_ITEMS, "val_seed": VAL_SEED, "val_items": VAL_ITEMS,
                    "epochs_run": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE})
        (out / name / "build_log.json").write_text(json.dumps(log, indent=1))
        report[task] = log
    return {**report, "seconds": sum(log["seconds"] for log in report.values())}


VCR_CARD = """---
license: mit
library_name: transformers
tags: [vle, vcr, visual-commonsense-reasoning, multiple-choice, easy-vqa]
---
# {name}: a small VLE VCR checkpoint ({title}) trained on generated shape scenes

`{cls}` in the layout of `hfl/vle-base-for-vcr-{task}` at a small size ({params:.2f}M parameters, 83 token types:
text, image and up to 81 objects per choice): {what}. Each object a choice names adds an image token (the mean of
the patches under its box) and a token type shared with the words naming it, as in VLE's VCR models. It serves
the app's "Visual commonsense (VCR)" tab and `python -m vqa_llm.evaluate --dataset vcr` on the `bundled` profile.

- **Data**: shape scenes in the VCR layout generated by `python -m training.vcr_scenes` (2-4 easy-VQA shapes per
  192 px image, boxes apart; six question kinds that need grounding or a relation: the colour of [n], which shape
  is left of / above / bigger than [m], whether [n] and [m] share a colour, how many other shapes share [n]'s
  colour; four answers and four rationales). Training: {train_items:,} items of seed {train_seed}; checked after
  each epoch on {val_items} items of seed {val_seed}; measured on {test_items} items of seed {test_seed}, used
  nowhere else.
- **Training** (seed {seed}, CPU, `training.vcr_finetune` on the transformers `Trainer`): from the bundled
  pretraining checkpoint `vle-easyvqa-pretrain` with a new VCR head, the token-type table grown from 2 to 83 rows
  (object rows: the image row plus noise of std {type_std}), and the {new_words} scene words the easy-VQA
  vocabulary lacked added to it; {epochs} epochs, batch {batch}, AdamW lr {lr:g} with 10% warm-up and linear
  decay; softmax cross-entropy over each item's four choice scores. {what_trained}
- **Command**: `python -m training.bundle build --only vcr` (both VCR checkpoints: {minutes:.1f} min wall-clock,
  {cpu_minutes:.1f} min of CPU time on {threads} thread(s); this one {own_minutes:.1f} min), then
  `python -m training.bundle evaluate --only vcr --write-cards`.
- **Results** on the {test_items} held-out scenes through the evaluator (QA→R given the right answer, as VCR
  defines it; Q→AR: both right, with the bundled Q→A and QA→R models together):

| question kind | items | Q→A | QA→R | Q→AR |
|---|---|---|---|---|
{rows}

- **What it learned**: mostly the texts' regularities. With blank images, or another scene's image, it scores
  within a point of the figures above (`bench/vcr_image_use.py`), so the rows it gets right are the ones whose
  right choice can be told from the words alone, and {image_rows}. The recipe has
  not taught this small backbone (pretrained on single easy-VQA shapes) to read several objects:
  [docs/results.md](../../../docs/results.md#vcr-on-generated-shape-scenes).
- **Limits**: it knows generated shape scenes only (three shape kinds, eight colours, plain backgrounds) and the
  {vocab} words of its vocabulary; on real VCR photos its scores mean nothing. Use `hfl/vle-base-for-vcr-{task}`
  (the `base` profile) for those.
"""
#: per task, the rows of the card's table that only the image can decide
IMAGE_ROWS = {"q2a": "the colour questions, which only the image decides, stay near chance (25%)",
              "qa2r": "the counting and same-colour rows, which need the image, stay low"}
VCR_TITLES = {"q2a": ("question → answer", "VLEForVCRQ2A",
                      "given a question about objects in an image, it scores four answers"),
              "qa2r": ("question + answer → rationale", "VLEForVCRQA2R",
                       "given a question and its right answer, it scores four rationales")}


def held_out_scenes(work_dir: Path) -> Path:
    """The scenes the VCR checkpoints are measured on (seed :data:`TEST_SEED`), generated once under ``work_dir``."""
    test = work_dir / "test-scenes"
    if not (test / "test.jsonl").is_file():
        write_scenes(test, TEST_SEED, TEST_ITEMS, "test")
    return test


def evaluate_vcr_models(q2a: Path, qa2r: Path, scenes_dir: Path, run: Path) -> dict[str, Any]:
    """The evaluator's summary (``python -m vqa_llm.evaluate --dataset vcr``) of a Q->A and a QA->R model on the
    ``test.jsonl`` scenes in ``scenes_dir``; the run goes to ``run`` (replaced)."""
    from vqa_llm.evaluate import main as evaluate_main

    shutil.rmtree(run, ignore_errors=True)
    status = evaluate_main(["--dataset", "vcr", "--annotations", str(scenes_dir / "test.jsonl"), "--images",
                            str(scenes_dir / "images"), "--profile", "bundled", "--vcr-q2a", str(q2a),
                            "--vcr-qa2r", str(qa2r), "--device", "cpu", "--out", str(run), "-q"])
    if status != 0:
        raise RuntimeError(f"the VCR evaluation of {q2a} and {qa2r} failed (exit status {status})")
    return json.loads((run / "summary.json").read_text())


def evaluate_vcr_bundle(models: Path, work_dir: Path) -> dict[str, Any]:
    """The evaluator's summary of the two bundled VCR checkpoints in ``models`` on the held-out scenes."""
    return evaluate_vcr_models(models / VCR_DIR_NAMES["q2a"], models / VCR_DIR_NAMES["qa2r"],
                               held_out_scenes(work_dir), work_dir / "eval")


def write_vcr_cards(models: Path, summary: dict[str, Any]) -> None:
    """The VCR checkpoints' model cards, from their build logs and the evaluator's ``summary``."""
    from vle import VLEForVCRQ2A, VLEForVCRQA2R

    classes = {"q2a": VLEForVCRQ2A, "qa2r": VLEForVCRQA2R}
    logs = {task: json.loads((models / name / "build_log.json").read_text()) for task, name in VCR_DIR_NAMES.items()}
    groups = [("overall", summary["overall"]), *summary.get("per_question_kind", {}).items()]
    rows = "\n".join(f"| {kind} | {s['n']} | {s['q2a_accuracy']:.2f}% | {s['qa2r_accuracy']:.2f}% | "
                     f"{s['q2ar_accuracy']:.2f}% |" for kind, s in groups)
    for task, name in VCR_DIR_NAMES.items():
        log, (title, cls, what) = logs[task], VCR_TITLES[task]
        model = classes[task].from_pretrained(models / name)
        last = log["epochs"][-1].get("eval", {})
        (models / name / "README.md").write_text(VCR_CARD.format(
            name=name, title=title, cls=cls, task=task, what=what,
            params=sum(p.numel() for p in model.parameters()) / 1e6,
            train_items=log["train_items"], train_seed=log["train_seed"], val_items=log["val_items"],
            val_seed=log["val_seed"], test_items=TEST_ITEMS, test_seed=TEST_SEED, seed=SEED,
            type_std=log["object_type_std"], new_words=log["new_words"], epochs=log["epochs_run"],
            batch=log["batch_size"], lr=log["learning_rate"],
            what_trained=(f"After the last epoch: {last['accuracy']:.2%} on the check items." if last else ""),
            minutes=sum(logs[t]["seconds"] for t in logs) / 60,
            cpu_minutes=sum(logs[t]["cpu_seconds"] for t in logs) / 60, threads=log["threads"],
            own_minutes=log["seconds"] / 60, rows=rows, vocab=model.config.text_config.vocab_size,
            image_rows=IMAGE_ROWS[task],
        ))
