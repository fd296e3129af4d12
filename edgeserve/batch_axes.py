"""Which outputs really carry the batch: measured by running rows together and apart, not only guessed from the
names exporters give dimensions.

A detector whose graph ends in NonMaxSuppression answers ``[detections, 7]``: a symbolic first axis that is not
the batch. Dynamic batching splits every output back among the callers along its batch axis, so a wrong guess
hands one caller another's boxes whenever the counts happen to match. Before a model is batched, three rows run
as 1 + 2 and as 3: an output keeps its batch axis only if it has 1, 2 and 3 entries along it, and the joint answer
is the separate ones stacked (integers exactly; floats to a cosine of 0.99, since dynamic int8 quantises a
batch's rows together). An output whose guessed axis does not split takes the first other open axis that does.
A model that runs one row but not three at once (a batch of one baked into a Reshape) keeps none; rows that do
not run even alone (stand-ins too small for the model) leave the names' guess standing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from .dims import stand_in_shapes
from .errors import EdgeserveError
from .tensors import TensorSpec, stand_in

log = logging.getLogger(__name__)

Run = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]

MIN_COSINE = 0.99


def confirm_batch_axes(run: Run, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                       rows: Mapping[str, np.ndarray], *, label: str = "the model") -> tuple[TensorSpec, ...]:
    """``outputs`` with each batch axis kept only where the measurement above confirms it. ``rows``: at least one
    row per input (stacked along the inputs' batch axes; fewer than three are repeated)."""
    batched = [o for o in outputs if o.batch_axis is not None]
    if not batched or all(s.batch_axis is None for s in inputs):
        return tuple(outputs)
    try:
        first = run(_take(inputs, rows, [0]))
    except EdgeserveError as exc:  # the rows do not fit the model (stand-ins too small for a convolution): unmeasured
        log.info("%s: batch axes not measured, one row does not run (%s); going by the dimension names", label, exc)
        return tuple(outputs)
    try:
        rest, joint = run(_take(inputs, rows, [1, 2])), run(_take(inputs, rows, [0, 1, 2]))
    except EdgeserveError as exc:
        log.warning("%s does not run three rows at once (%s): it is not batched", label, exc)
        return tuple(replace(o, batch_axis=None) for o in outputs)
    confirmed = []
    for spec in outputs:
        answers = first[spec.name], rest[spec.name], joint[spec.name]
        # the names' guess first, then any other axis the names leave open (a state [?, ?, ?] of [layers, batch,
        # hidden], exported without names: axis 0 guessed, the rows on axis 1)
        tried = [spec.batch_axis] if spec.batch_axis is not None else []
        tried += [i for i, d in enumerate(spec.shape) if not isinstance(d, int) and i not in tried]
        # ... and last an axis declared of a fixed size that the answers do not keep: torch's exporter writes the
        # traced size where dynamic_axes names no axis, so a time-major [steps, batch, classes] given {0: "batch"}
        # is declared [batch, 2, classes] and answers [steps, 3, classes] for 3 rows
        tried += [i for i in range(np.ndim(answers[2])) if i not in tried and i < len(spec.shape)
                  and isinstance(spec.shape[i], int) and np.shape(answers[2])[i] != spec.shape[i]]
        axis = next((i for i in tried if _splits(*answers, i)), None)
        if axis is None and spec.batch_axis is not None:
            log.warning("%s: output '%s' does not split into rows along axis %d (its answer for 3 rows is not "
                        "the answers for 1 and 2 stacked): the model is not batched", label, spec.name,
                        spec.batch_axis)
        elif axis != spec.batch_axis:
            log.info("%s: output '%s' splits into rows along axis %d, not %s", label, spec.name, axis,
                     spec.batch_axis)
        confirmed.append(replace(spec, batch_axis=axis))
    return tuple(confirmed)


def batch_dependence(run: Run, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                     rows: Mapping[str, np.ndarray], count: int = 8) -> float:
    """How far the answers of ``count`` rows run together are from the same rows run one at a time: the largest
    absolute difference over the batched float outputs, relative to each output's largest magnitude (0: the
    answers do not depend on their batch). Dynamic int8 quantises a batch's rows with one scale, so a row's answer
    moves with the rows batched beside it."""
    batched = [o.name for o in outputs if o.batch_axis is not None]
    if not batched or all(s.batch_axis is None for s in inputs):
        return 0.0
    idx = list(range(count))
    try:
        together = run(_take(inputs, rows, idx))
        alone = [run(_take(inputs, rows, [i])) for i in idx]
    except EdgeserveError:
        return 0.0  # not measured: the rows do not run (confirm_batch_axes said why)
    worst = 0.0
    for spec in outputs:
        if spec.batch_axis is None or not np.issubdtype(np.asarray(together[spec.name]).dtype, np.floating):
            continue
        joint = np.asarray(together[spec.name], dtype=np.float64)
        try:
            apart = np.concatenate([np.asarray(a[spec.name], dtype=np.float64) for a in alone], axis=spec.batch_axis)
        except ValueError:  # rows answered in other sizes alone (a length that follows the batch's longest)
            continue
        if joint.shape != apart.shape or not np.isfinite(joint).all() or not np.isfinite(apart).all():
            continue
        scale = float(np.max(np.abs(apart))) if apart.size else 0.0
        if scale > 0.0:
            worst = max(worst, float(np.max(np.abs(joint - apart))) / scale)
    return worst


def _take(inputs: Sequence[TensorSpec], rows: Mapping[str, np.ndarray], idx: list[int]) -> dict[str, np.ndarray]:
    feed = {}
    for spec in inputs:
        arr = np.asarray(rows[spec.name])
        axis = spec.batch_axis
        feed[spec.name] = arr if axis is None else np.ascontiguousarray(  # no batch axis: shared by the rows
            np.take(arr, [i % arr.shape[axis] for i in idx], axis=axis))
    return feed


def _splits(first: np.ndarray, rest: np.ndarray, joint: np.ndarray, axis: int) -> bool:
    if min(first.ndim, rest.ndim, joint.ndim) <= axis:
        return False
    if (first.shape[axis], rest.shape[axis], joint.shape[axis]) != (1, 2, 3):
        return False
    if not (_others(first, axis) == _others(rest, axis) == _others(joint, axis)):
        return False
    stacked = np.concatenate([first, rest], axis=axis)
    if not np.issubdtype(joint.dtype, np.floating):
        return bool(np.array_equal(stacked, joint))  # ids, labels, indices: exactly
    a, b = stacked.astype(np.float64).ravel(), joint.astype(np.float64).ravel()
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return False
    a, b = a[finite], b[finite]
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return bool(np.array_equal(a, b))
    return float(a @ b) / norm >= MIN_COSINE


def _others(arr: np.ndarray, axis: int) -> tuple[int, ...]:
    return tuple(d for i, d in enumerate(arr.shape) if i != axis)


def stand_in_rows(inputs: Sequence[TensorSpec], rows: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded rows for a model loaded without sample data (:func:`~edgeserve.tensors.stand_in`, symbolic dims of 8,
    as the converter's synthetic samples)."""
    rng = np.random.default_rng(seed)
    out = {}
    shapes = stand_in_shapes(inputs, rows)
    for spec in inputs:
        value = stand_in(spec, shapes[spec.name], rng)
        if value is None:
            raise EdgeserveError(f"input '{spec.name}' is {spec.dtype}: no stand-in rows")
        out[spec.name] = value
    return out
