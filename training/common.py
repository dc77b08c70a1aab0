"""Small pieces the training loops share: the learning-rate schedule, a fingerprint of the weights (did training
change anything?) and the check of an output folder before any work starts."""

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
