"""Fitting few-shot examples into an LLM's context window: drop the least similar examples until it fits.

The question, its caption and its candidates are never cut; only whole examples are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .builder import build_messages

TokenCounter = Callable[[list[dict]], int]


def build_fitted_messages(
    template: str,
    caption: str,
    question: str,
    candidates: Sequence[tuple[str, float]],
    examples: Sequence[dict],
    count_tokens: TokenCounter | None = None,
    limit: int | None = None,
    directory: str | Path | None = None,
) -> tuple[list[dict], list[dict]]:
    """Chat messages for ``template`` with as many of ``examples`` as fit in ``limit`` prompt tokens.

    ``examples`` come most similar (most useful) first; they are rendered in the reverse order, so the most
    similar example sits right before the question. While the prompt is longer than ``limit`` tokens (as
    ``count_tokens(messages)`` counts them), examples are dropped from the least similar end, one at a time.
    Without ``count_tokens`` or ``limit`` every example is kept. When even no example fits, the messages
    without examples are returned (the LLM backend then reports the prompt as too long).

    Returns ``(messages, kept)``: ``kept`` are the examples used, in the given (most similar first) order.
    Raises PromptError on an unknown template or malformed inputs (see :func:`build_messages`).
    """
    kept = list(examples)
    while True:
        messages = build_messages(template, caption, question, candidates, kept[::-1], directory)
        if count_tokens is None or limit is None or not kept or count_tokens(messages) <= limit:
            return messages, kept
        kept.pop()
