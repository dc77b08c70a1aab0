"""Per-image cache of the image-level work: the caption and the VLE image-side encoding.

Keyed by the SHA-256 of the normalised image (:func:`vle.image_io.image_sha256`), so the same picture
uploaded twice hits the cache. Bounded both by the number of entries and by bytes (tensor ``nbytes`` +
UTF-8 caption length); the least recently used entries are evicted first. All methods are thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

DEFAULT_MAX_ENTRIES = 64
DEFAULT_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class CachedImage:
    """What is known about one image: its caption and its VLE encoding (``None`` while not computed)."""

    caption: str | None = None
    image_embeds: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes this entry holds: the encoding's tensor bytes plus the caption's UTF-8 length."""
        size = len(self.caption.encode("utf-8")) if self.caption is not None else 0
        if self.image_embeds is not None:
            size += self.image_embeds.nelement() * self.image_embeds.element_size()
        return size


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the cache counters."""

    hits: int
    misses: int
    entries: int
    nbytes: int
    evictions: int


class ImageCache:
    """Thread-safe LRU of :class:`CachedImage` entries bounded by ``max_entries`` and ``max_bytes``.

    ``get`` counts a hit when the entry exists and holds everything asked for (``need_caption``,
    ``need_embeds``), a miss otherwise. ``update`` merges new fields into an entry. An entry larger than
    ``max_bytes`` on its own is not stored. ``max_entries=0`` disables caching.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_entries < 0 or max_bytes < 0:
            raise ValueError("max_entries and max_bytes must be >= 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CachedImage] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str, *, need_caption: bool = True, need_embeds: bool = True) -> CachedImage | None:
        """The entry for ``key`` (marked most recently used), or ``None``; counts a hit or a miss."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            complete = entry is not None and (not need_caption or entry.caption is not None) and (
                not need_embeds or entry.image_embeds is not None
            )
            if complete:
                self.hits += 1
            else:
                self.misses += 1
            return entry

    def peek(self, key: str) -> CachedImage | None:
        """The entry for ``key`` without touching the counters or the LRU order."""
        with self._lock:
            return self._entries.get(key)

    def update(self, key: str, *, caption: str | None = None, image_embeds: torch.Tensor | None = None) -> CachedImage:
        """Merge ``caption`` / ``image_embeds`` (those given) into the entry for ``key``; return the new entry.

        Tensors are stored detached. The entry becomes the most recently used; older ones are evicted until
        both bounds hold again.
        """
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            entry = old or CachedImage()
            if caption is not None:
                entry = replace(entry, caption=caption)
            if image_embeds is not None:
                entry = replace(entry, image_embeds=image_embeds.detach())
            if self.max_entries > 0 and entry.nbytes <= self.max_bytes:
                self._entries[key] = entry
                self._nbytes += entry.nbytes
                self._evict()
            return entry

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self._nbytes > self.max_bytes):
            _, dropped = self._entries.popitem(last=False)
            self._nbytes -= dropped.nbytes
            self.evictions += 1

    def clear(self) -> None:
        """Drop every entry (the counters are kept)."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by all entries."""
        with self._lock:
            return self._nbytes

    def stats(self) -> CacheStats:
        """Hits, misses, entries, bytes and evictions so far."""
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._entries), self._nbytes, self.evictions)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries
