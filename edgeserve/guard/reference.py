"""Reference statistics: what the data a package was verified on looked like, in a form the runtime can compare
live requests against without moving bins.

Every tensor gets a *layout* that says what one row's features are:

- ``tabular`` ``[rows, features]``: each column;
- ``channels`` ``[rows, C, H, W]`` (or ``[rows, H, W, C]``): each channel's mean over the image;
- ``series`` ``[rows, steps, features]`` (audio frames, recurrent inputs) or ``[rows, features, steps]`` (a
  spectrogram a convolution reads, channels first): each feature's mean over the steps;
- ``tokens`` (integer ids that feed an embedding table): the sequence length (positions that are not padding)
  and the share of tokens among the reference's most frequent ids;
- ``flat`` (anything else, and ``[rows, steps]`` inputs whose steps vary, such as an attention mask): the row's
  mean and standard deviation;
- for outputs, ``confidence`` (top-class probability of ``[rows, classes]``; logits go through a softmax),
  ``step-confidence`` (of ``[rows, steps, classes]`` distributions, a recogniser's: averaged over the steps),
  ``norm`` (the row's L2 norm: an embedding, named so or of unit rows), ``rms`` (the root mean square of the
  row's values, for outputs of more dimensions: a sequence's hidden states or frame scores, a map; unlike a norm it
  does not grow with a longer sequence or a larger image, which would read as drift), or ``value`` (one number per
  row, e.g. a predicted label). Packages written before ``rms`` keep ``norm`` for those outputs.

Per feature the reference keeps fixed quantile *knots* (``KNOTS`` levels from min to max): the drift detector builds
from them the probability of each of its fixed buckets and maps a live value to its probability under the
reference (see :mod:`.drift`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..arrays import as_text

MAX_FEATURES = 1024
"""Tabular and series inputs keep per-feature statistics up to this many features (else ``flat``)."""
WATCHED_CATEGORIES = 16
"""A categorical input's most frequent values whose shares the drift detectors watch."""
KNOTS = 129
"""Quantile levels kept per feature (fewer for wide inputs, see :func:`knots_for`)."""
TOP_TOKENS = 256
"""How many of the most frequent token ids a sequence reference keeps."""
TOKEN_SPLIT_ROWS = 200
"""From this many reference rows on, a sequence's most frequent ids are chosen on every other row and the drift
reference of its features (the share of those ids) comes from the rows between. Chosen and measured on the same
rows, the share read ~0.91 where new rows of the same source held ~0.86 (uniform ids, 300 rows): an alarm on data
from the reference's own population. Fewer rows, too few to halve, are used whole (convert warns about them)."""


def token_rows(arr: np.ndarray, *, drift: bool) -> np.ndarray:
    """The reference rows of a token input that choose its most frequent ids, or (``drift``) that its drift
    reference is measured on: every other row each when there are ``TOKEN_SPLIT_ROWS``, else all of them."""
    if len(arr) < TOKEN_SPLIT_ROWS:
        return arr
    return arr[1::2] if drift else arr[0::2]


