"""Copies, joins and digests of request-sized arrays that keep the interpreter lock.

numpy gives up the interpreter lock for any pass over more than 500 values, and hashlib for any buffer of 2048
bytes or more. Alone, that costs nothing; under load, a thread that gives it up waits to get it back behind every
thread that wants it. Measured here with three busy threads: copying 2048 float32 values took 1 us at the median and
46 us at the 90th percentile, joining two such arrays 2.5 us and 5.4 ms, a blake2b of 8 KB 43 us and 22 ms. A
request-sized copy is a memcpy of a few microseconds: holding the lock through it is far cheaper than the wait.
These helpers do exactly that up to ``HELD_BYTES``, and hand anything bigger to numpy and hashlib as they are.

NOTE: the 500-value rule is numpy's for element-wise ufuncs, comparisons, copies and casts. Other calls give the lock
up at any size (seen with a rival thread, numpy 2.4): ``take`` and fancy indexing, ``argmax``, ``searchsorted``,
``bincount``, ``ufunc.at`` and ``dot``. On a request's path,
prefer Python over those for a handful of values (the audit record's top classes: 19k -> 29k requests/s at 32
callers with ``argmax`` gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

HELD_BYTES = 1 << 20
"""Arrays up to this many bytes are copied with the lock held (a memcpy of 1 MiB takes ~50-100 us)."""
NUMPY_HOLDS = 500
"""numpy keeps the lock for a pass over at most this many values."""
HASH_PIECE = 2047
"""hashlib keeps the lock for buffers shorter than 2048 bytes."""


def _plain(a: np.ndarray) -> bool:
    return a.dtype != object and a.nbytes <= HELD_BYTES


def copy(a: np.ndarray) -> np.ndarray:
    """A writable C-contiguous copy of ``a``."""
    if a.size <= NUMPY_HOLDS or not _plain(a):
        return np.array(a)
    out = np.empty(a.shape, a.dtype)
    if a.nbytes:
        out.data.cast("B")[:] = _bytes(a)  # NOTE: a memcpy under the lock
    return out


def concat(parts: Sequence[np.ndarray], axis: int = 0) -> np.ndarray:
    """``np.concatenate(parts, axis)`` for arrays of one dtype; along axis 0 with the lock held."""
    first = parts[0]
    dtype, rest = first.dtype, first.shape[1:]
    small, alike, rows, nbytes = True, axis == 0 and first.ndim > 0 and dtype.kind != "O", 0, 0
    for p in parts:  # NOTE: one loop, not four generators: this is every batch's join
        if p.size > NUMPY_HOLDS:
            small = False
        if p.dtype != dtype or p.shape[1:] != rest:
            alike = False
        rows += len(p) if p.ndim else 0
        nbytes += p.nbytes
    if small or not alike or nbytes > HELD_BYTES:  # small: numpy copies part by part, each under the lock
        return np.concatenate(parts, axis=axis)
    # NOTE: one join in C, a memcpy per part under the lock (27 parts of 512 floats: 12 us with the checks above,
    # against 20 us copied into an array part by part from Python)
    return np.frombuffer(bytearray().join([_bytes(p) for p in parts]), dtype).reshape((rows, *rest))


def _bytes(a: np.ndarray) -> memoryview | bytes:
    """``a``'s bytes in C order, without a copy when it is C-contiguous."""
    return a.data.cast("B") if a.flags.c_contiguous and a.ndim and a.size else a.tobytes()


def update(h: Any, a: np.ndarray) -> None:
    """Feed ``a``'s bytes (C order) to the hashlib object ``h``, in pieces small enough that hashing keeps the lock
    (same digest as one ``h.update``)."""
    if a.nbytes < 2048 and a.flags.c_contiguous and a.ndim:
        h.update(a)  # hashlib reads the buffer as it is
        return
    data = memoryview(_bytes(a))
    if len(data) < 2048 or len(data) > HELD_BYTES:
        h.update(data)
        return
    for start in range(0, len(data), HASH_PIECE):
        h.update(data[start:start + HASH_PIECE])
