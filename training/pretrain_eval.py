"""Measure a VLE pretraining checkpoint on the easy-VQA test images (``python -m training.bundle evaluate``).

ITM, zero-shot classification and patch relevance run through the app's own code path
(:class:`vqa_llm.tasks.VLETasks`: the pipelines behind ``/itm``, ``/classify`` and ``/pbc``); MLM through
``VLEForMLM``. The truth of each image is read from its pixels (:mod:`training.shape_scenes`), so every test
image counts, not only those whose questions name both its colour and its shape.

* **ITM**: each image with its caption "a <colour> <shape>" and three mismatched ones (another colour, another
  shape, both), drawn with a fixed seed; a pair is right when P(match) > 0.5 exactly for the matching caption.
  Also over all 24 captions per image, and with the paraphrases of :data:`~training.pretrain_texts.TEMPLATES`.
* **Zero-shot classification**: the 24 texts "a <colour> <shape>" ranked by ``VLETasks.classify``; top-1.
* **PBC**: the relevance grid of the image's caption against the patches the shape covers
  (:func:`~training.shape_scenes.patch_labels`): IoU of the patches with relevance >= 0.5, and the share of
  images whose mean relevance on the shape's patches is at least twice that on the background's.
* **MLM**: the colour word, then the shape word, of "a <colour> <shape>" masked: top-1 over the vocabulary.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vle import VLEForMLM
from vle.vqa_data import load_easy_vqa
from vqa_llm.tasks import MAX_ITM_TEXTS, TASKS, VLETasks, load_heads

from .pretrain_texts import NEGATIVE_KINDS, TEMPLATES, caption, mismatch, zero_shot_labels
from .shape_scenes import Scene, patch_labels, read_scene

RELEVANT = 0.5
RATIO = 2.0


def easy_vqa_test_images(limit: int | None = None) -> list[str]:
    """The easy-VQA test image paths (all 1,000 unless ``limit``), in a fixed order."""
    return sorted({example.image_path for example in load_easy_vqa("test")})[:limit]


def load_tasks_from(model_dir: str | Path) -> VLETasks:
    """The app's ITM/PBC tasks on the CPU from the checkpoint folder ``model_dir``."""
    processor, heads = load_heads(str(model_dir), "cpu")
    return VLETasks({name: TASKS[name].pipeline_class(model=head, device="cpu", vle_processor=processor)
                     for name, head in heads.items()}, model_id=str(model_dir))


def _itm(tasks: VLETasks, path: str, scene: Scene, labels: list[str], rng: random.Random,
         record: dict[str, list[bool]]) -> None:
    """ITM pairs of one image: its caption and three mismatched ones (from the scores of all 24 captions, matched
    :data:`~vqa_llm.tasks.MAX_ITM_TEXTS` at a time, which also give the all-pairs figure), and a paraphrase pair."""
    truth = caption(scene.color, scene.shape)
    chunks = [labels[i:i + MAX_ITM_TEXTS] for i in range(0, len(labels), MAX_ITM_TEXTS)]
    scores = dict(zip(labels, [p for chunk in chunks for p in tasks.match(path, chunk)]))
    record["match"].append(scores[truth] > 0.5)
    for kind in NEGATIVE_KINDS:
        record[kind].append(scores[caption(*mismatch(scene.color, scene.shape, kind, rng))] <= 0.5)
    record["all_24"] += [(p > 0.5) == (label == truth) for label, p in scores.items()]
    template = rng.randrange(len(TEMPLATES))
    paraphrases = [caption(scene.color, scene.shape, template),
                   caption(*mismatch(scene.color, scene.shape, rng.choice(NEGATIVE_KINDS), rng), template)]
    positive, negative = tasks.match(path, paraphrases)
    record["paraphrase"] += [positive > 0.5, negative <= 0.5]


