"""The evaluator's command line and run bookkeeping, shared by the VQA and the VCR evaluations
(:mod:`vqa_llm.evaluate`, :mod:`vqa_llm.evaluate_vcr`): the parser, the option checks, the run's profile decided
once for all processes, the check of ``--out`` against an earlier run, and the session record in run.json."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import VQALLMError
from ..fewshot.arguments import add_template_arguments
from ..fewshot.runs import DEFAULT_RUNS, FEWSHOT_TEMPLATE, check_counts
from ..hub_access import check_profile_hub
from ..inputs import check_template
from ..profiles import Profile, add_profile_arguments, overrides_from_args, resolve_profile
from .data import DATASETS, add_dataset_arguments
from .errors import EvaluationError
from .store import OutputLayout, write_atomically

if TYPE_CHECKING:
    from accelerate import PartialState

# settings that may differ between the sessions of one run (the sample is nested in the seed)
MAY_CHANGE_ON_RESUME = ("limit", "sample_size")
# how long a process that finished its block waits at a barrier for the others; torch's default (30 min) is
# shorter than the difference between blocks of a run that takes hours. A crashed process does not leave the
# others waiting: accelerate launch (torchrun) stops them all.
SHARD_WAIT = timedelta(hours=24)
logger = logging.getLogger("vqa_llm.evaluate")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m vqa_llm.evaluate`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m vqa_llm.evaluate",
        description="Evaluate raw VQA answers and LLM-refined answers on a VQA dataset (official VQA accuracy), "
                    "or VCR models on VCR files (--dataset vcr: Q→A, QA→R, Q→AR accuracy).",
        epilog="Several processes/GPUs: accelerate launch [--num_processes N] -m vqa_llm.evaluate ...",
    )
    add_dataset_arguments(parser.add_argument_group("data"), split="test", datasets=DATASETS)
    run = parser.add_argument_group("answering")
    add_template_arguments(run)
    run.add_argument("--top-k", type=int, default=5, help="VQA candidates given to the LLM (default: 5)")
    run.add_argument("--batch-size", type=int, default=16, help="questions per batch (default: 16)")
    run.add_argument("--max-new-tokens", type=int, default=64, help="longest LLM reply in tokens (default: 64)")
    run.add_argument("--llm-timeout", type=float, default=120.0,
                     help="seconds one LLM batch may take before its questions keep the VQA answer (default: 120)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="output folder (created if missing)")
    out.add_argument("--resume", action="store_true",
                     help="continue the run in --out: skip questions that already have a prediction")
    out.add_argument("--retry-errors", action="store_true",
                     help="with --resume: answer again the questions whose record has an error (e.g. the LLM timed "
                          "out and the VQA answer was kept); the new record replaces it")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar or messages on stderr")
    add_profile_arguments(parser)
    return parser


def check_options(args: argparse.Namespace) -> None:
    """Refuse unusable answering options before any model loads (BadSettingError / EvaluationError)."""
    for flag, value in (("--batch-size", args.batch_size), ("--top-k", args.top_k),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise EvaluationError(f"{flag} must be at least 1, got {value}.")
    if args.llm_timeout <= 0:
        raise EvaluationError(f"--llm-timeout must be a positive number of seconds, got {args.llm_timeout}.")
    if args.retry_errors and not args.resume:
        raise EvaluationError("--retry-errors answers again the failed questions of an earlier run; use it "
                              "with --resume.")
    check_template(args.template)
    check_counts(args.runs, args.examples)
    if args.template != FEWSHOT_TEMPLATE and (args.runs != DEFAULT_RUNS or args.example_bank):
        raise EvaluationError(f"--runs and --example-bank apply to --template {FEWSHOT_TEMPLATE} only.")


def check_output(layout: OutputLayout, settings: dict[str, Any], models: dict[str, Any], resume: bool,
                  outside_sample: set[Any]) -> dict[str, Any]:
    """The previous run's info when resuming (``{}`` for a fresh run); EvaluationError when ``--out`` holds a
    run that this one must not touch or continue (``outside_sample``: ids of its records not in this sample)."""
    has_records = bool(layout.record_files())
    if not resume:
        if has_records:
            raise EvaluationError(f"{layout.root} already holds predictions of an evaluation run. Pass --resume to "
                                  "continue it, or choose another --out.")
        return {}
    previous: dict[str, Any] = {}
    if has_records and layout.run_info.is_file():
        try:
            previous = json.loads(layout.run_info.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{layout.run_info} is not valid JSON ({exc}); restore it or delete it to resume "
                                  "without the settings check.") from None
        old = {**previous.get("settings", {}), "models": previous.get("models")}
        new = {**settings, "models": models}
        differ = [key for key in sorted(set(old) | set(new))
                  if key not in MAY_CHANGE_ON_RESUME and old.get(key) != new.get(key)]
        if differ:
            shown = "; ".join(f"{key}: was {old.get(key)!r}, now {new.get(key)!r}" for key in differ)
            raise EvaluationError(f"Cannot resume the run in {layout.root} with other settings ({shown}). Use "
                                  "the same options as before, or another --out.")
    if outside_sample:
        example = next(iter(outside_sample))
        raise EvaluationError(f"{layout.root} has predictions for {len(outside_sample)} questions outside this run's "
                              f"sample (e.g. {example!r}); resume with the earlier --limit/--seed (a larger --limit is "
                              "fine), or use another --out.")
    return previous


def record_session(layout: OutputLayout, run_info: dict[str, Any], args: argparse.Namespace, state: PartialState,
                   profile: Profile, reason: str, started: datetime, clock: float, answered: int) -> None:
    """Append this session (start, wall time, how many answered, processes, device, why this profile) to
    ``run_info`` and write run.json (main process)."""
    run_info["sessions"].append({
        "started": started.isoformat(timespec="seconds"), "wall_time_s": round(time.perf_counter() - clock, 3),
        "answered": answered, "processes": state.num_processes, "batch_size": args.batch_size,
        "device": str(state.device) if state.num_processes > 1 else (args.device or profile.device or "default"),
        "profile_reason": reason,
    })
    write_atomically(layout.run_info, json.dumps(run_info, indent=2) + "\n")


def accelerate_state(args: argparse.Namespace) -> PartialState:
    """accelerate's process state (one process without ``accelerate launch``)."""
    import torch
    from accelerate import PartialState

    use_cpu = (os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
               or str(args.device or "").startswith("cpu") or not torch.cuda.is_available())
    return PartialState(cpu=use_cpu, timeout=SHARD_WAIT)  # timeout: used only when several processes run


