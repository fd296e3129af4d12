"""Explanations without gradients: occlusion against the reference, in one batched call.

For a vector input (``[rows, M]``) each of the M features of a row is replaced, one at a time, by its reference
mean; the attribution of feature j is ``f(x) - f(x with x_j := ref_j)``, per output value. The row and its M
occluded copies run as one batch of M + 1 rows. For a linear model this is exact: ``w_j (x_j - ref_j)``, summing
to ``f(x) - f(ref)``. For images (``[rows, C, H, W]`` or ``[rows, H, W, C]``) patches of ``patch x patch`` pixels
are occluded across all channels with each channel's reference mean: one batch of (patches + 1) rows.

SHAP's KernelExplainer, by comparison, evaluates ``(2M + 2048) x background`` rows per explained row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..tensors import TensorSpec
from .reference import Layout

MAX_ROWS_PER_RUN = 4096


@dataclass
class Explanation:
    """Attributions of one input's features (or patches) to every output, per explained row."""

    input: str
    kind: str
    """``features`` or ``patches``."""
    attributions: dict[str, np.ndarray]
    """Per output: ``[rows, M, *output row shape]`` (M features, or patches in row-major order)."""
    outputs: dict[str, np.ndarray]
    """The model's answers on the rows as given."""
    reference: str
    """Where the occlusion values came from."""
    patch: int | None = None
    grid: tuple[int, int] | None = None
    """patches: how many patch rows and columns (M = rows x columns)."""
    rows_run: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def top(self, output: str | None = None, count: int = 10) -> list[list[tuple[int, float]]]:
        """Per row, the ``count`` features with the largest attribution to the row's top class of ``output``
        (default: the first float output with a class axis — scores rather than a label — else the first; for a
        one-value output, that value), largest magnitude first."""
        name = output or next((k for k, v in self.outputs.items() if v.ndim >= 2 and np.issubdtype(v.dtype, np.floating)),
                              next(iter(self.attributions)))
        att = self.attributions[name]
        answer = self.outputs[name]
        out = []
        for i in range(att.shape[0]):
            a = att[i].reshape(att.shape[1], -1)
            cls = int(np.argmax(answer[i].reshape(-1))) if a.shape[1] > 1 else 0
            col = a[:, cls]
            order = np.argsort(-np.abs(col), kind="stable")[:count]
            out.append([(int(j), float(col[j])) for j in order])
        return out


def explain(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], inputs: tuple[TensorSpec, ...],
            feed: Mapping[str, np.ndarray], reference: Mapping[str, Any], *, input: str | None = None,
            patch: int | None = None) -> Explanation:
    """Occlusion attributions for the rows of ``feed`` (checked already); ``run`` runs a feed on the engine."""
    name = input or _explained_input(inputs, feed)
    spec = next((s for s in inputs if s.name == name), None)
    if spec is None:
        raise InputError(f"no input named '{name}' to explain; the model has {', '.join(s.name for s in inputs)}")
    if not spec.rows_on_axis0:  # (an export fixed at batch 1 runs the occluded rows one at a time: see Model)
        raise InputError(f"input '{name}' has no batch axis 0: occlusion explains rows of a batched input")
    x = np.asarray(feed[name])
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"input '{name}' is {x.dtype}: occlusion replaces values with reference means, which needs a "
                         "float input (token ids cannot be averaged)")
    stats = (reference.get("inputs") or {}).get(name) or {}
    layout = Layout.from_dict(stats["layout"]) if "layout" in stats else None
    means = np.asarray(stats["drift"]["mean"], dtype=np.float64) if "drift" in stats else None
    if x.ndim == 2:
        fill = means if means is not None and len(means) == x.shape[1] else None
        return _features(run, feed, name, x, fill)
    if x.ndim == 4:
        axis = (layout.axis if layout is not None and layout.kind == "channels" and layout.axis is not None
                else (1 if x.shape[1] <= x.shape[3] else 3))
        fill = means if means is not None and len(means) == x.shape[axis] else None
        return _patches(run, feed, name, x, axis, fill, patch)
    raise InputError(f"input '{name}' has shape {list(x.shape)}: occlusion explains [rows, features] and image "
                     "[rows, C, H, W] / [rows, H, W, C] inputs")