def _pbc(tasks: VLETasks, path: str, scene: Scene) -> tuple[float, bool]:
    _, relevance = tasks.relevance(path, caption(scene.color, scene.shape))
    labels = patch_labels(scene.mask, *relevance.shape).astype(bool)
    predicted = relevance >= RELEVANT
    iou = (predicted & labels).sum() / max((predicted | labels).sum(), 1)
    background = relevance[~labels].mean() if (~labels).any() else 0.0
    return float(iou), bool(relevance[labels].mean() >= RATIO * background)


def _mlm(model_dir: str | Path, tasks: VLETasks, paths: list[str], scenes: list[Scene],
         batch_size: int = 200) -> dict[str, float]:
    model = VLEForMLM.from_pretrained(model_dir).eval()
    processor = tasks.pipelines["itm"].vle_processor
    tokenizer = processor.tokenizer
    right: dict[str, list[bool]] = {"color": [], "shape": []}
    for start in range(0, len(paths), batch_size):
        part, part_scenes = paths[start:start + batch_size], scenes[start:start + batch_size]
        pixels = torch.from_numpy(processor.preprocess_images(part))
        for slot in ("color", "shape"):
            encoded = tokenizer([caption(s.color, s.shape) for s in part_scenes], return_tensors="pt", padding=True)
            words = [getattr(s, slot) for s in part_scenes]
            word_ids = [tokenizer(w, add_special_tokens=False)["input_ids"] for w in words]
            if any(len(ids) != 1 for ids in word_ids):
                raise ValueError("MLM evaluation expects each colour and shape word to be one token.")
            targets = torch.tensor([ids[0] for ids in word_ids])
            positions = (encoded["input_ids"] == targets[:, None]).int().argmax(-1)
            rows = torch.arange(len(part))
            encoded["input_ids"][rows, positions] = tokenizer.mask_token_id
            with torch.no_grad():
                logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                               pixel_values=pixels).logits
            right[slot] += (logits[rows, positions].argmax(-1) == targets).tolist()
    every = right["color"] + right["shape"]
    return {"accuracy": float(np.mean(every)), "color": float(np.mean(right["color"])),
            "shape": float(np.mean(right["shape"])), "masked_words": len(every)}


def evaluate_pretraining(model_dir: str | Path, limit: int | None = None, seed: int = 0) -> dict[str, Any]:
    """All figures of the module docstring for the checkpoint at ``model_dir`` (all test images unless
    ``limit``)."""
    started = time.time()
    tasks = load_tasks_from(model_dir)
    paths = easy_vqa_test_images(limit)
    scenes = [read_scene(path) for path in paths]
    labels = zero_shot_labels()
    rng = random.Random(seed)
    itm: dict[str, list[bool]] = {kind: [] for kind in ("match", *NEGATIVE_KINDS, "all_24", "paraphrase")}
    top1, ious, ratios = [], [], []
    for path, scene in zip(paths, scenes):
        _itm(tasks, path, scene, labels, rng, itm)
        top1.append(tasks.classify(path, labels)[0][0] == caption(scene.color, scene.shape))
        iou, ratio_ok = _pbc(tasks, path, scene)
        ious.append(iou)
        ratios.append(ratio_ok)
    pairs = [ok for kind in ("match", *NEGATIVE_KINDS) for ok in itm[kind]]
    return {
        "images": len(paths),
        "itm": {"accuracy": float(np.mean(pairs)), "pairs": len(pairs), "matched": float(np.mean(itm["match"])),
                "mismatched": float(np.mean([ok for kind in NEGATIVE_KINDS for ok in itm[kind]])),
                **{f"mismatched_{kind}": float(np.mean(itm[kind])) for kind in NEGATIVE_KINDS},
                "all_24_captions": float(np.mean(itm["all_24"])), "paraphrases": float(np.mean(itm["paraphrase"]))},
        "zero_shot": {"top1": float(np.mean(top1)), "labels": len(labels)},
        "pbc": {"iou": float(np.mean(ious)), "ratio_2x_share": float(np.mean(ratios)),
                "threshold": RELEVANT},
        "mlm": _mlm(model_dir, tasks, paths, scenes),
        "seconds": round(time.time() - started, 1),
    }
