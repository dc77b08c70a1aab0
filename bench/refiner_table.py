"""Print the raw-VQA vs LLM table of finished evaluation runs, with how often the replies kept the template's format.

    python bench/refiner_table.py "refiner short=runs/ref-short" "zero-shot short=runs/zs-short" ...

Each argument is ``LABEL=RUN_DIR`` (a ``python -m vqa_llm.evaluate --out`` folder). Format rules: ``short``
replies have an ``Answer:`` line with an answer (and the parser used it: no fallback); in ``long`` replies the
sentence shown as the answer (the last one; the ones before it are the explanation) is one natural sentence: at
least 3 words, ending in . ! or ?, containing the answer read from it and none of the words candidate, score,
caption or VQA. Prints a Markdown table, then one JSON object per run.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from prompts.parser import split_long_reply
from vqa_llm.evaluation.summary import flip_counts

_SENTENCE = re.compile(r"^[^\n]*[.!?]$")
_EVIDENCE_WORDS = re.compile(r"candidate|score|caption|\bvqa\b", re.IGNORECASE)
_ANSWER_LINE = re.compile(r"^\s*Answer\s*:\s*\S", re.IGNORECASE | re.MULTILINE)


def follows_format(record: dict) -> bool:
    """Whether the LLM reply of ``record`` has its template's format (see the module docstring)."""
    reply = (record.get("llm_reply") or "").strip()
    if record.get("llm_fallback") or not reply:
        return False
    if record.get("template") == "long":
        answer = (record.get("llm_answer") or "").lower()
        shown = split_long_reply(reply)[1]
        return (bool(_SENTENCE.match(shown)) and len(shown.split()) >= 3 and bool(answer)
                and not _EVIDENCE_WORDS.search(shown)
                and re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", shown.lower()) is not None)
    return bool(_ANSWER_LINE.search(reply))


def summarise(run_dir: Path) -> dict:
    """Accuracies, fixed/broken counts, format share and LLM seconds per question of one run."""
    records = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]
    n = len(records)
    raw = sum(r["raw_accuracy"] for r in records) / n
    llm = sum(r["llm_accuracy"] or 0.0 for r in records) / n
    fixed = sum((r["llm_accuracy"] or 0) > r["raw_accuracy"] for r in records)
    broken = sum((r["llm_accuracy"] or 0) < r["raw_accuracy"] for r in records)
    llm_seconds = [r["timings"].get("llm", 0.0) for r in records]
    flips = flip_counts([{**r, "llm_accuracy": r["llm_accuracy"] or 0.0} for r in records])
    return {"run": str(run_dir), "questions": n, "raw": raw, "llm": llm, "fixed": fixed, "broken": broken,
            "right_to_wrong_pct": flips["right_to_wrong_pct"], "wrong_to_right_pct": flips["wrong_to_right_pct"],
            "format": sum(follows_format(r) for r in records) / n,
            "fallbacks": sum(bool(r.get("llm_fallback")) for r in records),
            "llm_s_per_question": sum(llm_seconds) / n}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    rows = []
    for item in argv:
        label, _, folder = item.rpartition("=")
        rows.append((label or folder, summarise(Path(folder))))
    print("| configuration | questions | raw VLE | LLM | fixed | broken | right→wrong | wrong→right | format | "
          "LLM s/question |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, s in rows:
        print(f"| {label} | {s['questions']} | {100 * s['raw']:.2f} | {100 * s['llm']:.2f} | {s['fixed']} | "
              f"{s['broken']} | {s['right_to_wrong_pct']:.2f}% | {s['wrong_to_right_pct']:.2f}% | "
              f"{100 * s['format']:.1f}% | {s['llm_s_per_question']:.3f} |")
    for label, s in rows:
        print(json.dumps({"label": label, **s}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
