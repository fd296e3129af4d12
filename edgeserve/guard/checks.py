"""The envelope checks every request passes before it runs: NaN/±inf in float inputs, values outside the
reference range (by a margin), token ids outside the embedding table. Each check has a policy: ``reject`` (the
request fails with :class:`EnvelopeError`, naming the input, the check, and where and what broke it), ``warn``
(it runs, and the check's counter goes up), ``off``.

Passing requests cost one bounds check per input (``lo <= x`` and ``x <= hi``, both False for NaN too); only a request that
fails it is looked at closely.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..config import GuardConfig
from ..errors import EnvelopeError
from ..tensors import TensorSpec

SHOWN = 5
"""Positions and values a rejection names at most."""
GIL_HELD = 500
"""numpy gives up the interpreter lock for one operation over more values than this, and a thread that gives it up
waits to get it back behind every thread that wants it: with three busy threads, a check of 512 values took 0.7-5 ms
against 2.6 us for 500 (an event loop checking every request of a wide model spent 40% of its time there). An event
loop's checks (``hold``) of up to ``PIECEWISE`` values compare in pieces of at most this many, keeping the lock.
NOTE: a plain thread's checks do not: at 32 threads of 8 or 32 rows of 64 values each, checks in pieces answered
0.67-0.76x of what whole checks did (the lock given up there lets another caller run)."""
PIECEWISE = 8192


@dataclass
class _InputCheck:
    name: str
    lo: np.ndarray | None  # bounds shaped to broadcast against the input (rows on axis 0), margin included
    hi: np.ndarray | None
    lo_all: np.ndarray | None  # the whole tensor's bounds, for a live input of another size than the reference's
    hi_all: np.ndarray | None
    floating: bool
    vocabulary: int | None
    fits: tuple[int, ...] | None = None  # the last shape seen that the per-feature bounds broadcast against
    categories: frozenset[str] | None = None  # a text input's values in the reference
    missing: bool = False  # the reference holds NaN here (missing values a model's imputer fills): not an error
    top_id: np.ndarray | None = None  # vocabulary - 1, the highest token id the table holds
    max_length: int | None = None  # the longest sequence the model's position table holds (token ids [rows, seq])
    pieces: tuple[Any, list[tuple[Any, np.ndarray, np.ndarray]]] | None = None
    """(shape and bounds, [(index, lo, hi)]): the last piecewise check's pieces (see :meth:`within`), kept."""

    def __post_init__(self) -> None:
        if self.vocabulary is not None:
            self.top_id = np.array(self.vocabulary - 1)

    def within(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, hold: bool) -> bool:
        """:func:`within`, with the pieces and their bounds cut once per shape. NOTE: cut for every request,
        they cost 6.6 of 8.4 us on a 512-value row."""
        if not hold or x.size <= GIL_HELD or x.size > PIECEWISE:
            return _inside(x, lo, hi)
        key = (x.shape, id(lo), id(hi))
        cut = self.pieces
        if cut is None or cut[0] != key:
            lo_b, hi_b = np.broadcast_to(lo, x.shape), np.broadcast_to(hi, x.shape)
            cut = self.pieces = (key, [(p, lo_b[p], hi_b[p]) for p in pieces(x.shape, GIL_HELD)])
        return all(_inside(x[p], low, high) for p, low, high in cut[1])


