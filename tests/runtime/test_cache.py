"""The response cache: keys never collide across models, versions, dtypes or shapes; bounded; safe to share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve import CacheConfig
from edgeserve.runtime.cache import MISS, ResponseCache, cache_key
from tests.factories import rows


def test_keys_never_collide() -> None:
    x = np.arange(8, dtype=np.float32)
    base = cache_key("m", "1", {"x": x})
    assert base == cache_key("m", "1", {"x": x.copy()})
    assert base != cache_key("other", "1", {"x": x})
    assert base != cache_key("m", "2", {"x": x})
    assert base != cache_key("m", "1", {"x": x.view(np.int32)})          # same bytes, another dtype
    assert base != cache_key("m", "1", {"x": x.reshape(2, 4)})           # same bytes, another shape
    assert base != cache_key("m", "1", {"y": x})                         # another input name
    assert cache_key("m1", "", {"x": x}) != cache_key("m", "1", {"x": x})  # no ambiguity in how parts join
    assert cache_key("m", "1", {"x": x[::2]}) == cache_key("m", "1", {"x": np.ascontiguousarray(x[::2])})


def test_miss_is_not_an_empty_result() -> None:
    cache = ResponseCache(CacheConfig(max_bytes=10_000))
    assert cache.get(b"k") is MISS
    cache.put(b"k", "m", {})
    assert cache.get(b"k") == {} and cache.hits == 1 and cache.misses == 1


def test_lru_is_bounded_in_bytes() -> None:
    cache = ResponseCache(CacheConfig(max_bytes=3 * (400 + 256)))
    for i in range(5):
        cache.put(bytes([i]), "m", {"y": np.zeros(100, np.float32)})  # 400 bytes each
    assert len(cache) == 3 and cache.evictions == 2 and cache.bytes <= cache.config.max_bytes
    assert cache.get(bytes([0])) is MISS and cache.get(bytes([4])) is not MISS
    cache.get(bytes([2]))  # touch: 3 becomes the least recently used
    cache.put(bytes([9]), "m", {"y": np.zeros(100, np.float32)})
    assert cache.get(bytes([3])) is MISS and cache.get(bytes([2])) is not MISS
    cache.put(b"huge", "m", {"y": np.zeros(10_000, np.float32)})  # larger than the whole cache: not stored
    assert cache.get(b"huge") is MISS


def test_ttl_and_invalidation() -> None:
    now = [0.0]
    cache = ResponseCache(CacheConfig(ttl_s=10), clock=lambda: now[0])
    cache.put(b"a", "m1", {"y": np.ones(2)})
    cache.put(b"b", "m2", {"y": np.ones(2)})
    now[0] = 5
    assert cache.get(b"a") is not MISS
    now[0] = 11
    assert cache.get(b"a") is MISS
    assert cache.invalidate("m2") == 1 and cache.get(b"b") is MISS


def test_cached_arrays_cannot_be_changed_by_callers(mlp_package: Path) -> None:
    with edgeserve.load(mlp_package, cache=CacheConfig()) as model:
        first = model.predict(rows(2))
        first["logits"][:] = 0  # the first caller's own array is theirs to change
        again = model.predict(rows(2))
        assert not np.all(again["logits"] == 0)
        with pytest.raises(ValueError):
            again["logits"][0, 0] = 1.0
        assert model.cache.stats()["hits"] == 1 and model.cache.stats()["misses"] == 1
        model.predict(rows(2, seed=9))
        assert model.cache.stats()["misses"] == 2
