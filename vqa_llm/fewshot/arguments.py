"""The prompt-template flags (``--template`` and the few-shot ``--runs``, ``--examples``, ``--example-bank``)
shared by ``python -m vqa_llm ask`` and ``python -m vqa_llm.evaluate``."""

from __future__ import annotations

import argparse

from .locate import BANK_ENV_VAR
from .runs import DEFAULT_N_EXAMPLES, DEFAULT_RUNS


def add_template_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add ``--template``, ``--runs``, ``--examples`` and ``--example-bank`` to ``parser`` (or an argument group)."""
    parser.add_argument("--template", default="short", help="prompt template: short, long or fewshot (default: short)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help="fewshot: prompts with disjoint examples whose answers are voted (default: 1)")
    parser.add_argument("--examples", type=int, default=DEFAULT_N_EXAMPLES,
                        help=f"fewshot: solved examples per prompt (default: {DEFAULT_N_EXAMPLES})")
    parser.add_argument("--example-bank", default=None,
                        help=f"fewshot: example bank folder (default: ${BANK_ENV_VAR}, or the bundled bank with the "
                             "bundled VQA model)")
