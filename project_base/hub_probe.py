"""Can a Hugging Face Hub model be used right now? Local-cache look-ups, a short reachability probe, and the check
every entry point makes before it loads Hub models (:func:`check_hub`): without it an unreachable Hub means
minutes of huggingface_hub retries, even for models that are cached.

Everything reads an explicit ``environ`` mapping (not the process environment captured at import time), so
callers and tests control ``HF_HUB_OFFLINE``, ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_ENDPOINT``. The check of a
whole profile (its LLM's GGUF files included) is :func:`vqa_llm.hub_access.check_profile_hub`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests
from huggingface_hub import try_to_load_from_cache

from .errors import ModelUnavailableError

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


def is_hub_id(name: str | None) -> bool:
    """True for ``owner/name`` strings that are not an existing local path (those are Hub repo ids)."""
    if not name or "/" not in name or name.startswith((".", "~", "/")) or Path(name).expanduser().exists():
        return False
    return name.count("/") == 1


def cached_file(repo_id: str, filename: str, environ: Mapping[str, str]) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(environ)), str)
    except ValueError:
        return False


@dataclass(frozen=True)
class HubCheck:
    """What :func:`check_hub` found: ``local_only`` when the Hub did not answer but every file is cached."""

    local_only: bool = False
    note: str = ""


def check_hub(repo_ids: Iterable[str | None], environ: Mapping[str, str] | None = None,
              probe: Callable[[Mapping[str, str]], tuple[bool, str]] = hub_reachable,
              gguf_files: Mapping[str, str] | None = None) -> HubCheck:
    """Fail fast when Hub models are needed and the Hub does not answer within the probe's timeout.

    ``repo_ids`` may hold local folders and ``None`` (skipped); ``gguf_files`` maps a repo id to the GGUF file
    it is loaded from (cached means that file). Nothing is probed under ``HF_HUB_OFFLINE=1`` or without Hub
    ids. When the Hub does not answer: ``HubCheck(local_only=True)`` if every model is cached (load them with
    ``local_files_only``: huggingface_hub would otherwise retry for minutes), else ModelUnavailableError
    naming the models that are not cached.
    """
    environ = os.environ if environ is None else environ
    hub_ids = list(dict.fromkeys(name for name in repo_ids if is_hub_id(name)))
    if not hub_ids or hub_offline(environ):
        return HubCheck()
    reachable, detail = probe(environ)
    if reachable:
        return HubCheck()
    gguf_files = gguf_files or {}
    missing = [repo for repo in hub_ids if not (cached_file(repo, gguf_files[repo], environ) if repo in gguf_files
                                                 else is_cached(repo, environ))]
    if missing:
        raise ModelUnavailableError(
            f"The Hugging Face Hub did not answer ({detail}) and these models are not in the local cache: "
            f"{', '.join(missing)}. Use --profile bundled (no network needed), connect to the Hub, or set "
            "HF_HUB_OFFLINE=1 to use only models that are cached."
        )
    return HubCheck(local_only=True, note=f"the Hugging Face Hub did not answer ({detail}); using the cached "
                                          f"files of {', '.join(hub_ids)}")
