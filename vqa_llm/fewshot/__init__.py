"""Answer-aware few-shot prompting with voting, Prophet-style (the ``fewshot`` template).

* :class:`ExampleBank` — answered training questions (caption, VLE candidates, gold answer) with VLE's fused
  representation as retrieval key (:mod:`.bank`); built by ``python -m vqa_llm.example_bank build``.
* :func:`nearest` / :func:`split_runs` — the nearest entries, dealt into disjoint sets (:mod:`.selection`).
* :func:`vote` — majority of the runs' answers, ties broken by VLE's score (:mod:`.voting`).
* :class:`FewShotSettings` / :func:`plan_runs` — what the pipeline uses per request (:mod:`.runs`).
"""

from .bank import ExampleBank, ExampleBankError
from .runs import (
    DEFAULT_N_EXAMPLES,
    DEFAULT_RUNS,
    FEWSHOT_TEMPLATE,
    FewShotSettings,
    check_counts,
    join_replies,
    plan_runs,
    run_header,
)
from .selection import nearest, split_runs
from .voting import VoteOutcome, vote

__all__ = [
    "DEFAULT_N_EXAMPLES",
    "DEFAULT_RUNS",
    "FEWSHOT_TEMPLATE",
    "ExampleBank",
    "ExampleBankError",
    "FewShotSettings",
    "VoteOutcome",
    "check_counts",
    "join_replies",
    "nearest",
    "plan_runs",
    "run_header",
    "split_runs",
    "vote",
]
