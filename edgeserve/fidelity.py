"""Accuracy and fidelity measures, shared by the converter (verify, auto) and the benchmark harness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_EPS = 1e-12


def cosine_per_row(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (axis 0) with the non-batch dims flattened; two zero rows count as 1."""
    a = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    both_zero = (na < _EPS) & (nb < _EPS)
    cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, _EPS))
    # NaN or Inf in either row is as far from agreement as it gets: never let it pass a budget
    return np.where(np.isfinite(cos), np.clip(cos, -1.0, 1.0), -1.0)


def top1(values: np.ndarray) -> np.ndarray:
    """Predicted class per row: argmax over the last axis."""
    return np.asarray(values).argmax(axis=-1)


def has_classes(values: np.ndarray) -> bool:
    """A float output shaped like scores or logits: [rows, classes] with more than one class on the last axis."""
    return values.ndim == 2 and values.shape[-1] > 1 and np.issubdtype(values.dtype, np.floating)


def compare_output(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How close one output is to its reference: cosine, top-1 agreement, max/mean relative error."""
    candidate, reference = np.asarray(candidate), np.asarray(reference)
    if candidate.shape != reference.shape:
        return {"shape_mismatch": 1.0, "cosine_mean": 0.0, "cosine_min": 0.0}
    if not np.issubdtype(reference.dtype, np.number) or np.issubdtype(reference.dtype, np.integer) or reference.dtype == bool:
        agree = float(np.mean(candidate == reference)) if reference.size else 1.0
        return {"agreement": agree}
    a, b = candidate.astype(np.float64), reference.astype(np.float64)
    finite = np.isfinite(a).all() and np.isfinite(b).all()
    diff = np.abs(a - b)
    scale_max = float(np.max(np.abs(b))) if b.size else 0.0
    scale_mean = float(np.mean(np.abs(b))) if b.size else 0.0
    out: dict[str, float] = {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "max_rel_error": float(diff.max() / max(scale_max, _EPS)) if diff.size else 0.0,
        "mean_rel_error": float(diff.mean() / max(scale_mean, _EPS)) if diff.size else 0.0,
    }
    if not finite:
        out["non_finite"] = float(np.mean(~np.isfinite(a)))
    if b.size:
        # rows along axis 0 when there is a batch of vectors; a 1-D output is compared as one vector
        cos = cosine_per_row(a, b) if b.ndim > 1 else cosine_per_row(a.reshape(1, -1), b.reshape(1, -1))
        out["cosine_mean"] = float(np.mean(cos))
        out["cosine_min"] = float(np.min(cos))
    if has_classes(b):
        out["top1_agreement"] = float(np.mean(top1(a) == top1(b)))
    return out


def compare_outputs(candidate: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per-output measures plus a summary of the worst values across outputs."""
    per_output = {name: compare_output(candidate[name], reference[name]) for name in reference}
    return {"outputs": per_output, "summary": summarise(per_output)}


def summarise(per_output: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Worst case over outputs: minimum cosine and agreement, maximum errors."""
    summary: dict[str, float] = {}
    for measures in per_output.values():
        for key, value in measures.items():
            worse_is_lower = key.startswith(("cosine", "top1", "agreement"))
            if key not in summary:
                summary[key] = value
            else:
                summary[key] = min(summary[key], value) if worse_is_lower else max(summary[key], value)
    return summary


def pick_prediction(outputs: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray | None:
    """The class prediction per row: an integer label output shaped [N], else the argmax of a score output."""
    for values in outputs.values():
        v = np.asarray(values)
        if v.shape == (n_rows,) and np.issubdtype(v.dtype, np.integer):
            return v
    for values in outputs.values():
        v = np.asarray(values)
        if v.ndim == 2 and v.shape[0] == n_rows and has_classes(v):
            return top1(v)
    return None


def accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float | None:
    """Top-1 accuracy against integer labels, or None when no output looks like a class prediction."""
    labels = np.asarray(labels).reshape(-1)
    pred = pick_prediction(outputs, len(labels))
    if pred is None:
        return None
    return float(np.mean(pred.reshape(-1) == labels))


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """Latency percentiles (linear interpolation, as numpy computes them), keyed ``p50``, ``p90`` …"""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}
