"""Hostile packages: manifests and files crafted to escape their folder, through every door that reads a package.

Each case is a valid package with one thing changed. Through ``load``, ``Repository.publish``, ``Runtime`` and
``bench`` each must give a clear edgeserve error (the Runtime reports it and serves the rest), and nothing in the
sentinel folder beside the package may be read into a model, changed or deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import edgeserve
from edgeserve import EdgeserveError, Repository, Runtime
from edgeserve.bench.harness import BenchConfig, bench
from tests.factories import mlp_model, save


def _manifest(pkg: Path) -> dict:
    return json.loads((pkg / "edgeserve.json").read_text())


def _write(pkg: Path, data: dict) -> None:
    (pkg / "edgeserve.json").write_text(json.dumps(data))


def _set(*keys: str, value: object) -> Callable[[Path, Path], None]:
    def change(pkg: Path, sentinel: Path) -> None:
        data = _manifest(pkg)
        target = data
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value(sentinel) if callable(value) else value
        _write(pkg, data)
    return change


def _symlink_model(pkg: Path, sentinel: Path) -> None:
    (pkg / "model.onnx").unlink()
    (pkg / "model.onnx").symlink_to(sentinel / "victim.onnx")


def _symlink_manifest(pkg: Path, sentinel: Path) -> None:
    shutil.copyfile(pkg / "edgeserve.json", sentinel / "planted.json")
    (pkg / "edgeserve.json").unlink()
    (pkg / "edgeserve.json").symlink_to(sentinel / "planted.json")


def _oversized(pkg: Path, sentinel: Path) -> None:
    data = _manifest(pkg)
    data["source"]["padding"] = "x" * (17 * 1024 * 1024)
    _write(pkg, data)


def _unknown_dtype(pkg: Path, sentinel: Path) -> None:
    data = _manifest(pkg)
    data["inputs"][0]["dtype"] = "bfloat16"
    _write(pkg, data)


CASES: dict[str, Callable[[Path, Path], None]] = {
    "absolute name": _set("name", value=lambda s: str(s)),
    "dot-dot name": _set("name", value="../sentinel"),
    "name with a slash": _set("name", value="a/b"),
    "dot-dot version": _set("version", value="../../sentinel"),
    "model file outside": _set("model_file", value="../sentinel/victim.onnx"),
    "absolute model file": _set("model_file", value=lambda s: str(s / "victim.onnx")),
    "golden file outside": _set("golden", "file", value="../sentinel/secret.npz"),
    "golden file in a folder": _set("golden", "file", value="sub/golden.npz"),
    "model file is a symlink": _symlink_model,
    "manifest is a symlink": _symlink_manifest,
    "oversized manifest": _oversized,
    "manifest not JSON": lambda pkg, s: (pkg / "edgeserve.json").write_text("{not json"),
    "manifest deeply nested": lambda pkg, s: (pkg / "edgeserve.json").write_text("[" * 100_000 + "]" * 100_000),
    "manifest not an object": lambda pkg, s: (pkg / "edgeserve.json").write_text("[1, 2]"),
    "unknown dtype": _unknown_dtype,
    "extra file": lambda pkg, s: (pkg / "extra.py").write_text("import os"),
}


@pytest.fixture(scope="module")
def good_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    return edgeserve.convert(save(mlp_model(), folder / "mlp.onnx"), folder / "pkg", name="mlp").path


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def world(tmp_path: Path, good_package: Path):
    """A sentinel folder beside the package, holding a model and data an escaping path could reach."""
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    save(mlp_model(seed=7), sentinel / "victim.onnx")
    shutil.copyfile(good_package / "golden.npz", sentinel / "secret.npz")
    pkg = tmp_path / "pkg"
    shutil.copytree(good_package, pkg)
    return pkg, sentinel


def _doors(tmp_path: Path) -> dict[str, Callable[[Path], object]]:
    def runtime(pkg: Path) -> object:
        repo_root = tmp_path / "repo"
        (repo_root / "mlp").mkdir(parents=True, exist_ok=True)
        shutil.copytree(pkg, repo_root / "mlp" / "1", symlinks=True)
        with Runtime(repo_root) as rt:
            error = rt.models()["mlp"]["error"]
        if error:
            raise EdgeserveError(error)
        return None

    return {
        "load": lambda pkg: edgeserve.load(pkg).close(),
        "publish": lambda pkg: Repository(tmp_path / "published", create=True).publish("mlp", pkg),
        "runtime": runtime,
        "bench": lambda pkg: bench([str(pkg)], tmp_path / "bench-out",
                                   BenchConfig(variants=("fp32",), cold_start_repeats=0, time_budget=0.5)),
    }


@pytest.mark.parametrize("door", ["load", "publish", "runtime", "bench"])
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_package_is_refused_and_contained(world, tmp_path: Path, case: str, door: str) -> None:
    pkg, sentinel = world
    CASES[case](pkg, sentinel)
    before = _snapshot(sentinel)
    with pytest.raises(EdgeserveError) as caught:
        _doors(tmp_path)[door](pkg)
    message = str(caught.value)
    assert message and len(message) < 1200 and "Traceback" not in message
    assert sentinel.is_dir() and _snapshot(sentinel) == before
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink() and not str(p).startswith(str(pkg))
                and "repo" not in p.parts]


def test_the_unchanged_package_passes_every_door(world, tmp_path: Path) -> None:
    """The table's cases fail because of what each changes: the same package unchanged goes through every door."""
    pkg, _ = world
    for door in _doors(tmp_path).values():
        door(pkg)


def test_bench_never_deletes_a_folder_it_did_not_make(tmp_path: Path, good_package: Path) -> None:
    out = tmp_path / "out"
    (out / "mlp").mkdir(parents=True)
    (out / "mlp" / "keep.txt").write_text("mine")
    config = BenchConfig(variants=("fp32",), cold_start_repeats=0, time_budget=0.5)
    with pytest.raises(edgeserve.ConfigError, match="was not made by edgeserve bench"):
        bench([str(good_package)], out, config)
    assert (out / "mlp" / "keep.txt").read_text() == "mine"
    os.remove(out / "mlp" / "keep.txt")
    os.rmdir(out / "mlp")
    bench([str(good_package)], out, config)
    bench([str(good_package)], out, config)  # its own folder from the last run is replaced
    assert (out / "mlp" / ".edgeserve-bench").is_file()
