"""Can the Hugging Face Hub models be used right now? Local-cache look-ups and a short reachability probe.

Used by the ``auto`` profile. Everything reads an explicit ``environ`` mapping (not the process
environment captured at import time), so callers and tests control ``HF_HUB_OFFLINE``, ``HF_HOME``,
``HF_HUB_CACHE`` and ``HF_ENDPOINT``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import requests
from huggingface_hub import try_to_load_from_cache

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 2.0
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TRUE = {"1", "true", "yes", "on"}


def hub_offline(environ: Mapping[str, str]) -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    return any(environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_cache_dir(environ: Mapping[str, str]) -> Path:
    """The Hub cache folder: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if environ.get("HF_HUB_CACHE"):
        return Path(environ["HF_HUB_CACHE"]).expanduser()
    home = environ.get("HF_HOME") or os.path.join(environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def is_cached(repo_id: str, environ: Mapping[str, str]) -> bool:
    """True when ``repo_id``'s ``config.json`` and a weights file are in the local Hub cache.

    Local folders count as cached when they exist.
    """
    if Path(repo_id).expanduser().is_dir():
        return True
    cache_dir = hub_cache_dir(environ)

    def cached(filename: str) -> bool:
        try:
            return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir), str)
        except ValueError:  # not a valid repo id
            return False

    return cached("config.json") and any(cached(name) for name in WEIGHT_FILES)


def hub_reachable(environ: Mapping[str, str], timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """``(reachable, detail)`` after one HEAD request to the Hub endpoint, bounded by ``timeout`` seconds."""
    endpoint = environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        response = requests.head(endpoint, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        return False, f"{endpoint} did not answer within {timeout:g} s ({type(exc).__name__})"
    if response.status_code >= 500:
        return False, f"{endpoint} answered HTTP {response.status_code}"
    return True, f"{endpoint} answered HTTP {response.status_code}"