def _explained_input(inputs: tuple[TensorSpec, ...], feed: Mapping[str, np.ndarray]) -> str:
    for spec in inputs:
        value = feed.get(spec.name)
        if value is not None and np.issubdtype(value.dtype, np.floating) and value.ndim in (2, 4):
            return spec.name
    raise InputError("no float [rows, features] or image input to explain; name one with input=")


def _run_rows(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], feed: Mapping[str, np.ndarray],
              name: str, rows: np.ndarray, source_row: int) -> dict[str, np.ndarray]:
    """Run ``rows`` (variants of ``source_row``) with the other inputs' values of that row repeated."""
    pieces: list[dict[str, np.ndarray]] = []
    for start in range(0, len(rows), MAX_ROWS_PER_RUN):
        chunk = rows[start:start + MAX_ROWS_PER_RUN]
        batch = {k: (chunk if k == name else np.repeat(np.asarray(v)[source_row:source_row + 1], len(chunk), axis=0))
                 for k, v in feed.items()}
        pieces.append(run(batch))
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def _occlude(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], feed: Mapping[str, np.ndarray],
             name: str, rows: int, variants: Callable[[int], np.ndarray]
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run each row's variants (the row itself first, then one per occluded part) and difference them: per
    output ``[rows, parts, *output row shape]`` attributions, and the answers to the rows as given."""
    attributions: dict[str, list[np.ndarray]] = {}
    answers: dict[str, list[np.ndarray]] = {}
    for i in range(rows):
        for k, v in _run_rows(run, feed, name, variants(i), i).items():
            v64 = v.astype(np.float64)
            attributions.setdefault(k, []).append(v64[0:1] - v64[1:])
            answers.setdefault(k, []).append(v[0:1])
    return ({k: np.stack(v) for k, v in attributions.items()}, {k: np.concatenate(v) for k, v in answers.items()})


def _features(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], feed: Mapping[str, np.ndarray],
              name: str, x: np.ndarray, fill: np.ndarray | None) -> Explanation:
    m = x.shape[1]
    ref = fill.astype(x.dtype) if fill is not None else np.zeros(m, dtype=x.dtype)
    eye = np.eye(m, dtype=bool)

    def variants(i: int) -> np.ndarray:
        rows = np.repeat(x[i:i + 1], m + 1, axis=0)
        rows[1:][eye] = ref  # row j + 1: feature j occluded
        return rows

    attributions, answers = _occlude(run, feed, name, len(x), variants)
    return Explanation(name, "features", attributions, answers, "reference mean per feature" if fill is not None else "zeros (the package has no reference)",
                       rows_run=len(x) * (m + 1))


def _patches(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], feed: Mapping[str, np.ndarray],
             name: str, x: np.ndarray, axis: int, fill: np.ndarray | None, patch: int | None) -> Explanation:
    spatial = [a for a in (1, 2, 3) if a != axis]
    h, w = x.shape[spatial[0]], x.shape[spatial[1]]
    size = patch or max(1, min(h, w) // 8)
    gh, gw = -(-h // size), -(-w // size)
    shape = [1, 1, 1, 1]
    shape[axis] = x.shape[axis]
    ref = (fill.reshape(shape) if fill is not None else np.zeros(shape)).astype(x.dtype)

    def variants(i: int) -> np.ndarray:
        rows = np.repeat(x[i:i + 1], gh * gw + 1, axis=0)
        for p in range(gh * gw):  # row p + 1: patch p occluded
            r, c = divmod(p, gw)
            index: list[Any] = [p + 1, slice(None), slice(None), slice(None)]
            index[spatial[0]] = slice(r * size, (r + 1) * size)
            index[spatial[1]] = slice(c * size, (c + 1) * size)
            rows[tuple(index)] = np.broadcast_to(ref[0], rows[tuple(index)].shape)
        return rows

    attributions, answers = _occlude(run, feed, name, len(x), variants)
    return Explanation(name, "patches", attributions, answers,
                       "reference mean per channel" if fill is not None else "zeros (the package has no reference)",
                       patch=size, grid=(gh, gw), rows_run=len(x) * (gh * gw + 1))
