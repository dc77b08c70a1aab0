"""Which local runtime runs a chat LLM: transformers or llama.cpp, chosen by name or automatically.

``auto`` (the default) takes llama.cpp when it can serve the model here: the CPU, ``llama-cpp-python``
installed, and either a local GGUF file (without bitsandbytes quantisation) or a Hub LLM that names its CPU GGUF
(``cpu_gguf="REPO:FILE"``, :mod:`llm.hub_gguf`: fetched into the Hub cache, then run by llama.cpp instead of the
Hub id). Everything else (Hub ids and folders without a CPU GGUF, GPUs, 4/8-bit of a local GGUF) goes to
transformers. If llama.cpp then fails (the CPU GGUF is not cached and cannot be downloaded, an adapter it cannot
apply), ``auto`` logs why and loads the model with transformers. ``llama.cpp`` asked for explicitly never falls
back: it raises LLMError saying what is missing. ``transformers`` is today's path everywhere.

A 4/8-bit ``quantization`` is bitsandbytes on CUDA; on the CPU transformers ignores it and loads the LLM in full
precision, so it does not stand in the way of the CPU GGUF, which is that LLM already quantised for the CPU
(the ``large`` profile's 7B in 4-bit on CUDA is its Q4_K_M GGUF on the CPU).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from .base import ChatLLM
from .errors import LLMError
from .hub_gguf import HubGGUF

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "transformers", "llama.cpp")
ALIASES = {"llamacpp": "llama.cpp", "llama-cpp": "llama.cpp", "llama_cpp": "llama.cpp", "hf": "transformers"}


def normalise_runtime(name: str | None) -> str:
    """``name`` as one of :data:`RUNTIMES` (``None``/empty: ``auto``); LLMError for anything else."""
    value = (name or "auto").strip().lower()
    value = ALIASES.get(value, value)
    if value not in RUNTIMES:
        raise LLMError(f"Unknown LLM runtime {name!r}: use auto, transformers or llama.cpp.")
    return value


def llamacpp_installed() -> bool:
    """Whether the ``llama_cpp`` package is installed (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


def gguf_path(id_or_path: str, gguf_file: str | None) -> Path | None:
    """The local GGUF file named by ``id_or_path`` (+ ``gguf_file``), or ``None`` when it is not one."""
    path = Path(id_or_path).expanduser()
    if gguf_file:
        path = path / gguf_file
    return path if path.suffix == ".gguf" and path.is_file() else None


def choose_runtime(requested: str | None, id_or_path: str, gguf_file: str | None = None, device: str = "cpu",
                   quantization: str | None = None, cpu_gguf: str | None = None) -> tuple[str, str]:
    """``(runtime, reason)`` for this model; ``cpu_gguf`` (``"REPO:FILE"``) is the Hub GGUF llama.cpp runs in
    place of a model that is not a local GGUF file (see the module docstring). Raises LLMError when
    ``llama.cpp`` is asked for and cannot run it."""
    requested = normalise_runtime(requested)
    if requested == "transformers":
        return "transformers", "requested"
    local = gguf_path(id_or_path, gguf_file) is not None
    obstacles = []
    if not local and not cpu_gguf:
        obstacles.append("the LLM is not a local GGUF file")
    if not str(device or "cpu").startswith("cpu"):
        obstacles.append(f"the device is {device} (llama.cpp runs here on the CPU only)")
    if quantization and (local or not cpu_gguf):  # no obstacle to the CPU GGUF (module docstring)
        obstacles.append(f"quantization={quantization} is a bitsandbytes (transformers) mode")
    if not llamacpp_installed():
        obstacles.append("llama-cpp-python is not installed (bash scripts/setup.sh builds it)")
    if not obstacles:
        what = "a local GGUF file" if local else f"the LLM's CPU GGUF {cpu_gguf}"
        return "llama.cpp", "requested" if requested == "llama.cpp" else f"auto: {what} on the CPU"
    reason = "; ".join(obstacles)
    if requested == "llama.cpp":
        raise LLMError(f"The llama.cpp runtime cannot run {id_or_path}: {reason}. Use --llm-runtime transformers "
                       "(or auto).")
    return "transformers", f"auto: {reason}"


def load_local_llm(id_or_path: str, gguf_file: str | None = None, runtime: str | None = "auto", *,
                   device: str = "cpu", quantization: str | None = None, adapter: str | Path | None = None,
                   max_prompt_tokens: int | None = None, max_batch_size: int = 1, cpu_gguf: str | None = None,
                   **transformers_kwargs: Any) -> ChatLLM:
    """Load a local chat LLM with the runtime :func:`choose_runtime` picks; ``max_batch_size``: chats llama.cpp
    decodes together (transformers batches per ``generate_batch`` call instead); ``cpu_gguf``: the Hub GGUF
    (``"REPO:FILE"``) llama.cpp runs in place of a Hub id, fetched with ``transformers_kwargs``'
    ``local_files_only``; ``transformers_kwargs`` (dtype, trust_remote_code, local_files_only, ...) go to
    :meth:`TransformersChatLLM.from_pretrained`."""
    from .llamacpp_backend import LlamaCppChatLLM
    from .transformers_backend import TransformersChatLLM

    requested = normalise_runtime(runtime)
    chosen, reason = choose_runtime(requested, id_or_path, gguf_file, device, quantization, cpu_gguf)
    if chosen == "llama.cpp":
        try:
            path, name = gguf_path(id_or_path, gguf_file), None
            if path is None:  # the Hub model's CPU GGUF
                hub_file = HubGGUF.parse(cpu_gguf)
                path = hub_file.fetch(local_files_only=bool(transformers_kwargs.get("local_files_only")))
                name = hub_file.model_id
            llm = LlamaCppChatLLM.from_gguf(path, adapter=adapter, max_prompt_tokens=max_prompt_tokens,
                                            max_batch_size=max_batch_size, model_id=name)
            logger.info("LLM runtime: llama.cpp (%s): %s", reason, llm.model_id)
            return llm
        except LLMError as exc:
            if requested == "llama.cpp":
                raise
            logger.warning("llama.cpp could not load the LLM (%s); using transformers instead.", exc)
            reason = f"auto: llama.cpp failed ({exc})"
    logger.info("LLM runtime: transformers (%s)", reason)
    return TransformersChatLLM.from_pretrained(id_or_path, gguf_file=gguf_file, device=device,
                                               quantization=quantization, adapter=adapter,
                                               max_prompt_tokens=max_prompt_tokens, **transformers_kwargs)
