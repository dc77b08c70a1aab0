"""Loading one VLE VCR checkpoint (question -> answer or question + answer -> rationale) with its processor, checked:
the evaluator's batches and the app's VCR tab both load their models here.

:func:`load_vcr_model` goes through the checks of :mod:`vqa_llm.loading` (a missing or damaged folder, no Hub),
loads in the profile's ``vqa_precision`` (``auto``: half precision on CUDA, fp32 elsewhere; ``fp32``; ``int8``:
:func:`vle.quantize_int8`, CPU only) and refuses a checkpoint without the task's head (a VQA or pretraining
checkpoint, or the other VCR task's) rather than scoring with a random head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vle import VLEForVCRQ2A, VLEForVCRQA2R, VLEPreTrainedModel
from vle.processing_vle import VLEProcessor

from .errors import ModelUnavailableError
from .loading import _Step, apply_precision, check_model_dir, check_precision, describe_load_failure, resolve_dtype

#: per task: what the model is called in messages, its flag, its class and the head it must have
WHAT = {"q2a": "VCR Q→A model", "qa2r": "VCR QA→R model"}
FLAGS = {"q2a": "--vcr-q2a", "qa2r": "--vcr-qa2r"}
MODEL_CLASSES: dict[str, type[VLEPreTrainedModel]] = {"q2a": VLEForVCRQ2A, "qa2r": VLEForVCRQA2R}


@dataclass
class VCRModel:
    """One task's model (eval mode, on its device) and processor."""

    task: str
    model: VLEPreTrainedModel
    processor: VLEProcessor

    @property
    def device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.model.parameters())
        return param.device, param.dtype


def load_vcr_model(task: str, id_or_path: str, device: str, local_files_only: bool = False,
                   precision: str = "auto") -> VCRModel:
    """The ``task`` (``q2a``/``qa2r``) model and its processor; ModelUnavailableError when it is missing,
    damaged or has no ``task`` head, BadSettingError for int8 off the CPU."""
    what = WHAT[task]
    check_precision(precision, device)
    check_model_dir(id_or_path, what)
    model_class = MODEL_CLASSES[task]
    with _Step(what, id_or_path):
        try:
            processor = VLEProcessor.from_pretrained(id_or_path, local_files_only=local_files_only)
            model, info = model_class.from_pretrained(
                id_or_path, local_files_only=local_files_only, output_loading_info=True,
                dtype=resolve_dtype(torch.float32 if precision == "fp32" else None, device))
        except Exception as exc:  # transformers/safetensors raise many types for missing or corrupt files
            raise ModelUnavailableError(
                f"{describe_load_failure(what, id_or_path, exc)} Check that it is a complete VLE VCR checkpoint "
                f"(config.json, weights, spm.model, preprocessor_config.json).") from exc
    head = model_class.head_name
    if any(key.startswith(head + ".") or f".{head}." in key for key in info.get("missing_keys", ())):
        raise ModelUnavailableError(
            f"{id_or_path} has no {head} head: it is not a {what} checkpoint (a VQA, pretraining or other-task "
            f"checkpoint would be scored with a random head). Pass a {task} checkpoint with {FLAGS[task]} "
            f"(e.g. hfl/vle-base-for-vcr-{task}).")
    return VCRModel(task, apply_precision(model.to(device).eval(), precision), processor)


