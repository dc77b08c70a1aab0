"""Batch evaluation: raw VQA answers vs LLM-refined answers on a VQA dataset, with the official metric.

    python -m vqa_llm.evaluate --dataset easy-vqa --limit 500 --seed 0 --profile bundled --out runs/easy
    python -m vqa_llm.evaluate --dataset vqav2 --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --images val2014/ --profile base --out runs/val
    python -m vqa_llm.evaluate ... --out runs/val --resume          # continue an interrupted run
    python -m vqa_llm.evaluate ... --template fewshot --runs 3 --examples 8 --example-bank DIR   # Prophet-style
    accelerate launch --num_processes 4 -m vqa_llm.evaluate ...     # one process per GPU
    python -m vqa_llm.evaluate --dataset vcr --annotations val.jsonl --images vcr1images/ --profile base \
        --out runs/vcr                                              # VCR models: see vqa_llm.evaluate_vcr

Writes into ``--out``: ``predictions.jsonl`` (one record per question, see
:mod:`vqa_llm.evaluation.records`), ``summary.json`` and ``summary.md`` (overall, per answer type and per
question type: raw and LLM accuracy, answers the LLM fixed/broke/changed without effect, mean latency per
stage, models, settings, wall time), ``accuracy_by_question_type.png`` and ``run.json`` (settings and sessions).

* Sample: ``--limit N --seed S`` evaluates a fixed random sample of N questions. The same dataset, seed and
  limit always give the same sample, whatever the batch size or number of processes; samples of one seed are
  nested, so a run can be extended with a larger ``--limit`` and ``--resume``.
* Resume: records are appended and fsync'ed batch by batch. ``--resume`` skips the questions that already
  have a record (a line cut short by a kill is dropped and answered again); the result equals an
  uninterrupted run. The settings that shape the answers (data, sample, models, template, top-k, LLM
  options) must be the ones of the interrupted run; batch size and process count may change. With
  ``--retry-errors`` the questions whose record has an error (an LLM timeout or failure that kept the VQA
  answer, an unreadable image) are answered again and the new record replaces the old one.
* Several processes (``accelerate launch``): the remaining questions are split into contiguous blocks, one
  per process, each on the device accelerate gives it; each process appends to its own part file and the
  main process merges them into ``predictions.jsonl`` (sorted by question id) and writes the summary.
  On CPU-only machines ``accelerate launch --multi_gpu --num_processes 2 ...`` starts 2 CPU processes
  (gloo); ``--cpu`` alone starts a single process.

Exit status: 0 done, 2 a user error (one ``Error:`` line on stderr, from the main process only), 130
interrupted (resume with ``--resume``). Under ``accelerate launch`` the launcher's own status is 1 whenever a
process fails; ``accelerate launch --quiet`` keeps it from adding its traceback to the error line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from project_base.output_folder import check_output_folder
from vle.vqa_data import VQADataError, VQAExample

from .cpu_gguf import cpu_gguf_runs
from .errors import VQALLMError
from .evaluation.command import (
    accelerate_state,
    build_parser,
    check_options,
    check_output,
    record_session,
    resolve_run_profile,
)
from .evaluation.data import VCR_DATASET, examples_from_args
from .evaluation.report import render_markdown, write_chart
from .evaluation.store import (
    OutputLayout,
    current_records,
    done_question_ids,
    merge_records,
    write_atomically,
)
from .evaluation.summary import build_summary
from .fast_vle import INT8_RECORDS, int8_runtime
from .fewshot.bank import ExampleBank
from .fewshot.locate import example_bank_path, open_example_bank
from .fewshot.runs import FEWSHOT_TEMPLATE
from .profiles import Profile

if TYPE_CHECKING:
    from accelerate import PartialState

EXIT_USER_ERROR = 2
#: seconds the other processes of a multi-process run wait before exiting on a user error that the main
#: process reports (a launcher stops every process once one has exited)
OTHER_PROCESSES_EXIT_DELAY_S = 2.0
EXIT_INTERRUPTED = 130
logger = logging.getLogger("vqa_llm.evaluate")


# ------------------------------------------------------------------------------------------- settings
def run_settings(args: argparse.Namespace, sample_size: int, use_llm: bool,
                 bank: ExampleBank | None = None) -> dict[str, Any]:
    """The settings that shape the predictions (must match when a run is resumed); ``bank``: the example bank
    of a fewshot run."""
    settings: dict[str, Any] = {"dataset": args.dataset}
    if args.dataset == "easy-vqa":
        settings["split"] = args.split
    else:
        settings.update({name: str(Path(getattr(args, name)).resolve())
                         for name in ("questions", "annotations", "images")})
        settings["skip_missing_images"] = args.skip_missing_images
    settings.update({
        "limit": args.limit, "seed": args.seed, "sample_size": sample_size, "top_k": args.top_k,
        "use_llm": use_llm, "template": args.template if use_llm else None,
        "max_new_tokens": args.max_new_tokens if use_llm else None,
    })
    if bank is not None:
        settings.update({"runs": args.runs, "n_examples": args.examples,
                         "example_bank": str(Path(bank.name).resolve()) if bank.path else bank.name,
                         "example_bank_size": len(bank)})
    return settings


# ------------------------------------------------------------------------------------------- finishing
def finalise(layout: OutputLayout, run_info: dict[str, Any]) -> dict[str, Any]:
    """Merge every record into predictions.jsonl (sorted by question id) and write the summary files from it."""
    records = merge_records(layout)
    summary = build_summary(records, run_info)
    write_atomically(layout.summary_json, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_chart(summary, layout.chart)
    write_atomically(layout.summary_md, render_markdown(summary, layout.chart.name))
    return summary


def _answer_remaining(args: argparse.Namespace, state: PartialState, profile: Profile, use_llm: bool,
                      layout: OutputLayout, remaining: list[VQAExample], bank: ExampleBank | None = None) -> None:
    """This process's contiguous block of ``remaining``, answered and appended to its predictions file."""
    from .evaluation.runner import AnswerSettings, answer_all
    from .evaluation.store import RecordWriter
    from .pipeline import VQALLMPipeline

    with state.split_between_processes(remaining) as shard:
        if not shard:
            return
        pipe = VQALLMPipeline.from_profile(profile, use_llm=use_llm, llm_timeout=args.llm_timeout,
                                           example_bank=bank)
        settings = AnswerSettings(top_k=args.top_k, use_llm=use_llm, template=args.template,
                                  max_new_tokens=args.max_new_tokens, runs=args.runs, n_examples=args.examples)
        single = state.num_processes == 1
        path = layout.predictions if single else layout.part(state.process_index, state.num_processes)
        with RecordWriter(path) as writer:
            answer_all(pipe, shard, settings, writer, args.batch_size,
                       progress=state.is_main_process and not args.quiet,
                       description="evaluating" if single else f"process 0 of {state.num_processes}")


