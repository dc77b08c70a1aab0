"""Small pieces the training runs share: the mixed precision of a run, the one step count and warm-up rule, the
final ``TrainingArguments`` of a run (:func:`run_arguments`), the newest Trainer checkpoint and the Trainer's log
per epoch, a fingerprint of the weights (did training change anything?) and the check of an output folder before
any work starts."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import torch

from project_base.errors import BadSettingError
from project_base.output_folder import check_output_folder

logger = logging.getLogger(__name__)
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


#: the state file transformers' Trainer writes last into each checkpoint (``transformers.trainer.TRAINER_STATE_NAME``;
#: these helpers need no Trainer)
TRAINER_STATE_NAME = "trainer_state.json"


def latest_trainer_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoint-STEP`` folder transformers' Trainer wrote in ``folder``, or None."""
    folder = Path(folder)
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()
             and (p / TRAINER_STATE_NAME).is_file()] if folder.is_dir() else []
    return max(found, key=lambda p: int(p.name.split("-", 1)[1]), default=None)


def world_size() -> int:
    """Processes of the run: ``WORLD_SIZE`` as ``accelerate launch`` or ``torchrun`` set it, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def optimizer_steps(examples: int, batch_size: int, epochs: float, grad_accum: int = 1, max_steps: int = -1) -> int:
    """Optimiser steps of a run over ``examples`` for ``epochs`` (a fraction counts its share of an epoch's steps),
    each process taking batches of ``batch_size`` and stepping every ``grad_accum`` batches, or ``max_steps`` when
    positive (the Trainer's count, known before it is built): the one step count of every training task."""
    if max_steps > 0:
        return max_steps
    return math.ceil(math.ceil(math.ceil(examples / (batch_size * world_size())) / grad_accum) * epochs)


def planned_steps(examples: int, training_args) -> int:
    """:func:`optimizer_steps` of a run over ``examples`` with transformers ``TrainingArguments``."""
    return optimizer_steps(examples, training_args.per_device_train_batch_size, training_args.num_train_epochs,
                           training_args.gradient_accumulation_steps, training_args.max_steps)


#: the most warm-up may take of a run's optimiser steps, so a short run still trains at its learning rate
MAX_WARMUP_SHARE = 0.5


def warmup_steps(requested: float, total_steps: int) -> int:
    """Warm-up steps of a run of ``total_steps`` optimiser steps, the one rule of every training task:
    ``requested`` as ``TrainingArguments.warmup_steps`` reads it (at least 1: steps; below 1: that share of the
    run, rounded up), capped at :data:`MAX_WARMUP_SHARE` of the run (rounded down) so that its later steps train at
    the full rate; warm-up starts at 0, so a run of 1 step has none."""
    wanted = int(requested) if requested >= 1 else math.ceil(requested * total_steps)
    allowed = int(MAX_WARMUP_SHARE * total_steps)
    if wanted > allowed:
        logger.info("Warm-up shortened from %d to %d of the run's %d optimiser steps.", wanted, allowed, total_steps)
    return max(0, min(wanted, allowed))


def logs_by_epoch(log_history: list[dict]) -> list[dict]:
    """transformers ``Trainer``'s ``state.log_history`` merged per epoch (its loss log, evaluation log, ...), oldest
    first, ``epoch`` being the number of the epoch the entries close; the run's closing summary is left out."""
    merged: dict[int, dict] = {}
    for entry in log_history:
        if "epoch" in entry and "train_runtime" not in entry:
            merged.setdefault(math.ceil(entry["epoch"] - 1e-6), {}).update(entry)
    return [{**entry, "epoch": epoch} for epoch, entry in sorted(merged.items())]


def trainer_precision(mode: str) -> dict[str, bool]:
    """transformers ``TrainingArguments``' ``bf16``/``fp16`` flags for a mixed precision ``mode`` (``no``, ``bf16``
    or ``fp16``, as :func:`mixed_precision_mode` gives it)."""
    return {"bf16": mode == "bf16", "fp16": mode == "fp16"}


def resolved_precision(bf16: bool | None, fp16: bool | None, cpu_bf16: bool = False,
                       fp16_auto: bool = True) -> dict[str, bool]:
    """``TrainingArguments``' ``bf16``/``fp16`` flags once a run knows its hardware: as given, or where neither was
    given (None, the training CLIs' default) as :func:`mixed_precision_mode` picks for ``auto`` (``cpu_bf16``: bf16
    on CPUs with native bf16 too; without ``fp16_auto``, no fp16 on older GPUs)."""
    if bf16 is not None or fp16 is not None:
        return {"bf16": bool(bf16), "fp16": bool(fp16)}
    mode = mixed_precision_mode("auto", cpu_bf16=cpu_bf16)
    return trainer_precision("no" if mode == "fp16" and not fp16_auto else mode)


def run_arguments(training_args, train_size: int, evaluate_each_epoch: bool, **changes):
    """transformers ``TrainingArguments`` once a run knows its data and hardware: warm-up by :func:`warmup_steps`
    over :func:`planned_steps`, the evaluation strategy only with an evaluation set, ``save_total_limit`` 0 as
    "keep all", the data order seeded by ``seed`` unless ``data_seed`` is given, mixed precision picked where not
    given (:func:`resolved_precision`); ``changes`` (the task's own, such as its data workers) go last."""
    return dataclasses.replace(training_args, **{
        "warmup_steps": warmup_steps(training_args.warmup_steps, planned_steps(train_size, training_args)),
        "data_seed": training_args.seed if training_args.data_seed is None else training_args.data_seed,
        "eval_strategy": training_args.eval_strategy if evaluate_each_epoch else "no",
        "save_total_limit": training_args.save_total_limit or None,
        **resolved_precision(training_args.bf16, training_args.fp16), **changes,
    })


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
