"""The files of an evaluation run's output folder, and safe reading/writing of the predictions.

Layout of ``--out``::

    predictions.jsonl                     every record, one JSON object a line (sorted by question id at the end)
    predictions.part-R-of-N.jsonl         records of process R of N while a multi-process run is going on
    run.json                              the settings the records were made with, and one entry per session
    summary.json, summary.md              figures rebuilt from predictions.jsonl
    accuracy_by_question_type.png         the chart

Writers append whole lines and ``fsync`` after each batch, so a kill loses at most the batch in flight and
can leave at most one truncated last line. Readers drop such a line (:func:`read_records`) and writers cut
it off before appending (:func:`repair_tail`). :func:`merge_records` gathers predictions.jsonl and every part
file, keeps one record per question id (:func:`current_records`) and rewrites predictions.jsonl sorted by
question id (atomically: a temporary file replaced in one step).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import EvaluationError
from .records import question_sort_key

PREDICTIONS = "predictions.jsonl"
PART_GLOB = "predictions.part-*-of-*.jsonl"


@dataclass(frozen=True)
class OutputLayout:
    """Paths inside one output folder."""

    root: Path

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def run_info(self) -> Path:
        return self.root / "run.json"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def chart(self) -> Path:
        return self.root / "accuracy_by_question_type.png"

    def part(self, rank: int, world_size: int) -> Path:
        """The file process ``rank`` of ``world_size`` appends to during a multi-process run."""
        return self.root / f"predictions.part-{rank}-of-{world_size}.jsonl"

    def parts(self) -> list[Path]:
        """Part files present now, in name order."""
        return sorted(self.root.glob(PART_GLOB)) if self.root.is_dir() else []

    def record_files(self) -> list[Path]:
        """predictions.jsonl (if present) then the part files: every file holding records."""
        main = [self.predictions] if self.predictions.is_file() else []
        return main + self.parts()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one predictions file. A last line that is not complete JSON (a write cut short by a
    kill) is dropped; an unreadable line elsewhere raises EvaluationError."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: the write was cut short
                continue
            raise EvaluationError(f"{path}, line {number}, is not valid JSON. Delete that line and run again "
                                  "with --resume (its question is then answered again).") from None
        if not isinstance(record, dict) or "question_id" not in record:
            raise EvaluationError(f"{path}, line {number}, is not a prediction record; is this the output "
                                  "folder of a VQA evaluation?")
        records.append(record)
    return records


def current_records(layout: OutputLayout) -> dict[Any, dict[str, Any]]:
    """One record per question id over every record file (predictions.jsonl, then the part files): the first
    one without an ``error``, else the first. A question answered again after an error (``--retry-errors``) is
    so represented by its good answer, in whatever file and order the two records are."""
    chosen: dict[Any, dict[str, Any]] = {}
    for path in layout.record_files():
        for record in read_records(path):
            old = chosen.get(record["question_id"])
            if old is None or (old.get("error") and not record.get("error")):
                chosen[record["question_id"]] = record
    return chosen


def done_question_ids(records: dict[Any, dict[str, Any]], retry_errors: bool = False) -> set[Any]:
    """Ids of the questions that already have a record (``records``: :func:`current_records`); with
    ``retry_errors``, only those whose record has no ``error`` (the others are to be answered again)."""
    return {question_id for question_id, record in records.items() if not (retry_errors and record.get("error"))}


def repair_tail(path: Path) -> None:
    """Make ``path`` safe to append to: cut off an incomplete last line, or end a complete one with a newline."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        with path.open("r+b") as handle:
            handle.truncate(cut)
        return
    with path.open("ab") as handle:
        handle.write(b"\n")


def _fsync(handle: TextIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


class RecordWriter:
    """Appends records to one JSONL file; each :meth:`write` is flushed and fsync'ed before it returns."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        repair_tail(path)
        self._handle = path.open("a", encoding="utf-8")

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` (one line each) and make them durable."""
        text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if text:
            self._handle.write(text)
            _fsync(self._handle)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step (a kill leaves the old or the new file, never half of one)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        _fsync(handle)
    os.replace(tmp, path)


def merge_records(layout: OutputLayout) -> list[dict[str, Any]]:
    """Gather every record (predictions.jsonl first, then the part files), keep one per question id
    (:func:`current_records`), rewrite predictions.jsonl sorted by question id, delete the part files; return
    the records."""
    parts = layout.parts()
    records = sorted(current_records(layout).values(), key=lambda record: question_sort_key(record["question_id"]))
    write_atomically(layout.predictions,
                     "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    for path in parts:
        path.unlink()
    return records
