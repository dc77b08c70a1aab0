"""Raw VLE vs LLM zero-shot vs Prophet-style few-shot prompting on easy-VQA, as one markdown table.

    .venv/bin/python bench/fewshot_table.py                                   # 2,000 questions, bundled profile
    .venv/bin/python bench/fewshot_table.py --limit 200 --out runs/fewshot-200
    .venv/bin/python bench/fewshot_table.py --table-only                      # reprint from finished runs
    .venv/bin/python bench/fewshot_table.py --table-only --common             # runs in progress: shared questions
    OMP_NUM_THREADS=1 .venv/bin/python bench/fewshot_table.py --processes 2   # 2 evaluator processes per run

Runs the evaluator (``python -m vqa_llm.evaluate``) four times on the fixed seeded easy-VQA test sample
(``--limit 2000 --seed 0``) with the ``bundled`` profile, each into ``OUT/<configuration>/``:

1. ``raw``        — raw VLE top-1 (``--no-llm``);
2. ``short``      — LLM zero-shot with the ``short`` template;
3. ``fewshot-t1`` — LLM ``fewshot``, 8 examples, 1 run;
4. ``fewshot-t3`` — LLM ``fewshot``, 8 examples per run, 3 voted runs.

A configuration whose folder already holds a finished run is not run again; an interrupted one is resumed
(``--resume --retry-errors``: questions whose LLM timed out are answered again; the number of processes may change
between sessions). The example bank is ``--example-bank`` (default: the bank committed beside the bundled
models).
The table gives, per configuration, the official VQA accuracy (%) overall and per question kind (yes/no, shape,
color), the answers the LLM fixed and broke compared with the raw VLE top-1, and seconds per question: process
seconds (wall time × evaluator processes, models loading included) over the questions answered, summed over the
sessions that finished, so one process and several give comparable figures. ``--table-only --common`` compares
runs still in progress on the questions all of them have answered. A second table says where each LLM
configuration broke answers: per question kind, with negated yes/no questions ("is no red shape present?",
"does the image not contain a circle?") apart.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ("yes/no", "shape", "color")
CONFIGURATIONS: dict[str, list[str]] = {
    "raw": ["--no-llm"],
    "short": ["--template", "short"],
    "fewshot-t1": ["--template", "fewshot", "--examples", "8", "--runs", "1"],
    "fewshot-t3": ["--template", "fewshot", "--examples", "8", "--runs", "3"],
}
NEGATION = re.compile(r"\b(?:no|not)\b|n't\b", re.IGNORECASE)
BROKEN_KINDS = ("yes/no, negated", "yes/no, plain", "shape", "color")
LABELS = {
    "raw": "raw VLE (no LLM)",
    "short": "LLM zero-shot (`short`)",
    "fewshot-t1": "LLM `fewshot` n=8, T=1",
    "fewshot-t3": "LLM `fewshot` n=8, T=3",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default="runs/fewshot-table", help="folder of the four runs")
    parser.add_argument("--limit", type=int, default=2000, help="questions in the sample (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")
    parser.add_argument("--profile", default="bundled", help="model profile (default: bundled)")
    parser.add_argument("--example-bank", default=None, help="example bank folder (default: the bundled bank)")
    parser.add_argument("--batch-size", type=int, default=16, help="questions per batch (default: 16)")
    parser.add_argument("--llm-timeout", type=float, default=600.0,
                        help="seconds one LLM batch may take (default: 600)")
    parser.add_argument("--processes", type=int, default=1,
                        help="evaluator processes per run, through accelerate launch (default: 1)")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGURATIONS), default=list(CONFIGURATIONS),
                        help="run only these configurations")
    parser.add_argument("--table-only", action="store_true", help="do not run anything; print the table")
    parser.add_argument("--common", action="store_true",
                        help="with --table-only: compare the runs, finished or not, on the questions all have answered")
    return parser


def evaluator_command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The evaluator command line of configuration ``name`` (through ``accelerate launch`` for several
    processes; on a CPU-only machine ``--multi_gpu`` is what starts them)."""
    launcher = [sys.executable, "-m"]
    if args.processes > 1:
        launcher += ["accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]
    command = [*launcher, "vqa_llm.evaluate", "--dataset", "easy-vqa", "--split", "test",
               "--limit", str(args.limit), "--seed", str(args.seed), "--profile", args.profile,
               "--batch-size", str(args.batch_size), "--llm-timeout", str(args.llm_timeout), "--out", str(out),
               *CONFIGURATIONS[name]]
    if args.example_bank and "fewshot" in CONFIGURATIONS[name]:
        command += ["--example-bank", args.example_bank]
    return command


def finished(out: Path, limit: int) -> bool:
    """Whether ``out`` holds a summary of all ``limit`` questions."""
    summary = out / "summary.json"
    return summary.is_file() and json.loads(summary.read_text())["overall"]["n"] >= limit


def run(name: str, args: argparse.Namespace) -> None:
    out = Path(args.out) / name
    if finished(out, args.limit):
        print(f"[{name}] already done in {out}", file=sys.stderr)
        return
    command = evaluator_command(name, args, out)
    if (out / "predictions.jsonl").is_file() or list(out.glob("predictions.part-*")):
        command += ["--resume", "--retry-errors"]  # an LLM batch that timed out is answered again
    print(f"[{name}] {' '.join(command[1:])}", file=sys.stderr, flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _row(name: str, summary: dict, seconds: float) -> str:
    key = "llm_accuracy" if summary["use_llm"] else "raw_accuracy"
    overall, kinds = summary["overall"], summary["per_question_type"]
    per_kind = [_pct(kinds[kind][key]) if kind in kinds else "–" for kind in KINDS]
    fixed = "–" if not summary["use_llm"] else str(overall["fixed"])
    broken = "–" if not summary["use_llm"] else str(overall["broke"])
    return (f"| {LABELS[name]} | {_pct(overall[key])} | " + " | ".join(per_kind)
            + f" | {fixed} | {broken} | {seconds:.3f} | {overall['n']} |")


HEADER = ["configuration", "overall", *KINDS, "fixed", "broken", "s/question", "n"]
HEADER_LINES = ["| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]


def process_seconds_per_question(summary: dict) -> float:
    """Wall time × processes over the questions answered, summed over the sessions that finished (a resumed run
    counts right; a 2-process session costs twice its wall time); the mean pipeline latency if none finished."""
    sessions = summary.get("sessions") or []
    answered = sum(int(session.get("answered") or 0) for session in sessions)
    if not answered:
        return summary["overall"]["latency_s"].get("total", 0.0)
    return sum(float(s.get("wall_time_s") or 0.0) * int(s.get("processes") or 1) for s in sessions) / answered


def table(out_root: Path, names: list[str], runs: dict[str, dict]) -> str:
    """The markdown table of the finished configurations among ``names`` (s/question: see
    :func:`process_seconds_per_question`); a run still going (records in ``runs``) says how far it is."""
    lines = list(HEADER_LINES)
    for name in names:
        path = out_root / name / "summary.json"
        if not path.is_file():
            state = f"(in progress: {len(runs[name])} answered)" if name in runs else "(not run)"
            lines.append(f"| {LABELS[name]} | " + " | ".join([state] + [""] * (len(HEADER) - 2)) + " |")
            continue
        summary = json.loads(path.read_text())
        lines.append(_row(name, summary, process_seconds_per_question(summary)))
    return "\n".join(lines)


def read_runs(out_root: Path, names: list[str]) -> dict[str, dict]:
    """Per configuration with predictions (finished or not), its records by question id."""
    from vqa_llm.evaluation.store import OutputLayout, current_records

    runs = {name: current_records(OutputLayout(out_root / name)) for name in names}
    return {name: records for name, records in runs.items() if records}


def common_questions(runs: dict[str, dict]) -> list:
    """The question ids every run in ``runs`` has answered without an error (a timed-out LLM batch that kept
    the VQA answers is left out until it is answered again), sorted."""
    answered = [{i for i, record in records.items() if not record.get("error")} for records in runs.values()]
    return sorted(set.intersection(*answered), key=str) if answered else []


def common_table(runs: dict[str, dict], common: list) -> str:
    """The table of ``runs`` (possibly still in progress) over the questions ``common``. s/question here is the
    median per-question pipeline latency (a batch's time shared by its questions), which a slow batch (the
    machine busy, a resumed start) barely moves."""
    from vqa_llm.evaluation.summary import build_summary

    lines = list(HEADER_LINES)
    for name, records in runs.items():
        if common:
            shared = [records[i] for i in common]
            seconds = statistics.median(r.get("timings", {}).get("total", 0.0) for r in shared)
            lines.append(_row(name, build_summary(shared), seconds))
    return "\n".join(lines)


def broken_kind(record: dict) -> str:
    """The record's question kind, with negated yes/no questions ("is no red shape present?") apart."""
    kind = record["question_type"]
    if kind == "yes/no":
        return "yes/no, negated" if NEGATION.search(record["question"]) else "yes/no, plain"
    return kind


def broken_table(runs: dict[str, dict], questions: dict[str, list]) -> str:
    """Where each LLM configuration broke answers (the evaluator summary's ``broke``), by question kind:
    broken / questions of that kind, over the question ids ``questions[name]``."""
    from vqa_llm.evaluation.summary import build_summary

    lines = ["| configuration | " + " | ".join(BROKEN_KINDS) + " |", "|---|" + "---:|" * len(BROKEN_KINDS)]
    for name, records in runs.items():
        by_kind = defaultdict(list)
        for i in questions[name]:
            by_kind[broken_kind(records[i])].append(records[i])
        overall = {kind: build_summary(group)["overall"] for kind, group in by_kind.items()}
        if not overall or any(o["llm_accuracy"] is None for o in overall.values()):
            continue  # no questions, or no LLM: nothing to break
        cells = [f"{overall[k]['broke']} / {overall[k]['n']}" if k in overall else "0 / 0" for k in BROKEN_KINDS]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.processes < 1:
        raise SystemExit("--processes must be at least 1")
    if not args.table_only:
        for name in args.only:
            run(name, args)
    intro = (f"easy-VQA test, fixed sample of {args.limit} questions (seed {args.seed}), profile {args.profile}; "
             "accuracy = official VQA accuracy (%); fixed/broken = answers the LLM made right/wrong vs the raw VLE "
             "top-1.")
    out_root, names = Path(args.out), list(CONFIGURATIONS)
    runs = read_runs(out_root, names)
    if args.common:
        common = common_questions(runs)
        print(f"{intro} Only the {len(common)} questions answered (without error) by every run so far; "
              "s/question = median pipeline latency.\n")
        print(common_table(runs, common))
        questions = {name: common for name in runs}
    else:
        print(intro + " s/question = process seconds per question (wall time × evaluator processes over the "
              "questions answered, models loading included).\n")
        print(table(out_root, names, runs))
        runs = {name: records for name, records in runs.items() if finished(out_root / name, args.limit)}
        questions = {name: sorted(records, key=str) for name, records in runs.items()}
    print("\nBroken answers by question kind (broken / questions of that kind):\n")
    print(broken_table(runs, questions))
    for name, records in runs.items():
        failed = sum(bool(records[i].get("error")) for i in questions[name])
        if failed:
            print(f"\nWarning: {failed} answers of {name} are errors (the LLM timed out or failed and the VQA "
                  f"answer was kept); answer them again with: python bench/fewshot_table.py --only {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
