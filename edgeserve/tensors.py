"""Tensor signatures: what a model takes and gives, independent of any inference engine."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Dim = int | str | None
"""A dimension: a fixed size, a symbolic name (``"batch"``), or ``None`` when unknown."""

# ONNX TensorProto element types to numpy dtype names. Kept here so that describing a model never needs onnx.
ONNX_TO_NUMPY: dict[int, str] = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "str",
    9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
}
NUMPY_DTYPES: frozenset[str] = frozenset(ONNX_TO_NUMPY.values())
"""The element types edgeserve exchanges as numpy arrays; a model input or output of another type (bfloat16,
float8, int4, complex) is refused when the model loads."""
_ORT_TYPE_PREFIX = "tensor("


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model."""

    name: str
    """The tensor's name in the graph."""
    dtype: str
    """The numpy dtype name (``"float32"``, ``"int64"``, ``"str"`` for ONNX strings)."""
    shape: tuple[Dim, ...]
    """Dimensions: ints are fixed, strings are symbolic, ``None`` is unknown."""
    batch_axis: int | None = None
    """The axis requests may be stacked along, or ``None`` when the model has no batch axis."""
    shortest: tuple[tuple[int, int], ...] = ()
    """(axis, length) of variable axes the model needs at least that long (measured when it was converted: see
    :mod:`edgeserve.converter.shortest`); an input shorter is refused before the engine sees it."""

    @property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(object) if self.dtype == "str" else np.dtype(self.dtype)

    @property
    def rows_on_axis0(self) -> bool:
        """Requests hold rows along axis 0: a batch axis there, or an export fixed at batch 1 (``[1, 3, H, W]``,
        one row per request), which the guard's statistics and checks read the same way."""
        return self.batch_axis == 0 or (self.batch_axis is None and self.shape[:1] == (1,))

    def describe(self) -> str:
        """``float32 [batch, 64]`` (``[batch, samples>=400]`` where an axis has a shortest length): the form error
        messages and ``inspect`` use."""
        if not self.shortest:
            return f"{self.dtype} {format_shape(self.shape)}"
        least = dict(self.shortest)
        dims = ", ".join(f"{'?' if d is None else d}>={least[i]}" if i in least else "?" if d is None else str(d)
                         for i, d in enumerate(self.shape))
        return f"{self.dtype} [{dims}]"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                               "batch_axis": self.batch_axis}
        if self.shortest:
            out["shortest"] = [list(pair) for pair in self.shortest]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(
            name=str(data["name"]),
            dtype=str(data["dtype"]),
            shape=tuple(data["shape"]),
            batch_axis=data.get("batch_axis"),
            shortest=tuple((int(axis), int(length)) for axis, length in data.get("shortest", ())),
        )


