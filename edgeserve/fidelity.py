"""Accuracy and fidelity measures, shared by the converter (verify, auto) and the benchmark harness."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .metrics import Target, is_ragged, target

_EPS = 1e-12


def cosine_per_row(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (axis 0) with the non-batch dims flattened; two zero rows count as 1."""
    a = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    b = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.einsum("ij,ij->i", a, b)
    both_zero = (na == 0) & (nb == 0)
    # NOTE: the norms' own product, not one floored at _EPS: a text detector's map of a photo without text holds
    # values near 1e-9, and the floor read two identical such rows as cosine 0.0009
    product = na * nb
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(both_zero, 1.0, np.where(product == 0, 0.0, dot / product))
    # NaN or Inf in either row is as far from agreement as it gets: never let it pass a budget
    return np.where(np.isfinite(cos), np.clip(cos, -1.0, 1.0), -1.0)


def top1(values: np.ndarray) -> np.ndarray:
    """Predicted class per row: argmax over the last axis."""
    return np.asarray(values).argmax(axis=-1)


def has_classes(values: np.ndarray) -> bool:
    """A float output shaped like scores or logits: [rows, classes] with more than one class on the last axis."""
    return values.ndim == 2 and values.shape[-1] > 1 and np.issubdtype(values.dtype, np.floating)


