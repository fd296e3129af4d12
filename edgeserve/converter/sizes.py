"""Whether the sizes a model declares variable really vary.

Exporters trace: torch's legacy exporter, for one, writes the sequence length of the example into
``nn.MultiheadAttention``'s reshapes while the signature still says ``[batch, sequence]``. Such a model converts and
verifies on data of the traced size, then fails in production on the first request of another length, with an
engine error about a Reshape. The converter tries each variable size once more, one smaller and twice as large
(a convolutional network may need sizes divisible by its strides; a transformer has a longest position), and
reports a size that takes neither.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..dims import EXPRESSION, evaluate, names_in
from ..errors import EdgeserveError, first_line
from ..tensors import TensorSpec

log = logging.getLogger(__name__)

MAX_PROBE_BYTES = 64 << 20
"""The probe runs one row at twice a size only when that row's inputs stay under this."""


def fixed_sizes(session: Any, specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The symbolic dimensions (other than the batch) the model takes only at the size of ``feed`` (one row per
    input): ``{"dim", "inputs", "size", "error"}`` each. A dimension named by an expression of others (a
    decoder's ``past_sequence_length + sequence_length`` mask) follows them, and is not varied alone."""
    def fed(members: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [(name, axis) for name, axis in members if name in feed and np.asarray(feed[name]).ndim > axis]

    named, tied = dim_groups(specs)
    groups = {dim: kept for dim, members in named.items() if (kept := fed(members))}
    derived = {expr: kept for expr, members in tied.items() if (kept := fed(members))}
    found: list[dict[str, Any]] = []
    row_bytes = sum(np.asarray(v).nbytes for v in feed.values())
    if 2 * row_bytes > MAX_PROBE_BYTES:
        return found  # a row this big: doubling it is no cheap check
    values = {}
    for dim, members in groups.items():
        sizes = {int(np.asarray(feed[name]).shape[axis]) for name, axis in members}
        if len(sizes) == 1:
            values[dim] = sizes.pop()
    for dim, members in groups.items():
        if dim not in values:
            continue  # inputs sharing the name disagree already: nothing to vary together
        size = values[dim]
        errors: list[str] = []
        for other in (size - 1, 2 * size):
            if other < 1:
                continue
            resize = [(members, other)]
            try:
                resize += [(axes, evaluate(expr, {**values, dim: other})) for expr, axes in derived.items()
                           if dim in names_in(expr)]
            except ValueError:
                errors = []
                break  # an expression of this size that cannot be followed: not probed
            try:
                session.run(_resized(feed, resize))
                errors = []
                break
            except EdgeserveError as exc:
                errors.append(first_line(exc, 300))
        if errors:
            found.append({"dim": dim, "inputs": [name for name, _ in members], "size": size, "error": errors[-1]})
            log.warning("the model declares '%s' (%s) variable, but fails at %d and at %d: it may take only %d, "
                        "the size of the data it was converted with (an exporter traced it into the graph?)",
                        dim, ", ".join(name for name, _ in members), size - 1, 2 * size, size)
    return found


def dim_groups(specs: Sequence[TensorSpec]) -> tuple[dict[str, list[tuple[str, int]]],
                                                    dict[str, list[tuple[str, int]]]]:
    """The variable dimensions other than the batch, as (input, axis) lists: by plain name (an unnamed axis alone,
    under ``input[axis]``), and apart, those named by an expression of others (``past_sequence_length +
    sequence_length``), which follow them."""
    groups: dict[str, list[tuple[str, int]]] = {}
    derived: dict[str, list[tuple[str, int]]] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if axis == spec.batch_axis or isinstance(dim, int):
                continue
            if isinstance(dim, str) and EXPRESSION.search(dim):
                derived.setdefault(dim, []).append((spec.name, axis))
                continue
            key = dim if isinstance(dim, str) else f"{spec.name}[{axis}]"  # one unnamed dim varies alone
            groups.setdefault(key, []).append((spec.name, axis))
    return groups, derived


def _resized(feed: Mapping[str, np.ndarray], resize: Sequence[tuple[Sequence[tuple[str, int]], int]]) -> dict[str, np.ndarray]:
    """``feed`` with every member axis cut or repeated (wrapping around) to its new size."""
    out = {k: np.asarray(v) for k, v in feed.items()}
    for members, size in resize:
        for name, axis in members:
            a = out[name]
            out[name] = np.ascontiguousarray(np.take(a, np.arange(size) % a.shape[axis], axis=axis))
    return out
