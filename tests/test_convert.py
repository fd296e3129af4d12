"""convert → load → predict on every example and mode, and every way a conversion can be refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import edgeserve
from edgeserve import ConversionError, DataError, FidelityError, QuantizeConfig
from edgeserve.arrays import read_arrays
from edgeserve.fidelity import compare_outputs
from tests.factories import EXAMPLES, example, mlp_model, rows, save, two_input_model

MODES = ["none", "dynamic", "static", "fp16"]


def _plain(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("examples")
    out = {}
    for name in EXAMPLES:
        model, cal, ev = example(name)
        labels = "labels" if name.startswith("digits") else None
        for mode in MODES:
            out[name, mode] = edgeserve.convert(model, root / f"{name}-{mode}", quantize=mode, calibration=cal,
                                                eval_data=ev, labels=labels).path
    return out


@pytest.mark.parametrize("name", list(EXAMPLES))
@pytest.mark.parametrize("mode", MODES)
def test_example_round_trip(converted, name: str, mode: str) -> None:
    pkg = converted[name, mode]
    source, _, ev = example(name)
    arrays = read_arrays(ev, what="eval")
    arrays.pop("labels", None)
    feed = {k: v[:16] for k, v in arrays.items()}
    with edgeserve.load(pkg) as model:
        got = model.predict(feed)
        manifest = model.manifest
    assert manifest.recipe["mode"] == mode
    # the runtime adds nothing: it answers exactly what plain onnxruntime answers on the package's model
    for k, v in _plain(pkg / "model.onnx", feed).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6)
    reference = _plain(source, feed)
    fidelity = compare_outputs(got, reference)["summary"]
    if mode == "none":
        for k, v in reference.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5)
    else:
        # within what the manifest records for the whole held-out set (16 of its rows here), with some slack
        recorded = manifest.fidelity["summary"]
        assert fidelity["cosine_min"] >= recorded["cosine_min"] - 1e-3
        assert fidelity["cosine_mean"] > 0.95
    acc = manifest.fidelity.get("accuracy")
    if name.startswith("digits"):
        assert acc["fp32"] > 0.9 and abs(acc["fp32"] - acc["converted"]) < 0.03
    assert manifest.fidelity["data"] == "evaluation"


def test_quantised_models_are_smaller(converted) -> None:
    for name in EXAMPLES:
        fp32 = (converted[name, "none"] / "model.onnx").stat().st_size
        assert (converted[name, "dynamic"] / "model.onnx").stat().st_size < 0.5 * fp32
        assert (converted[name, "static"] / "model.onnx").stat().st_size < 0.5 * fp32


def test_static_recipe_records_calibration(converted) -> None:
    with edgeserve.load(converted["digits-cnn", "static"]) as model:
        recipe = model.manifest.recipe
    assert recipe["calibration"]["method"] == "minmax" and recipe["calibration"]["samples"] == 359
    assert recipe["format"] == "QDQ" and recipe["activation_type"] in ("uint8", "int8")
    assert isinstance(recipe["reduce_range"], bool) and "cpu_vnni" in recipe


def test_without_eval_data_the_calibration_tail_is_held_out(tmp_path: Path, mlp_path: Path) -> None:
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rows(50))
    pkg = edgeserve.convert(mlp_path, tmp_path / "out", quantize="static", calibration=cal)
    m = pkg.manifest
    assert m.fidelity["data"] == "calibration hold-out" and m.fidelity["rows"] == 10
    assert m.recipe["calibration"]["samples"] == 40


def test_without_any_data_synthetic_inputs_are_used(tmp_path: Path, mlp_path: Path) -> None:
    pkg = edgeserve.convert(mlp_path, tmp_path / "out", quantize="dynamic")
    assert pkg.manifest.fidelity["data"] == "synthetic"
    assert pkg.manifest.envelope == {}


def test_synthetic_token_ids_span_the_embedding_table_and_are_never_taken_for_a_mask(tmp_path: Path) -> None:
    """A decoder's ``decoder_input_ids`` without data: stand-in ids of 0 and 1 measured a language model on two
    tokens, and, looking like a 0/1 mask, made the inferred metric skip every position holding token 0."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "decoder_input_ids"], ["h"]),
         helper.make_node("MatMul", ["h", "head"], ["logits"])], "decoder",
        [helper.make_tensor_value_info("decoder_input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", 500])],
        [numpy_helper.from_array(rng.standard_normal((500, 16)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.standard_normal((16, 500)).astype(np.float32), "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg = edgeserve.convert(save(model, tmp_path / "decoder.onnx"), tmp_path / "out", quantize="none")
    assert pkg.manifest.fidelity["data"] == "synthetic"
    specs = [t["metric"] for t in pkg.manifest.fidelity["budget"]["targets"]]
    assert specs and not any("mask=" in spec for spec in specs), specs
    golden = np.load(pkg.path / "golden.npz")
    ids = next(golden[k] for k in golden.files if golden[k].dtype == np.int64)
    assert ids.max() > 100 and ids.max() < 500 and len(np.unique(ids)) > 20


def test_opset_11_model_is_upgraded_for_static(tmp_path: Path) -> None:
    path = save(mlp_model(opset=11), tmp_path / "old.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rows(40))
    pkg = edgeserve.convert(path, tmp_path / "out", quantize=QuantizeConfig(mode="static", per_channel=True), calibration=cal)
    assert pkg.manifest.recipe["opset_upgraded_from"] == 11 and pkg.manifest.recipe["opset"] == 13
    edgeserve.load(pkg.path).close()


def test_model_without_batch_axis(tmp_path: Path) -> None:
    path = save(mlp_model(batch=1), tmp_path / "fixed.onnx")
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=rows(20)[:, None, :])  # 20 samples, each shaped [1, 16]
    pkg = edgeserve.convert(path, tmp_path / "out", quantize="static", calibration=cal)
    assert pkg.manifest.inputs[0].batch_axis is None and pkg.manifest.golden["count"] == 1
    with edgeserve.load(pkg.path) as model:
        assert model.predict(rows(1))["logits"].shape == (1, 4)


@pytest.mark.parametrize("features, golden", [(16, 8), (100_000, 5), (300_000, 1)])
def test_golden_samples_of_big_rows_are_few(tmp_path: Path, features: int, golden: int) -> None:
    """Golden rows keep to ``GOLDEN_BYTES`` with their answers (one row at least): 8 rows of whisper's input
    made a package 12 times its model, re-run at every load."""
    path = save(mlp_model(n_in=features, hidden=2, n_out=2), tmp_path / "wide.onnx")
    pkg = edgeserve.convert(path, tmp_path / "out", quantize="none",
                            calibration={"x": np.random.default_rng(0).standard_normal((60, features)).astype(np.float32)})
    assert pkg.manifest.golden["count"] == golden
    with np.load(pkg.path / "golden.npz") as npz:
        assert {len(npz[k]) for k in npz.files} == {golden}
    with edgeserve.load(pkg.path) as model:
        assert model.golden_check == "match"


# --- refusals: a clear error, and nothing left behind -------------------------------------------------------------

def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "staging folder left behind"


def test_unreadable_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    out = tmp_path / "out"
    with pytest.raises(edgeserve.ModelFileError):
        edgeserve.convert(bad, out)
    _nothing_left(out)
    with pytest.raises(edgeserve.ModelFileError, match="not found"):
        edgeserve.convert(tmp_path / "missing.onnx", out)


@pytest.mark.parametrize("arrays, message", [
    ({"x": rows(10), "y": rows(10)}, "data: arrays do not match the model's inputs \\(unexpected y\\)"),
    ({"x": rows(10).astype(np.float64)}, "input 'x' expected float32, got float64"),
    ({"x": rows(10, n_in=8)}, r"dimension 1 must be 16"),
    ({"x": rows(10)[0]}, r"expected rank 2"),
])
def test_calibration_data_that_does_not_match(tmp_path: Path, mlp_path: Path, arrays, message: str) -> None:
    cal = tmp_path / "cal.npz"
    np.savez(cal, **arrays)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=message):
        edgeserve.convert(mlp_path, out, quantize="static", calibration=cal)
    _nothing_left(out)


def test_one_array_for_a_model_of_one_input_is_that_input_whatever_its_name(tmp_path: Path, mlp_path: Path) -> None:
    cal = tmp_path / "cal.npz"
    np.savez(cal, features=rows(40))
    pkg = edgeserve.convert(mlp_path, tmp_path / "out", quantize="static", calibration=cal, eval_data=cal)
    assert pkg.manifest.fidelity["rows"] == 40


def test_calibration_file_problems(tmp_path: Path, mlp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not found"):
        edgeserve.convert(mlp_path, out, quantize="static", calibration=tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk.npz is not an .npz archive \(np.savez writes one"):
        edgeserve.convert(mlp_path, out, quantize="static", calibration=junk)
    pickled = tmp_path / "pickled.npz"  # np.load would unpickle anything else (it refuses: allow_pickle=False)
    pickled.write_bytes(__import__("pickle").dumps({"x": 1}))
    with pytest.raises(DataError, match="pickled.npz is not an .npz archive"):
        edgeserve.convert(mlp_path, out, quantize="static", calibration=pickled)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="cannot be read"):
        edgeserve.convert(mlp_path, out, quantize="static", calibration=broken)
    objects = tmp_path / "obj.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot be read"):
        edgeserve.convert(mlp_path, out, quantize="static", calibration=objects)
    with pytest.raises(DataError, match="needs calibration data"):
        edgeserve.convert(mlp_path, out, quantize="static")
    _nothing_left(out)


def test_data_given_as_the_model_is_named_as_data(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgeserve.cli import main

    np.savez(tmp_path / "rows.npz", x=rows(8))
    for args in (["convert", str(tmp_path / "rows.npz"), "-o", str(tmp_path / "out")],
                 ["inspect", str(tmp_path / "rows.npz")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0 and "an .npz of arrays (data, not a model)" in result.output, \
            result.output
    assert not (tmp_path / "out").exists()


def test_an_output_that_cannot_be_written_is_named_with_why(tmp_path: Path, mlp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConversionError, match=r"cannot write the package to .*afile/pkg \(.*afile is a file\); "
                                              r"choose a folder you can write to"):
        edgeserve.convert(mlp_path, tmp_path / "afile" / "pkg")
    assert (tmp_path / "afile").read_text() == "x"


def test_calibration_from_a_folder_of_npy(tmp_path: Path, mlp_path: Path) -> None:
    folder = tmp_path / "cal"
    folder.mkdir()
    np.save(folder / "x.npy", rows(30))
    pkg = edgeserve.convert(mlp_path, tmp_path / "out", quantize="static", calibration=folder)
    assert pkg.manifest.recipe["calibration"]["samples"] == 24


def test_a_model_with_one_input_takes_a_bare_array(tmp_path: Path, mlp_path: Path) -> None:
    """calibration=X (what a notebook has at hand) for a one-input model; for several inputs, or something that is
    no data at all, a DataError saying what to give, not a TypeError from deep inside pathlib."""
    pkg = edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="static", calibration=rows(40), eval_data=rows(20))
    assert pkg.manifest.envelope["rows"] == 40
    two = save(two_input_model(), tmp_path / "two.onnx")
    with pytest.raises(DataError, match="a bare array fits a model with one input"):
        edgeserve.convert(two, tmp_path / "two-pkg", calibration=np.zeros((4, 3), np.int64))
    with pytest.raises(DataError, match="expected an .npz path.*got int"):
        edgeserve.convert(mlp_path, tmp_path / "bad", calibration=7)  # type: ignore[arg-type]


def test_labels_must_exist(tmp_path: Path, mlp_path: Path, mlp_data) -> None:
    _, ev = mlp_data
    with pytest.raises(DataError, match="no array named 'labels'"):
        edgeserve.convert(mlp_path, tmp_path / "out", eval_data=ev, labels="labels")


def test_fidelity_budget_missed_writes_nothing(tmp_path: Path, mlp_path: Path, mlp_data) -> None:
    cal, ev = mlp_data
    out = tmp_path / "out"
    with pytest.raises(FidelityError, match=r"fidelity budget missed \(cosine 0\.\d+ < 1\)"):
        edgeserve.convert(mlp_path, out, quantize="dynamic", eval_data=ev, min_cosine=1.0)
    _nothing_left(out)
    pkg = edgeserve.convert(mlp_path, out, quantize="dynamic", eval_data=ev, min_cosine=0.9)
    assert pkg.manifest.fidelity["budget"]["targets"] == [{"metric": "cosine", "min": 0.9, "builtin": True}]


def test_existing_output_is_not_clobbered(tmp_path: Path, mlp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="already exists"):
        edgeserve.convert(mlp_path, out)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ConversionError, match="not an edgeserve package"):  # --force replaces packages only
        edgeserve.convert(mlp_path, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    edgeserve.convert(mlp_path, out, overwrite=True)  # an empty folder
    first = (out / "edgeserve.json").read_text()
    edgeserve.convert(mlp_path, out, overwrite=True, version="2")  # a package
    assert (out / "edgeserve.json").read_text() != first


def test_overwrite_never_replaces_what_the_conversion_reads_or_stands_in(tmp_path: Path, mlp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    source = tmp_path / "m.onnx"
    shutil.copy(mlp_path, source)
    original = source.read_bytes()
    with pytest.raises(ConversionError, match="is a file"):
        edgeserve.convert(source, source, overwrite=True)
    pkg = edgeserve.convert(source, tmp_path / "pkg").path
    inside = pkg / "m.onnx"
    shutil.copy(source, inside)
    with pytest.raises(ConversionError, match="which this conversion reads"):
        edgeserve.convert(inside, pkg, overwrite=True)
    with pytest.raises(ConversionError, match="which this conversion reads"):
        edgeserve.convert(source, pkg, overwrite=True, calibration=inside.with_name("cal.npz"))
    monkeypatch.chdir(pkg)
    with pytest.raises(ConversionError, match="working directory"):
        edgeserve.convert(source, ".", overwrite=True)
    assert source.read_bytes() == original and inside.read_bytes() == original and (pkg / "edgeserve.json").exists()


def test_quantisation_failure_is_wrapped(tmp_path: Path, mlp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime.quantization as q

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure inside the quantiser")

    monkeypatch.setattr(q, "quantize_dynamic", boom)
    monkeypatch.setenv("EDGESERVE_QUANTISE_IN_PROCESS", "1")  # the patch lives in this process
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="dynamic quantisation failed.*simulated failure"):
        edgeserve.convert(mlp_path, out, quantize="dynamic")
    _nothing_left(out)


def test_bad_settings(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(edgeserve.ConfigError, match="quantize mode must be one of"):
        edgeserve.convert(mlp_path, tmp_path / "out", quantize="int3")
    with pytest.raises(edgeserve.ConfigError, match="min_cosine must be between 0 and 1"):
        edgeserve.convert(mlp_path, tmp_path / "out", min_cosine=2)
    with pytest.raises(ConversionError, match="cannot convert a builtins.int"):
        edgeserve.convert(42, tmp_path / "out")


def test_text_inputs_arrive_as_numpy_unicode_arrays(tmp_path: Path) -> None:
    """An .npz stores text as fixed-width unicode (it cannot hold object arrays without pickles), and
    np.array(["red"]) is unicode too: both are taken for a string input."""
    from onnx import TensorProto, helper

    label = helper.make_node("LabelEncoder", ["colour"], ["code"], domain="ai.onnx.ml",
                             keys_strings=["red", "green", "blue"], values_int64s=[0, 1, 2], default_int64=-1)
    graph = helper.make_graph([label], "codes", [helper.make_tensor_value_info("colour", TensorProto.STRING, ["n", 1])],
                              [helper.make_tensor_value_info("code", TensorProto.INT64, ["n", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)])
    model.ir_version = 8
    colours = np.array(["red", "green", "blue"])[np.random.default_rng(0).integers(0, 3, (120, 1))]
    np.savez(tmp_path / "cal.npz", colour=colours)
    pkg = edgeserve.convert(save(model, tmp_path / "codes.onnx"), tmp_path / "pkg", calibration=tmp_path / "cal.npz")
    with edgeserve.load(pkg.path) as loaded:  # its golden samples are text too, and re-run at load
        out = loaded.predict({"colour": np.array([["blue"], ["purple"], ["red"]])})
        assert loaded.golden_check == "match"
    assert out["code"].ravel().tolist() == [2, -1, 0]
    assert pkg.manifest.golden["count"] > 0


def test_a_model_with_external_weights_is_fully_prepared_for_quantisation(tmp_path: Path) -> None:
    """torch's exporter writes every model's weights beside it; onnxruntime's pre-processing must still optimise
    it (it used to fail on the weights' location and fall back to shape inference only)."""
    from tests.factories import encoder_data, encoder_model, save_with_external_data

    src = save_with_external_data(encoder_model(vocab=1000, dim=64), tmp_path / "external.onnx")
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="static", calibration=encoder_data(vocab=1000))
    assert pkg.manifest.recipe["preprocess"] == "full", pkg.manifest.recipe.get("preprocess_fallback_reason")
    assert not list(tmp_path.glob("*.symbolic*"))


def test_a_quantised_source_is_not_quantised_twice(tmp_path: Path) -> None:
    """A QDQ model brought as the source: int8 modes say so (onnxruntime's own error was 'two nodes with same node
    name'), auto leaves out every candidate that would quantise it again."""
    data = {"x": rows(64)}
    int8 = edgeserve.convert(save(mlp_model(), tmp_path / "mlp.onnx"), tmp_path / "int8", quantize="static",
                             calibration=data)
    for mode in ("static", "dynamic"):
        with pytest.raises(ConversionError, match=r"quantised already \(\d+ DequantizeLinear.*--quantize none"):
            edgeserve.convert(int8.model_path, tmp_path / mode, quantize=mode, calibration=data)
    auto = edgeserve.convert(int8.model_path, tmp_path / "auto", quantize="auto", calibration=data, time_budget=20)
    assert auto.manifest.recipe["source_quantised"]["DequantizeLinear"] > 0
    tried = {c["recipe"].get("mode") for c in auto.manifest.recipe["auto"]["candidates"]}
    assert not tried & {"dynamic", "static", "nncf", "int4"}
    assert "fp16" not in {c["name"] for c in auto.manifest.recipe["auto"]["candidates"]}  # it would cast the scales




@pytest.mark.parametrize("form", ["dynamic", "qoperator", "qdq"])
def test_fp16_of_a_quantised_source_keeps_its_quantised_operators_in_float32(tmp_path: Path, form: str) -> None:
    """fp16 casts what is float around a quantised graph; the quantised operators' scales and float inputs stay
    float32 (QLinearConv and DynamicQuantizeLinear take no float16: such a graph did not load)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    data = {"x": rows(64)}
    src = save(mlp_model(), tmp_path / "mlp.onnx")
    if form == "dynamic":
        quantised_path = edgeserve.convert(src, tmp_path / "int8", quantize="dynamic", calibration=data).model_path
    else:
        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.rows = iter([{"x": r[None]} for r in data["x"][:16]])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.rows, None)

        quantised_path = tmp_path / "int8.onnx"
        quantize_static(src, quantised_path, Reader(),
                        quant_format=QuantFormat.QOperator if form == "qoperator" else QuantFormat.QDQ)
    pkg = edgeserve.convert(quantised_path, tmp_path / "fp16", quantize="fp16", calibration=data)
    graph = onnx.load(str(pkg.model_path)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    types.update({t.name: t.data_type for t in graph.initializer})
    quantised = [n for n in graph.node if n.op_type in ("DynamicQuantizeLinear", "QLinearMatMul", "QuantizeLinear",
                                                           "DequantizeLinear", "MatMulInteger")]
    assert quantised
    for node in quantised:
        assert TensorProto.FLOAT16 not in {types.get(name) for name in node.input}, node.name
    with edgeserve.load(pkg.path) as fp16, edgeserve.load(quantised_path) as source:
        got, want = fp16.predict(data["x"])["logits"], source.predict(data["x"])["logits"]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()  # a step of the int8 grid at most


@pytest.mark.parametrize("mode", ["static", "nncf"])
def test_a_model_at_the_newest_opset_quantises_to_what_the_engine_runs(tmp_path: Path, mode: str) -> None:
    """onnx writes models at the newest opset it knows (28 with onnx 1.23), whose QuantizeLinear onnxruntime 1.32 has
    no kernel for: static int8 and NNCF wrote graphs that did not load ("Could not find an implementation for
    QuantizeLinear(28)"). Their Q/DQ become onnxruntime's own there, which it still fuses into integer kernels."""
    pytest.importorskip("nncf") if mode == "nncf" else None
    model = mlp_model()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", onnx.defs.onnx_opset_version()))
    model.ir_version = onnx.IR_VERSION
    data = {"x": rows(200)}
    pkg = edgeserve.convert(save(model, tmp_path / "latest.onnx"), tmp_path / mode, quantize=mode, calibration=data)
    ops = {n.op_type for n in onnx.load(str(pkg.model_path)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(str(pkg.model_path), options, providers=["CPUExecutionProvider"])
    assert {"QLinearMatMul", "QGemm"} & {n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx")).graph.node}
    usual = edgeserve.convert(save(mlp_model(), tmp_path / "opset17.onnx"), tmp_path / f"{mode}-17", quantize=mode,
                              calibration=data)
    with edgeserve.load(pkg.path) as quantised, edgeserve.load(usual.path) as at_opset_17:
        np.testing.assert_allclose(quantised.predict(data["x"])["logits"], at_opset_17.predict(data["x"])["logits"],
                                   atol=1e-5)  # quantised as the same model at opset 17 is


def test_a_size_declared_variable_but_traced_fixed_is_reported(tmp_path: Path) -> None:
    """The signature says [batch, n]; the graph reshapes to a constant, as traced exports do. The converter tries
    n - 1 and 2n, finds neither runs, and says so (the package still converts: it is right at the traced size)."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.factories import encoder_data, encoder_model

    init = [numpy_helper.from_array(np.array([2, 2], np.int64), "traced"),
            numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([0], np.int64), "axes")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["b"]),
             helper.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
             helper.make_node("Concat", ["b1", "traced"], ["shape"], axis=0),  # [batch, 2, 2]: n traced as 4
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "traced", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 2])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg = edgeserve.convert(save(model, tmp_path / "traced.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": rows(40, n_in=4)})
    [fixed] = pkg.manifest.recipe["fixed_sizes"]
    assert (fixed["dim"], fixed["inputs"], fixed["size"]) == ("n", ["x"], 4)
    from edgeserve.summary import manifest_lines

    assert "WARNING: 'n' (x) is declared variable but the model ran only at 4 (tried 3 and 8)" in list(
        manifest_lines(pkg))
    free = edgeserve.convert(save(encoder_model(), tmp_path / "enc.onnx"), tmp_path / "enc", quantize="none",
                             calibration=encoder_data(rows=40))
    assert "fixed_sizes" not in free.manifest.recipe  # its sequence length really varies
    pairs = numpy_helper.from_array(np.array([0, -1, 2], np.int64), "pairs")  # n must be even: 3 fails, 8 runs
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "pairs"], ["y"])], "pairs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None, 2])], [pairs])
    even = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    even.ir_version = 8
    strided = edgeserve.convert(save(even, tmp_path / "even.onnx"), tmp_path / "even", quantize="none",
                                calibration={"x": rows(40, n_in=4)})
    assert "fixed_sizes" not in strided.manifest.recipe  # a size with a stride is not a fixed one


def test_a_size_named_by_an_expression_follows_its_terms_when_sizes_are_probed() -> None:
    """A decoder's mask is ``[batch, past_sequence_length + sequence_length]``: probing ``sequence_length`` or
    ``past_sequence_length`` alone made every probe fail, and the converter warned that both were traced fixed.
    The mask now follows; a mask whose length no expression ties to the others still shows a traced size."""
    from onnx import TensorProto, helper

    from edgeserve.converter.sizes import fixed_sizes
    from edgeserve.tensors import TensorSpec

    nodes = [helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["idf", "two"], ["id3"]),
             helper.make_node("Expand", ["id3", "shape4"], ["new"]),
             helper.make_node("Concat", ["past", "new"], ["present"], axis=1),  # [batch, past + seq, 4]
             helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "two"], ["mask3"]),
             helper.make_node("Mul", ["present", "mask3"], ["masked"])]
    inputs = [("ids", TensorProto.INT64, ["batch", "sequence_length"]),
              ("mask", TensorProto.INT64, ["batch", "past_sequence_length + sequence_length"]),
              ("past", TensorProto.FLOAT, ["batch", "past_sequence_length", 4])]
    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info("masked", TensorProto.FLOAT, ["batch", "past_sequence_length + sequence_length", 4]),
         helper.make_tensor_value_info("present", TensorProto.FLOAT, ["batch", "past_sequence_length + sequence_length", 4])],
        [helper.make_tensor("two", TensorProto.INT64, [1], [2]), helper.make_tensor("shape4", TensorProto.INT64, [3], [1, 1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    class Run:
        def run(self, feed):
            try:
                return session.run(None, feed)
            except Exception as exc:  # noqa: BLE001 - as the backends report an engine failure
                raise edgeserve.EdgeserveError(str(exc)) from None

    specs = [TensorSpec(n, "int64" if t == TensorProto.INT64 else "float32", tuple(shape), 0) for n, t, shape in inputs]
    feed = {"ids": np.ones((1, 3), np.int64), "mask": np.ones((1, 8), np.int64), "past": np.ones((1, 5, 4), np.float32)}
    assert fixed_sizes(Run(), specs, feed) == []
    from edgeserve.dims import evaluate

    assert [evaluate(e, {"W": 10, "s": 3}) for e in ("ceil(W/4)", "floor(W/4)", "W//4", "2*s + 1")] == [3, 2, 2, 7]
    with pytest.raises(ValueError):
        evaluate("W/4", {"W": 10})  # a fraction is no size
    untied = [*specs[:1], TensorSpec("mask", "int64", ("batch", "mask_length"), 0), specs[2]]
    assert {f["dim"] for f in fixed_sizes(Run(), untied, feed)} == {"sequence_length", "mask_length",
                                                                     "past_sequence_length"}


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_of_a_float16_model_starts_from_it_upcast_and_keeps_its_float16_signature(tmp_path: Path,
                                                                                    mode: str) -> None:
    """An exporter's --fp16 model: onnxruntime's int8 tools expect float32 weights (dynamic failed with "Expected
    ... to be an initializer"). The converter upcasts it inside, and the package still takes and answers float16."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from tests.factories import cnn_opset11

    half = save(convert_float_to_float16(cnn_opset11(), keep_io_types=False), tmp_path / "cnn16.onnx")
    x = np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float16)
    pkg = edgeserve.convert(half, tmp_path / "pkg", quantize=mode, calibration={"x": x})
    assert pkg.manifest.recipe["upcast_from_float16"] is True
    assert [s.dtype for s in (*pkg.manifest.inputs, *pkg.manifest.outputs)] == ["float16", "float16"]
    with edgeserve.load(pkg.path) as model, edgeserve.load(half) as source:
        got, want = model.predict(x[:8]), source.predict(x[:8])
    (name,) = want
    assert got[name].dtype == np.float16
    assert compare_outputs(got, want)["summary"]["cosine_min"] > 0.99


def _ml_opset_first(tmp_path: Path) -> Path:
    """A MatMul model whose opset list names ``ai.onnx.ml`` (version 1) first, as skl2onnx writes them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1), helper.make_opsetid("", 13)])
    path = tmp_path / "ml_first.onnx"
    onnx.save(model, str(path))
    return path


def test_nncf_reads_the_opset_of_the_standard_operators_whatever_order_the_file_lists_them(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    cal = {"x": np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)}
    pkg = edgeserve.convert(_ml_opset_first(tmp_path), tmp_path / "pkg", quantize="nncf", calibration=cal)
    assert pkg.manifest.recipe["mode"] == "nncf"


def test_a_quantiser_failing_on_operators_outside_the_standard_set_names_them(tmp_path: Path) -> None:
    """skl2onnx's default export (a ZipMap of probabilities, whose label output NNCF's graph walk cannot find)."""
    pytest.importorskip("nncf")
    import onnx
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    onnx.save(to_onnx(LogisticRegression(max_iter=500).fit(x, y), x[:1]), str(tmp_path / "iris.onnx"))
    with pytest.raises(ConversionError, match=r"nncf quantisation failed in NNCF: KeyError: .*operators outside the "
                                              r"standard set, ai\.onnx\.ml\.LinearClassifier"):
        edgeserve.convert(tmp_path / "iris.onnx", tmp_path / "pkg", quantize="nncf", calibration={"X": x})


def test_the_auto_table_shows_why_a_candidate_failed_not_the_scratch_file_it_failed_on() -> None:
    from edgeserve.summary import auto_lines

    reason = ("exported graph: openvino cannot load auto-openvino-f32-exported.onnx: -- Conversion is failed for: "
              "ai.onnx.ml.Normalizer; fp32 graph: openvino cannot load auto-openvino-f32-fp32.onnx: -- Conversion "
              "is failed for: ai.onnx.ml.Normalizer")
    recipe = {"auto": {"chosen": "none", "reason": "r", "budget": {}, "candidates": [
        {"name": "openvino-f32", "status": "failed", "reason": reason}]}}
    line = list(auto_lines(recipe))[-1]
    assert line.endswith("openvino cannot load it: Conversion is failed for: ai.onnx.ml.Normalizer")


def test_an_exporters_folder_converts_its_model_and_an_ambiguous_one_is_refused(tmp_path: Path) -> None:
    """optimum writes model.onnx beside config.json and the tokenizer: the folder converts as its model; a folder
    of several models (an encoder-decoder export) says which it holds."""
    folder = tmp_path / "export"
    folder.mkdir()
    save(mlp_model(), folder / "model.onnx")
    (folder / "config.json").write_text("{}")
    save(mlp_model(seed=1), folder / "other.onnx")
    pkg = edgeserve.convert(folder, tmp_path / "pkg", calibration={"x": rows(32)})
    assert pkg.manifest.name == "export" and pkg.manifest.source["file"] == "model.onnx"
    (folder / "model.onnx").unlink()
    (folder / "third.onnx").write_bytes((folder / "other.onnx").read_bytes())
    with pytest.raises(edgeserve.ModelFileError, match=r"holds 2 models \(other.onnx, third.onnx\); give the one"):
        edgeserve.convert(folder, tmp_path / "pkg2")
    from click.testing import CliRunner

    from edgeserve.cli import main

    (folder / "third.onnx").unlink()
    shown = CliRunner().invoke(main, ["inspect", str(folder)])
    assert shown.exit_code == 0 and shown.output.startswith("other.onnx: an ONNX model, not an edgeserve package")
    (pkg.path / "edgeserve.json").unlink()  # a package whose manifest is gone is refused, never run unverified
    with pytest.raises(edgeserve.PackageError, match="is not an edgeserve package"):
        edgeserve.load(pkg.path)


def test_a_verdict_on_few_held_out_rows_says_so(tmp_path: Path, mlp_path: Path) -> None:
    """16 calibration rows leave 3 to judge fidelity (and auto's choice) by: convert and inspect say how little
    that is, and what to give instead; a few hundred rows say nothing."""
    from click.testing import CliRunner

    from edgeserve.cli import main

    for count, warned in ((16, True), (400, False)):
        np.savez(tmp_path / f"cal{count}.npz", x=rows(count))
        out = tmp_path / f"pkg{count}"
        result = CliRunner().invoke(main, ["convert", str(mlp_path), "-o", str(out), "--calibration",
                                           str(tmp_path / f"cal{count}.npz")])
        assert result.exit_code == 0, result.output
        shown = CliRunner().invoke(main, ["inspect", str(out)]).output
        for text in (result.output, shown):
            assert ("WARNING: only 3 held-out rows judged the result; pass --data" in text) is warned, text


def test_answers_that_move_with_their_batch_mates_are_recorded_and_shown(tmp_path: Path, mlp_path: Path) -> None:
    """Dynamic int8 quantises a batch's rows with one scale: a row's answer moves with the rows beside it, which an
    audit or a cache keyed on the row alone must know. Static int8 and fp32 answer each row alike alone or not."""
    from click.testing import CliRunner

    from edgeserve.cli import main

    cal = {"x": rows(200)}
    moved = edgeserve.convert(mlp_path, tmp_path / "dynamic", quantize="dynamic", calibration=cal)
    assert moved.manifest.recipe["batch_dependence"] > 1e-3
    shown = CliRunner().invoke(main, ["inspect", str(moved.path)]).output
    assert "NOTE: an answer moves with the rows batched beside it, by up to" in shown
    for mode in ("none", "static"):
        still = edgeserve.convert(mlp_path, tmp_path / mode, quantize=mode, calibration=cal)
        assert "batch_dependence" not in still.manifest.recipe
    with edgeserve.load(moved.path) as model:  # what was measured: alone and together differ
        x = rows(8, seed=3)
        alone = np.concatenate([model.predict(x[i:i + 1])["logits"] for i in range(8)])
        assert np.abs(alone - model.predict(x)["logits"]).max() > 0


def test_batch_dependence_skips_outputs_whose_rows_answer_in_other_sizes_alone() -> None:
    """An output whose length follows the batch (its longest row) cannot be stacked from rows run alone: it is
    left out of the measurement, not an error that fails the conversion."""
    from edgeserve.batch_axes import batch_dependence
    from edgeserve.tensors import TensorSpec

    def run(feed):
        x = feed["x"]
        width = int(x.max()) + 1  # the output's width follows the values
        return {"y": np.zeros((len(x), width), np.float32), "z": x * 2.0}

    specs_in = [TensorSpec("x", "float32", ("batch", 1), 0)]
    specs_out = [TensorSpec("y", "float32", ("batch", "k"), 0), TensorSpec("z", "float32", ("batch", 1), 0)]
    rows_x = {"x": np.arange(8, dtype=np.float32).reshape(8, 1)}
    assert batch_dependence(run, specs_in, specs_out, rows_x) == 0.0


def _cached_decoder() -> onnx.ModelProto:
    """A decoder step's signature: new tokens [batch, sequence_length], a cache [batch, past_sequence_length] and a
    mask over both, [batch, past_sequence_length + sequence_length] (as torch and optimum export a KV cache)."""
    graph = helper.make_graph(
        [helper.make_node("Concat", ["past", "x"], ["both"], axis=1),
         helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["both", "maskf"], ["present"])],
        "decoder_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", "sequence_length"]),
         helper.make_tensor_value_info("past", TensorProto.FLOAT, ["batch_size", "past_sequence_length"]),
         helper.make_tensor_value_info("mask", TensorProto.INT64,
                                       ["batch_size", "past_sequence_length + sequence_length"])],
        [helper.make_tensor_value_info("present", TensorProto.FLOAT,
                                       ["batch_size", "past_sequence_length + sequence_length"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_stand_in_data_sizes_a_dim_named_by_an_expression_as_the_expression_says(tmp_path: Path) -> None:
    """Without data, a KV-cache decoder's mask is as long as the cache and the new tokens together (it was 8 like
    every other variable dim, and converting failed in the engine: "indices element out of data bounds")."""
    from edgeserve.converter.data import synthetic_samples
    from edgeserve.dims import stand_in_shapes
    from edgeserve.tensors import TensorSpec

    model = save(_cached_decoder(), tmp_path / "step.onnx")
    specs = [TensorSpec("x", "float32", ("batch_size", "sequence_length"), 0),
             TensorSpec("past", "float32", ("batch_size", "past_sequence_length"), 0),
             TensorSpec("mask", "int64", ("batch_size", "past_sequence_length + sequence_length"), 0)]
    assert stand_in_shapes(specs, rows=3) == {"x": [3, 8], "past": [3, 8], "mask": [3, 16]}
    assert synthetic_samples(specs, rows=5).arrays["mask"].shape == (5, 16)
    pkg = edgeserve.convert(model, tmp_path / "pkg", quantize="none")  # no data: stand-ins all the way
    with edgeserve.load(pkg.path) as loaded:
        out = loaded.predict({"x": np.ones((2, 3), np.float32), "past": np.ones((2, 0), np.float32),
                              "mask": np.ones((2, 3), np.int64)})
    assert out["present"].shape == (2, 3)


def test_the_auto_table_cuts_a_candidates_misses_between_them_never_inside_a_number() -> None:
    """A miss cut at the column's width read ``prob-change,output=logits 0.050091 > 0``: a threshold of 0.05
    shown as 0."""
    from edgeserve.summary import auto_lines

    reason = "top1,output=logits 0.28 < 0.99; prob-change,output=logits 0.050091 > 0.05"
    recipe = {"auto": {"chosen": "none", "reason": "r", "budget": {}, "candidates": [
        {"name": "openvino-nncf-int8", "status": "ok", "reason": reason}]}}
    line = list(auto_lines(recipe))[-1]
    assert line.endswith("top1,output=logits 0.28 < 0.99; +1 more")
    short = "top1 0.28 < 0.99; prob-change 0.0501 > 0.05"
    recipe["auto"]["candidates"][0]["reason"] = short
    assert list(auto_lines(recipe))[-1].endswith(short)


def test_the_auto_tables_metric_column_is_headed_by_the_metrics_name_not_a_cut_of_its_options() -> None:
    """A CTC model's column read ``ctc,layout=t``, a tagger's ``top1,mask=at``, an encoder's ``pooled-cosin``."""
    from edgeserve.summary import auto_lines

    budget = {"targets": [{"metric": "ctc,layout=tbc,output=logprobs", "min": 0.98}]}
    recipe = {"auto": {"chosen": "fp32", "reason": "r", "budget": budget, "candidates": [
        {"name": "fp16", "status": "ok", "scores": {"ctc,layout=tbc,output=logprobs": 0.99}}]}}
    head, row = list(auto_lines(recipe))[1:]
    assert head.split()[3] == "ctc" and row.split()[3] == "0.99"
    budget["targets"][0]["metric"] = "pooled-cosine,mask=attention_mask"
    recipe["auto"]["candidates"][0]["scores"] = {"pooled-cosine,mask=attention_mask": 0.99}
    head, row = list(auto_lines(recipe))[1:]
    assert head.split()[3] == "pooled-cosine" and head.index("pooled-cosine") + 13 == row.index("0.99") + 4


def test_an_accuracy_budget_alone_has_no_metric_column_of_dashes() -> None:
    from edgeserve.summary import auto_lines

    recipe = {"auto": {"chosen": "fp32", "reason": "r", "budget": {"targets": [], "max_accuracy_drop": 0.01},
                       "candidates": [{"name": "fp16", "status": "ok", "speedup": 0.9, "accuracy": 0.98,
                                       "fidelity": {"cosine_min": 1.0}, "within_budget": True}]}}
    head, row = list(auto_lines(recipe))[1:]
    assert head.endswith("speedup  raw cos accuracy  note") and row.endswith("0.90x   1.0000   0.9800  in budget")


def test_weights_listed_as_graph_inputs_are_made_constants(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Older exporters list every weight as a graph input too: onnxruntime then folds no constant through them and
    warned about each one on stderr from every session the quantisation tools built (four lines for this MLP)."""
    import onnx
    from onnx import helper

    from tests.factories import mlp_model, save

    model = mlp_model(n_in=16, hidden=32, n_out=4)
    for weight in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(weight.name, weight.data_type, list(weight.dims)))
    path = save(model, tmp_path / "old.onnx")
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    capfd.readouterr()
    for source, out in ((path, "from-file"), (model, "from-proto")):
        pkg = edgeserve.convert(source, tmp_path / out, quantize="static", calibration={"x": x})
        assert pkg.manifest.source["initializer_inputs_dropped"] == 4
        assert [s.name for s in pkg.manifest.inputs] == ["x"]
        assert [i.name for i in onnx.load(str(pkg.model_path)).graph.input] == ["x"]
    assert "appears in graph inputs" not in capfd.readouterr().err
    assert len(model.graph.input) == 5  # the caller's model is left as it was
