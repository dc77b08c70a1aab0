"""The device a run's models go to, one rule for every loader and for the choice of the LLM runtime."""

from __future__ import annotations

import torch


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; anything else as given."""
    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)
