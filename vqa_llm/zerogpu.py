"""Hugging Face Spaces ZeroGPU: the GPU stages run inside ``spaces.GPU`` there, and unchanged everywhere else.

On a ZeroGPU Space (``SPACES_ZERO_GPU=true``) a GPU is lent to the app only while a function decorated with
``spaces.GPU`` runs. The ``spaces`` package runs it in a forked worker: its arguments and return value cross a
process boundary (pickled), and what it changes in the caller's objects is lost. So :func:`gpu_stage` wraps
functions that take inputs and return values: bound methods of the objects that hold the models (the models
are not pickled; the fork has them) whose callers write caches and results themselves.

Elsewhere ``spaces`` is never imported (on Spaces its import patches torch) and :func:`gpu_stage` returns the
function as it is. On ZeroGPU it is imported with this module, before any model is loaded, as the package asks.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

ENV_VAR = "SPACES_ZERO_GPU"
_TRUE = ("1", "t", "true")  # what the spaces package itself accepts

F = TypeVar("F", bound=Callable)


def on_zero_gpu(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs on a ZeroGPU Space (``SPACES_ZERO_GPU`` is true)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VAR, "").strip().lower() in _TRUE


def gpu_stage(function: F, environ: Mapping[str, str] | None = None) -> F:
    """``spaces.GPU(function)`` on ZeroGPU (see the module docstring for what such a function may do);
    ``function`` itself anywhere else."""
    if not on_zero_gpu(environ):
        return function
    return importlib.import_module("spaces").GPU(function)


if on_zero_gpu():  # pragma: no cover (only on a ZeroGPU Space): import it before CUDA is touched
    importlib.import_module("spaces")
