"""Explanations without gradients: occlusion against the reference, in one batched call.

For a vector input (``[rows, M]``) each of the M features of a row is replaced, one at a time, by its reference
mean; the attribution of feature j is ``f(x) - f(x with x_j := ref_j)``, per output value. The row and its M
occluded copies run as one batch of M + 1 rows. For a linear model this is exact: ``w_j (x_j - ref_j)``, summing
to ``f(x) - f(ref)``. For images (``[rows, C, H, W]`` or ``[rows, H, W, C]``) patches of ``patch x patch`` pixels
are occluded across all channels with each channel's reference mean: one batch of (patches + 1) rows.

Signals and sequences are occluded a window of steps at a time (``segments``): a waveform ``[rows, samples]``
wider than a table (more than ``MAX_FEATURES`` values) and a series ``[rows, steps, features]``, with the
reference mean (per feature for a series); ``patch`` steps per window, ``SEGMENTS`` windows by default. Token ids
(``tokens``) cannot be averaged: each position is removed in turn — its attention mask set to 0 where the model has
one, else its id replaced by the padding id — so the attribution of a token is what the answer loses without it.

SHAP's KernelExplainer, by comparison, evaluates ``(2M + 2048) x background`` rows per explained row.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..tensors import CACHE_NAME, TensorSpec, row_sets
from .reference import MAX_FEATURES, Layout

MAX_ROWS_PER_RUN = 4096
RUN_BYTES = 64 * 1024 * 1024
"""Bytes of occluded input rows per engine run at most (a 3x512x512 image is 3 MiB a row: 21 rows a run, not 4096)."""
MAX_ATTRIBUTION_BYTES = 256 * 1024 * 1024
"""The attributions one explanation may hold: parts x rows x output values, float64. A segmentation network's
[21, 224, 224] answer per each of 64 patches is 514 MiB for one image; a request for more is refused before it runs,
not left to exhaust the server's memory."""
SEGMENTS = 32
"""Windows a signal or sequence is cut into when no window size is given."""


@dataclass
class Explanation:
    """Attributions of one input's features (or patches) to every output, per explained row."""

    input: str
    kind: str
    """``features``, ``patches``, ``segments``, ``tokens`` or ``columns`` (one per input of a model of named
    columns, ``extra["columns"]`` naming them)."""
    attributions: dict[str, np.ndarray]
    """Per output: ``[rows, M, *output row shape]`` (M features, patches in row-major order, windows or token
    positions)."""
    outputs: dict[str, np.ndarray]
    """The model's answers on the rows as given."""
    reference: str
    """Where the occlusion values came from."""
    patch: int | None = None
    """patches: pixels per side; segments: steps per window."""
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
            patch: int | None = None, out_axes: Mapping[str, int] | None = None,
            outputs: tuple[TensorSpec, ...] = ()) -> Explanation:
    """Occlusion attributions for the rows of ``feed`` (checked already); ``run`` runs a feed on the engine;
    ``out_axes``: outputs whose rows are not on axis 0 (an RNN's ``hn``); ``outputs``: their specs, whose fixed
    sizes bound the attributions without a run (see ``MAX_ATTRIBUTION_BYTES``)."""
    axes = {s.name: s.batch_axis if s.batch_axis is not None else 0 if s.rows_on_axis0 else None for s in inputs}
    out = dict(out_axes or {})
    apart: set[str] = set()
    if len(row_sets(inputs)) > 1:
        apart = _rows_apart(inputs, outputs, input or _explained_input(inputs, feed), axes, out)
    req = _Request(run, feed, axes, out, _row_values(tuple(o for o in outputs if o.name not in apart)),
                   frozenset(apart))
    if input is None and _one_column_each(inputs, feed):
        return _columns(req, inputs, reference)
    name = input or _explained_input(inputs, feed)
    spec = next((s for s in inputs if s.name == name), None)
    if spec is None:
        raise InputError(f"no input named '{name}' to explain; the model has {', '.join(s.name for s in inputs)}")
    if not spec.rows_on_axis0:  # (an export fixed at batch 1 runs the occluded rows one at a time: see Model)
        raise InputError(f"input '{name}' has no batch axis 0: occlusion explains rows of a batched input")
    x = np.asarray(feed[name])
    stats = (reference.get("inputs") or {}).get(name) or {}
    layout = Layout.from_dict(stats["layout"]) if "layout" in stats else None
    if np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
        return _tokens(req, name, x, max(layout.pad, 0) if layout is not None and layout.kind == "tokens" else 0)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"input '{name}' is {x.dtype} {list(x.shape)}: occlusion explains float inputs (features, "
                         "images, signals, series) and token ids [rows, seq]")
    return _floats(req, spec, x, stats, layout, patch)


