"""Loading optional few-shot examples from a JSON or JSONL file.

Each example is an object with ``caption`` (str), ``question`` (str), ``candidates`` (a list of
``[answer, score]`` pairs) and ``answer`` (str); ``explanation`` or a verbatim ``reply`` are optional.
A ``.json`` file holds a list of such objects; a ``.jsonl`` file holds one per line.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import PromptError
from .render import check_candidates

REQUIRED = ("caption", "question", "candidates", "answer")


def _validate(example: object, where: str) -> dict:
    if not isinstance(example, dict):
        raise PromptError(f"{where}: expected an object with {', '.join(REQUIRED)}, got {type(example).__name__}.")
    missing = [k for k in REQUIRED if k not in example]
    if missing:
        raise PromptError(f"{where}: missing {', '.join(missing)}; each example needs {', '.join(REQUIRED)}.")
    for key in ("caption", "question", "answer"):
        if not isinstance(example[key], str):
            raise PromptError(f"{where}: {key!r} must be a string.")
    try:
        candidates = check_candidates(example["candidates"])
    except PromptError as exc:
        raise PromptError(f"{where}: {exc}") from exc
    return {**example, "candidates": candidates}


def load_examples(path: str | Path) -> list[dict]:
    """Read few-shot examples from ``path`` (.json list or .jsonl lines); raise PromptError when unusable."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"Few-shot example file {path} does not exist; pass a .json or .jsonl file.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".jsonl":
            items = [(f"{path}:{n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        else:
            data = json.loads(text)
            if not isinstance(data, list):
                raise PromptError(f"{path}: a .json example file must hold a list of examples.")
            items = [(f"{path}[{i}]", ex) for i, ex in enumerate(data)]
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path} is not valid JSON ({exc}).") from exc
    return [_validate(ex, where) for where, ex in items]
