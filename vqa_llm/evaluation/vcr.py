"""VCR evaluation (``python -m vqa_llm.evaluate --dataset vcr``): the sample, the records, the summary and its page.

Each item is scored twice, as VCR defines it: Q→A (which of the four answers answers the question) and QA→R
(which of the four rationales explains the *right* answer: the annotation's ``answer_label``, whatever Q→A chose).
Q→AR counts an item right when both are. The models and the batches are in :mod:`.vcr_runner`.

A record is one JSON object a line of ``predictions.jsonl``::

    question_id (= annot_id), annot_id, image, objects, question, question_kind,
    answer_label, rationale_label,
    q2a_scores [4 probabilities], q2a_pred, q2a_correct,
    qa2r_scores [4 probabilities], qa2r_pred, qa2r_correct,
    q2ar_correct, error, timings {"q2a": seconds, "qa2r": seconds}

``question_kind`` is the record's own field when the annotation file has one (generated shape scenes), else
null. An item that could not be scored (an unreadable image) has empty scores, null predictions, ``error``
saying why, and counts as wrong. The summary (:func:`build_vcr_summary`) gives, overall and per question kind
(when the records carry one), ``n``, ``q2a_accuracy``, ``qa2r_accuracy`` and ``q2ar_accuracy`` (percentages
rounded to 2 digits, like the VQA summary's ``raw_accuracy``), ``failed`` and the mean seconds per task
(``latency_s``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vle.vcr_data import VCRDataError, VCRItem, load_vcr

from .data import VCR_DATASET, sample_examples
from .errors import EvaluationError
from .summary import _mean_latency

#: the evaluator's flags that do not apply to a VCR run (VQA data, prompts, the LLM): (flag, argparse dest)
NOT_FOR_VCR = (
    ("--split", "split"), ("--questions", "questions"), ("--skip-missing-images", "skip_missing_images"),
    ("--template", "template"), ("--runs", "runs"), ("--examples", "examples"), ("--example-bank", "example_bank"),
    ("--top-k", "top_k"), ("--max-new-tokens", "max_new_tokens"), ("--llm-timeout", "llm_timeout"),
)
#: the accuracies of a summary group, by task
ACCURACIES = {"q2a": "q2a_accuracy", "qa2r": "qa2r_accuracy", "q2ar": "q2ar_accuracy"}


def check_vcr_options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """EvaluationError when a flag that only a VQA run uses was given a value other than its default, or the
    VCR paths are missing. Model flags of the VQA pipeline (``--vqa-model``, ``--llm``, ...) are ignored."""
    given = [flag for flag, dest in NOT_FOR_VCR if getattr(args, dest) != parser.get_default(dest)]
    if given:
        raise EvaluationError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to the VQA datasets "
                              f"only: a --dataset {VCR_DATASET} run "
                              "scores the VCR models' four answers and four rationales (no prompt, no LLM). "
                              "Leave them out.")
    missing = [flag for flag, value in (("--annotations", args.annotations), ("--images", args.images)) if not value]
    if missing:
        raise EvaluationError(f"--dataset {VCR_DATASET} needs {' and '.join(missing)}: pass the labelled VCR "
                              "annotations file (e.g. val.jsonl) and the folder its img_fn and metadata_fn are "
                              "relative to.")


def load_vcr_sample(annotations: str | Path, images: str | Path, limit: int | None, seed: int) -> list[VCRItem]:
    """The labelled items of a VCR file, then the ``--limit``/``--seed`` sample of them
    (:func:`~vqa_llm.evaluation.data.sample_examples`, keyed by ``annot_id``). EvaluationError for a missing or
    malformed file (the message names the file, line and record) or items without labels."""
    try:
        items = load_vcr(annotations, images, require_labels=None)
    except VCRDataError as exc:
        raise EvaluationError(str(exc)) from None
    unlabelled = [item.annot_id for item in items if not item.labelled]
    if unlabelled:
        raise EvaluationError(f"{annotations}: {len(unlabelled)} of {len(items)} items have no answer_label/"
                              f"rationale_label (first: {unlabelled[0]}); evaluation scores against them: pass a "
                              "labelled file (a val split), not a test split.")
    return sample_examples(items, limit, seed, key=lambda item: item.annot_id)


def vcr_settings(args: argparse.Namespace, sample_size: int) -> dict[str, Any]:
    """The settings that shape a VCR run's predictions (they must match when it is resumed)."""
    return {"dataset": VCR_DATASET, "annotations": str(Path(args.annotations).resolve()),
            "images": str(Path(args.images).resolve()), "limit": args.limit, "seed": args.seed,
            "sample_size": sample_size}