def _floats(req: _Request, spec: TensorSpec, x: np.ndarray, stats: Mapping[str, Any], layout: Layout | None,
            patch: int | None) -> Explanation:
    """A float input by its shape: features of a table, windows of a signal or series, patches of an image; each
    occluded with the reference's mean (per feature or channel where it has one)."""
    name = spec.name
    means = (np.asarray(stats["drift"]["mean"], dtype=np.float64) if "drift" in stats
             else np.asarray([f.get("mean", 0.0) for f in stats["features"]], dtype=np.float64) if "features" in stats
             else None)  # NOTE: per-feature statistics exist for tables of fewer rows than a drift reference needs
    overall = float(stats["mean"]) if "mean" in stats else None
    if x.ndim == 2 and x.shape[1] <= MAX_FEATURES:
        fill = means if means is not None and len(means) == x.shape[1] else None
        return _features(req, name, x, fill)
    if x.ndim in (2, 3):  # a waveform too wide for a table, [rows, steps, features] or [rows, features, steps]
        time = _time_axis(spec, x, layout)
        fill = (means if x.ndim == 3 and means is not None and len(means) == x.shape[3 - time]
                else None if overall is None else np.asarray([overall]))
        return _segments(req, name, x, fill, patch, time)
    if x.ndim == 4:
        axis = (layout.axis if layout is not None and layout.kind == "channels" and layout.axis is not None
                else (1 if x.shape[1] <= x.shape[3] else 3))
        per_channel = means is not None and len(means) == x.shape[axis]
        fill = means if per_channel else None if overall is None else np.full(x.shape[axis], overall)
        return _patches(req, name, x, axis, fill, patch,
                        "reference mean per channel" if per_channel else "reference mean")
    raise InputError(f"input '{name}' has shape {list(x.shape)}: occlusion explains [rows, features], [rows, "
                     "samples], [rows, steps, features], image [rows, C, H, W] / [rows, H, W, C] and token inputs")


def _rows_apart(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], name: str,
                axes: dict[str, int | None], out_axes: dict[str, int]) -> set[str]:
    """A model whose inputs count rows apart (CLIP's images and texts, see :func:`edgeserve.tensors.row_sets`),
    explained by ``name``: the other sets' inputs go whole into every run (``axes`` made None); an output is
    attributed along the axis its declared dimensions name for ``name``'s rows (``logits_per_image [images,
    texts]``: axis 1 when texts are explained), and one with only another set's rows (``text_embeds``, when images
    are) is left out: its set is returned."""
    sets = row_sets(inputs)
    own = next((g for g in sets if any(s.name == name for s in g)), ())
    if not own:
        return set()

    def rows_dim(group: tuple[TensorSpec, ...]) -> Any:
        first = group[0]
        return first.shape[first.batch_axis] if first.batch_axis is not None else None

    mine, others = rows_dim(own), {rows_dim(g) for g in sets if g is not own}
    axes.update({s.name: None for g in sets if g is not own for s in g})
    apart = set()
    for spec in outputs:
        if mine in spec.shape:
            out_axes[spec.name] = list(spec.shape).index(mine)
        elif others & set(spec.shape):
            apart.add(spec.name)
    return apart


