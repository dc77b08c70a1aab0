"""Combining the answers of several few-shot runs into one: majority vote, ties broken by VLE's score.

Answers are compared after :func:`vqa_llm.metrics.normalize_answer` ("Two" and "2" are one vote). Runs that
gave no usable answer (the LLM failed, or its reply held no answer) do not vote. Among answers with the most
votes, the one VLE scored highest wins (the best score among the candidates with that normalised form; an
answer that is not a candidate scores 0); if still tied, the answer of the earliest run wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..metrics import normalize_answer


@dataclass
class VoteOutcome:
    """The result of :func:`vote`.

    ``answer``: the winning answer as the first run that gave it wrote it (``None`` when no run voted);
    ``run``: that run's index; ``votes``: normalised answer -> number of runs, in order of first appearance.
    """

    answer: str | None
    run: int | None
    votes: dict[str, int] = field(default_factory=dict)


def vote(answers: Sequence[str | None], candidates: Sequence[tuple[str, float]]) -> VoteOutcome:
    """Majority of ``answers`` (one per run, ``None`` for a run without an answer), ties broken by the VLE
    score of the answer among ``candidates`` (0 when it is not one), then by the earliest run."""
    votes: dict[str, int] = {}
    first_run: dict[str, int] = {}
    for run, answer in enumerate(answers):
        if answer is None or not normalize_answer(answer):
            continue
        key = normalize_answer(answer)
        votes[key] = votes.get(key, 0) + 1
        first_run.setdefault(key, run)
    if not votes:
        return VoteOutcome(answer=None, run=None, votes={})
    score: dict[str, float] = {}
    for candidate, value in candidates:
        key = normalize_answer(candidate)
        score[key] = max(score.get(key, 0.0), float(value))
    winner = min(votes, key=lambda key: (-votes[key], -score.get(key, 0.0), first_run[key]))
    run = first_run[winner]
    return VoteOutcome(answer=answers[run], run=run, votes=votes)
