"""Batch axes from the names real exporters give dimensions (none shared by chance, none invented)."""

from __future__ import annotations

import pytest

from edgeserve.tensors import TensorSpec, assign_batch_axes, normalise_dims


def _axes(*shapes: tuple) -> list[int | None]:
    inputs = [TensorSpec(f"in{i}", "float32", normalise_dims(s)) for i, s in enumerate(shapes)]
    fixed, _ = assign_batch_axes(inputs, [])
    return [s.batch_axis for s in fixed]


@pytest.mark.parametrize("shapes, axes", [
    ([(1, 1, 64, "image_width")], [None]),  # ddddocr's OCR: a width is not a batch to stack requests along
    ([(1, "seq"), (1, "seq")], [None, None]),  # a transformer exported at batch 1: the inputs share their length
    ([("seq", "batch", 4), (1, "batch", 8)], [1, 1]),  # time-major recurrent input and its state
    ([("steps", "batch", 4)], [1]),  # a time-major input alone: the name saying batch, not the one leading
    ([("batch", "samples"), (2, "batch", 64), ()], [0, 1, None]),  # silero-VAD: audio, state, sample rate
    ([("N", 3, "H", "W")], [0]),
    ([(-1, 3, "?", "?")], [0]),  # Paddle: batch unknown, height and width both named "?"
    ([("unk__0", "unk__1"), ("unk__0", "unk__1")], [0, 0]),  # tf2onnx's names, leading every input
])
def test_batch_axes_from_dimension_names(shapes: list[tuple], axes: list[int | None]) -> None:
    assert _axes(*shapes) == axes


def test_placeholder_names_are_unknown_dims_not_names() -> None:
    assert normalise_dims([-1, 3, "?", "?"]) == (None, 3, None, None)  # two "?" are not one shared size
    assert normalise_dims(["-1", "", "batch"]) == (None, None, "batch")
