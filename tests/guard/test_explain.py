"""Occlusion explanations: exact for a linear model, one batched engine call, images by patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeserve
from edgeserve import InputError
from tests.factories import cnn_opset11, save


def _linear(path: Path, w: np.ndarray, b: np.ndarray, batch: str | int = "batch") -> Path:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [batch, w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, [batch, w.shape[1]])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("linear")
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((12, 3)), rng.standard_normal(3)
    reference = rng.normal(2.0, 3.0, (400, 12))
    pkg = edgeserve.convert(_linear(tmp / "lin.onnx", w, b), tmp / "pkg", quantize="none",
                            calibration={"x": reference})
    return pkg.path, w, b, reference.mean(axis=0)


def test_attributions_are_exact_for_a_linear_model(linear) -> None:
    path, w, b, ref = linear
    x = np.random.default_rng(1).normal(0, 4, (5, 12))
    calls = []
    with edgeserve.load(path) as model:
        run = model._run_feed
        model._run_feed = lambda feed: calls.append(len(feed["x"])) or run(feed)  # type: ignore[method-assign]
        e = model.explain(x)
    assert calls == [13] * 5  # one batched call of M + 1 rows per explained row
    att = e.attributions["y"]  # [rows, M, outputs]
    expected = w[None, :, :] * (x - ref)[:, :, None]
    np.testing.assert_allclose(att, expected, atol=1e-6, rtol=0)
    f_x, f_ref = x @ w + b, ref @ w + b
    np.testing.assert_allclose(att.sum(axis=1), f_x - f_ref, atol=1e-6, rtol=0)
    assert e.reference == "reference mean per feature" and e.rows_run == 65


def test_an_export_fixed_at_batch_1_is_explained_one_row_at_a_time(tmp_path: Path) -> None:
    """A model exported at batch 1 cannot take the M + 1 occluded rows in one call: each runs alone, and the
    attributions are as exact as a batched model's."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((12, 3)), rng.standard_normal(3)
    reference = rng.normal(2.0, 3.0, (400, 12))
    pkg = edgeserve.convert(_linear(tmp_path / "lin1.onnx", w, b, batch=1), tmp_path / "pkg", quantize="none",
                            calibration={"x": reference})
    x = rng.normal(0, 4, (1, 12))
    calls = []
    with edgeserve.load(pkg.path) as model:
        run = model._session.run  # the engine's own calls
        model._session.run = lambda feed, names: calls.append(len(feed["x"])) or run(feed, names)
        e = model.explain(x)
    assert calls == [1] * 13
    np.testing.assert_allclose(e.attributions["y"], w[None] * (x - reference.mean(axis=0))[:, :, None], atol=1e-6)


def test_a_batch_1_model_whose_outputs_vary_in_length_is_not_explained(tmp_path: Path) -> None:
    """Kept values (boxes, pixels) vary in number from one occluded copy to the next: there is no row to attribute, and the
    refusal says so instead of an engine error about the batch size."""
    nodes = [helper.make_node("Reshape", ["image", "flat"], ["pixels"]),
             helper.make_node("Greater", ["pixels", "half"], ["bright"]),
             helper.make_node("NonZero", ["bright"], ["where"]),
             helper.make_node("Squeeze", ["where", "zero"], ["index"]),
             helper.make_node("Gather", ["pixels", "index"], ["kept"], axis=0)]
    graph = helper.make_graph(
        nodes, "bright_pixels", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, ["kept_count"])],
        [numpy_helper.from_array(np.array([64], np.int64), "flat"), numpy_helper.from_array(np.array(0.5, np.float32), "half"),
         numpy_helper.from_array(np.array([0], np.int64), "zero")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "bright.onnx")
    with edgeserve.load(path) as model:
        with pytest.raises(InputError, match="exported at batch 1 and the length of its outputs depends"):
            model.explain(np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32), patch=4)


def test_a_wrong_reference_is_visible(linear) -> None:
    path, w, _, ref = linear
    x = np.ones((1, 12))
    with edgeserve.load(path) as model:
        e = model.explain(x)
    wrong = w[None] * (x - 0.0)[:, :, None]  # occluding with zeros would give this instead
    assert not np.allclose(e.attributions["y"], wrong, atol=1e-3)


def test_image_patches_and_top_features(tmp_path: Path) -> None:
    model_path = save(cnn_opset11(size=16), tmp_path / "cnn.onnx")
    images = np.random.default_rng(0).random((120, 3, 16, 16)).astype(np.float32)
    name = onnx.load(model_path).graph.input[0].name
    pkg = edgeserve.convert(model_path, tmp_path / "pkg", quantize="none", calibration={name: images})
    with edgeserve.load(pkg.path) as model:
        e = model.explain(images[:2], patch=4)
        out = model.predict(images[:2])
    assert e.kind == "patches" and e.grid == (4, 4) and e.rows_run == 2 * 17
    first = next(iter(e.attributions))
    assert e.attributions[first].shape[:2] == (2, 16)
    assert np.abs(e.attributions[first]).max(axis=(1, 2)).min() > 0  # every row: some patch moved the answer
    np.testing.assert_allclose(e.outputs[first], out[first], rtol=1e-5, atol=1e-6)
    top = e.top(count=3)
    assert len(top) == 2 and len(top[0]) == 3 and all(0 <= j < 16 for j, _ in top[0])


def test_token_inputs_are_refused_with_a_reason(tmp_path: Path) -> None:
    from tests.factories import encoder_data, encoder_model

    pkg = edgeserve.convert(save(encoder_model(), tmp_path / "enc.onnx"), tmp_path / "pkg", quantize="none",
                            calibration=encoder_data())
    with edgeserve.load(pkg.path) as model, pytest.raises(InputError, match="no float"):
        model.explain({k: v[:1] for k, v in encoder_data().items()})
