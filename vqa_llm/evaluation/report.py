"""Human-readable outputs of an evaluation: ``summary.md`` and the accuracy chart (PNG).

The chart is drawn with matplotlib's object API on an Agg canvas (no display, no global pyplot state):
one pair of bars per question type, raw VQA accuracy vs LLM accuracy (raw only when the LLM was off).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_COLUMNS = ("n", "raw acc %", "LLM acc %", "Δ", "fixed", "broke", "changed, no effect", "failed", "LLM errors")


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _row(name: str, stats: dict[str, Any]) -> str:
    raw, llm = stats["raw_accuracy"], stats["llm_accuracy"]
    delta = None if llm is None else f"{llm - raw:+.2f}"
    values = (stats["n"], raw, llm, delta, stats["fixed"], stats["broke"], stats["changed_no_effect"],
              stats["failed"], stats["llm_errors"])
    return "| " + " | ".join([name or "(none)", *map(_cell, values)]) + " |"


def _table(title: str, groups: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"## {title}", "", "| group | " + " | ".join(_COLUMNS) + " |",
             "|---|" + "---:|" * len(_COLUMNS)]
    ordered = sorted(groups.items(), key=lambda item: (-item[1]["n"], item[0]))
    return lines + [_row(name, stats) for name, stats in ordered] + [""]


def render_markdown(summary: dict[str, Any], chart_name: str | None = None) -> str:
    """``summary.md``: dataset, models, settings, the accuracy tables, mean latency per stage, wall time."""
    settings = summary.get("settings", {})
    lines = ["# VQA evaluation: raw VQA vs VQA + LLM", ""]
    lines += [f"- **{key}**: {_cell(value)}" for key, value in settings.items()]
    lines += [f"- **model {role}**: {_cell(model)}" for role, model in summary.get("models", {}).items()]
    sessions = summary.get("sessions") or [{}]
    if sessions[-1].get("profile_reason"):
        lines.append(f"- **profile**: {sessions[-1]['profile_reason']}")
    overall = summary["overall"]
    lines += ["", "Accuracy is the official VQA accuracy in %. *fixed*: the LLM answer scores higher than the "
              "VQA top-1; *broke*: lower; *changed, no effect*: a different answer with the same score.", ""]
    lines += _table("Overall", {"all questions": overall})
    if overall.get("flips"):
        flips = overall["flips"]
        lines += [f"Flips (right: at least 3 of 10 annotators gave the answer): right→wrong {flips['right_to_wrong']} "
                  f"({flips['right_to_wrong_pct']:.2f}% of the questions), wrong→right {flips['wrong_to_right']} "
                  f"({flips['wrong_to_right_pct']:.2f}%).", ""]
    lines += _table("Per answer type", summary["per_answer_type"])
    lines += _table("Per question type", summary["per_question_type"])
    lines += ["## Mean latency per question (seconds)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {stage} | {seconds:.4f} |" for stage, seconds in overall["latency_s"].items()]
    rate = summary.get("questions_per_s")
    lines += ["", f"Wall time: {summary.get('wall_time_s', 0):.1f} s over {len(summary.get('sessions', []))} "
              f"session(s)" + (f", {rate:.2f} questions/s." if rate else "."), ""]
    if chart_name:
        lines += [f"![accuracy by question type]({chart_name})", ""]
    return "\n".join(lines)


def write_chart(summary: dict[str, Any], path: Path) -> None:
    """Save a horizontal bar chart of accuracy per question type (raw vs LLM) as PNG at ``path``."""
    groups = sorted(summary["per_question_type"].items(), key=lambda item: (-item[1]["n"], item[0]))
    names = [f"{name or '(none)'} (n={stats['n']})" for name, stats in groups]
    raw = [stats["raw_accuracy"] for _, stats in groups]
    llm = [stats["llm_accuracy"] for _, stats in groups]
    has_llm = all(value is not None for value in llm)
    figure = Figure(figsize=(8, 1.2 + 0.35 * len(groups) * (2 if has_llm else 1)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(groups)))[::-1]  # most frequent type at the top
    height = 0.4 if has_llm else 0.8
    bars = [axes.barh([p + (height / 2 if has_llm else 0) for p in positions], raw, height=height,
                      label="raw VQA top-1")]
    if has_llm:
        bars.append(axes.barh([p - height / 2 for p in positions], llm, height=height, label="VQA + LLM"))
    for container in bars:
        axes.bar_label(container, fmt="%.1f", padding=2, fontsize=8)
    axes.set_yticks(positions, names)
    axes.set_xlim(0, 100)
    axes.set_xlabel("VQA accuracy (%)")
    overall = summary["overall"]
    title = f"Accuracy by question type — overall raw {overall['raw_accuracy']:.2f}%"
    if has_llm:
        title += f", LLM {overall['llm_accuracy']:.2f}%"
    axes.set_title(title, fontsize=10)
    axes.legend(loc="best")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