def _explained_input(inputs: tuple[TensorSpec, ...], feed: Mapping[str, np.ndarray]) -> str:
    """The first float input with rows of features, pixels or steps; else the first token ids (not a mask); else
    a float input named like a state or cache (a decoder's ``past_key_values.0.key`` is its memory of earlier
    tokens, not what it is asked about: GPT-2 with a cache is explained by its new tokens)."""
    from ..metrics import MASK_NAME

    def floats(state: bool) -> Iterator[str]:
        for spec in inputs:
            value = feed.get(spec.name)
            if value is not None and np.issubdtype(value.dtype, np.floating) and value.ndim in (2, 3, 4) \
                    and bool(CACHE_NAME.search(spec.name)) == state:
                yield spec.name

    def tokens() -> Iterator[str]:
        for spec in inputs:
            value = feed.get(spec.name)
            if value is not None and np.issubdtype(value.dtype, np.integer) and value.ndim == 2 \
                    and not MASK_NAME.search(spec.name) and "type" not in spec.name:
                yield spec.name

    for name in itertools.chain(floats(False), tokens(), floats(True)):
        return name
    raise InputError("no float [rows, features], signal, series or image input, and no token ids, to explain; "
                     "name one with input=")


def _run_rows(req: _Request, varied: Mapping[str, np.ndarray], source_row: int) -> dict[str, np.ndarray]:
    """Run the ``varied`` inputs' rows (variants of ``source_row``) with the other inputs' values of that row
    repeated along their own batch axes (an RNN's ``h0 [layers, batch, hidden]``); an input without one (a
    sample rate) is shared as it is."""
    count = len(next(iter(varied.values())))
    row_bytes = max(1, sum(v[:1].nbytes for v in varied.values()))
    per_run = max(1, min(MAX_ROWS_PER_RUN, RUN_BYTES // row_bytes))
    pieces: list[dict[str, np.ndarray]] = []
    for start in range(0, count, per_run):
        n = min(per_run, count - start)
        batch = {}
        for k, v in req.feed.items():
            axis = req.axes.get(k, 0)
            if k in varied:
                batch[k] = varied[k][start:start + n]
            elif axis is None:
                batch[k] = np.asarray(v)
            else:
                batch[k] = np.repeat(np.take(np.asarray(v), [source_row], axis=axis), n, axis=axis)
        pieces.append(req.run(batch))
    return {k: np.concatenate([p[k] for p in pieces], axis=req.out_axes.get(k, 0)) for k in pieces[0]
            if k not in req.apart}


@dataclass
class _Request:
    """The explained request: the engine to run its variants on, its inputs, and where their rows are."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    feed: Mapping[str, np.ndarray]
    axes: dict[str, int | None]
    """Each input's batch axis (None: no rows, one value shared by every row: a sample rate)."""
    out_axes: dict[str, int]
    """Outputs whose rows are not on axis 0 (an RNN's ``hn``)."""
    row_values: int | None = None
    """Output values per row, all outputs together, where the specs fix them (None: known only from a run)."""
    apart: frozenset[str] = frozenset()
    """Outputs with the rows of inputs not explained (a CLIP's text embeddings when its images are): left out."""

    @property
    def rows(self) -> int:
        """Rows in the request (of an input whose rows are on axis 0: the explained one is)."""
        return next(len(v) for k, v in self.feed.items() if self.axes.get(k, 0) == 0)


def _occlude(req: _Request, name: str, variants: Callable[[int], np.ndarray | dict[str, np.ndarray]]
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run each row's variants (the row itself first, then one per occluded part; of input ``name``, or of the
    inputs a dict names) and difference them: per output ``[rows, parts, *output row shape]`` attributions, and
    the answers to the rows as given."""
    attributions: dict[str, list[np.ndarray]] = {}
    answers: dict[str, list[np.ndarray]] = {}
    for i in range(req.rows):
        varied = variants(i)
        parts = varied if isinstance(varied, dict) else {name: varied}
        if i == 0:
            _within_budget(req, name, parts)
        for k, v in _run_rows(req, parts, i).items():
            v = np.moveaxis(v, req.out_axes.get(k, 0), 0)
            v64 = v.astype(np.float64)
            attributions.setdefault(k, []).append(v64[0:1] - v64[1:])
            answers.setdefault(k, []).append(v[0:1])
    return ({k: np.stack(v) for k, v in attributions.items()},
            {k: np.moveaxis(np.concatenate(v), 0, req.out_axes.get(k, 0)) for k, v in answers.items()})


def _features(req: _Request,
              name: str, x: np.ndarray, fill: np.ndarray | None) -> Explanation:
    m = x.shape[1]
    ref = fill.astype(x.dtype) if fill is not None else np.zeros(m, dtype=x.dtype)
    eye = np.eye(m, dtype=bool)

    def variants(i: int) -> np.ndarray:
        rows = np.repeat(x[i:i + 1], m + 1, axis=0)
        rows[1:][eye] = ref  # row j + 1: feature j occluded
        return rows

    attributions, answers = _occlude(req, name, variants)
    return Explanation(name, "features", attributions, answers,
                       "reference mean per feature" if fill is not None else "zeros (the package has no reference)",
                       rows_run=len(x) * (m + 1))


def _patches(req: _Request,
             name: str, x: np.ndarray, axis: int, fill: np.ndarray | None, patch: int | None,
             label: str = "reference mean per channel") -> Explanation:
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

    attributions, answers = _occlude(req, name, variants)
    return Explanation(name, "patches", attributions, answers,
                       label if fill is not None else "zeros (the package has no reference)",
                       patch=size, grid=(gh, gw), rows_run=len(x) * (gh * gw + 1))


def _time_axis(spec: TensorSpec, x: np.ndarray, layout: Layout | None) -> int:
    """The axis of steps of ``[rows, a, b]``: the one the model declares of variable size (lengths vary, feature
    counts do not); else the axis beside the features of what the reference read as a series, or the longer axis
    (a spectrogram [rows, 80 mel, 3000 frames])."""
    if x.ndim == 2:
        return 1
    variable = [a for a in (1, 2) if a < len(spec.shape) and not isinstance(spec.shape[a], int)]
    if len(variable) == 1:
        return variable[0]
    if layout is not None and layout.kind == "series":
        return 1 if layout.axis != 1 else 2
    return 1 if x.shape[1] >= x.shape[2] else 2


def _segments(req: _Request,
              name: str, x: np.ndarray, fill: np.ndarray | None, window: int | None, axis: int = 1) -> Explanation:
    """Windows of ``window`` steps along ``axis`` (of a waveform, or of a series across all its features)."""
    steps = x.shape[axis]
    size = window or max(1, -(-steps // SEGMENTS))
    count = -(-steps // size)
    ref = (fill if fill is not None else np.zeros(1)).astype(x.dtype)

    def variants(i: int) -> np.ndarray:
        rows = np.repeat(x[i:i + 1], count + 1, axis=0)
        for p in range(count):  # row p + 1: window p occluded
            index: list[Any] = [p + 1, slice(None), slice(None)][:x.ndim]
            index[axis] = slice(p * size, (p + 1) * size)
            part = rows[tuple(index)]
            part[...] = np.broadcast_to(ref if axis == 1 else ref.reshape(-1, *([1] * (x.ndim - 2))), part.shape)
        return rows

    attributions, answers = _occlude(req, name, variants)
    return Explanation(name, "segments", attributions, answers,
                       "reference mean" + (" per feature" if fill is not None and len(fill) > 1 else "")
                       if fill is not None else "zeros (the package has no reference)",
                       patch=size, rows_run=len(x) * (count + 1))


def _tokens(req: _Request,
            name: str, ids: np.ndarray, pad: int) -> Explanation:
    """Each token position removed in turn: its mask set to 0 where the model has a mask, else its id padded."""
    from ..metrics import find_mask

    mask_name = find_mask({k: v for k, v in req.feed.items() if k != name}, ids.shape)
    seq = ids.shape[1]
    eye = np.eye(seq, dtype=bool)

    def variants(i: int) -> dict[str, np.ndarray]:
        if mask_name is not None:
            mask = np.repeat(np.asarray(req.feed[mask_name])[i:i + 1], seq + 1, axis=0)
            mask[1:, mask.shape[1] - seq:][eye] = 0  # row j + 1: token j removed (a mask over a KV cache too)
            return {mask_name: mask}
        rows = np.repeat(ids[i:i + 1], seq + 1, axis=0)
        rows[1:][eye] = pad
        return {name: rows}

    attributions, answers = _occlude(req, name, variants)
    how = f"each token removed (its '{mask_name}' set to 0)" if mask_name else f"each token replaced by the padding id {pad}"
    return Explanation(name, "tokens", attributions, answers, how, rows_run=len(ids) * (seq + 1))


def _one_column_each(inputs: tuple[TensorSpec, ...], feed: Mapping[str, np.ndarray]) -> bool:
    """A model of named columns (a scikit-learn pipeline over a DataFrame): several inputs, each ``[rows, 1]``."""
    return len(inputs) > 1 and all(
        s.rows_on_axis0 and s.name in feed and np.asarray(feed[s.name]).ndim == 2
        and np.asarray(feed[s.name]).shape[1] == 1 for s in inputs)


def _columns(req: _Request, inputs: tuple[TensorSpec, ...], reference: Mapping[str, Any]) -> Explanation:
    """Each column replaced in turn by its reference value: the mean of a float column, the median of an integer
    one, the most frequent category of a text one (zero, or the empty string, without a reference)."""
    stats = reference.get("inputs") or {}
    names = [s.name for s in inputs]
    fills = {}
    for name in names:
        x = np.asarray(req.feed[name])
        ref = stats.get(name) or {}
        if x.dtype.kind in "OU":
            fills[name] = np.array([[ref.get("mode", "")]], dtype=x.dtype)
        elif x.dtype.kind == "f":
            fills[name] = np.array([[ref.get("mean", 0.0)]], dtype=x.dtype)
        else:
            fills[name] = np.array([[round((ref.get("quantiles") or {}).get("p50", 0))]], dtype=x.dtype)
    m = len(names)

    def variants(i: int) -> dict[str, np.ndarray]:
        out = {}
        for j, name in enumerate(names):
            rows = np.repeat(np.asarray(req.feed[name])[i:i + 1], m + 1, axis=0)
            rows[j + 1] = fills[name][0]  # row j + 1: column j replaced
            out[name] = rows
        return out

    attributions, answers = _occlude(req, names[0], variants)
    return Explanation("(columns)", "columns", attributions, answers,
                       "reference mean, median or most frequent value per column" if stats
                       else "zeros (the package has no reference)",
                       rows_run=req.rows * (m + 1), extra={"columns": names})


def _within_budget(req: _Request, name: str, parts: Mapping[str, np.ndarray]) -> None:
    """Refuse an explanation whose attributions would pass ``MAX_ATTRIBUTION_BYTES``, before any occluded copy
    runs: from the outputs' fixed sizes, else from one run of the first row as given."""
    occluded = len(next(iter(parts.values()))) - 1
    values = req.row_values
    if values is None:
        answer = _run_rows(req, {k: v[:1] for k, v in parts.items()}, 0)
        values = sum(int(np.prod(np.moveaxis(v, req.out_axes.get(k, 0), 0).shape[1:])) for k, v in answer.items())
    size = req.rows * occluded * values * 8
    if size > MAX_ATTRIBUTION_BYTES:
        raise InputError(
            f"explaining input '{name}' would hold {size / 2**20:.0f} MiB of attributions ({req.rows} row(s) x "
            f"{occluded} occluded parts x {values} output values, float64), more than the "
            f"{MAX_ATTRIBUTION_BYTES / 2**20:.0f} MiB allowed: explain fewer rows, or occlude fewer, larger parts "
            "(Model.explain's patch=, the server's explain_patch parameter)")


def _row_values(outputs: tuple[TensorSpec, ...]) -> int | None:
    """Values per row over ``outputs`` when every dimension but the batch axis is fixed, else None."""
    if not outputs:
        return None
    total = 0
    for spec in outputs:
        axis = spec.batch_axis if spec.batch_axis is not None else 0
        dims = [d for i, d in enumerate(spec.shape) if i != axis]
        fixed = [d for d in dims if isinstance(d, int)]
        if len(fixed) != len(dims):
            return None
        total += int(np.prod(fixed, dtype=np.int64))
    return total
