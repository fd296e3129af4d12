"""Manifest round trip, and refusal of tampered, malformed or unknown packages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.errors import IntegrityError, PackageError
from edgeserve.package import MANIFEST, Manifest, Package, read_manifest, write_manifest


def _manifest(pkg: Path) -> dict:
    return json.loads((pkg / MANIFEST).read_text())


def test_manifest_records_the_contract(mlp_package: Path) -> None:
    m = read_manifest(mlp_package)
    assert m.schema_version == 1 and m.name == "mlp" and m.version == "1"
    assert [(s.name, s.dtype, s.shape, s.batch_axis) for s in m.inputs] == [("x", "float32", ("batch", 16), 0)]
    assert m.outputs[0].name == "logits"
    assert m.source["framework"] == "onnx" and len(m.source["sha256"]) == 64
    assert m.recipe["mode"] == "none"
    assert m.fidelity["summary"]["cosine_min"] == pytest.approx(1.0)
    assert m.fidelity["data"] == "evaluation" and m.fidelity["rows"] == 32
    env = m.envelope["inputs"]["x"]
    assert env["count"] == 64 * 16 and env["non_finite"] == 0
    assert len(env["features"]) == 16 and env["min"] <= env["quantiles"]["p50"] <= env["max"]
    assert m.environment["onnxruntime"] and m.environment["cpu"]["cores"] >= 1
    assert set(m.digests) == {"model.onnx", "golden.npz"}
    assert m.golden["count"] == 8


def test_a_package_prints_as_one_short_line(mlp_package: Path) -> None:
    """``print(pkg)`` in a notebook: name, signature, recipe and engine, not every section of the manifest (the
    dataclass's own repr printed the reference statistics' quantile knots, thousands of numbers)."""
    pkg = Package.open(mlp_package)
    text = repr(pkg)
    assert text == (f"<Package {str(mlp_package)!r}: mlp@1: x: float32 [batch, 16] -> logits: float32 [batch, 4]; "
                    "fp32 on onnxruntime>")
    assert repr(pkg.manifest) == "<Manifest mlp@1: x: float32 [batch, 16] -> logits: float32 [batch, 4]; fp32 on onnxruntime>"


def test_the_recipe_name_says_what_auto_chose() -> None:
    base = dict(name="m", version="2", inputs=(), outputs=())
    assert Manifest(**base, recipe={"mode": "static"}).recipe_name == "static"
    assert Manifest(**base, recipe={"mode": "auto", "auto": {"chosen": "int8-dynamic"}}).recipe_name == "auto: int8-dynamic"
    assert Manifest(**base).recipe_name == "fp32"


def test_envelope_comes_from_calibration_rows(mlp_package: Path) -> None:
    m = read_manifest(mlp_package)
    # 64 calibration rows, of which the tail (20%) is held out when no eval data is given; here eval data was given
    assert m.envelope["source"] == "calibration" and m.envelope["rows"] == 64
    assert sum(m.envelope["inputs"]["x"]["histogram"]["counts"]) == 64 * 16


def test_round_trip(mlp_package: Path, tmp_path: Path) -> None:
    m = read_manifest(mlp_package)
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
    copy = tmp_path / "copy"
    shutil.copytree(mlp_package, copy)
    written = write_manifest(copy, m)
    assert written.digests == m.digests
    assert Package.open(copy).manifest == m


@pytest.mark.parametrize("victim", ["model.onnx", "golden.npz"])
def test_tampered_file_is_refused(mlp_package: Path, victim: str) -> None:
    with open(mlp_package / victim, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError, match=f"{victim} does not match its manifest digest"):
        edgeserve.load(mlp_package)


def test_extra_and_missing_files_are_refused(mlp_package: Path) -> None:
    (mlp_package / "model.onnx.data").write_bytes(b"\0" * 16)
    with pytest.raises(IntegrityError, match="does not list: model.onnx.data"):
        Package.open(mlp_package)
    (mlp_package / "model.onnx.data").unlink()
    (mlp_package / "golden.npz").unlink()
    with pytest.raises(IntegrityError, match="missing golden.npz"):
        Package.open(mlp_package)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(schema_version=99), "schema_version 99 is not one this edgeserve reads"),
        (lambda d: d.pop("schema_version"), "schema_version None"),
        (lambda d: d.update(name=5), "field 'name' must be a str"),
        (lambda d: d.update(inputs=[]), "'inputs' is empty"),
        (lambda d: d.update(inputs=[{"name": "x"}]), r"inputs\[0\] is malformed"),
        (lambda d: d.update(recipe=[1]), "field 'recipe' must be an object"),
        (lambda d: d.update(model_file="../model.onnx"), "not a plain file name"),
        (lambda d: d["digests"].update({"../../etc/passwd": "0" * 64}), "not a plain file name"),
        (lambda d: d["inputs"][0].update(batch_axis=7), "batch_axis 7 outside its shape"),
    ],
)
def test_malformed_manifest_is_refused(mlp_package: Path, edit, message: str) -> None:
    data = _manifest(mlp_package)
    edit(data)
    (mlp_package / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(PackageError, match=message):
        Package.open(mlp_package)


def test_manifest_that_is_not_json(mlp_package: Path) -> None:
    (mlp_package / MANIFEST).write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        edgeserve.load(mlp_package)
    (mlp_package / MANIFEST).write_text("[1, 2]")
    with pytest.raises(PackageError, match="expected a JSON object"):
        edgeserve.load(mlp_package)


def test_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not an edgeserve package"):
        edgeserve.load(tmp_path)


def test_golden_samples_are_plain_arrays(mlp_package: Path) -> None:
    with np.load(mlp_package / "golden.npz", allow_pickle=False) as g:
        assert sorted(g.files) == ["input_0", "output_0"]
        assert g["input_0"].shape == (8, 16) and g["output_0"].shape == (8, 4)