class Envelope:
    """The envelope of one model: built once from its manifest's reference statistics and its guard config."""

    def __init__(self, specs: Sequence[TensorSpec], reference: Mapping[str, Any], config: GuardConfig) -> None:
        self.config = config
        self.warnings: dict[str, int] = {"non_finite": 0, "range": 0, "vocabulary": 0, "category": 0}
        self.rejections: dict[str, int] = {"non_finite": 0, "range": 0, "vocabulary": 0, "category": 0}
        self._lock = threading.Lock()
        self._checks: list[_InputCheck] = []
        stats = reference.get("inputs", {}) if reference else {}
        for spec in specs:
            floating = np.issubdtype(spec.np_dtype, np.floating) if spec.dtype != "str" else False
            ref = stats.get(spec.name, {})
            if spec.dtype == "str":
                if config.category != "off" and ref.get("categories") is not None:
                    self._checks.append(_InputCheck(spec.name, None, None, None, None, False, None,
                                                    categories=frozenset(ref["categories"])))
                continue
            lo = hi = None
            if config.range != "off" and ref.get("range") and spec.dtype != "str":
                lo, hi = _native(*_bounds(ref, len(spec.shape), config.range_margin), spec.np_dtype)
            if floating and config.non_finite != "off" and lo is None:
                big = np.finfo(spec.np_dtype).max
                lo, hi = np.array(-big), np.array(big)  # still catches NaN and inf in one comparison
            vocab = ref.get("tokens", {}).get("vocabulary") if config.vocabulary != "off" else None
            if lo is not None or vocab is not None:
                self._checks.append(_InputCheck(
                    spec.name, lo, hi, None if lo is None else np.array(lo.min()),
                    None if hi is None else np.array(hi.max()), floating, vocab,
                    missing=floating and ref.get("nan", ref.get("non_finite", 0)) > 0,
                    max_length=ref.get("tokens", {}).get("max_length") if vocab is not None else None))

    @property
    def active(self) -> bool:
        """False when no input has anything to check."""
        return bool(self._checks)

    def check(self, feed: Mapping[str, np.ndarray], *, hold: bool = False) -> tuple[str, ...]:
        """Raise :class:`EnvelopeError` for a check whose policy rejects; return the checks that warned. ``hold``:
        the caller is an event loop, which must keep the interpreter lock (see ``GIL_HELD``)."""
        warned: tuple[str, ...] = ()
        for c in self._checks:
            x = feed.get(c.name)
            if x is None:
                continue
            if c.categories is not None:
                known = c.categories
                if not all(v in known for v in x.reshape(-1).tolist()):
                    warned += self._failed("category", c.name, x, partial(_unknown, x, known),
                                           f"values the reference never held (it held {_listed(known)})")
                continue
            if c.vocabulary is not None:
                if c.max_length is not None and x.ndim == 2 and x.shape[1] > c.max_length:
                    warned += self._failed(
                        "vocabulary", c.name, x, partial(_past_positions, x, c.max_length),
                        f"positions past the model's position table ({x.shape[1]} tokens a row, where it holds "
                        f"{c.max_length}: truncate the sequences to {c.max_length} tokens or split them)")
                    continue
                if not c.within(x, _ZERO, c.top_id, hold):  # type: ignore[arg-type]
                    warned += self._failed("vocabulary", c.name, x, partial(_outside_table, x, c.vocabulary),
                                           f"token ids outside the embedding table (0..{c.vocabulary - 1})")
                continue
            lo, hi = c.lo, c.hi
            assert lo is not None and hi is not None
            if x.shape != c.fits:
                if lo.ndim and (x.ndim != lo.ndim or any(b != 1 and b != d for b, d in zip(lo.shape, x.shape))):
                    lo, hi = c.lo_all, c.hi_all  # a symbolic dimension sized unlike the reference's: whole-tensor
                    assert lo is not None and hi is not None
                else:
                    c.fits = x.shape  # the per-feature bounds broadcast against this shape: no need to look again
            if c.within(x, lo, hi, hold):
                continue
            finite = not c.floating or bool(np.isfinite(x).all())
            if not finite and self.config.non_finite != "off":
                if not c.missing:
                    warned += self._failed("non_finite", c.name, x, partial(_not_finite, x), "NaN or infinite values")
                elif np.isinf(x).any():  # NaN is a missing value the reference held too; infinity is not
                    warned += self._failed("non_finite", c.name, x, partial(np.isinf, x),
                                           "infinite values (NaN, which the reference holds, is let through)")
            if self.config.range != "off":

                def outside(x: np.ndarray = x, lo: np.ndarray = lo, hi: np.ndarray = hi) -> np.ndarray:
                    with np.errstate(invalid="ignore"):
                        return np.isfinite(x) & ((x < lo) | (x > hi))

                # all finite: the bounds check failed on a value out of range; else only a closer look can tell
                if finite or outside().any():
                    warned += self._failed("range", c.name, x, outside,
                                           f"values outside the reference range (margin {self.config.range_margin:g} "
                                           "of each feature's span)")
        return warned

    def _failed(self, check: str, name: str, x: np.ndarray, where_bad: Callable[[], np.ndarray],
                what: str) -> tuple[str, ...]:
        """Count the failure; raise if the policy rejects (only then are the positions worked out)."""
        policy = getattr(self.config, check)
        with self._lock:
            (self.rejections if policy == "reject" else self.warnings)[check] += 1
        if policy != "reject":
            return (f"{check}:{name}",)
        bad = where_bad()
        where = np.argwhere(bad)[:SHOWN]
        shown = ", ".join(f"{list(map(int, p))} = {_value(x[tuple(p)])!r}" for p in where)
        count = int(bad.sum())
        raise EnvelopeError(
            f"input '{name}' fails the envelope check '{check}': {count} {what}, at {shown}"
            f"{' …' if count > SHOWN else ''}. The model's guard rejects them; fix the data, or set the guard's "
            f"{check} policy to 'warn' or 'off'", check=check, input=name)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"warnings": dict(self.warnings), "rejections": dict(self.rejections)}


