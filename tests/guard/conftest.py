from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import edgeserve
from tests.factories import mlp_model, save


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits split in two halves: the reference (what the package records) and a stream from the same
    population that the reference never saw; and the labels of the stream half."""
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.data))
    x = data.data.astype(np.float32)
    half = len(x) // 2
    return x[order[:half]], x[order[half:]], data.target[order[half:]]


@pytest.fixture(scope="session")
def digits_package(tmp_path_factory: pytest.TempPathFactory, digits) -> Path:
    reference, _, _ = digits
    tmp = tmp_path_factory.mktemp("digits")
    model = save(mlp_model(n_in=64, hidden=32, n_out=10, seed=2), tmp / "digits.onnx")
    return edgeserve.convert(model, tmp / "pkg", quantize="none", name="digits",
                             calibration={"x": reference[:64]}, reference={"x": reference}).path
