"""``edgeserve serve`` follows the repository: a version published or rolled back from another process serves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgeserve.errors import ConfigError
from edgeserve.runtime.repository import Repository
from edgeserve.server.app import ServeConfig
from tests.factories import wait_for
from tests.server.client import call, infer_json
from tests.server.conftest import start, stop


def test_a_version_published_or_rolled_back_elsewhere_serves_without_a_restart(repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(repo, root)
    running = start(root, ServeConfig(port=0, grpc_port=0, poll_s=0.05))
    try:
        x = [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]

        def version() -> str:
            return infer_json(running.host_port, "mlp", x).json()["model_version"]

        assert version() == "1"
        other = Repository(root)  # what `edgeserve models publish` does from another process
        other.publish("mlp", root / "mlp" / "1")
        wait_for(lambda: version() == "2", 20)
        other.rollback("mlp")
        wait_for(lambda: version() == "1", 20)
        other.publish("copy", root / "echo" / "1")
        wait_for(lambda: call(running.host_port, "GET", "/v2/models/copy/ready").status == 200, 20)
    finally:
        stop(running)


def test_a_poll_interval_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match="poll interval must be 0 \\(off\\) or 0.05-86400 s"):
        ServeConfig(poll_s=0.001)
