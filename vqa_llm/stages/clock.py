"""Per-stage wall-clock seconds of one call (the result's ``timings``)."""

from __future__ import annotations

import time

from ..result import empty_timings


class Clock:
    """Adds the seconds spent inside ``with clock("stage"):`` to ``timings[stage]``."""

    def __init__(self, timings: dict[str, float] | None = None):
        self.timings = empty_timings() if timings is None else timings
        self._stage = ""

    def __call__(self, stage: str) -> "Clock":
        self._stage = stage
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.add(self._stage, time.perf_counter() - self._start)

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` more for ``stage``."""
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
