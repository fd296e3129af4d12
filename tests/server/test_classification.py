"""Triton's classification extension, as the data plane computes it for both protocols."""

from __future__ import annotations

import numpy as np
import pytest

from edgeserve.server.dataplane import class_count, top_classes
from edgeserve.server.errors import BadRequest


def test_each_row_gets_its_highest_values_first_ties_by_the_lower_index() -> None:
    scores = np.array([[0.1, 0.7, 0.7, 0.2], [3.0, -1.0, 2.5, 0.0]], np.float32)
    got = top_classes("p", scores, 3, batched=True)
    assert got.shape == (2, 3) and got.dtype == object
    assert got.tolist() == [[b"0.700000:1", b"0.700000:2", b"0.200000:3"], [b"3.000000:0", b"2.500000:2", b"0.000000:3"]]


def test_rows_of_one_class_axis_among_ones_and_outputs_without_a_batch_axis() -> None:
    assert top_classes("p", np.array([[[1, 9, 5]]], np.int64), 2, batched=True).tolist() == [[b"9:1", b"5:2"]]
    assert top_classes("p", np.array([2, 7], np.uint8), 1, batched=False).tolist() == [b"7:1"]


@pytest.mark.parametrize("value, count, message", [
    (np.array([["a", "b"]], dtype=object), 1, "classification needs numbers"),
    (np.zeros((2, 3, 4), np.float32), 1, "not one score per class"),
    (np.zeros((2, 3), np.float32), 4, "has 3 classes"),
])
def test_what_has_no_top_classes_is_refused(value: np.ndarray, count: int, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        top_classes("p", value, count, batched=True)


@pytest.mark.parametrize("value, want", [(None, None), (0, None), (3, 3)])
def test_the_count_parameter(value, want) -> None:
    assert class_count("p", value) == want


@pytest.mark.parametrize("value", [-1, True, 2.5, "3"])
def test_a_count_that_is_not_one_is_refused(value) -> None:
    with pytest.raises(BadRequest, match="positive whole number"):
        class_count("p", value)
