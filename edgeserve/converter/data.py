"""Sample data for calibration and verification: loaded from .npz, a folder of .npy, or a dict of arrays.

Rows are stacked along each input's batch axis (axis 0 for most models; axis 1 for the state of a recurrent
model, [layers, batch, hidden]). An input without a batch axis beside inputs with one (a sample rate, a threshold,
a flag: often 0-d) is *shared*: given once, in its own shape, and fed with every batch. For a model where no input
has a batch axis, arrays carry an extra leading sample axis. Data that does not match the model is refused with the input, what was expected and what arrived.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..arrays import by_input
from ..dims import stand_in_shapes
from ..errors import DataError
from ..metrics import ragged
from ..tensors import BATCH_NAME, TensorSpec, format_shape, join_rows, stand_in

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Samples:
    """Rows of model inputs, checked against the model's signature."""

    specs: tuple[TensorSpec, ...]
    arrays: dict[str, np.ndarray]
    rows: int

    @property
    def stacked(self) -> bool:
        """True when some input has a batch axis, so rows are slices along it (else one sample per feed)."""
        return is_stacked(self.specs)

    @property
    def shared(self) -> frozenset[str]:
        """Inputs given once and fed with every batch (no batch axis, beside inputs that have one)."""
        return frozenset(s.name for s in self.specs if s.batch_axis is None) if self.stacked else frozenset()

    def _axis(self, name: str) -> int:
        spec = next(s for s in self.specs if s.name == name)
        return spec.batch_axis if self.stacked and spec.batch_axis is not None else 0

    def select(self, index: np.ndarray | slice) -> dict[str, np.ndarray]:
        """The given rows of every input, taken along each input's own batch axis (shared inputs whole)."""
        out = {}
        shared = self.shared
        for k, v in self.arrays.items():
            if k in shared:
                out[k] = v
                continue
            axis = self._axis(k)
            if isinstance(index, slice):
                key = (slice(None),) * axis + (index,)
                out[k] = v[key]
            else:
                out[k] = np.take(v, index, axis=axis)
        return out

    def take(self, start: int, stop: int) -> Samples:
        return Samples(self.specs, self.select(slice(start, stop)), max(0, min(stop, self.rows) - start))

    def split(self, holdout_fraction: float, *, max_holdout: int = 256) -> tuple[Samples, Samples]:
        """(first part, held-out tail); the tail has at least one row when there are two or more."""
        if self.rows < 2:
            return self, self
        n_hold = min(max_holdout, max(1, int(round(self.rows * holdout_fraction))))
        cut = self.rows - n_hold
        return self.take(0, cut), self.take(cut, self.rows)

    def feeds(self, batch_size: int = 32) -> Iterator[dict[str, np.ndarray]]:
        """Feeds for the model: slices of ``batch_size`` rows, or one sample at a time without a batch axis."""
        if self.stacked:
            for start in range(0, self.rows, batch_size):
                yield self.select(slice(start, start + batch_size))
        else:
            for i in range(self.rows):
                # np.asarray: a 0-d sample must reach the engine as an array, never as a numpy scalar
                yield {k: np.asarray(v[i]) for k, v in self.arrays.items()}

    def batch_count(self, batch_size: int) -> int:
        return -(-self.rows // batch_size) if self.stacked else self.rows


def run_samples(session, samples: Samples, out_specs: Sequence[TensorSpec], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run every row through a backend session; outputs are joined along their batch axes (or stacked per sample;
    joined on their one-row axis for an export fixed at batch 1, see :func:`join_rows`).

    Outputs whose size depends on the values (the boxes a detector keeps: a dimension without a batch axis that no
    input names) or that differ in shape from one batch to the next are kept per sample (per batch), every output
    alike, as :func:`edgeserve.metrics.ragged` arrays: the metrics compare them sample by sample."""
    names = [o.name for o in out_specs]
    axes = {o.name: (o.batch_axis if o.batch_axis is not None else 0) for o in out_specs}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    single = True  # every run answered one sample: a batch-1 export's answers join on their one-row axis
    for feed in samples.feeds(batch_size):
        single = single and all(np.shape(v)[:1] == (1,) for v in feed.values())
        for n, value in zip(names, session.run(feed, names)):
            parts[n].append(np.asarray(value))
    if not samples.stacked and _sized_by_values(out_specs, samples.specs):
        return {n: ragged(chunks) for n, chunks in parts.items()}
    # an export fixed at batch 1 answers [1, ...] per sample: the samples join along that axis, as rows would
    batch_one = {o.name for o in out_specs if o.rows_on_axis0} if all(s.rows_on_axis0 for s in samples.specs) else set()
    joined = {}
    for n, chunks in parts.items():
        try:
            joined[n] = (join_rows(chunks) if n in batch_one and single else np.concatenate(chunks, axis=axes[n])
                         if samples.stacked or n in batch_one else np.stack(chunks))
        except ValueError:  # shapes vary from one batch to the next
            return {n: ragged(chunks) for n, chunks in parts.items()}
    return joined


def _sized_by_values(out_specs: Sequence[TensorSpec], in_specs: Sequence[TensorSpec]) -> bool:
    """Some output of a model without a batch axis has a variable size that no input's dimensions name, not even
    in an expression (``floor(W/4)``, ``s53*2``): the number of boxes, indices or tokens it keeps depends on the
    values."""
    named = {d for s in in_specs for d in s.shape if isinstance(d, str)}
    return any(isinstance(d, str) and named.isdisjoint(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", d))
               for s in out_specs for d in s.shape)


def check_samples(arrays: Mapping[str, np.ndarray], specs: Sequence[TensorSpec], *, what: str,
                  narrow: bool = False) -> Samples:
    """Check names, dtypes, ranks, fixed dims and row counts; returns the data as :class:`Samples`. ``narrow``:
    float64 arrays for float32 inputs are converted (the source was fit on numpy's float64 and the front end
    made its graph float32; an ONNX file's data must match it as saved). One array for a model of one input is
    that input, whatever its name (``np.savez("x.npz", x=X)`` for a TorchScript module whose ``forward`` names it
    ``input``)."""
    arrays = by_input(arrays, [s.name for s in specs])
    expected = {s.name for s in specs}
    given = set(arrays)
    if given != expected:
        parts = []
        if expected - given:
            parts.append("missing " + ", ".join(sorted(expected - given)))
        if given - expected:
            parts.append("unexpected " + ", ".join(sorted(given - expected)))
            if what == "evaluation data":
                parts[-1] += " (name the labels array with labels= / --labels)"
        raise DataError(
            f"{what}: arrays do not match the model's inputs ({'; '.join(parts)}); "
            f"expected one array per input: {', '.join(f'{s.name} {s.describe()}' for s in specs)}"
        )
    out: dict[str, np.ndarray] = {}
    rows: int | None = None
    stacked = is_stacked(specs)
    for spec in specs:
        arr = np.asarray(arrays[spec.name])
        if spec.dtype == "str" and arr.dtype.kind == "U":
            arr = arr.astype(object)  # an .npz holds text as fixed-width unicode; engines take Python strings
        if narrow and arr.dtype == np.float64 and spec.dtype == "float32":
            arr = arr.astype(np.float32)
        if arr.dtype != spec.np_dtype:
            fix = "np.array(texts, dtype=str)" if spec.dtype == "str" else f"arr.astype(np.{spec.dtype})"
            raise DataError(
                f"{what}: input '{spec.name}' expected {spec.dtype}, got {arr.dtype} {list(arr.shape)}; "
                f"save it as {spec.dtype} ({fix})"
            )
        rank = len(spec.shape)
        if stacked and spec.batch_axis is None:  # shared by every row: given once, in its own shape
            if arr.ndim != rank or any(isinstance(d, int) and d != n for d, n in zip(spec.shape, arr.shape)):
                raise DataError(
                    f"{what}: input '{spec.name}' has no batch axis ({spec.describe()}); it is shared by every row, "
                    f"so give it once in that shape, got {list(arr.shape)}"
                    + (f" (e.g. np.array({arr.reshape(-1)[0]!r}))" if rank == 0 and arr.size else "")
                )
            out[spec.name] = arr
            continue
        if not stacked and arr.ndim == rank:
            if rank and spec.shape[0] == 1 and arr.shape[0] != 1:
                arr = arr[:, np.newaxis]  # an export fixed at batch 1 given rows stacked on that axis: one each
            else:
                arr = arr[np.newaxis]  # one sample for a model without a batch axis
        want_rank = rank if stacked else rank + 1
        if arr.ndim != want_rank:
            layout = format_shape(spec.shape) if stacked else "[samples] + " + format_shape(spec.shape)
            raise DataError(f"{what}: input '{spec.name}' expected rank {want_rank} {layout}, got {list(arr.shape)}")
        offset = 0 if stacked else 1
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and arr.shape[axis + offset] != dim:
                if stacked:
                    raise DataError(f"{what}: input '{spec.name}' expected {spec.describe()}, got "
                                    f"{list(arr.shape)} (dimension {axis} must be {dim})")
                raise DataError(  # NOTE: the shape as given, not with the samples' axis this added
                    f"{what}: input '{spec.name}' has no batch axis: the model takes exactly {spec.describe()} a "
                    f"call, got {list(np.shape(arrays[spec.name]))} (dimension {axis} must be {dim}). If its "
                    "first axis is the batch, export the model with it variable (torch: dynamic_axes="
                    f"{{'{spec.name}': {{0: 'batch', ...}}}}); else stack samples of that shape on a new first axis"
                )
        n = arr.shape[spec.batch_axis] if stacked and spec.batch_axis is not None else arr.shape[0]
        if rows is not None and n != rows:
            raise DataError(f"{what}: inputs have different row counts ({rows} and {n} for '{spec.name}')")
        rows = n
        out[spec.name] = arr
    if not rows:
        raise DataError(f"{what}: holds no rows")
    return Samples(tuple(specs), out, rows)


def batch_axes_from_data(specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray]) -> tuple[TensorSpec, ...]:
    """``specs`` with a batch axis for each input whose names could not tell it but whose data does: an unnamed
    dimension (or one named like a batch, under another name than the other inputs') along which the data holds
    exactly as many rows as the inputs with a batch axis. Silero VAD's ``state [2, ?, 128]`` beside
    ``input [batch, samples]``: given as ``[2, rows, 128]`` it is each row's state, not one state shared by all
    (which the model would refuse for any other number of rows)."""
    if not is_stacked(specs):
        return tuple(specs)
    counts = {np.shape(arrays[s.name])[s.batch_axis] for s in specs
              if s.batch_axis is not None and s.name in arrays and np.ndim(arrays[s.name]) == len(s.shape)}
    if len(counts) != 1 or (rows := counts.pop()) < 2:
        return tuple(specs)
    out = []
    for spec in specs:
        shape = np.shape(arrays.get(spec.name, ()))
        if spec.batch_axis is None and spec.name in arrays and len(shape) == len(spec.shape):
            axes = [i for i, d in enumerate(spec.shape)
                    if (d is None or (isinstance(d, str) and BATCH_NAME.search(d))) and shape[i] == rows]
            if len(axes) == 1:
                log.info("input '%s' %s: its data holds the %d rows along axis %d, taken as its batch axis",
                         spec.name, format_shape(spec.shape), rows, axes[0])
                spec = replace(spec, batch_axis=axes[0])
        out.append(spec)
    return tuple(out)


def synthetic_samples(specs: Sequence[TensorSpec], rows: int = 32, seed: int = 0,
                      vocabularies: Mapping[str, int] | None = None) -> Samples:
    """Seeded stand-in data when the caller gave none: normal floats, small non-negative integers, dims of 8 (and
    dims named by expressions of others at what those make: :func:`~edgeserve.dims.stand_in_shapes`); token
    ids across their embedding table (``vocabularies``: input name to the table's rows), so a language model is
    measured on more than two tokens, and its ids are not taken for an attention mask."""
    rng = np.random.default_rng(seed)
    stacked = is_stacked(specs)
    arrays = {}
    shapes = stand_in_shapes(specs, rows)
    for spec in specs:
        shape = shapes[spec.name] if stacked else [rows, *shapes[spec.name]]  # stacked: the batch axis holds the rows
        value = stand_in(spec, shape, rng, (vocabularies or {}).get(spec.name))
        if value is None:
            raise DataError(f"input '{spec.name}' is {spec.dtype}: give sample data, edgeserve cannot invent it")
        arrays[spec.name] = value
    return Samples(tuple(specs), arrays, rows)


def is_stacked(specs: Sequence[TensorSpec]) -> bool:
    """Rows stack along batch axes when any input has one; the inputs without one are then shared."""
    return any(s.batch_axis is not None for s in specs)
