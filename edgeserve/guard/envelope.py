"""Envelope statistics: what the reference data looked like, per input, for skew and drift checks later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

QUANTILES = (1, 5, 25, 50, 75, 95, 99)
HISTOGRAM_BINS = 20
MAX_FEATURES = 1024
"""Per-feature statistics are kept for tabular inputs ([rows, features]) up to this many features."""


def _stats(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    out: dict[str, Any] = {"count": int(values.size), "non_finite": int(values.size - finite.size)}
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


def envelope(data: Mapping[str, np.ndarray], *, source: str) -> dict[str, Any]:
    """Statistics per numeric input over all its values, and per feature for 2-D tabular inputs."""
    inputs: dict[str, Any] = {}
    for name, values in data.items():
        arr = np.asarray(values)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            continue
        entry = _stats(arr.reshape(-1))
        if arr.ndim == 2 and 1 < arr.shape[1] <= MAX_FEATURES:
            entry["features"] = [_stats(arr[:, j]) for j in range(arr.shape[1])]
        inputs[name] = entry
    rows = next((int(np.asarray(v).shape[0]) for v in data.values() if np.asarray(v).ndim), 0)
    return {"source": source, "rows": rows, "inputs": inputs}
