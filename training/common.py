"""Small pieces the training loops share: the learning-rate schedule, the mixed precision of a run, a fingerprint of
the weights (did training change anything?) and the check of an output folder before any work starts."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vqa_llm.errors import BadSettingError
from vqa_llm.evaluation.store import check_output_folder


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """transformers' linear warm-up + decay schedule.

    ``transformers.optimization`` is imported here, when a run starts: it pulls in peft and bitsandbytes, whose
    import-time warnings would otherwise precede the one-line error of a mistyped command.
    """
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)


MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


def mixed_precision_mode(requested: str, cpu_bf16: bool = False) -> str:
    """The mixed precision a run trains in: ``no``, ``bf16`` or ``fp16``; ``requested`` unless it is ``auto``.

    ``auto`` gives ``bf16`` on a CUDA GPU that computes bf16 natively (Ampere on; ``is_bf16_supported`` counts
    emulation by default, so it is asked without), ``fp16`` on older GPUs (T4, V100) and ``no`` on the CPU; with
    ``cpu_bf16``, ``bf16`` also on CPUs that compute it natively (AMX or AVX512-BF16: 1.25x faster than fp32 for
    SmolLM2-135M). Raises ValueError for other values.
    """
    if requested not in MIXED_PRECISIONS:
        raise ValueError(f"mixed precision must be one of {', '.join(MIXED_PRECISIONS)}, got {requested!r}.")
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return "bf16" if cpu_bf16 and native is not None and native() else "no"


def weights_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """Per parameter the float64 sum and sum of squares: equal before and after training only when (in
    practice) no weight changed."""
    with torch.no_grad():
        return torch.stack([torch.stack([p.double().sum(), p.double().square().sum()])
                            for p in model.parameters()]).cpu()


def check_output_dir(path: str | os.PathLike, flag: str, error: type[Exception]) -> Path:
    """``path`` as a Path; ``error`` when it cannot be an output folder (a file is in its place or above it, or
    the nearest existing folder is not writable). Nothing is created."""
    try:
        return check_output_folder(path, flag)
    except BadSettingError as exc:
        raise error(str(exc)) from None