def fewshot_bank(args: argparse.Namespace, profile: Profile, use_llm: bool) -> ExampleBank | None:
    """The example bank of a fewshot run with the LLM (``None`` otherwise); ExampleBankError when there is
    none or it is unusable."""
    if args.template != FEWSHOT_TEMPLATE or not use_llm:
        return None
    return open_example_bank(example_bank_path(args.example_bank, profile))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) the evaluation ``args`` describe; return the summary (on the main process; ``{}``
    on the others)."""
    if args.dataset == VCR_DATASET:
        from .evaluate_vcr import evaluate_vcr

        return evaluate_vcr(args)
    check_options(args)
    check_output_folder(args.out)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    state = accelerate_state(args)
    profile, reason = resolve_run_profile(args, state, use_llm=not args.no_llm)
    use_llm = not args.no_llm and profile.use_llm
    bank = fewshot_bank(args, profile, use_llm)
    sample = examples_from_args(args)
    settings = run_settings(args, len(sample), use_llm, bank)
    models = profile.model_ids()
    if profile.vqa_precision == "int8":  # int8 answers differ slightly: a resumed run must not mix the two, nor
        models["vqa_precision"] = INT8_RECORDS[int8_runtime()]  # the answers of the two int8 modes
    from .loading import chosen_llm_runtime

    if use_llm and chosen_llm_runtime(profile) == "llama.cpp":  # likewise for llama.cpp's replies
        models["llm_runtime"] = "llama.cpp"
        if cpu_gguf_runs(profile):  # and for the GGUF llama.cpp runs in place of the Hub LLM
            models["llm"] = profile.cpu_gguf_llm_id
    layout = OutputLayout(Path(args.out))
    records = current_records(layout)  # every record file, read once for both uses
    previous = check_output(layout, settings, models, args.resume, set(records) - {e.question_id for e in sample})
    done = done_question_ids(records, retry_errors=args.retry_errors)
    remaining = [example for example in sample if example.question_id not in done]
    state.wait_for_everyone()  # every process has read the folder before anyone writes to it

    run_info = {"settings": settings, "models": models, "profile": profile.name,
                "sessions": list(previous.get("sessions", []))}
    if state.is_main_process:
        layout.root.mkdir(parents=True, exist_ok=True)
        write_atomically(layout.run_info, json.dumps(run_info, indent=2) + "\n")
        logger.info("Profile %s: %s", profile.name, reason)
        logger.info("%d questions in the sample, %d already answered, %d to go%s (%d process(es)).",
                    len(sample), len(sample) - len(remaining), len(remaining),
                    " (failed ones included)" if args.retry_errors else "", state.num_processes)
    state.wait_for_everyone()
    if remaining:
        _answer_remaining(args, state, profile, use_llm, layout, remaining, bank)
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    record_session(layout, run_info, args, state, profile, reason, started, clock, len(remaining))
    summary = finalise(layout, run_info)
    overall = summary["overall"]
    logger.info("Done: %d questions, raw accuracy %.2f%%%s. Results in %s", overall["n"], overall["raw_accuracy"],
                f", LLM accuracy {overall['llm_accuracy']:.2f}%" if overall["llm_accuracy"] is not None else "",
                layout.root)
    return summary


def _close_process_group() -> None:
    """Close the processes' group after a run that had several (gloo can abort at exit when it is left open)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluator; return the exit status (0 done, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.WARNING)
    rank = int(os.environ.get("RANK", "0"))
    logging.getLogger("vqa_llm").setLevel(logging.WARNING if args.quiet or rank else logging.INFO)
    try:
        evaluate(args)
        _close_process_group()
    except (VQALLMError, VQADataError) as exc:
        if not rank:  # every process meets the same error: say it once
            print(f"Error: {exc}", file=sys.stderr, flush=True)
        else:  # let the main process say it before the launcher stops the others
            time.sleep(OTHER_PROCESSES_EXIT_DELAY_S)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"Interrupted. The predictions made so far are in {args.out}; run again with --resume to finish.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
