"""edgeserve doctor: environment parity against what a package was verified on, and the golden samples re-run."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from edgeserve.cli import main
from edgeserve.guard.doctor import doctor
from edgeserve.package import GOLDEN_FILE, read_golden, read_manifest, write_golden, write_manifest


def _tampered_copy(package: Path, tmp_path: Path, *, flags: list[str] | None = None, ort: str | None = None,
                   scale_golden: float | None = None) -> Path:
    """A copy as if verified elsewhere: other CPU flags or onnxruntime, or other recorded golden answers (its
    digests rewritten, so only parity can tell)."""
    copy = tmp_path / "copy"
    shutil.copytree(package, copy)
    m = read_manifest(copy)
    env = json.loads(json.dumps(m.environment))
    if flags is not None:
        env["cpu"]["flags"] = flags
    if ort is not None:
        env["onnxruntime"] = ort
    if scale_golden is not None:
        inputs, outputs = read_golden(copy, m)
        write_golden(copy / GOLDEN_FILE, inputs, {k: v * scale_golden for k, v in outputs.items()},
                     (m.inputs, m.outputs))
    write_manifest(copy, replace(m, environment=env, digests={}))
    return copy


def test_same_machine_reports_no_difference(digits_package: Path) -> None:
    parity = doctor(digits_package)
    assert parity.ok and parity.differences == [] and parity.golden["checked"] == 8 and not parity.golden["problems"]


def test_other_cpu_flags_and_library_are_reported_and_outputs_still_judged(digits_package: Path, tmp_path: Path) -> None:
    from edgeserve.guard.doctor import WATCHED_FLAGS

    flags = read_manifest(digits_package).environment["cpu"]["flags"]
    absent = next(f for f in WATCHED_FLAGS if f not in flags)  # as if verified on a CPU with it
    present = next(f for f in WATCHED_FLAGS if f in flags)  # and without this one
    other = sorted({*flags, absent} - {present})
    copy = _tampered_copy(digits_package, tmp_path, flags=other, ort="1.0.0")
    parity = doctor(copy)
    found = {d["what"]: (d["recorded"], d["here"]) for d in parity.differences}
    assert found["onnxruntime"][0] == "1.0.0"
    assert found[f"cpu flag {absent}"] == ("present", "absent")
    assert found[f"cpu flag {present}"] == ("absent", "present")
    assert parity.ok  # fp32 outputs still match within tolerance: the differences are reported, not fatal


def test_golden_mismatch_fails_doctor_with_exit_status_1(digits_package: Path, tmp_path: Path) -> None:
    copy = _tampered_copy(digits_package, tmp_path, scale_golden=1.5)
    parity = doctor(copy)
    assert not parity.ok and parity.golden["problems"] and parity.golden["task_metrics_hold"] is False
    result = CliRunner().invoke(main, ["doctor", str(copy)])
    assert result.exit_code == 1 and "DIFFER" in result.output and "PROBLEM" in result.output
    assert CliRunner().invoke(main, ["doctor", str(digits_package)]).exit_code == 0


def test_edited_model_file_is_an_integrity_problem(digits_package: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(digits_package, copy)
    (copy / "golden.npz").write_bytes(np.zeros(10).tobytes())
    parity = doctor(copy)
    assert not parity.ok and "golden.npz" in parity.integrity


def test_a_golden_mismatch_accepted_at_load_is_in_the_audit_log(digits_package: Path, tmp_path: Path) -> None:
    import edgeserve
    from edgeserve.guard.audit import query
    from edgeserve.runtime.repository import Repository

    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("digits", digits_package)  # publishing verifies the golden answers: tamper after it
    served = repo.version_dir("digits", 1)
    copy = _tampered_copy(served, tmp_path, scale_golden=1.5)
    shutil.rmtree(served)
    shutil.copytree(copy, served)
    with edgeserve.Runtime(repo.root, golden="warn", audit=tmp_path / "audit.sqlite3") as runtime:
        assert runtime.model("digits").parity["golden"].startswith("MISMATCH accepted by golden='warn'")
    record = next(r for r in query(tmp_path / "audit.sqlite3") if r["flags"] == "reload")
    assert "MISMATCH accepted" in json.loads(record["detail"])["parity"]["golden"]
    with edgeserve.Runtime(repo.root, golden="error") as runtime:  # refused by default: not served, reason given
        assert "differ" in runtime.models()["digits"]["error"]


def test_a_repository_is_checked_under_the_names_it_serves(digits_package: Path, tmp_path: Path) -> None:
    """Each serving model is named as the repository serves it (``scores@2``), with its package's own name beside
    it when that differs; the JSON carries both."""
    from edgeserve.runtime.repository import Repository

    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("scores", digits_package)
    repo.publish("scores", digits_package)
    own = read_manifest(digits_package)
    result = CliRunner().invoke(main, ["doctor", str(repo.root)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"scores@2 (package {own.name}@{own.version}): OK"
    listed = json.loads(CliRunner().invoke(main, ["doctor", str(repo.root), "--json"]).output)
    assert [(r["name"], r["served_as"]) for r in listed] == [(own.name, "scores@2")]
