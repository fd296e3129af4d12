"""The model repository: atomic publish, rollback, pin, remove, and names that can never escape the root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeserve import GoldenMismatchError, IntegrityError, ModelNotFound, RepositoryError
from edgeserve.cli import main
from edgeserve.names import check_name, check_version
from edgeserve.runtime.repository import Repository


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(tmp_path / "repo", create=True)


def test_publish_gives_the_next_version(repo: Repository, mlp_package: Path) -> None:
    assert repo.publish("mlp", mlp_package) == 1
    assert repo.publish("mlp", mlp_package) == 2
    assert repo.versions("mlp") == [1, 2] and repo.current("mlp") == 2
    assert (repo.root / "mlp" / "2" / "edgeserve.json").exists()
    assert not [p for p in (repo.root / "mlp").iterdir() if p.name.startswith(".")]


def test_publish_refuses_a_damaged_package_and_leaves_nothing(repo: Repository, mlp_package: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(mlp_package, bad)
    (bad / "model.onnx").write_bytes(b"changed")
    with pytest.raises(IntegrityError):
        repo.publish("mlp", bad)
    with pytest.raises(GoldenMismatchError):  # intact files, answers that differ: found only after copying in
        repo.publish("mlp", _wrong_golden(mlp_package, tmp_path / "wrong-golden"))
    assert sorted(p.name for p in repo.root.iterdir() if p.name != ".edgeserve.lock") == []  # not even mlp/
    assert repo.names() == []


def _wrong_golden(package: Path, dst: Path) -> Path:
    """A copy of ``package`` whose digests hold but whose recorded golden answers are not what the model computes."""
    from edgeserve.package import read_golden, read_manifest, write_golden, write_manifest

    shutil.copytree(package, dst)
    manifest = read_manifest(dst)
    inputs, outputs = read_golden(dst, manifest)
    write_golden(dst / "golden.npz", inputs, {k: v + 10.0 for k, v in outputs.items()},
                 (manifest.inputs, manifest.outputs))
    write_manifest(dst, manifest)
    return dst


def test_a_failed_first_publish_does_not_stop_the_runtime(repo: Repository, mlp_package: Path, tmp_path: Path) -> None:
    from edgeserve import Runtime

    repo.publish("good", mlp_package)
    with pytest.raises(GoldenMismatchError):
        repo.publish("bad", _wrong_golden(mlp_package, tmp_path / "bad"))
    with Runtime(repo) as rt:
        assert list(rt.models()) == ["good"] and rt.models()["good"]["version"] == 1


def test_concurrent_publishes_get_distinct_versions(repo: Repository, mlp_package: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        versions = sorted(pool.map(lambda _: repo.publish("mlp", mlp_package), range(6)))
    assert versions == [1, 2, 3, 4, 5, 6] and repo.versions("mlp") == versions and repo.current("mlp") == 6
    assert not [p for p in repo.root.iterdir() if p.name.startswith(".staging")]


def test_concurrent_publishes_from_processes(repo: Repository, mlp_package: Path) -> None:
    """The lock is a file lock: publishers in separate processes never race for a version or a state write."""
    import subprocess
    import sys

    script = ("import sys; from edgeserve.runtime.repository import Repository; "
              "print(Repository(sys.argv[1]).publish('mlp', sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(repo.root), str(mlp_package)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    assert sorted(int(out) for out, _ in outs) == [1, 2, 3] and repo.current("mlp") == 3


def test_management_actions_take_the_lock(repo: Repository, mlp_package: Path) -> None:
    """While another holder has the lock, a state change waits for it instead of interleaving its read and write."""
    import threading

    repo.publish("mlp", mlp_package)
    repo.publish("mlp", mlp_package)
    done = threading.Event()
    with repo.locked():
        worker = threading.Thread(target=lambda: (repo.rollback("mlp"), done.set()))
        worker.start()
        assert not done.wait(0.2)  # blocked behind the lock
        assert repo.current("mlp") == 2
    worker.join(10)
    assert done.is_set() and repo.current("mlp") == 1


def test_rollback_pin_unpin_remove(repo: Repository, mlp_package: Path) -> None:
    for _ in range(3):
        repo.publish("mlp", mlp_package)
    assert repo.rollback("mlp") == 2 and repo.current("mlp") == 2
    assert repo.rollback("mlp") == 1
    with pytest.raises(RepositoryError, match="no version older than 1"):
        repo.rollback("mlp")
    assert repo.pin("mlp", 2) == 2
    assert repo.publish("mlp", mlp_package) == 4 and repo.current("mlp") == 2  # pinned: publishing does not move it
    assert repo.unpin("mlp") == 4
    with pytest.raises(RepositoryError, match="is serving"):
        repo.remove("mlp", 4)
    repo.remove("mlp", 1)
    assert repo.versions("mlp") == [2, 3, 4]
    with pytest.raises(ModelNotFound):
        repo.pin("mlp", 1)
    repo.remove("mlp", 4, force=True)
    assert repo.current("mlp") == 3


@pytest.mark.parametrize("name", ["..", "a/../b", "/abs", "model/", "", " mlp", "mlp ", "a\\b", "-x", ".hidden",
                                  "a" * 129, "a..b", None, 5])
def test_bad_names_are_refused(repo: Repository, name) -> None:
    with pytest.raises(RepositoryError, match="invalid model name"):
        check_name(name)
    with pytest.raises(RepositoryError):
        repo.model_dir(name)


@pytest.mark.parametrize("version", ["01", "-1", "0", "1.0", " 1", "1e3", "10000000000", 0, -3, True, None, "", "x"])
def test_bad_versions_are_refused(version) -> None:
    with pytest.raises(RepositoryError, match="invalid version"):
        check_version(version)


def test_good_names_and_versions() -> None:
    assert check_name("resnet-50_v2.onnx") == "resnet-50_v2.onnx"
    assert check_version("12") == 12 and check_version(7) == 7


def test_symlinked_model_folder_cannot_lead_outside(repo: Repository, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo.root / "evil").symlink_to(outside)
    with pytest.raises(RepositoryError, match="outside the repository"):
        repo.model_dir("evil")
    assert "evil" not in repo.names()


def test_state_file_damage_is_reported(repo: Repository, mlp_package: Path) -> None:
    repo.publish("mlp", mlp_package)
    (repo.root / "mlp" / "state.json").write_text("{nope")
    with pytest.raises(RepositoryError, match="state.json is unreadable"):
        repo.current("mlp")
    (repo.root / "mlp" / "state.json").write_text(json.dumps({"current": 99}))
    assert repo.current("mlp") == 1  # a pointer to a removed version falls back to the newest


def test_models_cli(tmp_path: Path, mlp_package: Path) -> None:
    root = tmp_path / "cli-repo"
    run = CliRunner().invoke
    result = run(main, ["models", "publish", str(root), "mlp", str(mlp_package)], catch_exceptions=False)
    assert result.exit_code == 0 and "published mlp version 1" in result.stdout
    run(main, ["models", "publish", str(root), "mlp", str(mlp_package)], catch_exceptions=False)
    listing = run(main, ["models", "list", str(root)]).stdout
    assert "mlp" in listing and "2 (serving)" in listing
    assert "serving version 1" in run(main, ["models", "rollback", str(root), "mlp"]).stdout
    assert "pinned mlp to version 2" in run(main, ["models", "pin", str(root), "mlp", "2"]).stdout
    bad = run(main, ["models", "publish", str(root), "../x", str(mlp_package)])
    assert bad.exit_code == 1 and "invalid model name" in bad.stderr
    model_file = run(main, ["models", "publish", str(root), "mlp", str(mlp_package / "model.onnx")])
    assert model_file.exit_code == 1 and "is a file" in model_file.stderr and "edgeserve convert" in model_file.stderr
    assert "3" not in run(main, ["models", "list", str(root)]).stdout  # nothing published
    removed = run(main, ["models", "remove", str(root), "mlp", "1"])
    assert removed.exit_code == 0 and "removed mlp version 1" in removed.stdout