def compare_output(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How close one output is to its reference: cosine, top-1 agreement, the largest and the mean absolute error
    relative to the reference's largest magnitude."""
    candidate, reference = np.asarray(candidate), np.asarray(reference)
    if candidate.shape != reference.shape:
        return {"shape_mismatch": 1.0, "cosine_mean": 0.0, "cosine_min": 0.0}
    if not np.issubdtype(reference.dtype, np.number) or np.issubdtype(reference.dtype, np.integer) or reference.dtype == bool:
        agree = float(np.mean(candidate == reference)) if reference.size else 1.0
        return {"agreement": agree}
    a, b = candidate.astype(np.float64), reference.astype(np.float64)
    finite = np.isfinite(a).all() and np.isfinite(b).all()
    diff = np.abs(a - b)
    # NOTE: both errors relative to the reference's largest magnitude, so the mean never reads above the max (the
    # mean over the mean magnitude did, for errors spread over an output of mostly small values)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, _EPS)
    out: dict[str, float] = {
        "max_abs_error": float(diff.max()) if diff.size else 0.0,
        "max_rel_error": float(diff.max() / scale) if diff.size else 0.0,
        "mean_rel_error": float(diff.mean() / scale) if diff.size else 0.0,
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
    """Per-output measures plus a summary of the worst values across outputs (outputs kept per sample: the worst
    over the samples)."""
    per_output = {name: _compare_per_sample(candidate[name], reference[name])
                  if is_ragged(reference[name]) or is_ragged(candidate[name])
                  else compare_output(candidate[name], reference[name]) for name in reference}
    return {"outputs": per_output, "summary": summarise(per_output)}


def _compare_per_sample(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    if not (is_ragged(candidate) and is_ragged(reference) and len(candidate) == len(reference)):
        return {"shape_mismatch": 1.0, "cosine_mean": 0.0, "cosine_min": 0.0}
    per_sample = {str(i): compare_output(c, r) for i, (c, r) in enumerate(zip(candidate, reference))}
    for measures in per_sample.values():  # a list of kept boxes [count, 4] is no row of class scores
        measures.pop("top1_agreement", None)
    return summarise(per_sample)


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


def pick_prediction(outputs: Mapping[str, np.ndarray], n_rows: int, *, text: bool = False) -> np.ndarray | None:
    """The class prediction per row: an integer label output shaped [N], else the argmax of a score output; with
    ``text``, a label output of strings shaped [N] (a scikit-learn classifier fit on class names)."""
    for values in outputs.values():
        v = np.asarray(values)
        if v.shape == (n_rows,) and (_is_text(v) if text else np.issubdtype(v.dtype, np.integer)):
            return v
    if text:
        return None
    for values in outputs.values():
        v = np.asarray(values)
        if v.ndim == 2 and v.shape[0] == n_rows and has_classes(v):
            return top1(v)
    return None


def _thresholded(outputs: Mapping[str, np.ndarray], n_rows: int) -> np.ndarray | None:
    """A binary classifier's one probability a row (a sigmoid's ``[rows]`` or ``[rows, 1]``, in [0, 1]) read at 0.5,
    for 0/1 labels; None unless exactly one output is such."""
    found = [v for v in map(np.asarray, outputs.values()) if v.dtype.kind == "f" and v.size == n_rows
             and v.shape[:1] == (n_rows,) and v.ndim <= 2 and np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1]
    return (found[0].reshape(-1) > 0.5).astype(np.int64) if len(found) == 1 else None


def _is_text(values: np.ndarray) -> bool:
    return values.dtype.kind in "USO" and all(isinstance(v, (str, bytes)) for v in values.reshape(-1)[:8])


def accuracy(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float | None:
    """Top-1 accuracy against the labels (class indexes, or class names for a model that answers names), or None
    when no output looks like a class prediction.

    Raises ``ConfigError`` when the labels cannot be what the model predicts: names against a model that answers
    only class indexes (or the reverse), or names none of which the model ever answers. Compared anyway they match
    nowhere, fp32 and every candidate score 0, and an accuracy budget then accepts whatever is converted."""
    labels = np.asarray(labels).reshape(-1)
    text = labels.dtype.kind in "USO"
    pred = pick_prediction(outputs, len(labels), text=text)
    if pred is None and not text and len(labels) and np.isin(labels, (0, 1)).all():
        pred = _thresholded(outputs, len(labels))
    if pred is None:
        if text and pick_prediction(outputs, len(labels)) is not None:
            raise ConfigError(f"the labels are class names ({_examples(labels)}), but the model answers class "
                              "indexes: give the labels as the indexes of its classes")
        return None
    pred = pred.reshape(-1)
    if text:
        pred, labels = pred.astype(str), labels.astype(str)
        if len(labels) and not np.isin(labels, pred).any():
            raise ConfigError(f"none of the labels ({_examples(labels)}) is a class the model answers "
                              f"({_examples(pred)}): give the labels as the model names its classes")
    return float(np.mean(pred == labels))


def label_error(outputs: Mapping[str, np.ndarray], labels: np.ndarray) -> float | None:
    """A regressor's RMSE against numeric labels (its targets): of the one float output holding a value per row;
    None when the labels are not numbers or no single output holds one value per row."""
    labels = np.asarray(labels).reshape(-1)
    if labels.dtype.kind not in "fiu" or not len(labels):
        return None
    values = [v for v in map(np.asarray, outputs.values()) if v.dtype.kind == "f" and v.size == len(labels)
              and v.shape[:1] == (len(labels),)]
    if len(values) != 1:
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.sqrt(np.mean((values[0].reshape(-1).astype(np.float64) - labels) ** 2)))


def _examples(values: np.ndarray, most: int = 3) -> str:
    seen = list(dict.fromkeys(values.reshape(-1).tolist()))
    return ", ".join(repr(v) for v in seen[:most]) + (", …" if len(seen) > most else "")


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """Latency percentiles (linear interpolation, as numpy computes them), keyed ``p50``, ``p90`` …"""
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0:
        return {f"p{q:g}": float("nan") for q in qs}
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


@dataclass(frozen=True)
class Verdict:
    """How one candidate fared against a :class:`Budget`."""

    scores: dict[str, float]
    """Each target's metric score, keyed by the metric's spec (``pooled-cosine,mask=attention_mask``)."""
    missed: list[str]
    """One phrase per target (or accuracy limit) missed; empty when everything holds."""
    shortfall: float
    """The largest relative distance to a missed threshold (0 inside the budget): small means a near miss."""

    @property
    def ok(self) -> bool:
        return not self.missed


@dataclass(frozen=True)
class Budget:
    """How far from the fp32 model a result may be: task metrics held to thresholds, and/or an accuracy drop."""

    targets: tuple[Target, ...] = ()
    """Metrics and thresholds (see :mod:`edgeserve.metrics`); all must hold."""
    max_accuracy_drop: float | None = None
    """Largest allowed drop in task accuracy (0.01 = one point); needs labelled evaluation data."""
    relative: bool = False
    """Read ``max_accuracy_drop`` as a fraction of the fp32 accuracy instead of absolute."""
    because: str = "named by the user"
    """Why these targets: named by the user, or what the signature suggested (:func:`infer_targets`)."""

    def __post_init__(self) -> None:
        from .errors import ConfigError

        value = self.max_accuracy_drop
        if value is not None and not (0.0 <= value <= 1.0):
            raise ConfigError(f"max_accuracy_drop must be between 0 and 1, got {value}")

    @property
    def empty(self) -> bool:
        return not self.targets and self.max_accuracy_drop is None

    def judge(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
              inputs: Mapping[str, np.ndarray], acc_fp32: float | None = None, acc: float | None = None) -> Verdict:
        """Score every target on these outputs; a metric that cannot be computed raises :class:`MetricError`."""
        scores: dict[str, float] = {}
        missed = non_finite(reference, candidate)
        shortfall = float("inf") if missed else 0.0
        for t in self.targets:
            score = t.metric.score(reference, candidate, inputs)
            scores[t.metric.spec] = score
            if not t.holds(score):
                missed.append(t.miss(score))
                shortfall = max(shortfall, t.shortfall(score))
        if self.max_accuracy_drop is not None:
            if acc_fp32 is None or acc is None:
                missed.append("accuracy unknown (no labels, or no output predicts a class)")
                shortfall = float("inf")
            else:
                allowed = self.max_accuracy_drop * (acc_fp32 if self.relative else 1.0)
                drop = acc_fp32 - acc
                if drop > allowed + 1e-12:
                    missed.append(f"accuracy drop {drop:.4f} > {allowed:.4f}")
                    shortfall = max(shortfall, (drop - allowed) / max(allowed, 1e-3))
        return Verdict(scores, missed, shortfall)

    def used(self, scores: Mapping[str, float]) -> float:
        """The most of its room any target's score takes (:meth:`~edgeserve.metrics.Target.used`); 0 without
        targets."""
        return max((t.used(scores[t.metric.spec]) for t in self.targets if t.metric.spec in scores), default=0.0)

    def passed_by_zeros(self, reference: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> list[str]:
        """The targets that a model answering zeros would meet on these reference outputs: a metric that cannot
        tell it from fp32 here judges nothing (a detector's metric where fp32 detects nothing in any row, a text
        map's where no pixel is text, CTC's where every string is empty, top-1 where every row is class 0)."""
        if any(np.asarray(v).dtype == object for v in reference.values()):
            return []  # ragged answers (kept boxes): no zeros of their shape to try
        zeros = {k: np.zeros_like(np.asarray(v)) for k, v in reference.items()}
        vacuous = []
        for t in self.targets:
            try:
                if t.holds(t.metric.score(reference, zeros, inputs)):
                    vacuous.append(t.metric.spec)
            except Exception:  # noqa: BLE001 - a metric that cannot score zeros at all is not fooled by them
                continue
        return vacuous

    def describe(self) -> str:
        parts = [t.describe() for t in self.targets]
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g}{' of fp32' if self.relative else ''}")
        return ", ".join(parts) or "none"

    def record(self) -> dict[str, Any]:
        """What the manifest keeps: the targets, the accuracy limit, and why these."""
        return {"targets": [t.record() for t in self.targets], "max_accuracy_drop": self.max_accuracy_drop,
                "relative": self.relative, "because": self.because}


def non_finite(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> list[str]:
    """Each output the candidate answers NaN or infinity for where the reference is finite, said in words: a miss
    whatever the budget (a metric reading such rows — a top-1 of a NaN row is class 0 — must not pass them)."""
    out = []
    for name, ref in reference.items():
        cand = candidate.get(name)
        if cand is None or np.shape(cand) != np.shape(ref) or not np.issubdtype(np.asarray(cand).dtype, np.floating):
            continue
        bad = ~np.isfinite(cand) & np.isfinite(np.asarray(ref, dtype=np.float64))
        if bad.any():
            rows = int(bad.reshape(len(bad), -1).any(axis=1).sum()) if bad.ndim else 1
            out.append(f"output '{name}' is NaN or infinite in {rows} of {len(bad) if bad.ndim else 1} rows where "
                       "fp32 is finite (the engine overflowed; a quantised range may not fit the values)")
    return out


def make_budget(targets: Sequence[Target | str] = (), *, min_cosine: float | None = None,
                min_top1_agreement: float | None = None, max_accuracy_drop: float | None = None,
                relative: bool = False) -> Budget:
    """A budget from the converter's arguments: named targets plus the ``min_cosine`` / ``min_top1_agreement``
    shorthands (the robust ``cosine`` and ``top1`` metrics)."""
    from .errors import ConfigError

    for name, value in (("min_cosine", min_cosine), ("min_top1_agreement", min_top1_agreement)):
        if value is not None and not (0.0 <= value <= 1.0):
            raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    chosen = [t if isinstance(t, Target) else target(t) for t in targets]
    if min_cosine is not None:
        chosen.append(target("cosine", min=min_cosine))
    if min_top1_agreement is not None:
        chosen.append(target("top1", min=min_top1_agreement))
    return Budget(tuple(chosen), max_accuracy_drop=max_accuracy_drop, relative=relative)


def _r(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.5f}"
