"""edgeserve drift and edgeserve audit, as a user runs them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import edgeserve
from edgeserve.cli import main
from edgeserve.runtime.repository import Repository
from edgeserve.runtime.runtime import default_audit_path


def _repo(package: Path, tmp_path: Path) -> Path:
    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("digits", package)
    return repo.root


def test_drift_replays_requests_and_names_the_drifting_feature(digits_package: Path, digits, tmp_path: Path) -> None:
    repo = _repo(digits_package, tmp_path)
    stream = digits[1][:800].copy()
    calm = tmp_path / "calm.npz"
    np.savez(calm, x=stream)
    result = CliRunner().invoke(main, ["drift", str(repo), "digits", "--data", str(calm), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["drifting"] is False and report["requests"] == 800 and report["first_alarm_request"] is None
    stream[400:, 12] += 0.5 * stream[:, 12].std() * 2  # a 1 sd shift from row 400 on
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, x=stream)
    result = CliRunner().invoke(main, ["drift", str(repo), "digits", "--data", str(shifted)])
    assert result.exit_code == 0, result.output
    assert "DRIFTING" in result.output and "input:x: feature 12" in result.output.splitlines()[2]
    first = int(result.output.split("first alarm after ")[1].split()[0])
    assert 400 < first <= 800
    misnamed = tmp_path / "misnamed.npz"
    np.savez(misnamed, features=stream)  # one array for the model's one input 'x', under another name
    result = CliRunner().invoke(main, ["drift", str(repo), "digits", "--data", str(misnamed), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["requests"] == 800


def test_drift_without_a_monitor_says_why_and_how_to_get_one(tmp_path: Path, mlp_path: Path) -> None:
    from tests.factories import rows

    for count, why in [(40, "its reference holds 40 rows, too few"), (None, "the package has no reference statistics")]:
        calibration = {"x": rows(count)} if count else None
        pkg = edgeserve.convert(mlp_path, tmp_path / f"pkg{count}", quantize="none", calibration=calibration)
        repo = Repository(tmp_path / f"repo{count}", create=True)
        repo.publish("m", pkg.path)
        np.savez(tmp_path / "x.npz", x=rows(3))
        result = CliRunner().invoke(main, ["drift", str(repo.root), "m", "--data", str(tmp_path / "x.npz")])
        assert result.exit_code == 1 and why in result.output and "at least 100 rows" in result.output, result.output


def test_audit_lists_exports_and_verifies(digits_package: Path, digits, tmp_path: Path) -> None:
    repo = _repo(digits_package, tmp_path)
    with edgeserve.Runtime(repo, audit=default_audit_path(repo)) as runtime:
        for i in range(3):
            runtime.predict("digits", digits[1][i:i + 1], request_id=f"req-{i}", caller="bob")
    runner = CliRunner()
    listed = runner.invoke(main, ["audit", str(repo), "--model", "digits"])
    assert listed.exit_code == 0 and listed.output.count("predict") == 3 and "req-2 bob" in listed.output
    one = runner.invoke(main, ["audit", str(repo), "--request-id", "req-1", "--json"])
    record = json.loads(one.output)
    assert record["request_id"] == "req-1" and record["caller"] == "bob" and record["model"] == "digits"
    assert runner.invoke(main, ["audit", str(repo), "--since", "2999-01-01"]).output == ""
    ok = runner.invoke(main, ["audit", "verify", str(repo)])
    assert ok.exit_code == 0 and ok.output.startswith("ok: 4 records")
    db = sqlite3.connect(default_audit_path(repo))
    db.execute("UPDATE records SET caller = 'mallory' WHERE request_id = 'req-1'")
    db.commit()
    db.close()
    bad = runner.invoke(main, ["audit", "verify", str(repo)])
    assert bad.exit_code == 1 and "TAMPERED" in bad.output and "contents were changed" in bad.output


def test_drift_says_how_many_rows_were_of_another_size(tmp_path: Path) -> None:
    from tests.factories import save
    from tests.guard.test_drift import _map_model

    rng = np.random.default_rng(0)
    pkg = edgeserve.convert(save(_map_model(), tmp_path / "map.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": rng.uniform(0, 1, (200, 3, 24, 32)).astype(np.float32)})
    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("m", pkg.path)
    np.savez(tmp_path / "big.npz", x=rng.uniform(0, 1, (64, 3, 48, 64)).astype(np.float32))
    result = CliRunner().invoke(main, ["drift", str(repo.root), "m", "--data", str(tmp_path / "big.npz")])
    assert result.exit_code == 0, result.output
    assert "in distribution" in result.output
    assert "64 rows of another size than the reference's: their inputs compared on location only" in result.output
