"""LLM backends behind one small chat interface (:class:`ChatLLM`).

* :class:`TransformersChatLLM` — local chat models through transformers (Hub id, folder or GGUF file;
  optional 4/8-bit bitsandbytes and accelerate ``device_map`` on CUDA).
* :class:`OpenAIChatLLM` — any OpenAI-compatible HTTP endpoint.
* :func:`smollm2_gguf` — the SmolLM2-135M-Instruct GGUF bundled as a pip wheel; :func:`load_llm` — by spec string.
"""

from .base import ChatLLM, GenerationOptions
from .bundled import smollm2_gguf
from .errors import LLMConnectionError, LLMError, LLMTimeoutError, PromptTooLongError
from .loader import load_llm
from .openai_backend import OpenAIChatLLM
from .transformers_backend import TransformersChatLLM

__all__ = [
    "ChatLLM",
    "GenerationOptions",
    "LLMConnectionError",
    "LLMError",
    "LLMTimeoutError",
    "OpenAIChatLLM",
    "PromptTooLongError",
    "TransformersChatLLM",
    "load_llm",
    "smollm2_gguf",
]