_ZERO = np.array(0)


def within(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, hold: bool = False) -> bool:
    """``lo <= x <= hi`` everywhere (bounds broadcast against ``x``; False where ``x`` is NaN); ``hold``: keeping
    the interpreter lock for up to ``PIECEWISE`` values (see ``GIL_HELD``)."""
    if not hold or x.size <= GIL_HELD or x.size > PIECEWISE:
        return _inside(x, lo, hi)
    lo, hi = np.broadcast_to(lo, x.shape), np.broadcast_to(hi, x.shape)
    return all(_inside(x[p], lo[p], hi[p]) for p in pieces(x.shape, GIL_HELD))


def _inside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    """NOTE: two comparisons and two counts, not ``((x >= lo) & (x <= hi)).all()``: a reduction is numpy's slowest
    small call (3.5 -> 1.5 us for 64 values). The count is numpy's C function itself, not ``np.count_nonzero``,
    whose two Python frames (its dispatcher and its body) were a third of this check's instructions."""
    above = x >= lo
    if _count_nonzero(above) != above.size:
        return False
    below = x <= hi
    return bool(_count_nonzero(below) == below.size)


_count_nonzero = np._core._multiarray_umath.count_nonzero  # type: ignore[attr-defined]


def pieces(shape: tuple[int, ...], limit: int) -> Iterator[tuple[int | slice, ...]]:
    """Indexes that cut an array of ``shape`` into pieces of at most ``limit`` values, covering it once."""
    inner = math.prod(shape[1:])
    if inner <= limit:
        step = max(1, limit // max(inner, 1))
        for start in range(0, shape[0], step):
            yield (slice(start, start + step),)
        return
    for i in range(shape[0]):
        for rest in pieces(shape[1:], limit):
            yield (i, *rest)


def _native(lo: np.ndarray, hi: np.ndarray, dtype: np.dtype[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Bounds in the input's own dtype, rounded outwards (a comparison of mixed dtypes converts every element)."""
    if np.issubdtype(dtype, np.floating):
        lo_n, hi_n = lo.astype(dtype), hi.astype(dtype)
        lo_n = np.where(lo_n > lo, np.nextafter(lo_n, dtype.type(-np.inf)), lo_n).astype(dtype)
        hi_n = np.where(hi_n < hi, np.nextafter(hi_n, dtype.type(np.inf)), hi_n).astype(dtype)
        return lo_n, hi_n
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        top = float(info.max)  # NOTE: 2**63 - 1 rounds up to 2**63 as a float, which no int64 holds
        top = float(np.nextafter(top, -np.inf)) if int(top) > info.max else top
        lo_f = np.nan_to_num(np.ceil(lo), nan=float(info.min))
        hi_f = np.nan_to_num(np.floor(hi), nan=top)
        return (np.clip(lo_f, float(info.min), top).astype(dtype), np.clip(hi_f, float(info.min), top).astype(dtype))
    return lo, hi


def _outside_table(x: np.ndarray, vocabulary: int) -> np.ndarray:
    return (x < 0) | (x >= vocabulary)  # type: ignore[no-any-return]


def _past_positions(x: np.ndarray, max_length: int) -> np.ndarray:
    bad = np.zeros(x.shape, bool)
    bad[:, max_length:] = True
    return bad


def _value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _unknown(x: np.ndarray, known: frozenset[str]) -> np.ndarray:
    return np.array([v not in known for v in x.reshape(-1).tolist()]).reshape(x.shape)


def _listed(known: frozenset[str], count: int = 8) -> str:
    shown = sorted(known)[:count]
    return ", ".join(map(repr, shown)) + (f" and {len(known) - count} more" if len(known) > count else "")


def _not_finite(x: np.ndarray) -> np.ndarray:
    return ~np.isfinite(x)  # type: ignore[no-any-return]


def _bounds(ref: Mapping[str, Any], rank: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    lo = np.asarray(ref["range"]["min"], dtype=np.float64)
    hi = np.asarray(ref["range"]["max"], dtype=np.float64)
    magnitude = np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0)
    whole = float(hi.max() - lo.min()) or 1.0
    span = np.where(hi > lo, hi - lo, whole)  # a constant feature gets the tensor's span as its room
    pad = margin * np.maximum(span, 1e-3 * magnitude)  # and float rounding on another CPU is never out of range
    lo, hi = lo - pad, hi + pad
    axis = (ref.get("layout") or {}).get("axis")
    if axis is not None and len(lo) > 1 and axis < rank:
        shape = [1] * rank
        shape[axis] = len(lo)
        return lo.reshape(shape), hi.reshape(shape)
    return np.array(lo.min()), np.array(hi.max())