# ------------------------------------------------------------------------------------------- records
def _base(item: VCRItem) -> dict[str, Any]:
    return {"question_id": item.annot_id, "annot_id": item.annot_id, "image": item.image_path,
            "objects": list(item.objects), "question": item.question, "question_kind": item.question_kind,
            "answer_label": item.answer_label, "rationale_label": item.rationale_label}


def vcr_record(item: VCRItem, q2a_scores: Sequence[float], qa2r_scores: Sequence[float],
               timings: dict[str, float]) -> dict[str, Any]:
    """The record of one scored item (scores: the four softmax probabilities of each task)."""
    record = _base(item)
    for task, scores in (("q2a", q2a_scores), ("qa2r", qa2r_scores)):
        scores = [float(score) for score in scores]
        pred = max(range(len(scores)), key=scores.__getitem__)
        label = item.answer_label if task == "q2a" else item.rationale_label
        record.update({f"{task}_scores": scores, f"{task}_pred": pred, f"{task}_correct": pred == label})
    record.update({"q2ar_correct": record["q2a_correct"] and record["qa2r_correct"], "error": None,
                   "timings": {task: round(float(seconds), 6) for task, seconds in timings.items()}})
    return record


def failed_vcr_record(item: VCRItem, error: str) -> dict[str, Any]:
    """The record of an item that could not be scored (it counts as wrong; ``error`` says why)."""
    record = _base(item)
    for task in ("q2a", "qa2r"):
        record.update({f"{task}_scores": [], f"{task}_pred": None, f"{task}_correct": False})
    record.update({"q2ar_correct": False, "error": error, "timings": {}})
    return record


# ------------------------------------------------------------------------------------------- summary
def _percent(count: int, total: int) -> float:
    return round(100.0 * count / total, 2)


def vcr_group_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``n``, the three accuracies (%), ``failed`` and ``latency_s`` of a group of records."""
    stats: dict[str, Any] = {"n": len(records)}
    for task, key in ACCURACIES.items():
        stats[key] = _percent(sum(bool(record[f"{task}_correct"]) for record in records), len(records))
    stats["failed"] = sum(bool(record.get("error")) for record in records)
    stats["latency_s"] = _mean_latency(records)
    return stats


def build_vcr_summary(records: Sequence[dict[str, Any]], run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of a VCR run's ``records`` with ``run_info`` (settings, models, sessions) merged in;
    ``per_question_kind`` only when records carry a ``question_kind``. ValueError when ``records`` is empty."""
    if not records:
        raise ValueError("No predictions to summarise: the run scored no item yet.")
    run_info = dict(run_info or {})
    sessions = run_info.pop("sessions", [])
    wall = sum(float(session.get("wall_time_s") or 0.0) for session in sessions)
    answered = sum(int(session.get("answered") or 0) for session in sessions)
    summary: dict[str, Any] = {**run_info, "overall": vcr_group_stats(records)}
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("question_kind") is not None:
            kinds[record["question_kind"]].append(record)
    if kinds:
        summary["per_question_kind"] = {kind: vcr_group_stats(kinds[kind]) for kind in sorted(kinds)}
    summary.update({"wall_time_s": round(wall, 3), "questions_per_s": round(answered / wall, 3) if wall > 0 else None,
                    "sessions": sessions})
    return summary


def _row(name: str, stats: dict[str, Any]) -> str:
    values = [str(stats["n"]), *(f"{stats[key]:.2f}" for key in ACCURACIES.values()), str(stats["failed"])]
    return "| " + " | ".join([name, *values]) + " |"


def render_vcr_markdown(summary: dict[str, Any]) -> str:
    """``summary.md`` of a VCR run: data, models, the accuracy table (overall, per question kind), wall time."""
    lines = ["# VCR evaluation: Q→A, QA→R, Q→AR", ""]
    lines += [f"- **{key}**: {value}" for key, value in summary.get("settings", {}).items()]
    lines += [f"- **model {role}**: {model}" for role, model in summary.get("models", {}).items()]
    lines += ["", "Accuracy in %. QA→R picks the rationale given the right answer; Q→AR: both right.", "",
              "| group | n | Q→A % | QA→R % | Q→AR % | failed |", "|---|---:|---:|---:|---:|---:|",
              _row("all items", summary["overall"])]
    lines += [_row(kind, stats) for kind, stats in summary.get("per_question_kind", {}).items()]
    latency = summary["overall"]["latency_s"]
    rate = summary.get("questions_per_s")
    lines += ["", "Mean seconds per item: " + (", ".join(f"{task} {s:.4f}" for task, s in latency.items()) or "–")
              + f". Wall time: {summary.get('wall_time_s', 0):.1f} s over {len(summary.get('sessions', []))} "
              f"session(s)" + (f", {rate:.2f} items/s." if rate else "."), ""]
    return "\n".join(lines)
