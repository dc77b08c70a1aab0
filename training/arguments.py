"""The command line of every training task, as transformers' example scripts have it: the task's arguments
dataclass parsed together with transformers' ``TrainingArguments`` by ``HfArgumentParser`` (the standard flags:
``--learning_rate``, ``--per_device_train_batch_size``, ``--gradient_accumulation_steps``, ``--bf16``,
``--num_train_epochs``, ...), with the task's own defaults for the latter.

The flags of the previous release (``--lr``, ``--grad-accum``, ``--precision fp32``, ...) are still accepted for one
release: each is rewritten to its standard spelling and named once in a deprecation line on stderr.

``bf16`` and ``fp16`` default to None here, meaning "auto": the run picks the precision of its hardware
(:func:`training.common.resolved_precision`); ``--bf16`` / ``--fp16`` ask for one, ``--bf16 false`` for neither.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from transformers import HfArgumentParser, TrainingArguments

#: an old flag's new spelling: a flag taking the same value, several flags each taking it, or per old value the
#: tokens that replace flag and value (the key None: the old flag given without a value)
Renamed = Union[str, tuple[str, ...], Mapping[Union[str, None], Sequence[str]]]

#: the old spellings the training CLIs shared
COMMON_RENAMES: dict[str, Renamed] = {
    "--out": "--output_dir",
    "--lr": "--learning_rate",
    "--epochs": "--num_train_epochs",
    "--batch-size": "--per_device_train_batch_size",
    "--batch_size": "--per_device_train_batch_size",
    "--grad-accum": "--gradient_accumulation_steps",
    "--grad_accum": "--gradient_accumulation_steps",
    "--keep-checkpoints": "--save_total_limit",
    "--keep_checkpoints": "--save_total_limit",
    "--num-workers": "--dataloader_num_workers",
    "--num_workers": "--dataloader_num_workers",
    "--warmup-ratio": "--warmup_steps",
    "--warmup_ratio": "--warmup_steps",
}
#: ``--batch-size`` of the CLIs whose evaluation took the training batch size too (captioner, refiner)
SHARED_BATCH_RENAMES: dict[str, Renamed] = {
    name: ("--per_device_train_batch_size", "--per_device_eval_batch_size") for name in ("--batch-size", "--batch_size")
}
#: ``--mixed-precision auto|no|bf16|fp16`` of the VQA and captioner CLIs
MIXED_PRECISION_VALUES: dict[str | None, Sequence[str]] = {
    "auto": (), "no": ("--bf16", "false", "--fp16", "false"), "bf16": ("--bf16",), "fp16": ("--fp16",),
}
MIXED_PRECISION_RENAMES: dict[str, Renamed] = {"--mixed-precision": MIXED_PRECISION_VALUES,
                                               "--mixed_precision": MIXED_PRECISION_VALUES}


def _deprecation(old: str, new: Sequence[str]) -> None:
    if os.environ.get("RANK", "0") == "0":  # several processes parse the same command: say it once
        print(f"Deprecated: {old} is now {' '.join(new) or 'the default'}; the old spelling goes in the next "
              "release.", file=sys.stderr)


def modernise(argv: Sequence[str], renamed: Mapping[str, Renamed]) -> list[str]:
    """``argv`` with each old flag in ``renamed`` (``--old VALUE`` or ``--old=VALUE``) replaced by its standard
    spelling, each old flag named once in a deprecation line on stderr. ValueError for an old flag's value that
    has no new spelling."""
    tokens, out, told = list(argv), [], set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        flag, has_value, value = token.partition("=")
        new = renamed.get(flag) if token.startswith("--") else None
        if new is None:
            out.append(token)
            continue
        if isinstance(new, Mapping):
            if not has_value:  # the next token is the value unless it is a flag (the training CLIs take no others)
                value = tokens[index] if index < len(tokens) and not tokens[index].startswith("-") else None
                index += value is not None
            if value not in new:
                raise ValueError(f"{flag}: {value or 'no value'} is not one of {', '.join(k for k in new if k)}")
            replacement = list(new[value])
        else:
            names = (new,) if isinstance(new, str) else new
            if has_value:
                replacement = [f"{name}={value}" for name in names]
            else:  # the value is the next token, repeated after each new flag
                replacement = list(names[:1])
                if len(names) > 1 and index < len(tokens):
                    index += 1
                    replacement = [part for name in names for part in (name, tokens[index - 1])]
        if flag not in told:
            told.add(flag)
            _deprecation(f"{flag} {value}" if isinstance(new, Mapping) and value else flag,
                         replacement if isinstance(new, Mapping) else [part.partition("=")[0] for part in replacement
                                                                       if part.startswith("--")])
        out += replacement
    return out


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(task: type, defaults: Mapping[str, Any], *extra: type, **kwargs) -> HfArgumentParser:
    """``HfArgumentParser`` of the ``task`` dataclass (and ``extra`` ones) with ``TrainingArguments`` last, the
    latter's defaults replaced by ``defaults``; ``--output_dir`` is required. ``kwargs`` go to the parser."""
    parser = HfArgumentParser((task, *extra, TrainingArguments), formatter_class=HelpFormatter, **kwargs)
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if "--output_dir" in action.option_strings:
            action.required = True
    return parser


def parse(parser: HfArgumentParser, argv: Sequence[str] | None, renamed: Mapping[str, Renamed]) -> tuple:
    """The dataclasses of ``argv`` (default: the command line) with the old spellings in ``renamed`` rewritten;
    exits with the usage and status 2 on a bad command, as argparse does."""
    try:
        argv = modernise(sys.argv[1:] if argv is None else argv, renamed)
    except ValueError as exc:
        parser.error(str(exc))
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def runtime_defaults() -> dict[str, Any]:
    """``TrainingArguments`` every training task shares, unless asked otherwise: precision picked by the run (see
    the module docstring), the CPU where no GPU is, no logging integrations, seed 0, a linear schedule."""
    return {"bf16": None, "fp16": None, "use_cpu": not torch.cuda.is_available(), "report_to": "none", "seed": 0,
            "lr_scheduler_type": "linear"}


def task_arguments(task: type, defaults: Mapping[str, Any], **options) -> tuple[Any, TrainingArguments]:
    """(``task`` dataclass, ``TrainingArguments``) for Python callers, as the CLI would build them: ``options``
    name fields of either (``num_train_epochs=2, learning_rate=1e-3, freeze_vision=True``), the rest keep the
    task's ``defaults``. TypeError for an option neither has."""
    names = {f.name for f in dataclasses.fields(task)}
    training_names = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    unknown = sorted(set(options) - names - training_names)
    if unknown:
        raise TypeError(f"Unknown training option(s) {unknown}: fields of {task.__name__} or TrainingArguments.")
    mine = {k: v for k, v in options.items() if k in names}
    training = {**defaults, **{k: v for k, v in options.items() if k not in names}}
    return task(**mine), TrainingArguments(**training)
