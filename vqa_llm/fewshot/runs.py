"""The few-shot settings of one request and the example sets of its voting runs.

For each question the ``n_examples * runs`` nearest bank entries (see :mod:`.selection`) are dealt
round-robin into ``runs`` disjoint sets; each run sends its own prompt to the LLM and the parsed answers are
voted (:mod:`.voting`). The replies of several runs are shown one after the other, each after a
``[run i/T]`` header.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..inputs import check_number
from .bank import ExampleBank
from .selection import nearest, split_runs

FEWSHOT_TEMPLATE = "fewshot"
DEFAULT_N_EXAMPLES = 8
DEFAULT_RUNS = 1
MAX_RUNS = 16
MAX_EXAMPLES = 64
RUN_SEPARATOR = "\n"


def check_counts(runs: object, n_examples: object) -> tuple[int, int]:
    """``(runs, n_examples)`` as whole numbers within their limits; BadSettingError saying which is not."""
    return (check_number("runs", runs, 1, MAX_RUNS, whole=True),
            check_number("n_examples (examples per prompt)", n_examples, 0, MAX_EXAMPLES, whole=True))


@dataclass(frozen=True)
class FewShotSettings:
    """How the ``fewshot`` template answers: the bank, the number of voting ``runs`` and the examples per run
    (``n_examples``)."""

    bank: ExampleBank
    runs: int = DEFAULT_RUNS
    n_examples: int = DEFAULT_N_EXAMPLES

    def __post_init__(self) -> None:
        runs, n_examples = check_counts(self.runs, self.n_examples)
        object.__setattr__(self, "runs", runs)
        object.__setattr__(self, "n_examples", n_examples)


def plan_runs(settings: FewShotSettings, queries: torch.Tensor, image_hashes: Sequence[str], top_k: int,
              key: str = "fused") -> list[list[list[dict[str, Any]]]]:
    """For each query row and image hash: ``runs`` lists of examples, most similar first, each example a
    :meth:`ExampleBank.example` dict (candidates cut to ``top_k``) with its ``similarity``. Entries about the
    query's own image are never chosen. ``queries`` are fused representations for ``key="fused"`` (what the
    pipeline uses), or answer-score vectors for ``key="scores"`` (banks built with ``--with-scores``)."""
    bank = settings.bank
    exclude = [bank.rows_of_image(h) for h in image_hashes]
    found = nearest(bank.key(key), queries, settings.n_examples * settings.runs, exclude)
    return [[[{**bank.example(row, top_k), "similarity": sim} for row, sim in run]
             for run in split_runs(neighbours, settings.runs, settings.n_examples)]
            for neighbours in found]


def run_header(index: int, runs: int) -> str:
    """The header shown before run ``index``'s reply: ``[run 2/3] `` (nothing when there is one run)."""
    return f"[run {index + 1}/{runs}] " if runs > 1 else ""


def join_replies(replies: Sequence[str]) -> str:
    """All runs' replies as one text, each after its :func:`run_header` (a single reply unchanged)."""
    return RUN_SEPARATOR.join(run_header(i, len(replies)) + reply for i, reply in enumerate(replies))
