"""Which example bank a run uses, and loading banks once per folder.

Precedence: an explicit bank (``--example-bank``, the ``example_bank=`` argument) < none given: the
``VQA_LLM_EXAMPLE_BANK`` environment variable, else — for the ``bundled`` profile with its own VQA model —
the bank committed beside the bundled models (``assets/models/easyvqa-example-bank``), when present.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from ..profiles import BUNDLED_VQA_DIR, REPO_ROOT, Profile
from .bank import BUILD_HINT, ExampleBank, ExampleBankError

BUNDLED_BANK_DIR = REPO_ROOT / "assets" / "models" / "easyvqa-example-bank"
BANK_ENV_VAR = "VQA_LLM_EXAMPLE_BANK"
logger = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()


def example_bank_path(explicit: str | Path | None, profile: Profile | None = None,
                      environ: Mapping[str, str] | None = None) -> Path | None:
    """The bank folder to use (see the module docstring), or ``None`` when there is none."""
    environ = os.environ if environ is None else environ
    if explicit:
        return Path(explicit).expanduser()
    if environ.get(BANK_ENV_VAR, "").strip():
        return Path(environ[BANK_ENV_VAR].strip()).expanduser()
    bundled_model = profile is not None and Path(profile.vqa_model).resolve() == BUNDLED_VQA_DIR.resolve()
    if bundled_model and (BUNDLED_BANK_DIR / "bank.json").is_file():
        return BUNDLED_BANK_DIR
    return None


@lru_cache(maxsize=4)
def _load(path: str, stamp: float) -> ExampleBank:
    return ExampleBank.load(path)


def open_example_bank(bank: ExampleBank | str | Path | None) -> ExampleBank:
    """``bank`` itself, or the bank in that folder (loaded once while its files are unchanged).

    Raises ExampleBankError when ``bank`` is None or the folder is not a usable bank.
    """
    if isinstance(bank, ExampleBank):
        return bank
    if bank is None:
        raise ExampleBankError("The fewshot template needs an example bank: pass --example-bank DIR (or "
                               f"example_bank=DIR, or set ${BANK_ENV_VAR}); {BUILD_HINT}.")
    folder = Path(bank).expanduser().resolve()
    try:
        stamp = max((folder / name).stat().st_mtime for name in ("bank.json", "keys.safetensors", "records.jsonl"))
    except OSError:
        stamp = 0.0  # ExampleBank.load says what is missing
    return _load(str(folder), stamp)


def check_bank_fits(bank: ExampleBank, width: int, vqa_model: str) -> None:
    """ExampleBankError when ``bank``'s keys are not ``width`` wide (``2 * hidden`` of the VQA model in use);
    a warning (once per bank and model) when the bank names another VQA model."""
    if bank.dim != width:
        raise ExampleBankError(
            f"The example bank {bank.name} holds {bank.dim}-value keys from the VQA model "
            f"{bank.meta.get('vqa_model')!r}, but {vqa_model} gives {width} values: build a bank with this VQA "
            "model (python -m vqa_llm.example_bank build ... with the same model flags).")
    built_with = str(bank.meta.get("vqa_model") or "")
    if built_with and Path(built_with).name != Path(vqa_model).name and (bank.name, vqa_model) not in _warned:
        _warned.add((bank.name, vqa_model))
        logger.warning("The example bank %s was built with the VQA model %s, not %s; its examples may not match "
                       "this model's view of the questions.", bank.name, built_with, vqa_model)
