"""VQA+LLM orchestration: the pipeline, model profiles, the per-image cache, metrics and the CLI.

    >>> from vqa_llm import VQALLMPipeline, resolve_profile
    >>> profile, reason = resolve_profile("auto")
    >>> pipe = VQALLMPipeline.from_profile(profile)
    >>> pipe.run("photo.jpg", "What is the man holding?").answer

Names are imported lazily, so ``import vqa_llm.metrics`` does not load torch or the models' code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VQALLMPipeline": "pipeline",
    "VQALLMResult": "result",
    "VQALLMUpdate": "result",
    "ImageCache": "cache",
    "CachedImage": "cache",
    "Profile": "profiles",
    "resolve_profile": "profiles",
    "add_profile_arguments": "profiles",
    "overrides_from_args": "profiles",
    "VQALLMError": "errors",
    "BadImageError": "errors",
    "BadQuestionError": "errors",
    "BadSettingError": "errors",
    "ModelUnavailableError": "errors",
    "LLMFailure": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