@dataclass(frozen=True)
class Layout:
    """What one row's features are for a tensor (see the module docstring)."""

    kind: str
    axis: int | None = None
    """The feature axis of the full tensor (rows on axis 0): columns, channels or series features."""
    pad: int = 0
    """tokens: the padding id (not counted in a sequence's length)."""
    common: tuple[int, ...] = ()
    """tokens: the reference's most frequent ids."""
    probabilities: bool = False
    """confidence: the output already holds probabilities (no softmax)."""
    values: tuple[str, ...] = ()
    """categories: the text values whose share of the rows is watched (the reference's most frequent)."""
    averaged: int = 0
    """Summaries (``AVERAGING``): how many values each feature of a reference row is taken over (an image's pixels
    per channel, a series' steps, a flat row's size); 0 where not recorded (packages written before). Such a
    summary spreads less over bigger rows (a mean of more values), so an input of another size is compared with the
    reference on location alone, and an output of another size not at all (see :mod:`.monitor`)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "axis": self.axis}
        if self.kind == "tokens":
            out.update(pad=self.pad, common=list(self.common))
        if self.kind == "categories":
            out["values"] = list(self.values)
        if self.kind in ("confidence", "step-confidence"):
            out["probabilities"] = self.probabilities
        if self.averaged:
            out["averaged"] = self.averaged
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Layout:
        return cls(kind=str(data["kind"]), axis=data.get("axis"), pad=int(data.get("pad", 0)),
                   common=tuple(int(t) for t in data.get("common", ())),
                   probabilities=bool(data.get("probabilities", False)),
                   values=tuple(str(v) for v in data.get("values", ())), averaged=int(data.get("averaged", 0)))

    def sized(self, arr: np.ndarray) -> Layout:
        """This layout with :attr:`averaged` set from reference rows ``arr``."""
        return replace(self, averaged=averaged(self, arr))

    def labels(self, count: int) -> list[str]:
        """Names of the features :func:`row_features` returns, for reports."""
        if self.kind == "tokens":
            return ["length", "common-token share"]
        if self.kind == "flat":
            return ["mean", "std"]
        if self.kind == "categories":
            return [f"share of {v!r}" for v in self.values]
        if self.kind in ("confidence", "step-confidence", "value", "norm", "rms"):
            return [self.kind]
        word = {"tabular": "feature", "channels": "channel", "series": "feature"}[self.kind]
        return [f"{word} {i}" for i in range(count)]


NO_PAD = -1
"""The padding id of token rows where the reference shows none (no id can be -1)."""
PAD_SHARE = 0.1
"""The share of reference rows that must end with one id for it to be taken for padding."""


def input_layout(arr: np.ndarray, *, vocabulary: int | None = None, sequence: bool = False,
                 feature_axis: int = 2) -> Layout:
    """The layout of an input tensor, from reference rows (``arr``, rows on axis 0). ``sequence``: the model
    declares axis 1 of variable size, so its positions are steps of a sequence (an attention mask, token type ids),
    not the columns of a table: position 12 of the reference never being padding says nothing about a shorter
    request. ``feature_axis``: which axis of a ``[rows, a, b]`` series holds its features (1 for a spectrogram
    ``[rows, mel bins, frames]``), the other its steps."""
    if vocabulary is not None and np.issubdtype(arr.dtype, np.integer) and arr.ndim == 2:
        last = arr[:, -1]
        values, counts = np.unique(last, return_counts=True)
        top = int(np.argmax(counts)) if len(values) else -1
        # the id most rows end with, if it ends enough of them to be padding (a one-token step ends with any id)
        pad = int(values[top]) if top >= 0 and counts[top] >= max(2, PAD_SHARE * len(last)) else NO_PAD
        # NOTE: the most frequent ids of every other row only: their share is measured on the rows between (see
        # TOKEN_SPLIT_ROWS), or the rows that chose them would hold more of them than any new rows do
        ids, freq = np.unique(token_rows(arr, drift=False), return_counts=True)
        order = np.argsort(-freq, kind="stable")
        common = tuple(int(t) for t in ids[order][:TOP_TOKENS] if t != pad)
        return Layout("tokens", None, pad=pad, common=common)
    if arr.ndim == 2 and 1 <= arr.shape[1] <= MAX_FEATURES and not sequence:
        return Layout("tabular", 1)
    if arr.ndim == 4:
        axis = 1 if arr.shape[1] <= arr.shape[3] else 3
        if arr.shape[axis] <= MAX_FEATURES:
            return Layout("channels", axis)
    if arr.ndim == 3 and arr.shape[feature_axis] <= MAX_FEATURES:
        return Layout("series", feature_axis)
    return Layout("flat")


EMBEDDING_NAME = re.compile(r"embed|hidden|pool|feature|vector|encod|latent", re.IGNORECASE)
"""Output names that say a ``[rows, k]`` output is a vector to compare, not class scores."""


def output_layout(arr: np.ndarray, name: str = "", *, varying: bool = False) -> Layout:
    """How an output's rows are summarised: confidence of class scores, the value itself, a norm or an RMS.

    A ``[rows, k]`` float output holds class scores unless its name says embedding (``sentence_embedding``,
    ``pooler_output``) or its rows all have unit length (a normalised embedding): those get the norm, as a
    softmax over an embedding's components measures nothing (0.0030 +- 0.0001 for a 384-d sentence embedding).
    Outputs of more dimensions get the RMS, and so does a ``[rows, k]`` output that the model declares ``varying``
    (``[batch, frames]``, a question answerer's ``[batch, tokens]`` start scores): its values are steps, not
    classes, and its summary must not change with the length (a norm grows with it, a softmax's top falls)."""
    if arr.ndim == 1:
        return Layout("value")
    # NOTE: imported here, at conversion: a guarded load need not import metrics
    from ..metrics import step_distribution, sums_to_one

    steps = step_distribution(arr)  # a recogniser's characters per step, or their log-probabilities
    if steps is not None:
        return Layout("step-confidence", 2, probabilities=steps == "probabilities")
    if arr.ndim == 2 and arr.shape[1] >= 2 and np.issubdtype(arr.dtype, np.floating) and not varying:
        a = arr.astype(np.float64)
        probs = bool(a.size and a.min() >= 0 and a.max() <= 1 and sums_to_one(a))
        if probs or not (EMBEDDING_NAME.search(name) or _unit_rows(a)):
            return Layout("confidence", 1, probabilities=probs)
    return Layout("norm" if arr.ndim == 2 and not varying else "rms")  # NOTE: [rows, k] is all a norm is kept for


def _unit_rows(a: np.ndarray) -> bool:
    return bool(a.size and np.allclose(np.sqrt(np.einsum("ij,ij->i", a, a)), 1.0, atol=1e-3))


def row_features(layout: Layout, x: np.ndarray) -> np.ndarray:
    """``[rows, features]`` float64: what the drift detector watches for one tensor (rows on axis 0)."""
    kind = layout.kind
    if kind == "tabular":
        return x.astype(np.float64, copy=False)
    if kind == "channels":
        other = tuple(a for a in range(1, x.ndim) if a != layout.axis)
        return x.mean(axis=other, dtype=np.float64)
    if kind == "series":  # the mean over the steps: the axis that is not the features'
        return x.mean(axis=1 if layout.axis != 1 else 2, dtype=np.float64)
    if kind == "categories":  # one column per watched value: 1 where the row holds it
        texts = [as_text(v) for v in x.reshape(len(x), -1)[:, 0].tolist()]
        index = {v: j for j, v in enumerate(layout.values)}
        out = np.zeros((len(texts), len(layout.values)))
        for i, t in enumerate(texts):
            j = index.get(t)
            if j is not None:
                out[i, j] = 1.0
        return out
    if kind == "tokens":
        length = (x != layout.pad).sum(axis=1)
        common = np.isin(x, layout.common).sum(axis=1) / np.maximum(length, 1)
        return np.stack([length.astype(np.float64), common], axis=1)
    if kind == "confidence":
        if layout.probabilities:
            return x.max(axis=1, keepdims=True).astype(np.float64)
        a = x.astype(np.float64, copy=False)
        top = a.max(axis=1, keepdims=True)
        return 1.0 / np.exp(a - top).sum(axis=1, keepdims=True)  # softmax's top probability
    if kind == "step-confidence":  # the top class's probability, averaged over the steps
        a = x.astype(np.float64, copy=False)
        top = a.max(axis=2)
        return (top if layout.probabilities else np.exp(top)).mean(axis=1, keepdims=True)
    if kind == "value":
        return x.astype(np.float64, copy=False).reshape(-1, 1)
    flat = x.reshape(len(x), -1).astype(np.float64, copy=False)
    if kind in ("norm", "rms"):  # the RMS: the norm over the square root of the row's size
        squares = np.einsum("ij,ij->i", flat, flat) / (max(flat.shape[1], 1) if kind == "rms" else 1)
        return np.sqrt(squares).reshape(-1, 1)
    return np.stack([flat.mean(axis=1), flat.std(axis=1)], axis=1)


AVERAGING = frozenset({"channels", "series", "flat", "rms", "step-confidence"})
"""Layouts whose features summarise many values of a row, and whose rows may differ in size (an image's height and
width, a clip's length)."""
SIZE_TOLERANCE = 1.25
"""Rows at most this many times bigger or smaller than the reference's are compared with it in full. Over i.i.d.
values the spread of a mean moves by the square root of the size ratio (0.89x here), a change the detectors,
tuned to half a standard deviation, do not take for drift."""


def averaged(layout: Layout, x: np.ndarray) -> int:
    """How many values each feature of one of ``x``'s rows (rows on axis 0) is taken over; 0 for a layout that
    keeps values as they are."""
    if layout.kind not in AVERAGING or x.ndim < 2:
        return 0
    if layout.kind == "channels":
        return math.prod(x.shape[1:]) // max(x.shape[layout.axis or 1], 1)
    if layout.kind == "series":
        return int(x.shape[1 if layout.axis != 1 else 2])
    if layout.kind == "step-confidence":
        return int(x.shape[1])
    return math.prod(x.shape[1:])


def knots_for(features: int) -> int:
    return KNOTS if features <= 256 else 33


def feature_reference(values: np.ndarray) -> dict[str, Any]:
    """Quantile knots (levels 0..1 evenly spaced, min and max included), mean and std per feature of
    ``[rows, features]`` values; NaN and inf are left out."""
    out: dict[str, Any] = {"knots": [], "mean": [], "std": []}
    levels = np.linspace(0.0, 100.0, knots_for(values.shape[1]))
    for j in range(values.shape[1]):
        col = values[:, j]
        col = col[np.isfinite(col)]
        if col.size == 0:
            col = np.zeros(1)
        out["knots"].append([_short(v) for v in np.percentile(col, levels)])
        out["mean"].append(_short(col.mean()))
        out["std"].append(_short(col.std()))
    return out


def value_range(layout: Layout, arr: np.ndarray) -> dict[str, Any] | None:
    """Per-feature (or whole-tensor) min and max of the reference, for the envelope's range check. NaN and
    infinity are left out; a feature with no finite value in the reference (a column always missing there) gets
    the whole tensor's range (None when the tensor has no finite value at all): a NaN bound would fail every
    request, and numpy's ``nanmin`` warned about the empty slice on the user's terminal."""
    if not np.issubdtype(arr.dtype, np.number) or arr.size == 0 or layout.kind == "tokens":
        return None
    low = high = arr
    finite = None
    if np.issubdtype(arr.dtype, np.floating):
        finite = np.isfinite(arr)
        if not finite.any():
            return None
        low, high = np.where(finite, arr, np.inf), np.where(finite, arr, -np.inf)
    other = tuple(i for i in range(arr.ndim) if i != layout.axis) if layout.axis is not None else None
    lo, hi = np.atleast_1d(low.min(axis=other)), np.atleast_1d(high.max(axis=other))
    if finite is not None:
        empty = lo > hi  # +inf and -inf: no finite value of this feature
        lo[empty], hi[empty] = arr[finite].min(), arr[finite].max()
    return {"min": [float(v) for v in lo], "max": [float(v) for v in hi]}


def _short(value: float) -> float:
    """7 significant digits: float32's precision, and a manifest a third the size."""
    return float(f"{float(value):.7g}")
