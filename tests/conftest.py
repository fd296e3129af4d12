from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.factories import mlp_model, rows, save


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
