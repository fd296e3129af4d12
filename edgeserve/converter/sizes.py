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

from ..errors import EdgeserveError, first_line
from ..tensors import TensorSpec

log = logging.getLogger(__name__)

MAX_PROBE_BYTES = 64 << 20
"""The probe runs one row at twice a size only when that row's inputs stay under this."""


def fixed_sizes(session: Any, specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """The symbolic dimensions (other than the batch) the model takes only at the size of ``feed`` (one row per
    input): ``{"dim", "inputs", "size", "error"}`` each."""
    groups: dict[str, list[tuple[str, int]]] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if axis == spec.batch_axis or isinstance(dim, int) or spec.name not in feed:
                continue
            if np.asarray(feed[spec.name]).ndim <= axis:
                continue
            key = dim if isinstance(dim, str) else f"{spec.name}[{axis}]"  # one unnamed dim varies alone
            groups.setdefault(key, []).append((spec.name, axis))
    found: list[dict[str, Any]] = []
    row_bytes = sum(np.asarray(v).nbytes for v in feed.values())
    if 2 * row_bytes > MAX_PROBE_BYTES:
        return found  # a row this big: doubling it is no cheap check
    for dim, members in groups.items():
        sizes = {int(np.asarray(feed[name]).shape[axis]) for name, axis in members}
        if len(sizes) != 1:
            continue  # inputs sharing the name disagree already: nothing to vary together
        size = sizes.pop()
        errors: list[str] = []
        for other in (size - 1, 2 * size):
            if other < 1:
                continue
            try:
                session.run(_resized(feed, members, other))
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


def _resized(feed: Mapping[str, np.ndarray], members: Sequence[tuple[str, int]], size: int) -> dict[str, np.ndarray]:
    """``feed`` with every member axis cut or repeated (wrapping around) to ``size``."""
    out = {k: np.asarray(v) for k, v in feed.items()}
    for name, axis in members:
        a = out[name]
        out[name] = np.ascontiguousarray(np.take(a, np.arange(size) % a.shape[axis], axis=axis))
    return out
