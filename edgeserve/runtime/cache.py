"""The response cache: an LRU of outputs keyed by what the model computes and a cryptographic digest of the inputs.

A model's identity is what decides its answers: the sha256 of its model file and the engine and precision that
run it (see :func:`edgeserve.runtime.model.identity_of`), never a human-chosen name or version, so two packages
that share a label never share entries, and two versions built from the same file may. The key covers each
input's name, dtype, shape and bytes, so the same bytes under another dtype or shape never collide. The cache
keeps its own read-only copy of every answer and hands each caller a fresh, writable copy.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .. import held
from ..config import CacheConfig

MISS = object()
"""What :meth:`ResponseCache.get` returns when there is no entry (a cached empty result is a real value)."""


def cache_key(identity: str, inputs: Mapping[str, np.ndarray]) -> bytes:
    """BLAKE2b-256 over the model's identity and every input's name, dtype, shape and bytes, each length-prefixed
    so that no two different requests hash the same sequence of bytes."""
    h = hashlib.blake2b(digest_size=32)
    data = identity.encode()
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)
    for name in sorted(inputs):
        arr = inputs[name]
        header = f"{name}\x00{arr.dtype.str}\x00{arr.shape}".encode()
        h.update(len(header).to_bytes(8, "little"))
        h.update(header)
        if arr.dtype == object:  # strings: hash their text, length-prefixed so no two sequences collide
            for item in arr.ravel():
                data = str(item).encode()
                h.update(len(data).to_bytes(8, "little"))
                h.update(data)
        else:
            held.update(h, arr)
    return h.digest()


class ResponseCache:
    """Thread-safe LRU bounded in bytes, with an optional time to live."""

    def __init__(self, config: CacheConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._entries: OrderedDict[bytes, tuple[str, dict[str, np.ndarray], int, float]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: bytes) -> Any:
        """The cached outputs (read-only arrays: copy before handing them out), or :data:`MISS`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return MISS
            model, outputs, size, stored = entry
            if self.config.ttl_s is not None and self._clock() - stored > self.config.ttl_s:
                self._drop(key)
                self.misses += 1
                return MISS
            self._entries.move_to_end(key)
            self.hits += 1
            return outputs

    def put(self, key: bytes, identity: str, outputs: Mapping[str, np.ndarray]) -> None:
        """Store a private, read-only copy of ``outputs`` (the caller keeps its own arrays) under ``identity``."""
        frozen = {}
        for name, value in outputs.items():
            arr = held.copy(value)
            arr.flags.writeable = False
            frozen[name] = arr
        size = sum(a.nbytes for a in frozen.values()) + 256  # a little per entry for the key and bookkeeping
        if size > self.config.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (identity, frozen, size, self._clock())
            self._bytes += size
            while self._bytes > self.config.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self.evictions += 1

    def invalidate(self, identity: str) -> int:
        """Drop every entry computed by the model with this identity (it stopped serving); returns how many went."""
        with self._lock:
            doomed = [k for k, (m, *_rest) in self._entries.items() if m == identity]
            for k in doomed:
                self._drop(k)
            return len(doomed)

    def _drop(self, key: bytes) -> None:
        _, _, size, _ = self._entries.pop(key)
        self._bytes -= size

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": len(self),
                "bytes": self._bytes}
