"""The response cache: keys never collide across models, versions, dtypes or shapes; bounded; safe to share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import edgeserve
from edgeserve import CacheConfig
from edgeserve.runtime.cache import MISS, ResponseCache, cache_key
from tests.factories import rows


def test_keys_never_collide() -> None:
    x = np.arange(8, dtype=np.float32)
    base = cache_key("m", {"x": x})
    assert base == cache_key("m", {"x": x.copy()})
    assert base != cache_key("other", {"x": x})
    assert base != cache_key("m", {"x": x.view(np.int32)})          # same bytes, another dtype
    assert base != cache_key("m", {"x": x.reshape(2, 4)})           # same bytes, another shape
    assert base != cache_key("m", {"y": x})                         # another input name
    assert cache_key("m", {"x": x[::2]}) == cache_key("m", {"x": np.ascontiguousarray(x[::2])})


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


def test_every_call_returns_the_callers_own_writable_arrays(mlp_package: Path) -> None:
    """A miss and a hit return the same kind of result: arrays the caller may change, which change nothing cached."""
    with edgeserve.load(mlp_package, cache=CacheConfig()) as model:
        first = model.predict(rows(2))
        expected = first["logits"].copy()
        first["logits"] /= 2.0  # a miss: the caller's own array
        again = model.predict(rows(2))
        np.testing.assert_array_equal(again["logits"], expected)
        again["logits"] /= 2.0  # a hit: just as writable, and still the caller's own
        np.testing.assert_array_equal(model.predict(rows(2))["logits"], expected)
        assert model.cache.stats()["hits"] == 2 and model.cache.stats()["misses"] == 1


def test_packages_sharing_a_label_never_share_answers(tmp_path: Path) -> None:
    """Two packages converted from different files under one name@version share a cache, each gets its own answers."""
    from tests.factories import mlp_model, save

    pkgs = [edgeserve.convert(save(mlp_model(seed=s), tmp_path / f"m{s}.onnx"), tmp_path / f"p{s}", name="mlp").path
            for s in (0, 1)]
    cache = ResponseCache(CacheConfig())
    with edgeserve.load(pkgs[0], cache=cache) as a, edgeserve.load(pkgs[1], cache=cache) as b:
        assert (a.name, a.version) == (b.name, b.version)
        out_a, out_b = a.predict(rows(3))["logits"], b.predict(rows(3))["logits"]
        assert not np.allclose(out_a, out_b)
        np.testing.assert_array_equal(a.predict(rows(3))["logits"], out_a)
        np.testing.assert_array_equal(b.predict(rows(3))["logits"], out_b)
        assert cache.hits == 2 and len(cache) == 2


def test_the_same_file_shares_answers_across_packages(tmp_path: Path, mlp_path: Path) -> None:
    first = edgeserve.convert(mlp_path, tmp_path / "a").path
    second = edgeserve.convert(mlp_path, tmp_path / "b").path
    cache = ResponseCache(CacheConfig())
    with edgeserve.load(first, cache=cache) as a, edgeserve.load(second, cache=cache) as b:
        assert a.identity == b.identity
        a.predict(rows(1))
        b.predict(rows(1))
        assert cache.hits == 1