def resolve_run_profile(args: argparse.Namespace, state: PartialState, use_llm: bool,
                        hub_check: Callable[[Profile], tuple[Profile, str]] | None = None) -> tuple[Profile, str]:
    """The run's profile and why it was chosen, decided once by the main process (``auto`` asks the Hub, and
    processes that asked it separately could disagree and mix two profiles in one run) and shared with the
    others; each process then runs it on its own device (unless ``--device`` names one for all). ``hub_check``:
    what checks the Hub for the run's models (default: the VQA pipeline's, :func:`check_profile_hub`)."""
    from accelerate.utils import broadcast_object_list

    chosen: list[Any] = [None]
    if state.is_main_process:
        try:
            profile, reason = resolve_profile(args.profile, overrides_from_args(args))
            if hub_check is not None:
                profile, note = hub_check(profile)
            else:  # seconds without a Hub
                profile, note = check_profile_hub(profile, use_llm=use_llm and profile.use_llm)
            chosen = [(profile, reason + (f"; {note}" if note else ""))]
        except VQALLMError as exc:  # every process stops with the same message
            chosen = [exc]
    if state.num_processes > 1:
        chosen = broadcast_object_list(chosen, from_process=0)
    if isinstance(chosen[0], Exception):
        raise chosen[0]
    profile, reason = chosen[0]
    if state.num_processes == 1:
        return profile, reason
    if args.device:
        logger.warning("--device %s is used by all %d processes; leave it out to give each its own device.",
                       args.device, state.num_processes)
        return profile, reason
    return replace(profile, device=str(state.device)), reason
