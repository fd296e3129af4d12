from __future__ import annotations

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
