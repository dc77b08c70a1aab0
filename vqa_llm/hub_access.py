"""Can the Hub models of a profile be used right now? :func:`check_profile_hub` runs
:func:`project_base.hub_probe.check_hub` for the models a profile will load, its LLM's GGUF files included;
:func:`gguf_cached` looks a Hub GGUF up in the local cache. Used by the ``auto`` profile and by every entry point
before it loads Hub models.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from llm import LLMError
from llm.hub_gguf import HubGGUF
from project_base.hub_probe import cached_file, check_hub, hub_reachable

from .cpu_gguf import cpu_gguf_runs

if TYPE_CHECKING:
    from .profiles import Profile


def gguf_cached(spec: str, environ: Mapping[str, str]) -> bool:
    """True when every part of the Hub GGUF ``spec`` (``"REPO:FILE"``, :mod:`llm.hub_gguf`) is in the local Hub
    cache (False for a malformed spec)."""
    try:
        hub_file = HubGGUF.parse(spec)
    except LLMError:
        return False
    return all(cached_file(hub_file.repo, part, environ) for part in hub_file.parts)


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
        ids += [llm, profile.llm_adapter]
        if llm == profile.llm and profile.llm and profile.llm_gguf_file:
            gguf[profile.llm] = profile.llm_gguf_file
    found = check_hub(ids, environ, probe, gguf)
    if found.local_only and not profile.local_files_only:
        profile = replace(profile, local_files_only=True)
    return profile, found.note
