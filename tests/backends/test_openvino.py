"""The OpenVINO backend: the same behaviour above the seam as onnxruntime, fidelity, fallback, manifest choice."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve import BatchConfig, CacheConfig, InputError, SessionConfig
from edgeserve.fidelity import compare_outputs
from edgeserve.package import MANIFEST, compute_digests
from tests.factories import example, rows

pytest.importorskip("openvino")
from edgeserve.backends.openvino import has_native_bf16  # noqa: E402

OV = SessionConfig(backend="openvino", precision="f32")


def _eval(name: str, n: int = 32) -> dict[str, np.ndarray]:
    _, _, ev = example(name)
    with np.load(ev) as data:
        return {k: data[k][:n] for k in data.files if k != "labels"}


@pytest.mark.parametrize("name", ["digits-cnn", "tiny-bert"])
@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_fidelity_against_onnxruntime_fp32(name: str, precision: str) -> None:
    if precision == "bf16" and not has_native_bf16():
        pytest.skip("this CPU has no native bf16")
    model, _, _ = example(name)
    feed = _eval(name)
    with edgeserve.load(model) as ort_model, \
            edgeserve.load(model, config=SessionConfig(backend="openvino", precision=precision)) as ov_model:
        ref, got = ort_model.predict(feed), ov_model.predict(feed)
    summary = compare_outputs(got, ref)["summary"]
    assert summary["cosine_min"] > (0.9999 if precision == "f32" else 0.99), summary


def test_same_contract_above_the_seam(mlp_path: Path) -> None:
    with edgeserve.load(mlp_path, config=OV) as ov_model, edgeserve.load(mlp_path) as ort_model:
        assert ov_model.inputs == ort_model.inputs and ov_model.outputs == ort_model.outputs
        np.testing.assert_allclose(ov_model.predict(rows(3))["logits"], ort_model.predict(rows(3))["logits"], atol=1e-4)
        for bad in (rows(2).astype(np.float64), rows(2)[0], {"nope": rows(1)}):
            with pytest.raises(InputError) as ov_err:
                ov_model.predict(bad)
            with pytest.raises(InputError) as ort_err:
                ort_model.predict(bad)
            assert str(ov_err.value) == str(ort_err.value)


def test_batching_and_cache_work_on_openvino(mlp_path: Path) -> None:
    with edgeserve.load(mlp_path, config=OV, batching=BatchConfig(max_batch_size=8, max_delay_ms=2),
                        cache=CacheConfig()) as model, edgeserve.load(mlp_path) as ref:
        inputs = [rows(1 + i % 2, seed=i) for i in range(24)]
        with ThreadPoolExecutor(8) as pool:  # infer requests are per thread: concurrent calls must not mix
            outs = list(pool.map(model.predict, inputs))
        for x, out in zip(inputs, outs):
            np.testing.assert_allclose(out["logits"], ref.predict(x)["logits"], atol=1e-4)
        assert model.batcher.stats["requests"] == 24
        model.predict(inputs[0])
        assert model.cache.stats()["hits"] >= 1


def test_an_output_openvino_fuses_with_another_keeps_its_name(tmp_path: Path) -> None:
    """A Linear with a zero bias (a freshly initialised head): OpenVINO drops the Add, and the compiled output then
    carries the MatMul's name too, which ``get_any_name`` may return (a wav2vec2 export was refused so)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).random((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["a/MatMul_output_0"]),
         helper.make_node("Add", ["a/MatMul_output_0", "b"], ["logits"])], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    path = tmp_path / "head.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(1).random((5, 4)).astype(np.float32)
    with edgeserve.load(path, config=OV) as model:
        np.testing.assert_allclose(model.predict(x)["logits"], x @ w, rtol=1e-5)


def test_unloadable_model_is_a_clear_error(tmp_path: Path) -> None:
    model, _, _ = example("digits-mlp")  # scikit-learn graph: ai.onnx.ml operators OpenVINO cannot convert
    with pytest.raises(edgeserve.ModelFileError, match="openvino cannot load digits_mlp.onnx: .*ai.onnx.ml"):
        edgeserve.load(model, config=OV)


def test_engine_errors_name_the_inputs_they_ran_on(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from tests.factories import save

    nodes = [helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [2], [-1, 4])),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "fours", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = save(model, tmp_path / "fours.onnx")
    with edgeserve.load(path, config=OV) as ov_model:
        assert ov_model.predict(np.ones((2, 4), np.float32))["y"].shape == (2, 4)
        with pytest.raises(edgeserve.InferenceError, match=r"openvino failed running .*\(on x float32 \[2, 3\]\): "):
            ov_model.predict(np.ones((2, 3), np.float32))


