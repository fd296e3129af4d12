"""Dynamic batching splits outputs along batch axes that running rows together and apart confirms: a detector's
NMS output has a symbolic first axis that is not the batch, and must never be split among callers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgeserve
from edgeserve import BatchConfig
from edgeserve.batch_axes import confirm_batch_axes
from edgeserve.tensors import TensorSpec
from tests.factories import mlp_model, rows, save


def nms_model() -> onnx.ModelProto:
    """boxes [batch, 6, 4], scores [batch, 1, 6] -> selected [detections, 3] (batch index, class, box index): the
    exporter names the first axis of the answer like a batch, but it counts detections."""
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores", "top", "iou", "threshold"], ["selected"])]
    init = [numpy_helper.from_array(np.array([6], np.int64), "top"),
            numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
            numpy_helper.from_array(np.array([0.5], np.float32), "threshold")]
    graph = helper.make_graph(
        nodes, "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", 6, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1, 6])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["detections", 3])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def one_detection_each(n: int) -> dict[str, np.ndarray]:
    """Every image has exactly one box over the score threshold: n images, n detections — the counts match."""
    boxes = np.tile(np.arange(6, dtype=np.float32)[:, None] * 10 + np.array([0, 0, 5, 5], np.float32), (n, 1, 1))
    scores = np.zeros((n, 1, 6), np.float32)
    for i in range(n):
        scores[i, 0, (i * 2) % 6] = 0.9
    return {"boxes": boxes, "scores": scores}


def test_an_nms_output_is_not_split_among_callers(tmp_path: Path) -> None:
    path = save(nms_model(), tmp_path / "nms.onnx")
    with edgeserve.load(path) as plain:
        assert plain.outputs[0].batch_axis == 0  # what the names alone suggest
        alone = [plain.predict({k: v[i:i + 1] for k, v in one_detection_each(3).items()})["selected"]
                 for i in range(3)]
    with edgeserve.load(path, batching=BatchConfig(max_batch_size=8)) as model:
        assert model.outputs[0].batch_axis is None and model.batcher is None
        feeds = one_detection_each(3)
        for i in range(3):
            np.testing.assert_array_equal(model.predict({k: v[i:i + 1] for k, v in feeds.items()})["selected"],
                                          alone[i])
    assert [a.tolist() for a in alone] == [[[0, 0, 0]], [[0, 0, 2]], [[0, 0, 4]]]


def test_a_classifier_keeps_its_batch_axis_and_its_batcher(tmp_path: Path) -> None:
    path = save(mlp_model(), tmp_path / "mlp.onnx")
    with edgeserve.load(path, batching=BatchConfig(max_batch_size=8)) as model:
        assert model.outputs[0].batch_axis == 0 and model.batcher is not None


def test_a_package_records_what_its_conversion_measured(tmp_path: Path) -> None:
    feeds = {k: np.concatenate([v] * 20) for k, v in one_detection_each(3).items()}
    pkg = edgeserve.convert(save(nms_model(), tmp_path / "nms.onnx"), tmp_path / "pkg", quantize="none",
                            calibration=feeds)
    assert pkg.manifest.recipe["batch_axes"] == "measured"
    assert pkg.manifest.outputs[0].batch_axis is None
    mlp = edgeserve.convert(save(mlp_model(), tmp_path / "mlp.onnx"), tmp_path / "mlp", quantize="dynamic",
                            calibration={"x": rows(40)})
    assert mlp.manifest.outputs[0].batch_axis == 0


def test_the_check_rejects_what_does_not_split() -> None:
    specs_in = (TensorSpec("x", "float32", ("batch", 4), 0),)
    specs_out = (TensorSpec("y", "float32", ("batch", 4), 0),)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)

    def rowwise(feed):
        return {"y": feed["x"] * 2}

    def mixes_rows(feed):  # each row's answer depends on the others (a batch statistic)
        return {"y": feed["x"] - feed["x"].mean(axis=0)}

    def fails_beyond_one(feed):
        if len(feed["x"]) > 1:
            raise edgeserve.InferenceError("Reshape: the batch of one is baked in")
        return {"y": feed["x"]}

    assert confirm_batch_axes(rowwise, specs_in, specs_out, {"x": x})[0].batch_axis == 0
    assert confirm_batch_axes(mixes_rows, specs_in, specs_out, {"x": x})[0].batch_axis is None
    assert confirm_batch_axes(fails_beyond_one, specs_in, specs_out, {"x": x})[0].batch_axis is None


def test_rows_the_model_cannot_take_leave_the_guess_standing() -> None:
    specs_in = (TensorSpec("x", "float32", ("batch", 4), 0),)
    specs_out = (TensorSpec("y", "float32", ("batch", 4), 0),)

    def refuses_everything(feed):
        raise edgeserve.InferenceError("Conv: the image is smaller than the kernel")

    x = np.zeros((3, 4), np.float32)
    assert confirm_batch_axes(refuses_everything, specs_in, specs_out, {"x": x})[0].batch_axis == 0


def test_an_axis_declared_of_the_traced_size_that_the_answers_do_not_keep_is_measured_too() -> None:
    """torch writes the traced size where dynamic_axes names no axis: a time-major ``[steps, batch, classes]`` given
    ``{0: "batch"}`` is declared ``[batch, 2, 5]``; its rows are on axis 1, which the names say is fixed at 2."""
    specs_in = (TensorSpec("x", "float32", ("batch", 6, 5), 0),)
    specs_out = (TensorSpec("y", "float32", ("batch", 2, 5), 0),)
    x = np.random.default_rng(0).standard_normal((3, 6, 5)).astype(np.float32)

    def time_major(feed):
        return {"y": np.ascontiguousarray(feed["x"].transpose(1, 0, 2))}

    def really_fixed(feed):  # two values a row, on axis 0 per row... and a fixed axis that stays 2
        return {"y": np.stack([feed["x"][:, :2].sum(axis=0)] * 6)}

    assert confirm_batch_axes(time_major, specs_in, specs_out, {"x": x})[0].batch_axis == 1
    assert confirm_batch_axes(really_fixed, specs_in, specs_out, {"x": x})[0].batch_axis is None


def test_a_model_whose_answers_move_with_their_batch_can_run_each_request_alone(tmp_path: Path) -> None:
    """Dynamic int8 quantises a run with one scale: batched, a caller's answer moves with what other callers sent
    (a 2-layer GPT-2 over the server: 1 of 220 next tokens changed). ``batch_dependent=False`` runs each of its
    requests alone; a model whose answers do not move is batched either way."""
    x = rows(64)
    pkg = edgeserve.convert(save(mlp_model(), tmp_path / "m.onnx"), tmp_path / "dyn", quantize="dynamic",
                            calibration={"x": x})
    assert pkg.manifest.recipe["batch_dependence"] > 0
    with edgeserve.load(pkg.path, batching=BatchConfig(batch_dependent=False)) as alone:
        assert alone.batcher is None
        np.testing.assert_array_equal(alone.predict(x[:1])["logits"], alone.predict(x[:1])["logits"])
    with edgeserve.load(pkg.path, batching=BatchConfig()) as batched:
        assert batched.batcher is not None  # the default: batched, as Triton does
    fp32 = edgeserve.convert(save(mlp_model(), tmp_path / "f.onnx"), tmp_path / "fp32", quantize="none",
                             calibration={"x": x})
    assert "batch_dependence" not in fp32.manifest.recipe
    with edgeserve.load(fp32.path, batching=BatchConfig(batch_dependent=False)) as steady:
        assert steady.batcher is not None
