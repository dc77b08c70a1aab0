"""Hugging Face Spaces ZeroGPU: one GPU call per request there, and nothing at all everywhere else.

On a ZeroGPU Space (``SPACES_ZERO_GPU=true``) a GPU is lent to the app only while a function decorated with
``spaces.GPU`` runs, for at most its ``duration`` seconds. The ``spaces`` package runs it in a forked worker:
its arguments and what it returns or yields cross a process boundary (pickled), what it changes in the caller's
objects is lost (the per-image cache of a worker included), and an exception other than ``gradio.Error``
reaches the visitor as its class name only. So the app makes each request ONE such call (for a question: the VQA
stage and the LLM's streamed reply together, :func:`gpu_call`), converts its own errors to ``gradio.Error``
inside it, and asks for a duration computed from the request (:func:`answer_seconds`).

Elsewhere ``spaces`` is never imported (on Spaces its import patches torch) and :func:`gpu_call` returns the
function as it is. On ZeroGPU it is imported with this module, before any model is loaded, as the package asks.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

ENV_VAR = "SPACES_ZERO_GPU"
_TRUE = ("1", "t", "true")  # what the spaces package itself accepts
#: seconds of GPU asked for a request without the LLM (image encoding, caption, VQA, or one VLE task)
BASE_SECONDS = 20
#: seconds per new LLM token asked for (generous: a 1.5B model decodes ~30 tokens/s on a shared GPU slice)
SECONDS_PER_TOKEN = 0.1
#: the most one request may ask for (ZeroGPU queues long requests behind short ones)
MAX_SECONDS = 180

F = TypeVar("F", bound=Callable)


def on_zero_gpu(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on a ZeroGPU Space (``SPACES_ZERO_GPU`` is true)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VAR, "").strip().lower() in _TRUE


def answer_seconds(max_new_tokens: int | None, runs: int = 1, use_llm: bool = True) -> int:
    """The GPU seconds one question asks for: the VQA stage, plus every LLM token it may generate (``runs``
    few-shot replies of ``max_new_tokens``, the LLM's default when ``None``), bounded by :data:`MAX_SECONDS`."""
    from llm.base import DEFAULT_MAX_NEW_TOKENS  # here: this module is imported before torch on ZeroGPU

    per_reply = DEFAULT_MAX_NEW_TOKENS if max_new_tokens is None else max(0, int(max_new_tokens))
    tokens = per_reply * max(1, int(runs)) if use_llm else 0
    return min(MAX_SECONDS, BASE_SECONDS + math.ceil(tokens * SECONDS_PER_TOKEN))


def gpu_call(function: F, duration: int | Callable[..., int] = BASE_SECONDS,
             environ: Mapping[str, str] | None = None) -> F:
    """``spaces.GPU(function, duration=duration)`` on ZeroGPU (``duration``: seconds, or a function of the same
    arguments giving them); ``function`` itself anywhere else. A generator function streams as usual."""
    if not on_zero_gpu(environ):
        return function
    return importlib.import_module("spaces").GPU(function, duration=duration)


if on_zero_gpu():  # pragma: no cover (only on a ZeroGPU Space): import it before CUDA is touched
    importlib.import_module("spaces")