def test_thread_and_cache_settings_are_honoured(tmp_path: Path, mlp_path: Path) -> None:
    cfg = SessionConfig(backend="openvino", precision="f32", intra_op_threads=1, cache_dir=str(tmp_path / "cache"))
    with edgeserve.load(mlp_path, config=cfg) as model:
        assert model._session._compiled.get_property("INFERENCE_NUM_THREADS") == 1  # noqa: SLF001 - engine check
    assert any((tmp_path / "cache" / "openvino").iterdir())
    with pytest.raises(edgeserve.ConfigError, match="precision must be"):
        SessionConfig(backend="openvino", precision="int3")


def _with_backends(pkg: Path, backends: list[dict]) -> None:
    data = json.loads((pkg / MANIFEST).read_text())
    data["backend"] = backends[0]["backend"]
    data["recipe"]["backends"] = backends
    data["digests"] = compute_digests(pkg)
    (pkg / MANIFEST).write_text(json.dumps(data))


def test_manifest_choice_and_fallback(mlp_package: Path, monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    from edgeserve.backends.onnxruntime import OrtSession
    from edgeserve.backends.openvino import OvSession
    from edgeserve.runtime import model as model_module

    _with_backends(mlp_package, [{"backend": "openvino", "precision": "f32"}, {"backend": "onnxruntime", "precision": None}])
    with edgeserve.load(mlp_package) as m:
        assert isinstance(m._session, OvSession)  # noqa: SLF001 - which engine runs is the point of the test
    import edgeserve.backends.base as base

    real = base.get_backend

    def without_openvino(name: str):
        if name == "openvino":
            raise edgeserve.ConfigError("the openvino backend is not installed (simulated)")
        return real(name)

    monkeypatch.setattr(base, "get_backend", without_openvino)
    with edgeserve.load(mlp_package) as m:
        assert isinstance(m._session, OrtSession)  # noqa: SLF001
    assert "falling back to onnxruntime" in caplog.text
    _with_backends(mlp_package, [{"backend": "openvino", "precision": "f32"}])
    with pytest.raises(edgeserve.PackageError, match="none of which is installed here"):
        edgeserve.load(mlp_package)
    assert model_module.verified_backends(edgeserve.Package.open(mlp_package).manifest)[0]["backend"] == "openvino"


def test_auto_measures_openvino_candidates(tmp_path: Path, mlp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=rows(60))
    pkg = edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", calibration=tmp_path / "cal.npz",
                            min_cosine=0.99, time_budget=20)
    cands = {c["name"]: c for c in pkg.manifest.recipe["auto"]["candidates"]}
    assert cands["openvino-f32"]["backend"] == "openvino" and cands["openvino-f32"]["status"] in ("ok", "skipped")
    # OpenVINO starts from the exported graph (it fuses for itself); onnxruntime's recipes from the prepared one
    assert cands["openvino-f32"]["recipe"]["graph"] == "exported"
    assert cands["int8-dynamic"]["recipe"]["graph"] == "prepared"
    backends = pkg.manifest.recipe["backends"]
    assert backends[0]["backend"] == pkg.manifest.backend
    if pkg.manifest.backend == "openvino":
        assert backends[-1]["backend"] == "onnxruntime"


def test_nncf_int8_package_runs_on_both_backends(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    model, cal, ev = example("tiny-bert")
    pkg = edgeserve.convert(model, tmp_path / "pkg", quantize="nncf", calibration=cal, eval_data=ev,
                            backend="openvino")
    recipe = pkg.manifest.recipe
    assert recipe["mode"] == "nncf" and recipe["preset"] == "transformer"
    assert pkg.manifest.backend == "openvino" and recipe["precision"] in ("f32", "bf16")
    assert [b["backend"] for b in recipe["backends"]] == ["openvino", "onnxruntime"]
    assert pkg.manifest.fidelity["summary"]["cosine_min"] > 0.99
    feed = _eval("tiny-bert", 4)
    with edgeserve.load(pkg.path) as ov_model, \
            edgeserve.load(pkg.path, config=SessionConfig(backend="onnxruntime")) as ort_model:
        a, b = ov_model.predict(feed)["pooled"], ort_model.predict(feed)["pooled"]
    assert compare_outputs({"p": a}, {"p": b})["summary"]["cosine_min"] > 0.99


def test_auto_refuses_a_fixed_backend(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(edgeserve.ConfigError, match="auto chooses the backend"):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", backend="openvino")
