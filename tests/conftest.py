from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.factories import mlp_model, rows, save


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tests never write into the user's cache folder."""
    import os

    folder = tmp_path_factory.mktemp("graph-cache")
    os.environ["EDGESERVE_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return save(mlp_model(), tmp_path / "mlp.onnx")


@pytest.fixture
def mlp_data(tmp_path: Path) -> tuple[Path, Path]:
    cal, ev = tmp_path / "cal.npz", tmp_path / "eval.npz"
    np.savez(cal, x=rows(64, seed=1))
    np.savez(ev, x=rows(32, seed=2))
    return cal, ev


@pytest.fixture
def mlp_package(tmp_path: Path, mlp_path: Path, mlp_data: tuple[Path, Path]) -> Path:
    import edgeserve

    cal, ev = mlp_data
    return edgeserve.convert(mlp_path, tmp_path / "pkg", calibration=cal, eval_data=ev).path


@pytest.fixture
def rival() -> Iterator[Callable[[Callable[[], object]], int]]:
    """How many steps a busy thread takes while the calling thread runs ``op``: 0 when ``op`` keeps the
    interpreter lock. The switch interval is long enough that the lock is never taken from a holder during ``op``;
    a ``sleep(0)`` first lets the rival run, so the interval starts afresh just before ``op``."""
    steps = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            steps[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()

    def steps_during(op: Callable[[], object]) -> int:
        time.sleep(0)
        before = steps[0]
        op()
        return steps[0] - before

    try:
        yield steps_during
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
