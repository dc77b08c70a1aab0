"""Figures of an evaluation, rebuilt from its prediction records (never from in-memory state).

For the whole run, each answer type and each question type: ``n``, the official VQA accuracy of the raw
VQA top-1 and of the LLM answer (percentages rounded to 2 digits, as :func:`vqa_llm.metrics.summarise_accuracy`
reports them), how many answers the LLM ``fixed`` (raw accuracy < LLM accuracy), ``broke`` (raw > LLM) or
changed without effect (``changed_no_effect``: a different answer with the same accuracy), ``flips``
(right→wrong and wrong→right answers, counts and percentages of the questions, right meaning at least 3 of 10
annotators gave the answer), ``failed``
questions (no answer at all, scored 0), ``llm_errors`` (the LLM failed and the VQA answer was kept) and
the mean seconds per pipeline stage (``latency_s``). Without the LLM the LLM figures are null.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from ..metrics import summarise_accuracy
from ..result import STAGES
from .records import is_failed

#: the VQA accuracy from which an answer counts as right in ``flips`` (3 of 10 annotators: 0.9; easy-VQA: 1.0)
RIGHT = 0.9
#: summary keys that hold measured times (differ from run to run, even with identical predictions)
TIMING_KEYS = ("latency_s", "wall_time_s", "questions_per_s", "sessions")


def _mean_latency(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    timed = [record["timings"] for record in records if record.get("timings")]
    if not timed:
        return {}
    stages = [stage for stage in STAGES if any(stage in t for t in timed)]
    stages += sorted({stage for t in timed for stage in t} - set(stages))
    return {stage: round(sum(t.get(stage, 0.0) for t in timed) / len(timed), 6) for stage in stages}


def _llm_counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    fixed = broke = no_effect = changed = 0
    for record in records:
        raw, llm = record["raw_accuracy"], record["llm_accuracy"]
        fixed += raw < llm
        broke += raw > llm
        changed += bool(record.get("changed"))
        no_effect += bool(record.get("changed")) and raw == llm
    return {"fixed": fixed, "broke": broke, "changed_no_effect": no_effect, "changed": changed}


def flip_counts(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Right→wrong and wrong→right answers, counts and percentages of the questions; an answer is right when it
    earns at least :data:`RIGHT` of the VQA accuracy (3 of 10 annotators gave it)."""
    right_to_wrong = sum(r["raw_accuracy"] >= RIGHT > r["llm_accuracy"] for r in records)
    wrong_to_right = sum(r["llm_accuracy"] >= RIGHT > r["raw_accuracy"] for r in records)
    n = max(len(records), 1)
    return {"right_to_wrong": right_to_wrong, "right_to_wrong_pct": round(100 * right_to_wrong / n, 2),
            "wrong_to_right": wrong_to_right, "wrong_to_right_pct": round(100 * wrong_to_right / n, 2)}


def group_stats(records: Sequence[dict[str, Any]], raw_accuracy: float, llm_accuracy: float | None) -> dict[str, Any]:
    """The figures of one group of records whose accuracies were already aggregated."""
    use_llm = llm_accuracy is not None
    stats: dict[str, Any] = {"n": len(records), "raw_accuracy": raw_accuracy, "llm_accuracy": llm_accuracy}
    counts = _llm_counts(records) if use_llm else dict.fromkeys(("fixed", "broke", "changed_no_effect", "changed"))
    stats.update(counts)
    stats["flips"] = flip_counts(records) if use_llm else None
    stats["failed"] = sum(is_failed(record) for record in records)
    stats["llm_errors"] = (sum(bool(record.get("error")) and not is_failed(record) for record in records)
                           if use_llm else None)
    stats["latency_s"] = _mean_latency(records)
    return stats


def _grouped(records: Sequence[dict[str, Any]], key: str, raw: dict[str, float],
             llm: dict[str, float] | None) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record[key]].append(record)
    return {name: group_stats(groups[name], raw[name], llm[name] if llm is not None else None)
            for name in sorted(groups)}


def build_summary(records: Sequence[dict[str, Any]], run_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of ``records`` (all of one run), with ``run_info`` (settings, models, sessions) merged in.

    ``wall_time_s`` adds the wall time of the run's sessions that finished (an interrupted session is not
    recorded); ``questions_per_s`` divides the questions answered in them by it. Raises ValueError when
    ``records`` is empty.
    """
    if not records:
        raise ValueError("No predictions to summarise: the run answered no question yet.")
    run_info = dict(run_info or {})
    question_types = [record["question_type"] for record in records]
    answer_types = [record["answer_type"] for record in records]
    raw = summarise_accuracy([r["raw_accuracy"] for r in records], question_types, answer_types)
    use_llm = all(record["llm_accuracy"] is not None for record in records)
    llm = (summarise_accuracy([r["llm_accuracy"] for r in records], question_types, answer_types)
           if use_llm else None)
    sessions = run_info.pop("sessions", [])
    wall = sum(float(session.get("wall_time_s") or 0.0) for session in sessions)
    answered = sum(int(session.get("answered") or 0) for session in sessions)
    return {
        **run_info,
        "use_llm": use_llm,
        "overall": group_stats(records, raw.overall, llm.overall if llm else None),
        "per_answer_type": _grouped(records, "answer_type", raw.per_answer_type,
                                    llm.per_answer_type if llm else None),
        "per_question_type": _grouped(records, "question_type", raw.per_question_type,
                                      llm.per_question_type if llm else None),
        "wall_time_s": round(wall, 3),
        "questions_per_s": round(answered / wall, 3) if wall > 0 else None,
        "sessions": sessions,
    }


def without_timings(summary: Any) -> Any:
    """``summary`` with every key of :data:`TIMING_KEYS` removed at any depth (to compare two runs)."""
    if isinstance(summary, dict):
        return {k: without_timings(v) for k, v in summary.items() if k not in TIMING_KEYS}
    if isinstance(summary, list):
        return [without_timings(v) for v in summary]
    return summary
