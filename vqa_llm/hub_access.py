"""Can the Hugging Face Hub models be used right now? Local-cache look-ups and a short reachability probe.

Used by the ``auto`` profile, and by every entry point before it loads Hub models (:func:`check_hub`,
:func:`check_profile_hub`): without it an unreachable Hub means minutes of huggingface_hub retries, even
for models that are cached. Everything reads an explicit ``environ`` mapping (not the process
environment captured at import time), so callers and tests control ``HF_HUB_OFFLINE``, ``HF_HOME``,
``HF_HUB_CACHE`` and ``HF_ENDPOINT``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import requests
from huggingface_hub import try_to_load_from_cache

from llm import LLMError
from llm.hub_gguf import HubGGUF

from .cpu_gguf import cpu_gguf_runs
from .errors import ModelUnavailableError

if TYPE_CHECKING:
    from .profiles import Profile

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


def gguf_cached(spec: str, environ: Mapping[str, str]) -> bool:
    """True when every part of the Hub GGUF ``spec`` (``"REPO:FILE"``, :mod:`llm.hub_gguf`) is in the local Hub
    cache (False for a malformed spec)."""
    try:
        hub_file = HubGGUF.parse(spec)
    except LLMError:
        return False
    return all(_cached_file(hub_file.repo, part, environ) for part in hub_file.parts)


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


def _is_hub_id(name: str | None) -> bool:
    """True for ``owner/name`` strings that are not an existing local path (those are Hub repo ids)."""
    if not name or "/" not in name or name.startswith((".", "~", "/")) or Path(name).expanduser().exists():
        return False
    return name.count("/") == 1


def _cached_file(repo_id: str, filename: str, environ: Mapping[str, str]) -> bool:
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
    hub_ids = list(dict.fromkeys(name for name in repo_ids if _is_hub_id(name)))
    if not hub_ids or hub_offline(environ):
        return HubCheck()
    reachable, detail = probe(environ)
    if reachable:
        return HubCheck()
    gguf_files = gguf_files or {}
    missing = [repo for repo in hub_ids if not (_cached_file(repo, gguf_files[repo], environ) if repo in gguf_files
                                                 else is_cached(repo, environ))]
    if missing:
        raise ModelUnavailableError(
            f"The Hugging Face Hub did not answer ({detail}) and these models are not in the local cache: "
            f"{', '.join(missing)}. Use --profile bundled (no network needed), connect to the Hub, or set "
            "HF_HUB_OFFLINE=1 to use only models that are cached."
        )
    return HubCheck(local_only=True, note=f"the Hugging Face Hub did not answer ({detail}); using the cached "
                                          f"files of {', '.join(hub_ids)}")


def check_profile_hub(profile: Profile, *, use_llm: bool = True, use_captioner: bool = True,
                      extra_ids: Iterable[str | None] = (), environ: Mapping[str, str] | None = None,
                      probe: Callable[[Mapping[str, str]], tuple[bool, str]] = hub_reachable,
                      cpu_gguf: bool | None = None) -> tuple[Profile, str]:
    """:func:`check_hub` for the models ``profile`` will load (plus ``extra_ids``, e.g. the app's VLE
    pretraining checkpoint); returns the profile (``local_files_only`` set when the Hub did not answer and
    everything is cached) and a note to log (``""`` when there is nothing to say).

    ``cpu_gguf``: whether llama.cpp runs the profile's ``llm_cpu_gguf`` here (the CPU, runtime not
    ``transformers``, llama.cpp installed; :func:`vqa_llm.cpu_gguf.cpu_gguf_runs` decides when it is
    ``None``). Then the LLM counts as cached when its CPU GGUF is (every part), or, under ``auto``, when its Hub
    model is (``auto`` falls back to it when the GGUF cannot be had).
    """
    ids: list[str | None] = [profile.vqa_model, profile.captioner if use_captioner else None, *extra_ids]
    gguf: dict[str, str] = {}
    if use_llm and profile.use_llm and not profile.openai_base_url:
        llm = profile.llm
        if cpu_gguf is None:
            cpu_gguf = cpu_gguf_runs(profile)
        if cpu_gguf and profile.llm_cpu_gguf:
            hub_file = HubGGUF.parse(profile.llm_cpu_gguf)
            cache_env = os.environ if environ is None else environ
            if profile.llm_runtime == "llama.cpp" or gguf_cached(profile.llm_cpu_gguf, cache_env):
                llm = hub_file.repo
                gguf[llm] = hub_file.first_part
        ids += [llm, getattr(profile, "llm_adapter", None)]
        if llm == profile.llm and profile.llm and profile.llm_gguf_file:
            gguf[profile.llm] = profile.llm_gguf_file
    found = check_hub(ids, environ, probe, gguf)
    if found.local_only and not profile.local_files_only:
        profile = replace(profile, local_files_only=True)
    return profile, found.note
