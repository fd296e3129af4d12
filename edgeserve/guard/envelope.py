"""Envelope statistics: what the reference data looked like, per input and output, for the skew and drift checks
the runtime makes (:mod:`.checks`, :mod:`.drift`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from ..arrays import as_text
from ..tensors import fed_back
from .reference import (
    MAX_FEATURES,
    WATCHED_CATEGORIES,
    Layout,
    feature_reference,
    input_layout,
    output_layout,
    row_features,
    token_rows,
    value_range,
)

QUANTILES = (1, 5, 25, 50, 75, 95, 99)
HISTOGRAM_BINS = 20
MAX_CATEGORIES = 1000
"""A text input with at most this many distinct values in the reference is categorical: its values are recorded."""
MIN_DRIFT_ROWS = 100
"""Fewer reference rows than this record no drift reference: quantiles of so few rows would raise false alarms."""
FEW_DRIFT_ROWS = 300
"""Fewer reference rows than this are warned about: measured, a classifier of 90 one-hot categories with a 200-row
reference alarmed on its confidence within 6000 requests drawn like the reference (the detectors' margin for the
reference's sampling error is its typical error, not its largest)."""


def _stats(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    out: dict[str, Any] = {"count": int(values.size), "non_finite": int(values.size - finite.size)}
    if out["non_finite"]:
        out["nan"] = int(np.isnan(values).sum())  # missing values, which a model with an imputer expects
    if finite.size == 0:
        return out
    f64 = finite.astype(np.float64, copy=False)
    lo, hi = float(f64.min()), float(f64.max())
    # NOTE: a constant column gets a range around it; ±0.5 vanishes in float64 at an int64's extremes
    pad = max(0.5, abs(lo) * 1e-6)
    counts, edges = np.histogram(f64, bins=HISTOGRAM_BINS, range=(lo, hi) if hi - lo > pad * 1e-3 else (lo - pad, hi + pad))
    out.update(
        min=lo,
        max=hi,
        mean=float(f64.mean()),
        std=float(f64.std()),
        quantiles={f"p{q}": float(v) for q, v in zip(QUANTILES, np.percentile(f64, QUANTILES))},
        histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    )
    return out


def envelope(data: Mapping[str, np.ndarray], *, source: str, outputs: Mapping[str, np.ndarray] | None = None,
             vocabularies: Mapping[str, int] | None = None, sequences: Collection[str] = (),
             feature_axes: Mapping[str, int] | None = None, max_length: int | None = None,
             varying_outputs: Collection[str] = ()) -> dict[str, Any]:
    """Statistics per numeric input over all its values, per feature for 2-D tabular inputs, and what the guard
    needs: each input's layout, value range and per-feature quantile knots; token-id frequencies and lengths for
    sequences (``vocabularies``: inputs that index an embedding table, with its size; ``sequences``: 2-D inputs
    whose second axis varies in size; ``feature_axes``: the features' axis of ``[rows, a, b]`` inputs, 2 unless
    given; ``max_length``: the longest sequence the model's position table holds); and for ``outputs`` (the
    package's answers on the same rows) the distribution of confidence, norm or RMS (``varying_outputs``: those
    whose rows the model declares of variable size, see ``output_layout``).

    A state fed back (an RNN's ``h0`` and the ``hn`` it is given next) gets neither a range nor a drift reference:
    calibration rows hold the first state of a stream (zeros, most often), served ones whatever the stream has
    reached, so every such request would warn and the monitor would alarm on nothing but a stream going on. For
    the same reason, when every state in ``data`` is one constant (each row a stream's first step), the answers get
    no drift reference either (``outputs_unwatched`` says why)."""
    vocabularies = vocabularies or {}
    state_in, state_out = fed_back(data, outputs or {})
    inputs: dict[str, Any] = {}
    rows = next((int(np.asarray(v).shape[0]) for v in data.values() if np.asarray(v).ndim), 0)
    drift_rows = rows
    for name, values in data.items():
        arr = np.asarray(values)
        if arr.dtype.kind in "UO" and arr.ndim >= 1:
            seen = categories(arr)
            if seen is not None:
                counts = Counter(as_text(v) for v in arr.reshape(-1).tolist())
                entry = {"count": int(arr.size), "categories": seen, "mode": counts.most_common(1)[0][0]}
                if len(arr) >= MIN_DRIFT_ROWS and len(seen) > 1 and (arr.ndim == 1 or arr[0].size == 1):
                    layout = Layout("categories", values=tuple(v for v, _ in counts.most_common(WATCHED_CATEGORIES)))
                    entry.update(layout=layout.to_dict(), drift=feature_reference(row_features(layout, arr)))
                inputs[name] = entry
            continue
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            continue
        entry = _stats(arr.reshape(-1))
        if arr.ndim == 2 and 1 < arr.shape[1] <= MAX_FEATURES and name not in sequences:
            entry["features"] = [_stats(arr[:, j]) for j in range(arr.shape[1])]
        if arr.ndim >= 1 and arr.dtype != bool:
            layout = input_layout(arr, vocabulary=vocabularies.get(name), sequence=name in sequences,
                                  feature_axis=(feature_axes or {}).get(name, 2)).sized(arr)
            entry["layout"] = layout.to_dict()
            if name in state_in:
                entry["state"] = True
                inputs[name] = entry
                continue
            entry["range"] = value_range(layout, arr)
            if name in vocabularies:
                tokens = _tokens(arr, layout, vocabularies[name])
                if max_length is not None and arr.ndim == 2:
                    tokens["max_length"] = int(max_length)
                entry["tokens"] = tokens
            if len(arr) >= MIN_DRIFT_ROWS:
                measured = token_rows(arr, drift=True) if layout.kind == "tokens" else arr  # not the choosing rows
                entry["drift"] = feature_reference(row_features(layout, measured))
                drift_rows = min(drift_rows, len(measured))
        inputs[name] = entry
    out: dict[str, Any] = {"source": source, "rows": rows, "inputs": inputs}
    if drift_rows != rows:
        out["drift_rows"] = drift_rows  # the fewest rows a drift reference was built from (the detectors' margin)
    fresh = [n for n in sorted(state_in) if np.ptp(np.asarray(data[n])) == 0] if state_in else []
    if outputs and fresh and len(fresh) == len(state_in):
        # NOTE: every stream in the reference at its first state (zeros): its answers are those of a stream's first
        # step, served ones those of streams going on (a VAD's speech probability after seconds of speech), so
        # watching them would alarm on nothing but streams going on
        out["outputs_unwatched"] = (
            f"every reference row starts from one state ({', '.join(fresh)} all {float(np.asarray(data[fresh[0]]).flat[0]):g}), "
            "so the answers are a stream's first; give reference rows with the states streams reach to watch them")
    elif outputs:
        out["outputs"] = {}
        for name, values in outputs.items():
            arr = np.asarray(values)
            if not np.issubdtype(arr.dtype, np.number) or arr.ndim == 0 or len(arr) < MIN_DRIFT_ROWS \
                    or name in state_out:
                continue
            layout = output_layout(arr, name, varying=name in varying_outputs).sized(arr)
            summary = row_features(layout, arr)
            out["outputs"][name] = {"layout": layout.to_dict(), **_stats(summary.reshape(-1)),
                                    "drift": feature_reference(summary)}
    return out


def categories(arr: np.ndarray) -> list[str] | None:
    """The distinct text values of a categorical input, sorted; None for free text (more than ``MAX_CATEGORIES``
    distinct values, or more distinct values than half the rows: a name, a comment)."""
    values = sorted({as_text(v) for v in arr.reshape(-1).tolist()})
    if len(values) > MAX_CATEGORIES or (len(arr) >= 20 and len(values) > len(arr) // 2):
        return None
    return values


def _tokens(arr: np.ndarray, layout: Any, vocabulary: int) -> dict[str, Any]:
    lengths = (arr != layout.pad).sum(axis=1)
    ids, freq = np.unique(arr, return_counts=True)
    order = np.argsort(-freq, kind="stable")[:20]
    return {"vocabulary": int(vocabulary), "pad": layout.pad, "lengths": _stats(lengths),
            "top": [[int(ids[i]), float(freq[i] / arr.size)] for i in order]}
