"""``python -m vqa_llm.evaluate --dataset vcr``: VCR models scored on a labelled VCR annotation file.

    python -m vqa_llm.evaluate --dataset vcr --annotations val.jsonl --images vcr1images/ --profile base --out runs/vcr
    python -m vqa_llm.evaluate --dataset vcr ... --vcr-q2a DIR --vcr-qa2r DIR    # models other than the profile's
    accelerate launch --num_processes 4 -m vqa_llm.evaluate --dataset vcr ...    # one process per GPU

The run is that of the VQA evaluator (:mod:`vqa_llm.evaluate`) with other answers: the same ``--limit/--seed``
sample, output folder, ``--resume`` / ``--retry-errors`` (the settings check included), sharding over processes
and merge; no LLM, captioner or VQA model is loaded. Records and summary: :mod:`vqa_llm.evaluation.vcr`.
The flags of VQA runs only (``--template``, ``--top-k``, ``--split``, ...) are refused when given a value
other than their default; the VQA pipeline's model flags (``--vqa-model``, ``--llm``, ...) are ignored.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from project_base.output_folder import check_output_folder

from .evaluation.command import (
    accelerate_state,
    build_parser,
    check_options,
    check_output,
    record_session,
    resolve_run_profile,
)
from .evaluation.store import (
    OutputLayout,
    RecordWriter,
    current_records,
    done_question_ids,
    merge_records,
    write_atomically,
)
from .evaluation.vcr import build_vcr_summary, check_vcr_options, load_vcr_sample, render_vcr_markdown, vcr_settings
from .evaluation.vcr_runner import check_vcr_hub, load_vcr_models, score_all, vcr_model_ids
from .profiles import Profile

if TYPE_CHECKING:
    from accelerate import PartialState

    from vle.vcr_data import VCRItem

logger = logging.getLogger("vqa_llm.evaluate")


def finalise_vcr(layout: OutputLayout, run_info: dict[str, Any]) -> dict[str, Any]:
    """Merge every record into predictions.jsonl (sorted by id) and write summary.json and summary.md from it."""
    summary = build_vcr_summary(merge_records(layout), run_info)
    write_atomically(layout.summary_json, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_atomically(layout.summary_md, render_vcr_markdown(summary))
    return summary


def _score_remaining(args: argparse.Namespace, state: PartialState, profile: Profile, layout: OutputLayout,
                     remaining: list[VCRItem]) -> None:
    """This process's contiguous block of ``remaining``, scored and appended to its predictions file."""
    with state.split_between_processes(remaining) as shard:
        if not shard:
            return
        models = load_vcr_models(profile)
        single = state.num_processes == 1
        path = layout.predictions if single else layout.part(state.process_index, state.num_processes)
        with RecordWriter(path) as writer:
            score_all(models, shard, writer, args.batch_size, progress=state.is_main_process and not args.quiet,
                      description="evaluating VCR" if single else f"process 0 of {state.num_processes}")


def evaluate_vcr(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the VCR evaluation ``args`` describe; return the summary (on the main process; ``{}`` on
    the others)."""
    check_vcr_options(args, build_parser())
    check_options(args)
    check_output_folder(args.out)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    state = accelerate_state(args)
    profile, reason = resolve_run_profile(args, state, use_llm=False, hub_check=check_vcr_hub)
    models = vcr_model_ids(profile)
    sample = load_vcr_sample(args.annotations, args.images, args.limit, args.seed)
    settings = vcr_settings(args, len(sample))
    layout = OutputLayout(Path(args.out))
    records = current_records(layout)
    previous = check_output(layout, settings, models, args.resume, set(records) - {i.annot_id for i in sample})
    done = done_question_ids(records, retry_errors=args.retry_errors)
    remaining = [item for item in sample if item.annot_id not in done]
    state.wait_for_everyone()  # every process has read the folder before anyone writes to it

    run_info = {"settings": settings, "models": models, "profile": profile.name,
                "sessions": list(previous.get("sessions", []))}
    if state.is_main_process:
        layout.root.mkdir(parents=True, exist_ok=True)
        write_atomically(layout.run_info, json.dumps(run_info, indent=2) + "\n")
        logger.info("Profile %s: %s", profile.name, reason)
        logger.info("%d VCR items in the sample, %d already scored, %d to go%s (%d process(es)).", len(sample),
                    len(sample) - len(remaining), len(remaining),
                    " (failed ones included)" if args.retry_errors else "", state.num_processes)
    state.wait_for_everyone()
    if remaining:
        _score_remaining(args, state, profile, layout, remaining)
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    record_session(layout, run_info, args, state, profile, reason, started, clock, len(remaining))
    summary = finalise_vcr(layout, run_info)
    overall = summary["overall"]
    logger.info("Done: %d items, Q→A %.2f%%, QA→R %.2f%%, Q→AR %.2f%%. Results in %s", overall["n"],
                overall["q2a_accuracy"], overall["qa2r_accuracy"], overall["q2ar_accuracy"], layout.root)
    return summary
