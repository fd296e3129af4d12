"""Each quantised example against its fp32 original, same process, same threads, batch 1.

    pytest benchmarks/ --benchmark-only --benchmark-group-by=param:example

The packages are converted once per session; pytest-benchmark groups the variants of each example so the
ratios read straight off its table; a summary of speedups prints at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.config import SessionConfig
from edgeserve.examples import get_example

EXAMPLES = ["digits-mlp", "digits-cnn", "tiny-bert"]
MODES = ["none", "dynamic", "static"]
CONFIG = SessionConfig(intra_op_threads=1)
_medians: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("variants")
    built = {}
    for name in EXAMPLES:
        ex = get_example(name)
        for mode in MODES:
            built[name, mode] = edgeserve.convert(ex.model, root / f"{name}-{mode}", quantize=mode,
                                                  calibration=ex.calibration, eval_data=ex.evaluation,
                                                  labels=ex.labels).path
    return built


def _first_row(name: str) -> dict[str, np.ndarray]:
    ex = get_example(name)
    with np.load(ex.evaluation) as data:
        return {k: data[k][:1].copy() for k in data.files if k != ex.labels}


@pytest.mark.parametrize("example", EXAMPLES)
@pytest.mark.parametrize("mode", MODES)
def test_predict(benchmark, packages, example: str, mode: str) -> None:
    feed = _first_row(example)
    with edgeserve.load(packages[example, mode], config=CONFIG) as model:
        benchmark(model.predict, feed)
    _medians[example, mode] = benchmark.stats.stats.median


def teardown_module() -> None:
    for name in EXAMPLES:
        base = _medians.get((name, "none"))
        if not base:
            continue
        parts = [f"{mode} {base / _medians[name, mode]:.2f}x" for mode in MODES[1:] if (name, mode) in _medians]
        print(f"\n{name}: fp32 {base * 1e6:.1f} µs; speedup " + ", ".join(parts))
