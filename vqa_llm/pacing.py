"""Streamed updates paced for a page: the reply so far at most every ``interval`` seconds, nothing lost.

Each ``"llm"`` update of :meth:`vqa_llm.VQALLMPipeline.stream` carries the whole reply so far, so an update
may be skipped when the next one follows soon: a browser shows no difference between 80 and 10 updates a
second, while each one costs the server a serialisation and a message (and, over HTTP, the client a parse).
The first LLM text goes out at once, later ones when ``interval`` has passed since the last one sent, and every
other update (``"vqa"``, ``"done"``) always; a skipped text is never more than one token behind the next one
sent, and the final update holds the whole reply.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from .result import VQALLMUpdate

#: seconds between two streamed texts of one reply (10 a second reads as continuous)
STREAM_INTERVAL_S = 0.1


def paced(updates: Iterable[VQALLMUpdate], interval: float | None = None) -> Iterator[VQALLMUpdate]:
    """``updates`` with ``"llm"`` updates thinned to at most one per ``interval`` seconds (default:
    :data:`STREAM_INTERVAL_S`; 0 keeps them all)."""
    interval = STREAM_INTERVAL_S if interval is None else interval
    last = None
    for update in updates:
        if update.stage == "llm":
            now = time.monotonic()
            if last is not None and now - last < interval:
                continue
            last = now
        yield update
