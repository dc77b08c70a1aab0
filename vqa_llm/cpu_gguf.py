"""Does llama.cpp run a profile's CPU GGUF (``Profile.llm_cpu_gguf``) in place of its Hub LLM on this machine?

One answer for the Hub check before loading (:func:`vqa_llm.hub_access.check_profile_hub`), the runtime the
evaluator records (:func:`vqa_llm.loading.chosen_llm_runtime`) and the loading itself (:mod:`llm.runtime`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llm import LLMError
from llm.runtime import choose_runtime, gguf_path

from .devices import resolve_device

if TYPE_CHECKING:
    from .profiles import Profile


def cpu_gguf_runs(profile: Profile) -> bool:
    """True when loading the profile's LLM goes for its CPU GGUF: a local Hub LLM that is not a GGUF file itself,
    ``llm_cpu_gguf`` set, and :func:`llm.runtime.choose_runtime` picking llama.cpp (the CPU, runtime not
    ``transformers``, llama.cpp installed). Under ``auto`` the load may still fall back to the Hub LLM when the
    GGUF cannot be had."""
    if not profile.use_llm or profile.openai_base_url or not profile.llm or not profile.llm_cpu_gguf:
        return False
    if gguf_path(profile.llm, profile.llm_gguf_file) is not None:
        return False
    try:
        runtime, _ = choose_runtime(profile.llm_runtime, profile.llm, profile.llm_gguf_file,
                                    resolve_device(profile.device), profile.quantization, profile.llm_cpu_gguf)
    except LLMError:  # llama.cpp asked for and impossible here: loading says why
        return False
    return runtime == "llama.cpp"
