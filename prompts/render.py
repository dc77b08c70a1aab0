"""Rendering the pieces that go into a prompt: candidates with scores, and user text made safe.

User-supplied text (the question above all) is enclosed in ``<question>...</question>`` by the
templates; any such tag inside the text itself is neutralised so that it cannot close the block early.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

from .errors import PromptError

LETTERS = string.ascii_uppercase
_TAG = re.compile(r"<\s*(/?)\s*(question)\s*>", re.IGNORECASE)


def neutralise(text: str) -> str:
    """Replace ``<question>``/``</question>`` look-alikes in ``text`` by ``[question]``/``[/question]``."""
    return _TAG.sub(lambda m: f"[{m.group(1)}{m.group(2)}]", text)


def check_candidates(candidates: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Validate ``(answer, score)`` pairs and return them as a list; raise PromptError when malformed."""
    out = []
    for i, item in enumerate(candidates):
        try:
            answer, score = item
            score = float(score)
        except (TypeError, ValueError) as exc:
            raise PromptError(f"candidate #{i} is {item!r}; pass (answer: str, score: float) pairs.") from exc
        if not isinstance(answer, str) or math.isnan(score):
            raise PromptError(f"candidate #{i} is {item!r}; pass (answer: str, score: float) pairs.")
        out.append((answer, score))
    return out


def shown_score(score: float) -> str:
    """A candidate's score as the prompt shows it: two decimals (0.995 and up read "1.00")."""
    return f"{score:.2f}"


def render_candidates(candidates: Sequence[tuple[str, float]]) -> str:
    """One line per candidate, lettered, e.g. ``A. red (0.91)``; ``(none)`` when there are none."""
    cands = check_candidates(candidates)
    if not cands:
        return "(none)"
    lines = []
    for i, (answer, score) in enumerate(cands):
        prefix = f"{LETTERS[i]}. " if i < len(LETTERS) else "- "
        lines.append(f"{prefix}{neutralise(one_line(answer))} ({shown_score(score)})")
    return "\n".join(lines)


def one_line(text: str) -> str:
    """Collapse all whitespace (newlines included) to single spaces and strip."""
    return " ".join(str(text).split())
