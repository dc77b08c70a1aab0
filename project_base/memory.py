"""Handing memory that freed objects left in the C allocator back to the system (glibc's ``malloc_trim``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or ``None`` where the C library is not glibc."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return the memory that freed objects left in the C allocator to the system; no-op where the C library is
    not glibc.

    glibc keeps freed blocks for reuse (per thread), and blocks of many sizes leave holes that it does not give
    back: a server that decoded a 7000x7000 picture kept ~150 MB after it was dropped, and the refiner's training,
    whose batches have a different shape at each step, grew to the machine's 24 GB (docs/training.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