def rows_one_at_a_time(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """An export fixed at batch 1 whose every input and output is ``[1, ...]``: several rows can be answered by
    running them one at a time and joining the answers on that axis (a model whose outputs' length depends on the
    values, a detector's kept boxes, cannot: its answers would run together)."""
    return bool(inputs) and all(s.batch_axis is None and s.shape[:1] == (1,) for s in (*inputs, *outputs))


CACHE_NAME = re.compile(r"past|present|cache|state|hidden", re.IGNORECASE)
"""Names of a state fed back whose length grows with each call (a decoder's ``past_key`` and ``present_key``)."""


def fed_back(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """A stateful model's (state inputs, state outputs): float outputs shaped like a float input (an RNN's ``hn``
    for its ``h0``, a VAD's ``stateN`` for its ``state``), or named like a cache and grown along one axis from an
    input named so (a decoder's ``present_key [batch, heads, past + seq, dim]`` from ``past_key``), when at least
    one output is not such a state (an autoencoder's reconstruction, shaped like its input, is its answer, not a
    state). Empty sets otherwise."""
    def floating(a: Any) -> bool:
        return bool(np.issubdtype(np.asarray(a).dtype, np.floating))

    def grown(before: tuple[int, ...], after: tuple[int, ...]) -> bool:
        return len(before) == len(after) and sum(b != a for b, a in zip(before, after)) == 1 and all(
            a >= b for b, a in zip(before, after))

    shapes = {k: np.shape(v) for k, v in inputs.items() if floating(v)}
    pairs = {(i, o) for o, v in outputs.items() if floating(v) for i, shape in shapes.items()
             if np.shape(v) == shape or (grown(shape, np.shape(v)) and CACHE_NAME.search(i) and CACHE_NAME.search(o))}
    states = {o for _, o in pairs}
    if not states or len(states) == len(outputs):
        return set(), set()
    return {i for i, _ in pairs}, states


def format_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def dtype_from_ort(type_str: str) -> str:
    """``"tensor(float)"`` (onnxruntime's spelling) to ``"float32"``."""
    if not type_str.startswith(_ORT_TYPE_PREFIX):
        return type_str  # sequences and maps are described as they are
    inner = type_str[len(_ORT_TYPE_PREFIX):-1]
    return {
        "float": "float32", "double": "float64", "float16": "float16", "string": "str", "bool": "bool",
    }.get(inner, inner)


def guess_batch_axis(shape: Sequence[Dim]) -> int | None:
    """Axis 0 is the batch axis when it is symbolic or unknown; a model with a fixed first dim has none."""
    if shape and not isinstance(shape[0], int):
        return 0
    return None


BATCH_NAME = re.compile(r"batch|^(n|b|bs|N|B)$", re.IGNORECASE)
"""Dimension names that say batch whatever their axis (a time-major recurrent input's ``[seq, batch, features]``)."""


def assign_batch_axes(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Find the batch axis of every input and output from the names exporters give dimensions.

    A symbolic dimension name that every input with symbolic dimensions carries is the batch: the state of a
    recurrent model is shaped [layers, batch, hidden], so its batch axis is 1, not 0 (a 0-d or fixed-shape input
    beside it, such as a sample rate, has none). Without a shared name, a symbolic or unknown first dimension is
    the batch axis, and a fixed one means the tensor has none.
    """
    named = [{d for d in s.shape if isinstance(d, str)} for s in inputs]
    named = [n for n in named if n]
    common = set.intersection(*named) if named else set()
    # NOTE: a shared name is the batch only where it leads some input or says so: a lone input's only symbolic
    # dim is anything (ddddocr's OCR [1, 1, 64, image_width]), and inputs exported at batch 1 share their length
    # ([1, seq]); neither is a batch to stack requests along
    common = {d for d in common if BATCH_NAME.search(d) or any(s.shape[:1] == (d,) for s in inputs)}
    batch_name = None
    if common:
        first = next(s.shape for s in inputs if any(isinstance(d, str) for d in s.shape))
        batch_name = next((d for d in first if d in common and BATCH_NAME.search(d)), None) or next(
            (d for d in first if d in common), None)  # a time-major [steps, batch, features]: the one saying batch

    def axis(spec: TensorSpec) -> int | None:
        if batch_name is not None and batch_name in spec.shape:
            return list(spec.shape).index(batch_name)
        return guess_batch_axis(spec.shape)

    def fix(specs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(s.name, s.dtype, s.shape, axis(s)) for s in specs)

    return fix(inputs), fix(outputs)


GENERATED_DIM = re.compile(r"_dynamic_axes_\d+$|^unk__\d+$")
"""Dimension names a tool made up, saying nothing of what the axis holds: torch's legacy exporter names a dynamic
axis given without a name ``input_ids_dynamic_axes_1``, onnxruntime's shape inference ``unk__12``."""


def row_sets(specs: Sequence[TensorSpec]) -> list[tuple[TensorSpec, ...]]:
    """The inputs with a batch axis, in sets whose rows must agree in number: one set, unless every such input
    names its batch axis and the names differ, each set then one name (CLIP scores N images, ``image_batch_size``,
    against M texts, ``text_batch_size``). Names a tool made up say nothing: they keep one set."""
    batched = [s for s in specs if s.batch_axis is not None]
    names = [s.shape[s.batch_axis] for s in batched if s.batch_axis is not None]
    if len(set(names)) < 2 or not all(isinstance(n, str) and n and not GENERATED_DIM.search(n) for n in names):
        return [tuple(batched)] if batched else []
    sets: dict[Dim, list[TensorSpec]] = {}
    for spec, name in zip(batched, names):
        sets.setdefault(name, []).append(spec)
    return [tuple(v) for v in sets.values()]


def normalise_dims(shape: Sequence[Any] | None) -> tuple[Dim, ...]:
    """onnxruntime reports unknown dims as None or strings, and sometimes negative ints: make them uniform."""
    out: list[Dim] = []
    for d in shape or ():
        if isinstance(d, (int, np.integer)) and d >= 0:
            out.append(int(d))
        elif isinstance(d, str) and re.search(r"[A-Za-z0-9]", d) and d.strip() not in ("-1", "None"):
            out.append(d)  # NOTE: not "?" (Paddle's exporter names every unknown dim so) nor "-1": no name at all
        else:
            out.append(None)
    return tuple(out)


def stand_in(spec: TensorSpec, shape: Sequence[int], rng: np.random.Generator,
             vocabulary: int | None = None) -> np.ndarray | None:
    """Seeded stand-in values for an input when no data was given: normal floats, small non-negative (0/1)
    integers, or for token ids (``vocabulary``: the rows of the embedding table they index) ids across the table,
    booleans all True; None for strings, which cannot be invented."""
    dtype = spec.np_dtype
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.dtype(bool):
        return np.ones(shape, dtype=bool)
    if np.issubdtype(dtype, np.integer):
        high = min(vocabulary, int(np.iinfo(dtype).max) + 1) if vocabulary and vocabulary > 2 else 2
        return rng.integers(0, high, size=shape).astype(dtype)
    return None


def join_rows(parts: list[np.ndarray]) -> np.ndarray:
    """One output of a batch-1 export run row by row, joined on the axis where each row's answer holds its one
    row: the first axis of size 1 in every answer (axis 1 of a time-major ``[steps, 1, classes]``, as ddddocr's
    recogniser answers whatever its signature says), else axis 0 (parts of several rows each, joined already)."""
    shape = parts[0].shape
    axis = next((i for i, d in enumerate(shape) if d == 1 and all(p.ndim == len(shape) and p.shape[i] == 1
                                                                  for p in parts)), 0)
    return np.concatenate(parts, axis=axis)
