"""What edgeserve adds per call: Model.predict vs a plain InferenceSession.run on the same model, same threads.

    pytest benchmarks/ --benchmark-only

Both sides run the digits MLP at batch 1 in the same process and session options, interleaved by
pytest-benchmark's rounds; the ratio and the added microseconds are printed at the end of the run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgeserve
from edgeserve.backends.onnxruntime import session_options
from edgeserve.config import SessionConfig

MODEL = Path(__file__).resolve().parents[1] / "models" / "digits_mlp.onnx"
CONFIG = SessionConfig(intra_op_threads=1)
_results: dict[str, float] = {}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    with np.load(MODEL.with_name("digits_mlp_eval.npz")) as data:
        return data["X"][:1].copy()


@pytest.fixture(scope="module")
def plain() -> ort.InferenceSession:
    return ort.InferenceSession(str(MODEL), sess_options=session_options(CONFIG), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def model():
    with edgeserve.load(MODEL, config=CONFIG) as m:
        yield m


def test_plain_onnxruntime(benchmark, plain: ort.InferenceSession, x: np.ndarray) -> None:
    names = [o.name for o in plain.get_outputs()]
    result = benchmark(plain.run, names, {"X": x})
    _results["plain"] = benchmark.stats.stats.median
    assert result[0].shape == (1,)


def test_edgeserve_predict(benchmark, model, x: np.ndarray) -> None:
    result = benchmark(model.predict, x)
    _results["edgeserve"] = benchmark.stats.stats.median
    assert result["label"].shape == (1,)


def teardown_module() -> None:
    if {"plain", "edgeserve"} <= set(_results):
        added = (_results["edgeserve"] - _results["plain"]) * 1e6
        print(f"\npredict overhead: plain {_results['plain'] * 1e6:.2f} µs, edgeserve {_results['edgeserve'] * 1e6:.2f} µs, "
              f"ratio {_results['edgeserve'] / _results['plain']:.3f}, added {added:.2f} µs per call (median)")
