"""The per-image cache: LRU order, both bounds (entries and bytes), merging, counters, thread safety."""

import threading

import pytest
import torch

from vqa_llm.cache import CachedImage, ImageCache


def _embeds(n_floats: int) -> torch.Tensor:
    return torch.zeros(1, n_floats, dtype=torch.float32)


def test_entry_size_counts_tensor_bytes_and_utf8_caption():
    entry = CachedImage(caption="café", image_embeds=_embeds(10))
    assert entry.nbytes == 40 + len("café".encode("utf-8")) == 45
    assert CachedImage().nbytes == 0


def test_get_counts_hits_and_misses_and_merges_fields():
    cache = ImageCache(max_entries=4, max_bytes=10_000)
    assert cache.get("a") is None
    cache.update("a", caption="a red circle")
    # caption only: a request that needs the embeddings too is a miss, one that needs the caption only a hit
    assert cache.get("a").caption == "a red circle"
    assert cache.get("a", need_embeds=False).image_embeds is None
    cache.update("a", image_embeds=_embeds(4))
    entry = cache.get("a")
    assert entry.caption == "a red circle" and entry.image_embeds.shape == (1, 4)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 2, 1)
    assert stats.nbytes == 16 + len("a red circle")


def test_entry_bound_evicts_least_recently_used():
    cache = ImageCache(max_entries=2, max_bytes=10**9)
    cache.update("a", caption="A")
    cache.update("b", caption="B")
    cache.get("a")  # a becomes the most recently used
    cache.update("c", caption="C")
    assert "b" not in cache and "a" in cache and "c" in cache
    assert len(cache) == 2 and cache.stats().evictions == 1


def test_byte_bound_holds_and_evicts_oldest():
    cache = ImageCache(max_entries=100, max_bytes=1000)
    for key in "abcd":
        cache.update(key, image_embeds=_embeds(100))  # 400 bytes each
        assert cache.nbytes <= 1000
    assert [k for k in "abcd" if k in cache] == ["c", "d"]
    assert cache.nbytes == 800
    # growing an entry past the bound evicts others, never the grown entry itself
    cache.update("c", caption="x" * 250)
    assert "c" in cache and "d" not in cache and cache.nbytes == 650


def test_entry_larger_than_the_byte_bound_is_not_stored():
    cache = ImageCache(max_entries=10, max_bytes=100)
    cache.update("small", caption="ok")
    entry = cache.update("huge", image_embeds=_embeds(1000))
    assert entry.image_embeds is not None  # the caller still gets its data back
    assert "huge" not in cache and "small" in cache and cache.nbytes == 2


def test_zero_entries_disables_caching_and_negative_bounds_are_refused():
    cache = ImageCache(max_entries=0)
    cache.update("a", caption="A")
    assert len(cache) == 0 and cache.get("a") is None
    with pytest.raises(ValueError):
        ImageCache(max_entries=-1)


def test_stored_tensors_are_detached_and_clear_empties():
    cache = ImageCache()
    leaf = torch.ones(1, 3, requires_grad=True)
    cache.update("a", image_embeds=leaf * 2)
    assert not cache.peek("a").image_embeds.requires_grad
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_concurrent_updates_keep_the_bounds_and_the_byte_count_exact():
    cache = ImageCache(max_entries=8, max_bytes=8 * 400)

    def worker(offset: int) -> None:
        for i in range(200):
            key = f"img{(offset * 7 + i) % 20}"
            cache.update(key, image_embeds=_embeds(100))
            cache.get(key)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats.entries <= 8 and stats.nbytes <= 8 * 400
    assert stats.nbytes == 400 * stats.entries
    assert stats.hits + stats.misses == 800
