"""The input contract: names, dtypes, ranks and dimensions are checked before any engine sees the data.

This runs on every request, so the checks are plain comparisons against values computed once per model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..arrays import frame_columns, is_frame
from ..errors import InputError
from ..tensors import CACHE_NAME, TensorSpec, format_shape, row_sets


class InputContract:
    """Turns what a caller passed into the feed a backend runs, or raises :class:`InputError`."""

    def __init__(self, specs: Sequence[TensorSpec], *, rows_on_batch_one: bool = False) -> None:
        """``rows_on_batch_one``: the model is fixed at batch 1 and answers several rows one at a time, so axis 0
        takes any number of rows (see :func:`edgeserve.tensors.rows_one_at_a_time`)."""
        self.specs = tuple(specs)
        self._names = frozenset(s.name for s in self.specs)
        # (name, dtype, rank, fixed dims as (axis, size)) per input, computed once
        self._checks = [
            (s.name, s.np_dtype, len(s.shape), tuple((i, d) for i, d in enumerate(s.shape)
                                                     if isinstance(d, int) and not (rows_on_batch_one and i == 0)), s)
            for s in self.specs
        ]
        self._single = self.specs[0].name if len(self.specs) == 1 else None
        self._only = self._checks[0] if len(self.specs) == 1 and not self.specs[0].shortest else None
        """The one input of a single-input model, checked inline (a shortest length is checked the long way)."""
        self._only_dtype = self._only[1] if self._only else None
        self._only_rank = self._only[2] if self._only else -1
        self._only_tail: tuple[int, ...] | None = None
        """Its shape past axis 0 when every one of those dimensions is fixed and axis 0 is not (a table's or an
        image's rows): one tuple comparison checks them all."""
        if self._only and all(isinstance(d, int) for d in self.specs[0].shape[1:]) and not any(
                axis == 0 for axis, _ in self._only[3]):
            self._only_tail = tuple(d for d in self.specs[0].shape[1:] if isinstance(d, int))
        self._batched = [(s.name, s.batch_axis or 0) for s in self.specs  # (rows on batch 1: axis 0)
                         if rows_on_batch_one or s.batch_axis is not None]
        sets = [self._batched] if rows_on_batch_one else [[(s.name, s.batch_axis or 0) for s in group]
                                                          for group in row_sets(self.specs)]
        self._row_sets = [group for group in sets if len(group) > 1]
        """The inputs whose rows must agree in number, in sets of two or more."""
        self._shared = _shared_dims(self.specs)

    def feed(self, inputs: Any = None, named: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Check ``inputs`` (one array for a single-input model, or a mapping of name to array)."""
        only = self._only
        if only is not None and type(inputs) is np.ndarray and not named:  # the common case, checked inline
            # NOTE: dtypes compared by identity first (numpy's builtin dtypes are singletons), the dimensions past
            # the rows as one tuple: 11.1k -> 8.6k instructions a call (callgrind), on a path whose budget is ~1 us
            dtype, tail = self._only_dtype, self._only_tail
            if tail is not None:
                if (inputs.shape[1:] == tail and inputs.ndim == self._only_rank and inputs.size
                        and (inputs.dtype is dtype or inputs.dtype == dtype)):
                    return {only[0]: inputs}
            elif (inputs.dtype == dtype and inputs.ndim == self._only_rank and inputs.size
                  and all(inputs.shape[a] == n for a, n in only[3])):
                return {only[0]: inputs}
        if named:
            if inputs is not None:
                raise InputError("pass inputs either as one mapping or as keyword arguments, not both")
            inputs = named
        if is_frame(inputs):  # a DataFrame: one input per column
            inputs = self._columns(inputs)
        if not isinstance(inputs, Mapping):
            if inputs is None:
                raise InputError(f"no inputs given; the model expects {self._expected()}")
            if self._single is None:
                raise InputError(
                    f"this model has {len(self.specs)} inputs, so pass a dict of name to array: {self._expected()}"
                )
            inputs = {self._single: inputs}
        if inputs.keys() != self._names:
            self._names_error(inputs)
        feed = {}
        for name, dtype, rank, fixed, spec in self._checks:
            value = inputs[name]
            if type(value) is not np.ndarray:
                value = self._coerce(name, value, spec)
            if dtype.kind == "O":
                value = _text(name, value)
            if value.dtype != dtype:
                raise InputError(
                    f"input '{name}': expected {spec.describe()}, got {value.dtype} {list(value.shape)}; "
                    f"convert it with .astype(np.{dtype})" if spec.dtype != "str" else
                    f"input '{name}': expected an array of strings (dtype object), got {value.dtype}"
                )
            if value.ndim != rank:
                raise InputError(
                    f"input '{name}': expected {rank} dimensions {format_shape(spec.shape)}, "
                    f"got {value.ndim} {list(value.shape)}{_one_row_hint(spec, value)}"
                )
            for axis, size in fixed:
                if value.shape[axis] != size:
                    hint = ("; the model was exported at batch 1: send one row at a time, or export it with a "
                            "dynamic batch axis" if axis == 0 and size == 1 and spec.rows_on_axis0 else "")
                    raise InputError(
                        f"input '{name}': expected {spec.describe()}, got {value.dtype} {list(value.shape)} "
                        f"(dimension {axis} must be {size}{hint})"
                    )
            if not value.size:
                self._empty(name, value, spec)
            for axis, least in spec.shortest:
                if value.shape[axis] < least:
                    raise InputError(
                        f"input '{name}': dimension {axis} is {value.shape[axis]} long, and the model needs at least "
                        f"{least} ({spec.describe()}: shorter inputs failed in the engine when the package was "
                        f"converted, as strided convolutions or pooling leave nothing of them); pad or lengthen it"
                    )
            feed[name] = value
        for group in self._row_sets:
            self._rows_agree(feed, group)
        for dim, where in self._shared:
            self._dims_agree(feed, dim, where)
        return feed

    @staticmethod
    def _dims_agree(feed: Mapping[str, np.ndarray], dim: str, where: tuple[tuple[str, int], ...]) -> None:
        """Inputs the model declares with the same named dimension (``input_ids`` and ``attention_mask`` both
        ``[batch, sequence]``) give it the same size: else the engine fails deep inside (a ``Where`` node's
        broadcast error), or answers with one silently cut to the other."""
        first, axis = where[0]
        size = feed[first].shape[axis]
        for name, ax in where[1:]:
            if feed[name].shape[ax] != size:
                sizes = ", ".join(f"'{n}' {feed[n].shape[a]} (axis {a})" for n, a in where)
                raise InputError(f"inputs disagree on the size of dimension '{dim}': {sizes}; the model declares "
                                 "it the same for each")

    @staticmethod
    def _rows_agree(feed: Mapping[str, np.ndarray], group: Sequence[tuple[str, int]]) -> None:
        """The inputs of one row set (see :func:`edgeserve.tensors.row_sets`) carry the same number of rows: a
        request that breaks this would fail the whole batch it was stacked into, so it is refused here, before it
        joins one."""
        first, axis = group[0]
        rows = feed[first].shape[axis]
        for name, ax in group[1:]:
            if feed[name].shape[ax] != rows:
                sizes = ", ".join(f"'{n}' {feed[n].shape[a]} (axis {a})" for n, a in group)
                raise InputError(f"inputs disagree on the batch size: {sizes}; every input needs one row per sample")

    def _empty(self, name: str, value: np.ndarray, spec: TensorSpec) -> None:
        """Refuse an input with a dimension of size 0 — no rows, an empty sequence or image: onnxruntime aborts
        the whole process on some of them (an LSTM or GRU given 0 rows or 0 steps), so none reaches an engine. A
        cache fed back (a decoder's ``past_key [batch, heads, 0, dim]`` at its first step) may be empty along an
        axis other than its rows."""
        rows_axis = next((a for n, a in self._batched if n == name), None)
        for axis, size in enumerate(value.shape):
            if size:
                continue
            if axis == rows_axis:
                raise InputError(f"input '{name}' has no rows ({list(value.shape)}, 0 along its batch axis {axis}); "
                                 "send at least one row")
            if not CACHE_NAME.search(name):
                raise InputError(f"input '{name}' is empty along axis {axis} ({list(value.shape)}, expected "
                                 f"{format_shape(spec.shape)}); send at least one value along every axis")

    def _coerce(self, name: str, value: Any, spec: TensorSpec) -> np.ndarray:
        if isinstance(value, np.ndarray):  # a subclass such as a masked array: plain data only
            return np.asarray(value)
        if isinstance(value, (list, tuple, int, float, bool, np.generic)):
            # Python data carries no dtype of its own, so it takes the model's.
            try:
                return np.asarray(value, dtype=spec.np_dtype)
            except (ValueError, TypeError, OverflowError) as exc:
                raise InputError(f"input '{name}': cannot be read as {spec.describe()} ({exc})") from None
        raise InputError(f"input '{name}': expected a numpy array, got {type(value).__name__}")

    def _columns(self, frame: Any) -> dict[str, np.ndarray]:
        """A DataFrame's columns as inputs; a column of the wrong kind is named with the dtype the user gave
        (columns are narrowed first: float64 to float32, any integer to int64)."""
        columns = frame_columns(frame)
        for spec in self.specs:
            got = columns.get(spec.name)
            if got is not None and spec.dtype != "str" and got.dtype != spec.np_dtype:
                raise InputError(f"input '{spec.name}': the DataFrame's column is {frame[spec.name].dtype}, the model "
                                 f"takes {spec.dtype}; convert it with df[{spec.name!r}].astype('{spec.dtype}')")
        return columns

    def _expected(self) -> str:
        return ", ".join(f"'{s.name}' {s.describe()}" for s in self.specs)

    def _names_error(self, inputs: Mapping[str, Any]) -> None:
        given = set(inputs)
        missing = sorted(self._names - given)
        unknown = sorted(str(k) for k in given - self._names)
        parts = []
        if missing:
            parts.append("missing " + ", ".join(f"'{m}'" for m in missing))
        if unknown:
            parts.append("unknown " + ", ".join(f"'{u}'" for u in unknown))
        raise InputError(f"inputs do not match the model: {'; '.join(parts)}. The model expects {self._expected()}")


def _shared_dims(specs: Sequence[TensorSpec]) -> list[tuple[str, tuple[tuple[str, int], ...]]]:
    """Named dimensions (other than the batch axes, checked on their own) that more than one input declares: each
    name with the (input, axis) pairs that carry it."""
    seen: dict[str, list[tuple[str, int]]] = {}
    for s in specs:
        for axis, dim in enumerate(s.shape):
            if isinstance(dim, str) and dim and axis != s.batch_axis:
                seen.setdefault(dim, []).append((s.name, axis))
    return [(dim, tuple(where)) for dim, where in seen.items() if len({n for n, _ in where}) > 1]


def _text(name: str, value: np.ndarray) -> np.ndarray:
    """A string input as the engine takes it: an object array of ``str``. Fixed-width unicode is converted, and
    ``bytes`` elements (numpy's ``S``, a protocol's BYTES) are decoded as UTF-8: the engine would read one as its
    ``repr`` — ``b'oslo'`` is then another category than ``oslo``."""
    if value.dtype.kind == "U":
        return value.astype(object)
    if value.dtype.kind == "S":
        value = value.astype(object)
    if value.dtype.kind != "O":
        return value
    flat = value.reshape(-1).tolist()
    if not any(isinstance(v, bytes) for v in flat):
        return value
    out = np.empty(len(flat), dtype=object)
    for i, v in enumerate(flat):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"input '{name}': element {i} is bytes that are not UTF-8 text; the model's string "
                                 "input takes text") from None
        out[i] = v
    return out.reshape(value.shape)


def _one_row_hint(spec: TensorSpec, value: np.ndarray) -> str:
    """One row sent without its batch axis: say how to add it. Samples stacked for a model that takes one at a
    time (torchvision's detectors take one image, [3, H, W]): say so."""
    axis = spec.batch_axis if spec.batch_axis is not None else 0 if spec.rows_on_axis0 else None
    if axis is None and value.ndim == len(spec.shape) + 1 and all(
            not isinstance(d, int) or d == n for d, n in zip(spec.shape, value.shape[1:])):
        return (f"; the model takes one sample at a time (it has no batch axis): send the {value.shape[0]} samples "
                f"one by one, x[0], x[1]…")
    if axis is None or value.ndim != len(spec.shape) - 1:
        return ""
    rest = [d for i, d in enumerate(spec.shape) if i != axis]
    if all(not isinstance(d, int) or d == n for d, n in zip(rest, value.shape)):
        shape = list(value.shape)
        shape.insert(axis, 1)
        return f"; one row without its batch axis? send it as {shape} (numpy: np.expand_dims(x, {axis}))"
    return ""
