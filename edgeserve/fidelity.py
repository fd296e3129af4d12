"""Accuracy and fidelity measures, shared by the converter (verify, auto) and the benchmark harness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Budget:
    """How far from the fp32 model a result may be."""

    max_accuracy_drop: float | None = None
    """Largest allowed drop in task accuracy (0.01 = one point); needs labelled evaluation data."""
    relative: bool = False
    """Read ``max_accuracy_drop`` as a fraction of the fp32 accuracy instead of absolute."""
    min_cosine: float | None = None
    """Smallest allowed per-row cosine similarity to the fp32 outputs (worst row, worst output)."""
    min_top1_agreement: float | None = None
    """Smallest allowed fraction of rows whose top-1 class matches fp32."""

    def __post_init__(self) -> None:
        from .errors import ConfigError

        for name in ("max_accuracy_drop", "min_cosine", "min_top1_agreement"):
            value = getattr(self, name)
            if value is not None and not (0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")

    @property
    def empty(self) -> bool:
        return self.max_accuracy_drop is None and self.min_cosine is None and self.min_top1_agreement is None

    def violations(self, summary: dict[str, float], acc_fp32: float | None, acc: float | None) -> list[str]:
        """What misses the budget, one phrase each; empty when everything holds."""
        missed = []
        if self.min_cosine is not None:
            cos = summary.get("cosine_min")
            if cos is None or cos < self.min_cosine:
                missed.append(f"cosine {_r(cos)} < {self.min_cosine}")
        if self.min_top1_agreement is not None:
            agree = summary.get("top1_agreement", summary.get("agreement"))
            if agree is None or agree < self.min_top1_agreement:
                missed.append(f"top-1 agreement {_r(agree)} < {self.min_top1_agreement}")
        if self.max_accuracy_drop is not None:
            if acc_fp32 is None or acc is None:
                missed.append("accuracy unknown (no labels)")
            else:
                allowed = self.max_accuracy_drop * (acc_fp32 if self.relative else 1.0)
                if acc_fp32 - acc > allowed + 1e-12:
                    missed.append(f"accuracy drop {acc_fp32 - acc:.4f} > {allowed:.4f}")
        return missed


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"
