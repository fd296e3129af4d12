"""The embedded runtime: predict against plain onnxruntime, the input contract, lifecycle, golden checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgeserve
from edgeserve import ClosedError, GoldenMismatchError, InputError, SessionConfig
from edgeserve.package import MANIFEST, compute_digests
from tests.factories import gather_model, image_text_model, mlp_model, rows, save, two_input_model


def test_predict_matches_plain_onnxruntime(mlp_path: Path) -> None:
    x = rows(5)
    expected = ort.InferenceSession(str(mlp_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with edgeserve.load(mlp_path) as model:
        np.testing.assert_allclose(model.predict(x)["logits"], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(model.predict({"x": x})["logits"], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(model.predict(x=x)["logits"], expected, rtol=1e-6, atol=1e-6)


def test_signature(mlp_package: Path) -> None:
    with edgeserve.load(mlp_package) as model:
        assert model.name == "mlp" and model.version == "1"
        assert [(s.name, s.dtype, s.shape) for s in model.inputs] == [("x", "float32", ("batch", 16))]
        assert [(s.name, s.dtype, s.shape) for s in model.outputs] == [("logits", "float32", ("batch", 4))]
        assert "mlp@1" in repr(model)


@pytest.mark.parametrize("bad, message", [
    (rows(2).astype(np.float64), r"input 'x': expected float32 \[batch, 16\], got float64 \[2, 16\]"),
    (rows(2)[0], r"input 'x': expected 2 dimensions \[batch, 16\], got 1 \[16\]; one row without its batch axis\? "
                 r"send it as \[1, 16\] \(numpy: np.expand_dims\(x, 0\)\)"),
    (rows(2, n_in=15)[0], r"input 'x': expected 2 dimensions \[batch, 16\], got 1 \[15\]$"),
    (rows(2)[None], r"input 'x': expected 2 dimensions \[batch, 16\], got 3 \[1, 2, 16\]$"),
    (rows(2, n_in=15), r"input 'x': expected float32 \[batch, 16\], got float32 \[2, 15\] \(dimension 1 must be 16\)"),
    ({"y": rows(2)}, "missing 'x'; unknown 'y'"),
    ({"x": rows(2), "extra": rows(2)}, "unknown 'extra'"),
    ("text", "expected a numpy array, got str"),
    (None, "no inputs given"),
])
def test_input_contract_names_what_is_wrong(mlp_path: Path, bad, message: str) -> None:
    with edgeserve.load(mlp_path) as model, pytest.raises(InputError, match=message):
        model.predict(bad)


def test_samples_stacked_for_a_model_that_takes_one_at_a_time_are_told_so(tmp_path: Path) -> None:
    """torchvision's detectors take one image, [3, H, W]: two stacked are refused saying the model has no batch
    axis and how to send them, not only that there is a dimension too many."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("ReduceMean", ["image"], ["means"], axes=[1, 2], keepdims=0)], "one",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "h", "w"])],
                              [helper.make_tensor_value_info("means", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    images = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    with edgeserve.load(save(model, tmp_path / "one.onnx")) as one:
        np.testing.assert_allclose(one.predict(images[0])["means"], images[0].mean((1, 2)), rtol=1e-5)
        with pytest.raises(InputError, match=r"got 4 \[2, 3, 8, 8\]; the model takes one sample at a time \(it has "
                                             r"no batch axis\): send the 2 samples one by one"):
            one.predict(images)


def test_python_lists_take_the_model_dtype(mlp_path: Path) -> None:
    with edgeserve.load(mlp_path) as model:
        out = model.predict(rows(1).tolist())["logits"]
        np.testing.assert_allclose(out, model.predict(rows(1))["logits"], rtol=1e-6)


def test_multi_input_model_needs_a_mapping(tmp_path: Path) -> None:
    path = save(two_input_model(), tmp_path / "two.onnx")
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    scale = np.array([[2.0], [3.0]], dtype=np.float32)
    with edgeserve.load(path) as model:
        out = model.predict({"ids": ids, "scale": scale})["out"]
        np.testing.assert_array_equal(out, ids * scale)
        with pytest.raises(InputError, match="has 2 inputs, so pass a dict"):
            model.predict(ids)
        with pytest.raises(InputError, match=r"input 'scale'.*dimension 1 must be 1"):
            model.predict({"ids": ids, "scale": np.ones((2, 2), np.float32)})


def test_an_export_fixed_at_batch_1_answers_several_rows_one_at_a_time(tmp_path: Path) -> None:
    """Model-zoo exports are often fixed at batch 1 ([1, 16] -> [1, 4]): several rows run one at a time and the
    answers join on that axis, exactly as row-by-row calls would give them."""
    path = save(mlp_model(batch=1), tmp_path / "one.onnx")
    x = rows(5)
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = np.concatenate([plain.run(None, {"x": x[i:i + 1]})[0] for i in range(5)])
    with edgeserve.load(path) as model:
        np.testing.assert_array_equal(model.predict(x)["logits"], expected)
        np.testing.assert_array_equal(model.predict(x[:1])["logits"], expected[:1])
        with pytest.raises(InputError, match=r"dimension 1 must be 16"):
            model.predict(rows(2, n_in=15))


def test_a_batch_1_time_major_answer_joins_rows_on_its_own_one_row_axis(tmp_path: Path) -> None:
    """ddddocr's recogniser takes [1, 1, 64, width] and answers [steps, 1, classes] (its signature says [1,
    seqlen]): several rows' answers join on axis 1, [steps, rows, classes], not as one sequence of steps x rows
    (onnxruntime warns of the signature's shape on every run)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]), helper.make_node("MatMul", ["t", "w"], ["m"]),
             helper.make_node("Shape", ["m"], ["s"]), helper.make_node("Reshape", ["m", "s"], ["y"])]  # [W, 1, 5]
    graph = helper.make_graph(  # the Reshape hides the real shape from inference: the declared one stands
        nodes, "time_major", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "image_width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen", 5])], [numpy_helper.from_array(w, "w")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "ocr.onnx")
    x = np.random.default_rng(1).normal(size=(3, 4, 7)).astype(np.float32)
    with edgeserve.load(path) as model:
        assert model.inputs[0].batch_axis is None  # the width is not a batch
        alone = [model.predict(x[i:i + 1])["y"] for i in range(3)]
        joined = model.predict(x)["y"]
    assert alone[0].shape == (7, 1, 5) and joined.shape == (7, 3, 5)
    for i in range(3):
        np.testing.assert_array_equal(joined[:, i:i + 1], alone[i])


def test_a_batch_1_export_whose_answers_vary_in_length_takes_one_row(tmp_path: Path) -> None:
    """A detector's kept boxes from several rows would run together: such a model says to send one row."""
    from tests.factories import kept_boxes_data, kept_boxes_model

    path = save(kept_boxes_model(), tmp_path / "det.onnx")
    data = kept_boxes_data(samples=2)
    with edgeserve.load(path) as model:
        assert model.predict(data[:1])["boxes"].shape[1] == 4
        with pytest.raises(InputError, match=r"dimension 0 must be 1; the model was exported at batch 1: send one row"):
            model.predict(data)


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_engine_errors_are_wrapped_and_name_the_inputs_they_ran_on(tmp_path: Path, batching: bool) -> None:
    # a token id past the embedding table passes the contract but not the engine, whose message names a node
    path = save(gather_model(vocab=10), tmp_path / "gather.onnx")
    config = edgeserve.BatchConfig(adaptive=False) if batching else None
    with edgeserve.load(path, batching=config) as model, pytest.raises(
            edgeserve.InferenceError, match=r"onnxruntime failed running .*\(on ids int64 \[2, 3\]\): "):
        model.predict({"ids": np.full((2, 3), 99, np.int64)})


def test_inputs_must_agree_on_the_batch_size(tmp_path: Path) -> None:
    path = save(two_input_model(), tmp_path / "two.onnx")
    with edgeserve.load(path) as model:
        with pytest.raises(edgeserve.InputError, match="disagree on the batch size: 'ids' 2 .*'scale' 3"):
            model.predict({"ids": np.ones((2, 3), np.int64), "scale": np.ones((3, 1), np.float32)})
        assert model.predict({"ids": np.ones((3, 2), np.int64), "scale": np.ones((3, 1), np.float32)})["out"].shape == (3, 2)


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_inputs_whose_batch_axes_are_named_apart_take_their_own_numbers_of_rows(tmp_path: Path,
                                                                                  batching: bool) -> None:
    """CLIP scores N images against M texts, its batch axes named image_batch_size and text_batch_size: 3 images
    against 2 texts were refused as "inputs disagree on the batch size". Such a model is never stacked with
    others (a request's texts would be scored against another's images); names a tool made up keep the check."""
    from edgeserve.runtime.batcher import can_batch

    image, text = rows(3, 4, seed=1), rows(2, 4, seed=2)
    config = edgeserve.BatchConfig(adaptive=False) if batching else None
    with edgeserve.load(save(image_text_model(), tmp_path / "clip.onnx"), batching=config) as model:
        got = model.predict({"image": image, "text": text})
        np.testing.assert_allclose(got["logits_per_image"], image @ text.T, rtol=1e-5)
        assert not can_batch(model.inputs, model.outputs)
    from edgeserve.summary import model_file_lines

    assert "  rows counted apart: image | text (each set its own number of rows; requests are not batched together)" \
        in list(model_file_lines(tmp_path / "clip.onnx"))  # what inspect says
    made_up = image_text_model("image_dynamic_axes_1", "text_dynamic_axes_1")
    with edgeserve.load(save(made_up, tmp_path / "made_up.onnx")) as model:
        with pytest.raises(InputError, match="disagree on the batch size: 'image' 3 .*'text' 2"):
            model.predict({"image": image, "text": text})


def test_inputs_must_agree_on_a_dimension_they_share(tmp_path: Path) -> None:
    """``input_ids`` and ``attention_mask`` are both ``[batch, seq]``: a mask one token short is refused naming
    both sizes, before the engine fails inside an attention node (or answers on a cut mask)."""
    from tests.factories import encoder_data, encoder_model

    data = encoder_data(rows=2, seq=6)
    with edgeserve.load(save(encoder_model(), tmp_path / "enc.onnx")) as model:
        with pytest.raises(InputError, match=r"size of dimension 'seq': 'input_ids' 6 \(axis 1\), 'attention_mask' 5"):
            model.predict({"input_ids": data["input_ids"], "attention_mask": data["attention_mask"][:, :5]})
        assert model.predict(data)["last_hidden_state"].shape[:2] == (2, 6)


def test_models_with_inputs_numpy_cannot_hold_are_refused_without_a_leak(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from edgeserve.backends.base import SESSIONS

    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], "bf16",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = save(model, tmp_path / "bf16.onnx")
    live = SESSIONS.live()
    with pytest.raises(edgeserve.ModelFileError, match="input 'x' is bfloat16, which edgeserve cannot exchange"):
        edgeserve.load(path)
    assert SESSIONS.live() == live


def test_use_after_close(mlp_path: Path) -> None:
    model = edgeserve.load(mlp_path)
    model.close()
    model.close()  # idempotent
    assert model.closed
    with pytest.raises(ClosedError, match="closed"):
        model.predict(rows(1))


def test_thread_settings_are_explicit(mlp_path: Path) -> None:
    assert SessionConfig().threads >= 1
    assert SessionConfig(intra_op_threads=1).threads == 1
    with pytest.raises(edgeserve.ConfigError, match="intra_op_threads"):
        SessionConfig(intra_op_threads=0)
    with edgeserve.load(mlp_path, config=SessionConfig(intra_op_threads=1)) as model:
        assert model.predict(rows(1))["logits"].shape == (1, 4)


def _rewrite_golden(pkg: Path, factor: float) -> None:
    with np.load(pkg / "golden.npz") as g:
        arrays = {k: g[k] for k in g.files}
    arrays["output_0"] = arrays["output_0"] * factor
    with open(pkg / "golden.npz", "wb") as f:
        np.savez(f, **arrays)
    manifest = json.loads((pkg / MANIFEST).read_text())
    manifest["digests"] = compute_digests(pkg)  # a consistent package whose recorded answers differ
    (pkg / MANIFEST).write_text(json.dumps(manifest))


def test_golden_mismatch_is_reported(mlp_package: Path, caplog: pytest.LogCaptureFixture) -> None:
    _rewrite_golden(mlp_package, 1.5)
    with pytest.raises(GoldenMismatchError, match="output 'logits': differs by up to"):
        edgeserve.load(mlp_package)
    with edgeserve.load(mlp_package, golden="warn") as model:
        assert model.predict(rows(1))["logits"].shape == (1, 4)
    assert "answers differ" in caplog.text
    edgeserve.load(mlp_package, golden="off").close()


def test_golden_within_tolerance_passes(mlp_package: Path) -> None:
    _rewrite_golden(mlp_package, 1.0 + 1e-6)
    edgeserve.load(mlp_package).close()


def test_nothing_to_load(tmp_path: Path) -> None:
    with pytest.raises(edgeserve.PackageError, match="nothing to load"):
        edgeserve.load(tmp_path / "missing.onnx")
    with pytest.raises(edgeserve.ConfigError, match="golden must be"):
        edgeserve.load(tmp_path, golden="maybe")  # type: ignore[arg-type]
