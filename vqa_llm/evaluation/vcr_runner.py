"""The VCR models of an evaluation run, and scoring items with them in batches.

:func:`load_vcr_models` loads the profile's Q→A and QA→R checkpoints (``vcr_q2a``/``vcr_qa2r``, or
``--vcr-q2a``/``--vcr-qa2r``) through the checks of :mod:`vqa_llm.loading`, in the profile's ``vqa_precision``
(``auto``: half precision on CUDA, fp32 elsewhere; ``fp32``; ``int8``: :func:`vle.quantize_int8`, CPU only). A
checkpoint without the task's head (a VQA or pretraining checkpoint, or the other VCR task's) is refused rather
than scored with a random head.

:func:`score_batch` encodes every item of a batch as the VCR pipelines do (:func:`vle.vcr_encoding.encode_vcr_item`)
and runs each model once on the whole batch (:func:`vle.vcr_encoding.collate_vcr`); QA→R is given the item's right
answer. An item that cannot be encoded (an unreadable image) gets a failed record and the batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from project_base.hub_probe import check_hub
from vle import VLEError
from vle.vcr_data import VCRItem
from vle.vcr_encoding import VCR_TASKS, VCREncodedItem, collate_vcr, encode_vcr_item

from ..devices import resolve_device
from ..errors import ModelUnavailableError
from ..loading import enable_tf32
from ..profiles import Profile
from ..vcr_loading import FLAGS, WHAT, VCRModel, load_vcr_model
from .store import RecordWriter
from .vcr import failed_vcr_record, vcr_record

logger = logging.getLogger(__name__)

def vcr_model_ids(profile: Profile) -> dict[str, Any]:
    """``{"vcr_q2a": ..., "vcr_qa2r": ...}`` (plus ``vqa_precision`` for int8, whose scores differ slightly);
    ModelUnavailableError when the profile names no model for a task."""
    missing = [task for task in VCR_TASKS if not getattr(profile, f"vcr_{task}")]
    if missing:
        raise ModelUnavailableError(
            f"The '{profile.name}' profile names no {' and no '.join(WHAT[t] for t in missing)}: pass "
            f"{' and '.join(FLAGS[t] for t in missing)} (a Hub id such as hfl/vle-base-for-vcr-{missing[0]}, or a "
            f"folder), or set {' and '.join(f'VQA_LLM_VCR_{t.upper()}' for t in missing)}.")
    ids: dict[str, Any] = {f"vcr_{task}": getattr(profile, f"vcr_{task}") for task in VCR_TASKS}
    if profile.vqa_precision == "int8":
        ids["vqa_precision"] = profile.vqa_precision
    return ids


def check_vcr_hub(profile: Profile) -> tuple[Profile, str]:
    """:func:`project_base.hub_probe.check_hub` for the profile's VCR models (the only ones a VCR run loads)."""
    found = check_hub([profile.vcr_q2a, profile.vcr_qa2r])
    if found.local_only and not profile.local_files_only:
        profile = replace(profile, local_files_only=True)
    return profile, found.note


def load_vcr_models(profile: Profile) -> dict[str, VCRModel]:
    """Both models of ``profile`` (:func:`vcr_model_ids` names them) on the profile's device."""
    vcr_model_ids(profile)
    device = resolve_device(profile.device)
    enable_tf32(device)
    return {task: load_vcr_model(task, getattr(profile, f"vcr_{task}"), device, profile.local_files_only,
                                 profile.vqa_precision) for task in VCR_TASKS}


@torch.inference_mode()
def _probabilities(vcr: VCRModel, encoded: Sequence[VCREncodedItem]) -> list[list[float]]:
    """Softmax over the four choices of each item, one forward pass for the whole batch."""
    device, dtype = vcr.device_dtype
    batch = collate_vcr(encoded, pad_id=vcr.processor.tokenizer.pad_token_id or 0)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        batch[key] = [tensor.to(device) for tensor in batch[key]]
    batch["pixel_values"] = batch["pixel_values"].to(device, dtype)
    logits = vcr.model(**batch).logits.float()
    return torch.softmax(logits, dim=-1).cpu().tolist()


def score_batch(models: dict[str, VCRModel], items: Sequence[VCRItem]) -> list[dict[str, Any]]:
    """The records of ``items`` (in order): each scored by both models, QA→R given the right answer."""
    encoded: dict[str, list[VCREncodedItem]] = {task: [] for task in VCR_TASKS}
    seconds = dict.fromkeys(VCR_TASKS, 0.0)
    errors: dict[str, str] = {}
    for item in items:
        try:
            one = {}
            for task in VCR_TASKS:
                start = time.perf_counter()
                vcr = models[task]
                one[task] = encode_vcr_item(item.annotation(), item.image_path, item.metadata(), vcr.processor,
                                            vcr.model.config, task)
                seconds[task] += time.perf_counter() - start
        except (VLEError, OSError) as exc:  # this item only: an unreadable image, an unusable annotation
            logger.warning("VCR item %s failed: %s", item.annot_id, exc)
            errors[item.annot_id] = str(exc)
            continue
        for task in VCR_TASKS:
            encoded[task].append(one[task])
    scores: dict[str, list[list[float]]] = {}
    for task in VCR_TASKS:
        if encoded[task]:
            start = time.perf_counter()
            scores[task] = _probabilities(models[task], encoded[task])
            seconds[task] += time.perf_counter() - start
    scored = len(items) - len(errors)
    timings = {task: seconds[task] / scored for task in VCR_TASKS} if scored else {}
    records, row = [], 0
    for item in items:
        if item.annot_id in errors:
            records.append(failed_vcr_record(item, errors[item.annot_id]))
            continue
        records.append(vcr_record(item, scores["q2a"][row], scores["qa2r"][row], timings))
        row += 1
    return records


def score_all(models: dict[str, VCRModel], items: Sequence[VCRItem], writer: RecordWriter, batch_size: int, *,
              progress: bool = True, description: str = "evaluating") -> int:
    """Score ``items`` ``batch_size`` at a time, appending each batch's records to ``writer`` as soon as it is
    done (durable before the next batch starts); return the number of records written."""
    written = 0
    with tqdm(total=len(items), desc=description, unit="item", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(items), batch_size):
            records = score_batch(models, items[start:start + batch_size])
            writer.write(records)
            written += len(records)
            bar.update(len(records))
    return written
