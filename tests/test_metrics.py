"""Task fidelity metrics: each accepts what its task tolerates (where the raw cosine did not) and rejects a broken
candidate; the inferred default fits each stand-in; thresholds, user functions and the CLI form are checked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import edgeserve
from edgeserve.cli import main
from edgeserve.converter.data import check_samples, run_samples
from edgeserve.fidelity import Budget, compare_outputs
from edgeserve.metrics import generic_targets, infer_targets, is_ragged, metric, ragged, robust_cosine_rows, target
from tests.factories import (
    ctc_data,
    ctc_model,
    detection_outputs,
    encoder_data,
    encoder_model,
    kept_boxes_data,
    kept_boxes_model,
    mlp_model,
    prob_map_data,
    prob_map_model,
    rows,
    save,
    vad_like_data,
    vad_like_model,
)


def _run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with edgeserve.load(path, golden="off") as model:
        return model.predict(feed)


def _raw_cosine(reference, candidate) -> float:
    return compare_outputs(candidate, reference)["summary"]["cosine_min"]


def _scrambled(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same values in the wrong places: what a broken converter (a wrong transpose, a bad layout) returns."""
    flat = values.reshape(len(values), -1).copy()
    rng = np.random.default_rng(seed)
    for row in flat:
        rng.shuffle(row)
    return flat.reshape(values.shape)


@pytest.fixture(scope="module")
def prob_map(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("map")
    x = prob_map_data()
    pkg = edgeserve.convert(save(prob_map_model(), tmp / "map.onnx"), tmp / "pkg", quantize="static",
                            calibration={"image": x})
    return pkg, {"image": x}, _run(tmp / "map.onnx", {"image": x}), _run(pkg.path, {"image": x})


def test_sparse_map_int8_kept_by_map_iou_where_raw_cosine_rejected_it(prob_map) -> None:
    _, feed, ref, cand = prob_map
    # empty images: fp32 says ~1e-5 everywhere, int8 says exactly 0; the raw cosine calls that total disagreement
    assert _raw_cosine(ref, cand) < 0.5
    iou = target("map-iou", min=0.95)
    assert iou.holds(iou.metric.score(ref, cand, feed))
    scrambled = {"prob_map": _scrambled(ref["prob_map"])}
    assert not iou.holds(iou.metric.score(ref, scrambled, feed))


def test_the_inferred_default_for_a_probability_map_is_map_iou(prob_map) -> None:
    pkg, feed, ref, _ = prob_map
    targets, why = infer_targets(feed, ref)
    assert [t.metric.name for t in targets] == ["map-iou"] and "probability map" in why
    budget = pkg.manifest.fidelity["budget"]
    assert budget["targets"][0]["metric"].startswith("map-iou") and budget["because"].startswith("inferred")
    assert budget["enforced"] is False  # an explicit mode with an inferred budget: measured, recorded, not held


def test_robust_cosine_scores_near_zero_rows_by_absolute_error() -> None:
    ref = np.array([[3.0, 4.0], [1e-6, 0.0], [1e-6, 0.0]])
    cand = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 0.5]])
    rows = robust_cosine_rows(ref, cand)
    assert rows[0] == pytest.approx(1.0) and rows[1] > 0.99  # silence rounded to zero agrees
    assert rows[2] == -1.0  # noise where the reference is silent does not
    assert robust_cosine_rows(ref, np.full_like(ref, np.nan)).max() == -1.0


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("enc")
    data = encoder_data()
    src = save(encoder_model(), tmp / "enc.onnx")
    pkg = edgeserve.convert(src, tmp / "pkg", quantize=edgeserve.QuantizeConfig(mode="static",
                                                                                 calibration_method="percentile"),
                            calibration=data)
    return pkg, data, _run(src, data), _run(pkg.path, data)


def test_encoder_is_judged_by_masked_pooled_embeddings(encoder) -> None:
    pkg, data, ref, cand = encoder
    targets, why = infer_targets(data, ref)
    assert targets[0].metric.name == "pooled-cosine" and "attention_mask" in why
    pooled = targets[0]
    assert pooled.holds(pooled.metric.score(ref, cand, data))
    # padded positions hold meaningless states: garbage there fails the raw cosine, not the task
    hidden = ref["last_hidden_state"].copy()
    pad = data["attention_mask"] == 0
    hidden[pad] = np.random.default_rng(0).standard_normal((int(pad.sum()), hidden.shape[-1])) * 20
    padded_garbage = {"last_hidden_state": hidden}
    assert _raw_cosine(ref, padded_garbage) < 0.9
    assert pooled.metric.score(ref, padded_garbage, data) == pytest.approx(1.0)
    # the same garbage on real tokens is caught
    broken = {"last_hidden_state": _scrambled(ref["last_hidden_state"])}
    assert not pooled.holds(pooled.metric.score(ref, broken, data))
    assert pkg.manifest.fidelity["metrics"][pooled.metric.spec] >= 0.99


def test_percentile_and_entropy_calibration_survive_attention_masks(tmp_path: Path) -> None:
    """-inf (Where) and -1e4·(1 - mask) in the graph: the histogram calibrators used to fail on them; now the
    tensors holding them are left in float and the manifest says which."""
    data = encoder_data(rows=40)
    for sentinel in ("-inf", "-1e4"):
        src = save(encoder_model(sentinel=sentinel), tmp_path / f"enc{sentinel}.onnx")
        for method in ("percentile", "entropy"):
            pkg = edgeserve.convert(src, tmp_path / f"{sentinel}-{method}", calibration=data,
                                    quantize=edgeserve.QuantizeConfig(mode="static", calibration_method=method),
                                    metrics=["pooled-cosine>=0.99"])
            left = pkg.manifest.recipe["calibration"]["left_float"]
            assert "masked" in left, (sentinel, method, left)
            assert ("non-finite" in left["masked"]) == (sentinel == "-inf")


def test_percentile_calibration_survives_a_tensor_too_narrow_to_bin_and_keeps_constants(tmp_path: Path) -> None:
    """A tensor of magnitudes within a hair of each other (1000 plus noise; a DETR export had one) cannot be cut into
    2048 float32 bins: percentile calibration failed on the whole model ("Too many bins for data range"). It is left
    in float and named; a constant, which bins well, is still calibrated."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array(3e-4, np.float32), "tiny"),
             numpy_helper.from_array(np.array(1000.0, np.float32), "offset"),
             numpy_helper.from_array(np.zeros((1, 8), np.float32), "zeros"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "tiny"], ["small"]), helper.make_node("Add", ["small", "offset"], ["near"]),
         helper.make_node("MatMul", ["near", "w"], ["a"]),
         helper.make_node("Mul", ["zeros", "two"], ["still"]), helper.make_node("Add", ["x", "still"], ["same"]),
         helper.make_node("MatMul", ["same", "w"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])], "narrow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    pkg = edgeserve.convert(save(model, tmp_path / "narrow.onnx"), tmp_path / "pkg",
                            calibration={"x": rng.standard_normal((64, 8)).astype(np.float32)},
                            quantize=edgeserve.QuantizeConfig(mode="static", calibration_method="percentile"))
    left = pkg.manifest.recipe["calibration"]["left_float"]
    assert left.get("near") == "values too close together for a histogram of 2048 bins", left
    assert "still" not in left and "same" not in left


def test_ctc_is_judged_by_the_decoded_string(tmp_path: Path) -> None:
    src = save(ctc_model(), tmp_path / "ctc.onnx")
    feed = {"features": ctc_data()}
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="dynamic", calibration=feed, metrics=["ctc>=0.98"])
    ref, cand = _run(src, feed), _run(pkg.path, feed)
    ctc = target("ctc", min=0.98)
    assert ctc.holds(ctc.metric.score(ref, cand, feed))
    inferred, why = infer_targets(feed, ref)
    assert [t.metric.name for t in inferred] == ["ctc"] and "decoded strings" in why
    # bf16-like error on the unlikely classes' log-probabilities: the raw cosine objects, the strings are the same
    noisy = ref["logits"].copy()
    best = noisy.argmax(-1)[..., None]
    noise = np.random.default_rng(1).normal(0, 8, noisy.shape).astype(np.float32)
    np.put_along_axis(noise, best, 0.0, axis=-1)
    noisy = np.minimum(noisy + noise, np.take_along_axis(noisy, best, -1) - 1.0)
    np.put_along_axis(noisy, best, np.take_along_axis(ref["logits"], best, -1), axis=-1)
    assert _raw_cosine(ref, {"logits": noisy}) < 0.99
    assert ctc.metric.score(ref, {"logits": noisy}, feed) == 1.0
    reversed_time = {"logits": ref["logits"][:, ::-1].copy()}
    assert not ctc.holds(ctc.metric.score(ref, reversed_time, feed))


def test_a_recogniser_with_many_characters_is_not_taken_for_a_detector() -> None:
    """PP-OCRv4's recogniser answers [batch, 40 steps, 6625 characters] of probabilities: the shape of a YOLO head
    ("4 + 36 classes" over 6625 "anchors"), but every step sums to 1."""
    logits = np.random.default_rng(0).normal(0, 3, (6, 12, 400))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    inferred, why = infer_targets({"x": np.zeros((6, 3, 48, 320), np.float32)}, {"softmax_11.tmp_0": probs})
    assert [t.metric.name for t in inferred] == ["ctc"], why
    boxes = np.random.default_rng(1).uniform(0, 320, (6, 4, 400))  # a YOLO head: boxes in pixels, then scores
    head = np.concatenate([boxes, probs[:, :8] * 0.9], axis=1).astype(np.float32)
    assert [t.metric.name for t in infer_targets({"images": np.zeros((6, 3, 32, 32), np.float32)},
                                                 {"output0": head})[0]] == ["detection"]


def test_a_time_major_ctc_output_is_judged_per_sequence(tmp_path: Path) -> None:
    """CRNN exports often hand CTC its ``[steps, batch, classes]`` layout: the batch axis the signature declares
    (axis 1) makes the inferred metric decode each sequence of the batch, not each time step across the batch."""
    model = ctc_model()
    model.graph.node.append(helper.make_node("Transpose", ["logits"], ["log_probs"], name="time_major", perm=[1, 0, 2]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, [20, "batch", 12]))
    src = save(model, tmp_path / "ctc_tbc.onnx")
    feed = {"features": ctc_data()}
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="dynamic", calibration=feed)
    judged = pkg.manifest.fidelity["budget"]
    assert "layout=tbc" in str(judged) and "[steps, batch, classes]" in judged["because"], judged
    ref = _run(src, feed)
    rows = ref["log_probs"].shape[1]
    one_sequence_wrong = ref["log_probs"].copy()
    one_sequence_wrong[:, 0] = one_sequence_wrong[::-1, 0]  # the first sequence read backwards
    ctc = target("ctc,layout=tbc", min=0.98)
    assert ctc.metric.score(ref, {"log_probs": one_sequence_wrong}, feed) == pytest.approx(1 - 1 / rows)


def test_a_time_major_output_misnamed_batch_first_is_measured_before_it_is_judged(tmp_path: Path) -> None:
    """A traced CRNN's ``[steps, batch, classes]`` declared ``[batch, LogSoftmaxoutput_dim_1, 37]`` (edgeserve's
    default for a TorchScript file names every output's axis 0 the batch): judged by its names, the held-out
    answers were joined along the steps and the CTC metric decoded each step across the batch, so static int8 of a
    CRNN read 0.97 where it decodes every sequence alike."""
    model = ctc_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "steps"  # a line image's width: variable
    model.graph.node.append(helper.make_node("Transpose", ["logits"], ["log_probs"], name="time_major", perm=[1, 0, 2]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["batch", "dim_1", 12]))
    src = save(model, tmp_path / "ctc_misnamed.onnx")
    feed = {"features": ctc_data()}
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="none", calibration=feed, eval_data=feed)
    judged = pkg.manifest.fidelity["budget"]
    assert "layout=tbc" in str(judged) and "[steps, batch, classes]" in judged["because"], judged
    assert pkg.manifest.outputs[0].batch_axis == 1
    assert pkg.manifest.fidelity["metrics"] == {"ctc,layout=tbc,output=log_probs": 1.0}


def test_box_match_pairs_kept_boxes_one_to_one() -> None:
    """A detector's kept boxes, a list per sample: F1 of boxes matched by IoU and label, pooled over samples."""
    ref_boxes = [np.array([[0, 0, 10, 10], [20, 20, 40, 40], [50, 0, 60, 30], [0, 50, 30, 60]], np.float32),
                 np.zeros((0, 4), np.float32)]
    ref_labels = [np.array([1, 2, 1, 3]), np.zeros(0, np.int64)]
    ref = {"boxes": ragged(ref_boxes), "labels": ragged(ref_labels)}
    m = metric("box-match", output="boxes", labels="labels")
    assert m.score(ref, ref, {}) == 1.0
    jitter = [b + 0.5 for b in ref_boxes]
    assert m.score(ref, {"boxes": ragged(jitter), "labels": ragged(ref_labels)}, {}) == 1.0
    one_fewer = {"boxes": ragged([ref_boxes[0][:3], ref_boxes[1]]), "labels": ragged([ref_labels[0][:3], ref_labels[1]])}
    assert m.score(ref, one_fewer, {}) == pytest.approx(2 * 3 / 7)
    relabelled = {"boxes": ref["boxes"], "labels": ragged([np.array([1, 2, 1, 0]), ref_labels[1]])}
    assert m.score(ref, relabelled, {}) == pytest.approx(2 * 3 / 8)
    moved = {"boxes": ragged([b[::-1] + np.float32(100) for b in ref_boxes]), "labels": ref["labels"]}
    assert m.score(ref, moved, {}) == 0.0
    nothing = {"boxes": ragged([np.zeros((0, 4), np.float32)] * 2), "labels": ragged([np.zeros(0, np.int64)] * 2)}
    assert m.score(ref, nothing, {}) == 0.0 and m.score(nothing, nothing, {}) == 1.0
    twins = {"b": ragged([np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float32)])}  # two boxes over one object
    assert metric("box-match").score(twins, {"b": ragged([np.array([[0, 0, 10, 10]], np.float32)])}, {}) \
        == pytest.approx(2 * 1 / 3)  # one candidate box answers one of them, not both
    centres = metric("box-match,format=cxcywh")  # (cx, cy, w, h): the same box read as corners would not match
    as_centres = ragged([np.array([[20, 20, 10, 10]], np.float32)])  # as corners: x2 < x1, no area
    shifted = ragged([np.array([[21, 20, 10, 10]], np.float32)])
    assert centres.score({"b": as_centres}, {"b": shifted}, {}) == 1.0
    assert metric("box-match").score({"b": as_centres}, {"b": shifted}, {}) == 0.0


def test_outputs_kept_per_sample_are_compared_sample_by_sample() -> None:
    """Any metric compares outputs kept per sample one sample at a time and keeps the worst: a change in the
    last sample counts (the converter once kept only the first sample of such outputs)."""
    rng = np.random.default_rng(0)
    ref = {"v": ragged([rng.normal(size=(n, 3)).astype(np.float32) for n in (2, 5, 4)])}
    cosine = metric("cosine")
    assert cosine.score(ref, ref, {}) == 1.0
    last_changed = ragged([*ref["v"][:2], -ref["v"][2]])
    assert cosine.score(ref, {"v": last_changed}, {}) == pytest.approx(-1.0)
    a_count_changed = ragged([*ref["v"][:2], ref["v"][2][:3]])
    assert cosine.score(ref, {"v": a_count_changed}, {}) == -1.0  # a shape change is the worst score
    assert cosine.score(ref, {"v": np.zeros((3, 3), np.float32)}, {}) == -math.inf  # per sample against joined
    fewer_samples = {"v": ragged(list(ref["v"][:2]))}
    assert metric("max-abs").score(ref, fewer_samples, {}) == math.inf


def test_a_classifier_exported_at_batch_1_is_judged_as_a_classifier(tmp_path: Path) -> None:
    """Model-zoo classifiers are often fixed at batch 1 (``[1, 16]`` → ``[1, 4]``): rows stacked on that axis are
    samples, and their answers join on it into ``[samples, 4]`` class scores, judged by top-1 and probability
    change rather than as an unknown ``[samples, 1, 4]`` tensor."""
    src = save(mlp_model(n_in=16, n_out=4, batch=1), tmp_path / "m.onnx")
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="dynamic", calibration={"x": rows(64)})
    judged = [t["metric"] for t in pkg.manifest.fidelity["budget"]["targets"]]
    assert judged == ["top1,output=logits", "prob-change,output=logits"], judged
    assert pkg.manifest.envelope["rows"] == 64  # and the guard's reference has a row per sample


def test_only_sizes_no_input_names_make_outputs_per_sample() -> None:
    """A size an input names, even inside an exporter's expression (``floor(W/4)``, ``s53*2``), follows the input:
    samples of one shape give outputs of one shape, joined as usual. A size nothing names is the values' doing."""
    from edgeserve.converter.data import _sized_by_values
    from edgeserve.tensors import TensorSpec

    image = [TensorSpec("image", "float32", (1, 1, 32, "W"))]
    assert not _sized_by_values([TensorSpec("steps", "float32", ("floor(W/4)", 1, 37))], image)
    assert not _sized_by_values([TensorSpec("twice", "float32", ("W*2",))], image)
    assert _sized_by_values([TensorSpec("boxes", "float32", ("Addboxes_dim_0", 4))], image)
    assert _sized_by_values([TensorSpec("boxes", "float32", ("u0", 4))], [TensorSpec("x", "float32", (1, 8))])


def test_a_post_processed_detector_is_judged_by_its_kept_boxes(tmp_path: Path) -> None:
    """A batch-1 export whose outputs' length depends on the values (torchvision-style boxes, scores and labels):
    rows stacked on the batch-1 axis are samples, every sample's outputs are kept and compared, and the inferred
    metric matches boxes rather than failing every candidate whose count moved by one."""
    src = save(kept_boxes_model(), tmp_path / "det.onnx")
    data = kept_boxes_data()
    specs = check_samples({"candidates": data}, edgeserve.load(src).inputs, what="test")
    assert specs.rows == len(data)  # [24, 48, 6] for a [1, 48, 6] input: 24 samples, not one of the wrong shape
    with edgeserve.load(src) as model:
        out = run_samples(model._session, specs, model.outputs)
    assert all(is_ragged(v) and len(v) == len(data) for v in out.values())
    assert len({len(b) for b in out["boxes"]}) > 1  # the counts differ: joining them was never possible
    with edgeserve.load(src) as model:  # one sample joins fine, but is kept per sample as any number would be
        assert is_ragged(run_samples(model._session, specs.take(0, 1), model.outputs)["boxes"])
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="dynamic", calibration={"candidates": data})
    judged = pkg.manifest.fidelity["budget"]
    assert judged["targets"][0]["metric"] == "box-match,labels=labels,output=boxes,scores=scores", judged
    assert pkg.manifest.fidelity["metrics"]["box-match,labels=labels,output=boxes,scores=scores"] > 0.9
    assert "top1_agreement" not in pkg.manifest.fidelity["summary"]  # the [count, 4] boxes are no class scores


def test_segmentation_is_judged_by_the_mean_iou_of_its_class_maps() -> None:
    """Per-pixel logits: what matters is each pixel's class, and a small class lost entirely matters as much
    as a large one (mean IoU over classes), however close the raw logits stay."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (2, 4, 16, 16)).astype(np.float32)
    logits[:, 0] += 3.0  # background almost everywhere
    logits[:, 3, 2:4, 2:4] += 8.0  # a small object of class 3
    ref = {"logits": logits}
    targets, why = infer_targets({"pixel_values": np.zeros((2, 3, 64, 64), np.float32)}, ref)
    assert [t.metric.spec for t in targets] == ["seg-miou,output=logits"] and "mean IoU" in why
    seg = targets[0]
    assert seg.metric.score(ref, ref, {}) == 1.0
    keeps_classes = logits + np.where(logits == logits.max(1, keepdims=True), 0.0, -2.0).astype(np.float32)
    assert _raw_cosine(ref, {"logits": keeps_classes}) < 0.95 and seg.metric.score(ref, {"logits": keeps_classes}, {}) == 1.0
    lost = logits.copy()
    lost[:, 3] -= 20.0  # the small object is gone: 8 of 512 pixels, a whole class
    pixels_agree = float(np.mean(lost.argmax(1) == logits.argmax(1)))
    assert pixels_agree > 0.97 and not seg.holds(seg.metric.score(ref, {"logits": lost}, {}))
    broken = np.full_like(logits, np.nan)  # argmax would read each pixel as class 0, the background
    assert seg.metric.score(ref, {"logits": broken}, {}) == 0.0
    last = {"logits": logits.transpose(0, 2, 3, 1)}  # channels last, named with axis=-1
    assert metric("seg-miou,axis=-1").score(last, {"logits": lost.transpose(0, 2, 3, 1)}, {}) \
        == pytest.approx(seg.metric.score(ref, {"logits": lost}, {}))
    image_out = {"upscaled": rng.random((2, 3, 32, 32)).astype(np.float32)}  # a super-resolution's image: no classes
    assert [t.metric.name for t in infer_targets({}, image_out)[0]] == ["cosine", "nrmse"]


def test_inputs_named_like_token_ids_are_never_taken_for_a_mask() -> None:
    """The mask fallback takes a 0/1 [batch, seq] input matching the answers; ids drawn from two tokens, or BERT's
    0/1 token_type_ids, look so and are no mask."""
    from edgeserve.metrics import find_mask

    zero_one = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], np.int64)
    for name in ("decoder_input_ids", "token_type_ids", "input_ids"):
        assert find_mask({name: zero_one}, (2, 4, 8)) is None, name
    assert find_mask({"segments": zero_one}, (2, 4, 8)) == "segments"
    assert find_mask({"token_type_ids": zero_one, "attention_mask": np.ones((2, 4), np.int64)}, (2, 4, 8)) \
        == "attention_mask"


def test_unnamed_per_pixel_scores_at_the_images_size_are_judged_as_segmentation() -> None:
    """torchvision's segmentation networks answer 'out' [batch, 21, H, W] at the input's own height and width: no
    name says scores, the shape does. A flow's 2 channels, a denoiser's image and a backbone's smaller feature map
    are not classes."""
    rng = np.random.default_rng(0)
    image = {"input": np.zeros((2, 3, 32, 24), np.float32)}
    out = {"out": rng.normal(0, 1, (2, 21, 32, 24)).astype(np.float32)}
    targets, why = infer_targets(image, out)
    assert [t.metric.spec for t in targets] == ["seg-miou,output=out"] and "as tall and wide as the image" in why
    for name, shape in (("flow", (2, 2, 32, 24)), ("denoised", (2, 3, 32, 24)), ("features", (2, 64, 8, 6))):
        assert [t.metric.name for t in infer_targets(image, {name: rng.normal(0, 1, shape).astype(np.float32)})[0]] \
            == ["cosine", "nrmse"], name


def test_detection_agreement_counts_classes_and_boxes() -> None:
    ref = {"output0": detection_outputs()}
    targets, why = infer_targets({"images": np.zeros((8, 3, 32, 32), np.float32)}, ref)
    assert [t.metric.name for t in targets] == ["detection"] and "anchors" in why
    det = target("detection")
    assert det.metric.score(ref, ref, {}) == 1.0
    jitter = ref["output0"].copy()
    jitter[:, :4] += np.random.default_rng(0).normal(0, 1.0, jitter[:, :4].shape)  # a pixel of box error
    assert det.holds(det.metric.score(ref, {"output0": jitter}, {}))
    shifted = ref["output0"].copy()
    shifted[:, :2] += 150.0  # every box moved: the classes agree, the boxes do not
    assert det.metric.score(ref, {"output0": shifted}, {}) == 0.0
    swapped = ref["output0"].copy()
    swapped[:, 4:] = swapped[:, 4:][:, ::-1]  # classes permuted
    assert not det.holds(det.metric.score(ref, {"output0": swapped}, {}))
    transposed = {"output0": np.ascontiguousarray(ref["output0"].transpose(0, 2, 1))}  # [batch, anchors, 4 + C]
    assert det.metric.score(transposed, transposed, {}) == 1.0
    # a PicoDet head: class scores alone, [batch, anchors, 10], mostly near 0 (its boxes are in another output)
    scores_only = {"scores": (np.random.default_rng(1).random((2, 7600, 10)) ** 8 * 0.6).astype(np.float32)}
    assert [t.metric.name for t in infer_targets({}, scores_only)[0]] != ["detection"]


def test_a_detector_with_more_values_after_its_class_scores_is_judged_on_the_classes_alone() -> None:
    """YOLOv8-pose answers [batch, 4 + 1 + 17 x 3, anchors] (box, person score, keypoints in pixels), YOLOv8-seg
    [batch, 4 + 80 + 32, anchors] (box, classes, mask coefficients) beside its prototypes. Read as all classes, a
    keypoint's x (hundreds of pixels) is every anchor's "best class", and a candidate that lost every person
    passed."""
    rng = np.random.default_rng(0)
    image = {"images": np.zeros((4, 3, 64, 64), np.float32)}
    people = detection_outputs(rows=4, classes=1, anchors=900)
    keypoints = np.concatenate([rng.uniform(0, 640, (4, 2, 900)), rng.uniform(0, 1, (4, 1, 900))], 1)
    pose = np.concatenate([people, np.tile(keypoints, (1, 17, 1))], 1).astype(np.float32)
    ref = {"output0": pose}
    targets, why = infer_targets(image, ref)
    assert [t.metric.spec for t in targets] == ["detection,classes=1,output=output0", "nrmse,output=output0"]
    assert "1 classes, then 51 more values an anchor" in why
    nobody = pose.copy()
    nobody[:, 4] = 0.0  # every person score gone: keypoints and boxes as before
    assert targets[0].metric.score(ref, {"output0": nobody}, image) == 0.0
    assert target("detection").metric.score(ref, {"output0": nobody}, image) == 1.0  # the keypoints read as classes
    assert all(t.holds(t.metric.score(ref, ref, image)) for t in targets)

    classes = detection_outputs(rows=2, classes=80, anchors=2100)
    seg = {"output0": np.concatenate([classes, rng.normal(0, 1, (2, 32, 2100)).astype(np.float32)], 1),
           "output1": rng.normal(0, 1, (2, 32, 40, 40)).astype(np.float32)}
    assert [t.metric.spec for t in infer_targets(image, seg)[0]] == [
        "detection,classes=80,output=output0", "nrmse,output=output0", "nrmse,output=output1"]
    plain = {"output0": classes}
    assert [t.metric.spec for t in infer_targets(image, plain)[0]] == ["detection,output=output0"]
    for bad in ("detection,classes=0", "detection,classes=two"):
        with pytest.raises(edgeserve.ConfigError, match="classes="):
            metric(bad)
    with pytest.raises(edgeserve.MetricError, match="classes=90 needs 4 \\+ 90 values an anchor"):
        metric("detection,classes=90").score(plain, plain, image)


def _slot_outputs(rows: int = 4, slots: int = 300, found: int = 5, seed: int = 0) -> np.ndarray:
    """YOLOv10-like ``[rows, slots, 6]``: ``found`` detections (x1, y1, x2, y2, score, class id) first, the other
    slots low-scored leftovers."""
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 500, (rows, slots, 2))
    out = np.concatenate([lo, lo + rng.uniform(20, 120, (rows, slots, 2)), rng.uniform(0, 0.1, (rows, slots, 1)),
                          rng.integers(0, 80, (rows, slots, 1))], -1)
    out[:, :found, 4] = rng.uniform(0.5, 0.95, (rows, found))
    return out.astype(np.float32)


def test_an_end_to_end_detectors_slots_are_matched_by_class_and_box() -> None:
    """YOLOv10 (or an export with NMS inside) answers [batch, 300, 6]: box corners, score, class id per slot. Its
    class ids are no scores in [0, 1], so it was judged by the cosine, which a candidate relabelling every
    detection passed."""
    image = {"images": np.zeros((4, 3, 64, 64), np.float32)}
    ref = {"output0": _slot_outputs()}
    targets, why = infer_targets(image, ref)
    assert [t.metric.spec for t in targets] == ["slots,output=output0"] and "fixed slots" in why
    slots = targets[0]
    assert slots.metric.score(ref, ref, image) == 1.0
    relabelled = ref["output0"].copy()
    relabelled[..., 5] = (relabelled[..., 5] + 1) % 80
    assert slots.metric.score(ref, {"output0": relabelled}, image) == 0.0
    rounded = ref["output0"].copy()
    rounded[..., 5] += 0.022  # an int8 output's step: still the same class
    rounded[..., 4] -= 0.03  # and a confidence a little lower
    assert slots.metric.score(ref, {"output0": rounded}, image) == 1.0
    unsure = ref["output0"].copy()
    unsure[..., 4] -= 0.07  # every confidence lower by more than 0.05: to a user thresholding them, other detections
    assert slots.metric.score(ref, {"output0": unsure}, image) == 0.0
    assert metric("slots,score_change=0.1").score(ref, {"output0": unsure}, image) == 1.0
    assert all(t.holds(t.metric.score(ref, {"output0": relabelled}, image)) for t in generic_targets())
    reordered = ref["output0"][:, ::-1].copy()  # the same detections in other slots
    jitter = reordered.copy()
    jitter[..., :4] += np.random.default_rng(1).normal(0, 1.0, jitter[..., :4].shape)
    assert slots.holds(slots.metric.score(ref, {"output0": jitter}, image))
    one_lost = ref["output0"].copy()
    one_lost[0, 0, 4] = 0.05  # 1 of 20 detections dropped below the threshold: F1 = 2 * 19 / 39
    assert slots.metric.score(ref, {"output0": one_lost}, image) == pytest.approx(38 / 39)
    moved = ref["output0"].copy()
    moved[..., [0, 2]] += 200.0
    assert slots.metric.score(ref, {"output0": moved}, image) == 0.0
    tf = {"detection_boxes": np.ascontiguousarray(ref["output0"][..., [1, 0, 3, 2]] / 640),  # (y1, x1, y2, x2)
          "detection_scores": np.ascontiguousarray(ref["output0"][..., 4]),
          "detection_classes": np.ascontiguousarray(ref["output0"][..., 5]), "num_detections": np.full(4, 5.0, np.float32)}
    targets, why = infer_targets(image, tf)  # TensorFlow's detection API: the same slots in separate outputs
    assert [t.metric.spec for t in targets] == [
        "slots,boxes=detection_boxes,labels=detection_classes,scores=detection_scores", "nrmse,output=num_detections"]
    assert targets[0].metric.score(tf, tf, image) == 1.0
    assert targets[0].metric.score(tf, {**tf, "detection_classes": (tf["detection_classes"] + 1) % 80}, image) == 0.0
    assert targets[0].metric.score(tf, {**tf, "detection_scores": tf["detection_scores"] / 10}, image) == 0.0
    with pytest.raises(edgeserve.MetricError, match="has no output 'boxes'"):
        metric("slots,boxes=boxes,scores=detection_scores").score(tf, tf, image)
    probabilities = {"probs": np.full((4, 10, 6), 1 / 6, np.float32)}  # six classes per step: no slots
    assert [t.metric.name for t in infer_targets({}, probabilities)[0]] != ["slots"]


def _detr_outputs(rows: int = 6, queries: int = 100, classes: int = 20, found: int = 4,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """DETR-like answers: per query ``classes`` + 1 logits (the last "no object", top for most queries) and
    normalised (cx, cy, w, h) boxes; ``found`` queries per image hold a confident object."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (rows, queries, classes + 1)).astype(np.float32)
    logits[..., -1] += 6.0
    for r in range(rows):
        for q in rng.choice(queries, found, replace=False):
            logits[r, q, rng.integers(classes)] += 12.0
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (rows, queries, 2)), rng.uniform(0.05, 0.3, (rows, queries, 2))],
                           axis=-1).astype(np.float32)
    return {"logits": logits, "pred_boxes": boxes}


def test_a_set_prediction_detector_is_judged_by_its_queries_classes_and_boxes() -> None:
    """DETR's ``logits [batch, queries, classes + 1]`` and ``pred_boxes [batch, queries, 4]``: each query found
    by either model above 0.5 must keep its class and a box IoU >= 0.5 (raw cosine of the logits would hardly
    move when an object is lost: most queries say "no object" either way)."""
    ref = _detr_outputs()
    targets, why = infer_targets({"pixel_values": np.zeros((6, 3, 8, 8), np.float32)}, ref)
    assert [t.spec for t in (x.metric for x in targets)] == [
        "query-detection,boxes=pred_boxes,output=logits,scores=softmax"] and "no object" in why
    det = targets[0]
    assert det.metric.score(ref, ref, {}) == 1.0
    jitter = {**ref, "pred_boxes": ref["pred_boxes"] * np.float32(1.02)}
    assert det.holds(det.metric.score(ref, jitter, {}))
    moved = {**ref, "pred_boxes": ref["pred_boxes"] + np.array([0.3, 0, 0, 0], np.float32)}  # every box moved
    assert det.metric.score(ref, moved, {}) == 0.0
    relabelled = {**ref, "logits": np.concatenate([np.roll(ref["logits"][..., :-1], 1, axis=-1),
                                                   ref["logits"][..., -1:]], axis=-1)}  # same boxes, other classes
    assert det.metric.score(ref, relabelled, {}) == 0.0
    lost = {**ref, "logits": ref["logits"].copy()}
    for image in range(3):  # one object in each of three images falls under "no object": 3 of 24 lost
        query = int(np.argmax(ref["logits"][image, :, :-1].max(-1)))
        lost["logits"][image, query, ref["logits"][image, query, :-1].argmax()] -= np.float32(9.0)
    score = det.metric.score(ref, lost, {})
    assert score == pytest.approx(21 / 24) and not det.holds(score)
    cosine = target("cosine")
    assert cosine.holds(cosine.metric.score(ref, lost, {}))  # what raw cosine would have let through
    nan = {**ref, "logits": np.full_like(ref["logits"], np.nan)}
    assert det.metric.score(ref, nan, {}) == 0.0
    sigmoid = {**ref, "logits": ref["logits"][..., :-1] - 6.0}  # RT-DETR: a sigmoid per class, no background
    targets, why = infer_targets({}, sigmoid)
    assert "scores=sigmoid" in targets[0].metric.spec and targets[0].metric.score(sigmoid, sigmoid, {}) == 1.0
    zeros = {k: np.zeros_like(v) for k, v in ref.items()}
    assert det.metric.score(ref, zeros, {}) == 0.0  # a model answering nothing finds none of the objects


def test_an_anchor_detector_with_background_first_is_judged_by_its_anchors_found() -> None:
    """UltraFace, RetinaFace and SSD answer softmaxed ``scores [batch, anchors, 2]`` (background first) beside
    corner ``boxes [batch, anchors, 4]``. Read as DETR's sigmoid logits, every anchor scored above 0.5 with class
    "background", so a candidate that lost every face kept its score of 1."""
    rng = np.random.default_rng(0)
    anchors, faces = 4420, 6
    face = np.full((4, anchors), 0.02)
    for r in range(4):
        face[r, rng.choice(anchors, faces, replace=False)] = rng.uniform(0.8, 0.99, faces)
    scores = np.stack([1 - face, face], -1).astype(np.float32)
    lo = rng.uniform(0, 0.9, (4, anchors, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.02, 0.08, (4, anchors, 2))], -1).astype(np.float32)
    ref = {"scores": scores, "boxes": boxes}
    targets, why = infer_targets({"input": np.zeros((4, 3, 240, 320), np.float32)}, ref)
    assert [t.metric.spec for t in targets] == [
        "query-detection,background=first,boxes=boxes,format=xyxy,output=scores,scores=probabilities"]
    assert "the first class background" in why and "corners" in why
    det = targets[0]
    assert det.metric.score(ref, ref, {}) == 1.0
    unsure = np.minimum(face, 0.3)  # every face now scored 0.3: under the threshold, none found
    no_faces = {**ref, "scores": np.stack([1 - unsure, unsure], -1).astype(np.float32)}
    assert det.metric.score(ref, no_faces, {}) == 0.0
    shifted = boxes.copy()
    shifted[..., [0, 2]] += 0.04  # about a face's width: corners read as centres would keep an IoU near 0.9
    assert not det.holds(det.metric.score(ref, {**ref, "boxes": shifted}, {}))
    nudged = boxes.copy()
    nudged[..., [0, 2]] += 0.002
    assert det.holds(det.metric.score(ref, {**ref, "boxes": nudged}, {}))
    with pytest.raises(edgeserve.ConfigError, match="background must be"):
        metric("query-detection,background=middle")
    # RT-DETR's sigmoid logits where most queries' best class is the first (COCO's person): no background
    logits = rng.normal(-4, 1, (2, 300, 80)).astype(np.float32)
    logits[..., 0] += 3
    centres = np.concatenate([rng.uniform(0.2, 0.8, (2, 300, 2)), rng.uniform(0.05, 0.3, (2, 300, 2))], -1)
    assert [t.metric.spec for t in infer_targets({}, {"logits": logits, "pred_boxes": centres.astype(np.float32)})[0]] \
        == ["query-detection,boxes=pred_boxes,output=logits,scores=sigmoid"]


def test_scores_are_judged_by_top1_and_the_largest_probability_change() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 4)).astype(np.float32) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref = {"probabilities": probs}
    targets, why = infer_targets({"x": np.zeros((50, 3), np.float32)}, ref)
    assert [t.metric.name for t in targets] == ["top1", "prob-change"] and "thresholded" in why
    # a moderation score moved from 0.22 to 0.05: same top-1 class, cosine still high, the task changed
    moved = probs.copy()
    moved[:, 0] = np.where((probs[:, 0] > 0.15) & (probs[:, 0] < 0.3), probs[:, 0] - 0.15, probs[:, 0])
    budget = Budget(tuple(targets))
    verdict = budget.judge(ref, {"probabilities": moved}, {})
    assert verdict.scores["top1,output=probabilities"] >= 0.9 and not verdict.ok
    assert any("prob-change" in m for m in verdict.missed)
    assert budget.judge(ref, ref, {}).ok


def test_probabilities_from_a_quantised_softmax_are_still_class_scores() -> None:
    """A model quantised already (QDQ around its Softmax) answers probabilities on a uint8 grid: rows sum to one
    only within the rounding of each class, and an unnamed output must still be judged as class scores."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 5)).astype(np.float32) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    grid = (np.round(probs * 255) / 255).astype(np.float32)
    assert np.abs(grid.sum(1) - 1).max() > 1e-3
    targets, _ = infer_targets({"x": np.zeros((50, 3), np.float32)}, {"StatefulPartitionedCall:0": grid})
    assert [t.metric.name for t in targets] == ["top1", "prob-change"]
    # independent sigmoids in [0, 1] (multi-label) do not sum to one: not read as one distribution
    sigmoid = 1 / (1 + np.exp(-rng.standard_normal((50, 5)).astype(np.float32)))
    assert [t.metric.name for t in infer_targets({}, {"out:0": sigmoid})[0]] == ["cosine", "nrmse"]


def test_a_stateful_model_is_judged_by_absolute_error_of_its_output() -> None:
    data = vad_like_data()
    import onnxruntime as ort

    session = ort.InferenceSession(vad_like_model().SerializeToString())
    out = dict(zip(["output", "stateN"], session.run(None, data)))
    targets, why = infer_targets(data, out)
    assert [t.metric.spec for t in targets] == ["max-abs,output=output"] and "stateful" in why


def test_thresholds_and_directions() -> None:
    assert target("top1>=0.98").threshold == 0.98
    assert target("max-abs<=0.01").describe() == "max-abs <= 0.01"
    assert target("pooled-cosine").threshold == 0.99  # the default
    with pytest.raises(edgeserve.ConfigError, match="give its threshold as --max"):
        target("max-abs", min=0.1)
    with pytest.raises(edgeserve.ConfigError, match="unknown metric 'cosin'"):
        metric("cosin")
    with pytest.raises(edgeserve.ConfigError, match="has no option mask"):
        metric("prob-change,mask=x")
    with pytest.raises(edgeserve.ConfigError, match="needs a threshold"):
        target("tests.test_metrics:first_value_agreement")
    with pytest.raises(edgeserve.ConfigError, match="cannot import module"):
        metric("no_such_module_xyz:fn")
    nan = {"y": np.full((2, 3), np.nan, np.float32)}
    ok = {"y": np.ones((2, 3), np.float32)}
    for name in ("cosine", "rel-l2", "nrmse", "max-abs", "top1", "prob-change"):
        t = target(name)
        assert not t.holds(t.metric.score(ok, nan, {})), name  # NaN never passes


def first_value_agreement(reference, candidate, inputs) -> float:
    """A user metric: the fraction of rows whose first output value agrees to 0.1."""
    ref, cand = next(iter(reference.values())), next(iter(candidate.values()))
    return float(np.mean(np.abs(ref.reshape(len(ref), -1)[:, 0] - cand.reshape(len(cand), -1)[:, 0]) < 0.1))


def test_a_user_metric_through_the_api_and_the_cli(tmp_path: Path, mlp_path: Path) -> None:
    from tests.factories import rows

    np.savez(tmp_path / "cal.npz", x=rows(40))
    pkg = edgeserve.convert(mlp_path, tmp_path / "api", quantize="dynamic", calibration=tmp_path / "cal.npz",
                            metrics=[target(first_value_agreement, min=0.9)])
    assert pkg.manifest.fidelity["budget"]["targets"][0]["builtin"] is False
    def exact(r, c, i) -> float:
        return 1.0 if all(np.array_equal(r[k], c[k]) for k in r) else 0.5

    with pytest.raises(edgeserve.FidelityError, match="exact 0.5 < 0.9"):
        edgeserve.convert(mlp_path, tmp_path / "strict", quantize="dynamic", calibration=tmp_path / "cal.npz",
                          metrics=[target(exact, min=0.9)])
    with pytest.raises(edgeserve.ConfigError, match="fp32 model compared with itself misses the budget"):
        edgeserve.convert(mlp_path, tmp_path / "never", quantize="dynamic", calibration=tmp_path / "cal.npz",
                          metrics=[target(lambda r, c, i: 0.5, min=0.9)])
    result = CliRunner().invoke(main, ["convert", str(mlp_path), "-o", str(tmp_path / "cli"), "-q", "dynamic",
                                       "--calibration", str(tmp_path / "cal.npz"),
                                       "--metric", "tests.test_metrics:first_value_agreement", "--min", "0.9",
                                       "--metric", "max-abs", "--max", "0.5"])
    assert result.exit_code == 0, result.output
    assert "metric tests.test_metrics:first_value_agreement" in result.output and "metric max-abs" in result.output
    bad = CliRunner().invoke(main, ["convert", str(mlp_path), "-o", str(tmp_path / "bad"), "--metric", "top1",
                                    "--max", "0.2"])
    assert bad.exit_code == 2 and "--max 0.2 pairs with no --metric" in bad.output


def test_a_metric_that_does_not_fit_the_model_fails_before_any_work(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(edgeserve.ConfigError, match="pooled-cosine needs a \\[batch, seq, hidden\\] output"):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", metrics=["pooled-cosine"])
    assert not (tmp_path / "pkg").exists()


def test_golden_answers_pass_on_task_agreement_only_with_builtin_targets() -> None:
    from edgeserve.golden import mismatches, task_agrees

    rng = np.random.default_rng(0)
    expected = {"logits": rng.standard_normal((8, 5)).astype(np.float32) * 4}
    moved = {"logits": expected["logits"] + 0.3 * np.sign(expected["logits"])}  # further from every tie: same class
    records = [target("top1", min=1.0).record()]
    assert mismatches(moved, expected, 0.01)  # beyond the raw tolerance…
    assert task_agrees(moved, expected, {}, records)  # …but the same answers
    flipped = {"logits": expected["logits"][:, ::-1].copy()}
    assert not task_agrees(flipped, expected, {}, records)
    assert not task_agrees(moved, expected, {}, [])  # no targets recorded: the raw tolerance rules
    user = [{"metric": "tests.test_metrics:first_value_agreement", "min": 0.0, "builtin": False}]
    assert not task_agrees(moved, expected, {}, user)  # a user function is never imported at load


def test_a_language_models_logits_are_judged_by_the_top_token_at_real_positions() -> None:
    """[batch, seq, vocab] logits with a mask: an LM or a tagger. Pooled cosine over the vocabulary would let a
    changed next token pass; the top-1 token per real position does not, and padding never counts."""
    rng = np.random.default_rng(0)
    mask = np.ones((4, 6), np.int64)
    mask[:, 4:] = 0
    inputs = {"input_ids": rng.integers(0, 50, (4, 6)), "attention_mask": mask}
    ref = rng.standard_normal((4, 6, 50)).astype(np.float32)
    targets, why = infer_targets(inputs, {"logits": ref})
    assert targets[0].metric.name.startswith("top1") and "not padding" in why
    assert infer_targets(inputs, {"last_hidden_state": ref})[0][0].metric.name.startswith("pooled-cosine")
    judge = targets[0].metric.fn
    padded_only = ref.copy()
    padded_only[:, 4:] = -ref[:, 4:]  # every padded position's top token changes
    assert judge({"logits": ref}, {"logits": padded_only}, inputs) == 1.0
    one_real = ref.copy()
    one_real[0, 1] = -ref[0, 1]  # one real position of 16 changes its top token
    assert judge({"logits": ref}, {"logits": one_real}, inputs) == pytest.approx(15 / 16)


def test_per_step_logits_without_a_mask_are_judged_by_the_top_class_at_every_step() -> None:
    """A speech model's raw CTC logits ([batch, frames, vocab], not normalised, from a waveform): the per-row
    cosine over a whole utterance lets a changed frame pass; the top class per frame does not."""
    rng = np.random.default_rng(0)
    inputs = {"input_values": rng.standard_normal((4, 4000)).astype(np.float32)}
    ref = rng.standard_normal((4, 12, 32)).astype(np.float32) * 3
    targets, why = infer_targets(inputs, {"logits": ref})
    assert [t.metric.spec for t in targets] == ["top1,output=logits"] and "every step" in why
    one_frame = ref.copy()
    one_frame[2, 5] = -ref[2, 5]  # one frame of 48 changes its top class
    assert targets[0].metric.fn({"logits": ref}, {"logits": one_frame}, inputs) == pytest.approx(47 / 48)
    assert metric("cosine").score({"logits": ref}, {"logits": one_frame}, inputs) > 0.8
    assert [t.metric.name for t in infer_targets(inputs, {"features": ref})[0]] == ["cosine", "nrmse"]  # not named so


def test_kept_indices_of_another_count_are_judged_by_their_overlap_not_as_total_disagreement() -> None:
    """A detector's post-processing (NonZero, NMS) returns the indices it keeps, ``[count, 2]``: int8 keeping one
    box fewer is a small difference, keeping other boxes a total one; labels of equal shape count equal values."""
    cosine = metric("cosine").score
    scores = np.array([0.9, 0.7], np.float32)
    ref = {"keep": np.array([[0, 1], [0, 5], [1, 3]], np.int64), "best": scores}
    one_fewer = {"keep": np.array([[0, 1], [1, 3]], np.int64), "best": scores}
    others = {"keep": np.array([[2, 2], [3, 3], [4, 4]], np.int64), "best": scores}
    assert cosine(ref, ref, {}) == 1.0
    assert cosine(ref, one_fewer, {}) == pytest.approx(2 / 3)
    assert cosine(ref, {"keep": np.zeros((0, 2), np.int64), "best": scores}, {}) == 0.0  # kept nothing
    assert cosine(ref, others, {}) == 0.0
    none = {"keep": np.zeros((0, 2), np.int64), "best": scores}
    assert cosine(none, none, {}) == 1.0 and cosine(none, ref, {}) == 0.0  # fp32 kept nothing: so must int8
    assert cosine(ref, {"keep": np.array([0, 1, 0, 5], np.int64), "best": scores}, {}) == 0.0  # another layout
    labels = {"label": np.array([3, 1, 4, 1])}
    assert cosine(labels, {"label": np.array([3, 1, 4, 2])}, {}) == 0.75


def test_a_decoder_with_a_kv_cache_is_judged_by_its_next_tokens_not_by_the_cache() -> None:
    """present_key [batch, heads, past + seq, dim] grows from past_key: a state fed back, though not shaped like
    its input. The logits beside it are judged per step (the whole-output cosine would let a changed token pass);
    a cache-like name alone, without the input it grows from, makes no state."""
    from edgeserve.tensors import fed_back

    rng = np.random.default_rng(0)
    inputs = {"input_ids": rng.integers(0, 100, (4, 3)), "past_key": rng.standard_normal((4, 2, 5, 8)),
              "past_value": rng.standard_normal((4, 2, 5, 8))}
    outs = {"logits": rng.standard_normal((4, 3, 100)).astype(np.float32),
            "present_key": rng.standard_normal((4, 2, 8, 8)).astype(np.float32),
            "present_value": rng.standard_normal((4, 2, 8, 8)).astype(np.float32)}
    assert fed_back(inputs, outs) == ({"past_key", "past_value"}, {"present_key", "present_value"})
    targets, why = infer_targets(inputs, outs)
    assert [t.metric.spec for t in targets] == ["top1,output=logits"] and "stateful" in why
    assert fed_back({"x": inputs["past_key"]}, {"present": outs["present_key"], "y": outs["logits"]}) == (set(), set())


def test_an_inferred_metric_that_does_not_fit_the_outputs_says_to_name_one(tmp_path: Path, mlp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeserve.converter import api
    from tests.factories import rows

    monkeypatch.setattr(api, "infer_targets", lambda *a: ([target(lambda r, c, i: 0.5, min=0.9)], "a wrong guess"))
    with pytest.raises(edgeserve.ConfigError, match=r"the metric inferred for this model does not fit its outputs: "
                       r"the fp32 model compared with itself scores .*0.5 < 0.9 \(inferred: a wrong guess\); "
                       r"name the task's metric with --metric"):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", calibration={"x": rows(40)})


def test_a_metric_that_a_model_answering_zeros_would_pass_is_found_out() -> None:
    from edgeserve.fidelity import Budget

    rng = np.random.default_rng(0)
    quiet = np.concatenate([rng.uniform(0, 320, (4, 4, 200)), rng.uniform(0, 0.1, (4, 8, 200))], axis=1)
    busy = quiet.copy()
    busy[:, 4 + 2, 17] = 0.9  # one object found
    detection = Budget((target("detection"),))
    assert detection.passed_by_zeros({"output0": quiet}, {}) == ["detection"]  # fp32 detects nothing here
    assert detection.passed_by_zeros({"output0": busy}, {}) == []
    blank = np.zeros((3, 10, 6))
    blank[..., 0] = 1.0  # CTC: the blank everywhere, every string empty
    spoken = blank.copy()
    spoken[:, 4] = np.eye(6)[3]
    assert Budget((target("ctc"),)).passed_by_zeros({"y": blank}, {}) == ["ctc"]
    assert Budget((target("ctc"),)).passed_by_zeros({"y": spoken}, {}) == []
    assert Budget((target("map-iou"),)).passed_by_zeros({"m": np.full((2, 1, 8, 8), 0.01)}, {}) == ["map-iou"]
    assert Budget((target("cosine"),)).passed_by_zeros({"y": rng.normal(size=(4, 5))}, {}) == []


def test_an_inferred_metric_with_nothing_to_judge_gives_way_to_cosine(tmp_path: Path, mlp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from edgeserve.converter import api
    from tests.factories import rows

    def anything(r, c, i) -> float:
        return 1.0  # passes whatever the candidate answers

    monkeypatch.setattr(api, "infer_targets", lambda *a: ([target(anything, min=0.9)], "a detector, say"))
    pkg = edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="dynamic", calibration={"x": rows(40)})
    budget = pkg.manifest.fidelity["budget"]
    assert [t["metric"] for t in budget["targets"]] == ["cosine", "nrmse"]
    assert "fp32 finds nothing in this data for" in budget["because"] and "per-row cosine and the error against the values' spread judge" in budget["because"]
    with caplog.at_level("WARNING"):
        named = edgeserve.convert(mlp_path, tmp_path / "named", quantize="dynamic", calibration={"x": rows(40)},
                                  metrics=[target(anything, min=0.9)])
    assert named.manifest.recipe["budget_passed_by_zeros"] and "a model answering zeros would pass" in caplog.text


def test_a_share_over_samples_kept_apart_is_their_mean_not_the_worst() -> None:
    """A batch-1 OCR export with a free-length output keeps its answers per sample: one wrong string of four is
    0.75 of the strings agreeing (it read as 0, the worst sample), while cosine still takes the worst."""
    from edgeserve.metrics import ragged

    rng = np.random.default_rng(0)
    samples = [rng.normal(0, 3, (6, 1, 5)) for _ in range(4)]  # [steps, 1, classes] each, time-major
    changed = [s.copy() for s in samples]
    changed[2][:, 0, 1] = 50.0  # one sample decodes to another string
    ref, cand = {"y": ragged(samples)}, {"y": ragged(changed)}
    assert metric("ctc,layout=tbc").score(ref, cand, {}) == pytest.approx(0.75)
    assert metric("cosine").score(ref, cand, {}) == pytest.approx(
        min(metric("cosine").score({"y": a}, {"y": b}, {}) for a, b in zip(samples, changed)))


def test_a_clusterers_distances_are_judged_by_its_labels() -> None:
    """scikit-learn's KMeans answers ``label`` and ``scores`` holding distances to each centre: the label is the
    smallest score. Read as class scores, top-1 would compare the farthest clusters."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)[:300]
    km = KMeans(6, n_init=2, random_state=0).fit(x)
    ref = {"label": km.predict(x).astype(np.int64), "scores": km.transform(x).astype(np.float32)}
    targets, why = infer_targets({"X": x}, ref)
    assert [t.metric.spec for t in targets] == ["top1,output=label"] and "nearest" in why
    moved = {"label": (ref["label"] + 1) % 6, "scores": ref["scores"]}
    assert targets[0].metric.score(ref, moved, {}) == 0.0
    # a classifier's label is its largest score: still class scores
    probs = np.exp(-ref["scores"]) / np.exp(-ref["scores"]).sum(1, keepdims=True)
    targets, _ = infer_targets({"X": x}, {"label": probs.argmax(1), "probabilities": probs})
    assert [t.metric.name for t in targets] == ["top1", "prob-change"]


def test_a_regressions_single_values_are_judged_by_their_error_not_by_their_signs() -> None:
    """The cosine of two numbers is 1 whenever their signs agree: a regressor answering ten times its fp32 values
    passed. One value a row is now judged by its relative error, and a regression's outputs by nrmse."""
    rng = np.random.default_rng(0)
    ref = {"variable": rng.uniform(1, 100, (60, 1)).astype(np.float32)}
    cosine = metric("cosine")
    assert cosine.fn(ref, {"variable": ref["variable"] * 10}, {}) < 0
    assert cosine.fn(ref, {"variable": ref["variable"] * 1.005}, {}) >= 0.99
    assert cosine.fn(ref, {"variable": ref["variable"] * 1.05}, {}) < 0.99
    targets, why = infer_targets({"x": np.zeros((60, 3), np.float32)}, ref, {"variable": 0})
    assert [t.metric.spec for t in targets] == ["nrmse,output=variable"] and "regression" in why
    assert not targets[0].holds(targets[0].metric.fn(ref, {"variable": ref["variable"] * 10}, {}))
    flat = {"y": ref["variable"].ravel()}  # [rows]: a torch regressor's squeezed answer
    assert [t.metric.name for t in infer_targets({}, flat, {"y": 0})[0]] == ["nrmse"]
    # one sample's vector, from a model without a batch axis: a vector, compared by its cosine
    assert [t.metric.name for t in infer_targets({}, flat, {"y": None})[0]] == ["cosine", "nrmse"]
    # an anomaly detector's label beside its score: the labels must agree too
    scored = {"label": np.where(ref["variable"] > 50, 1, -1).astype(np.int64), "scores": ref["variable"]}
    specs = [t.metric.spec for t in infer_targets({}, scored, {"label": 0, "scores": 0})[0]]
    assert specs == ["nrmse,output=scores", "cosine,output=label"]


def test_a_regression_with_an_offset_is_judged_against_the_spread_of_its_predictions() -> None:
    """Predictions around 1000 +- 70 (a price, a temperature in kelvin): rel-l2 is the error over the values'
    size, so a candidate off by 50 everywhere (most of the spread) read 0.05 and passed, and a constant answer
    at the mean read 0.07. nrmse holds the error to the spread."""
    rng = np.random.default_rng(0)
    ref = {"y": (1000 + 70 * rng.standard_normal(200)).astype(np.float32)}
    nrmse, rel = target("nrmse"), target("rel-l2")
    assert rel.holds(rel.metric.score(ref, {"y": ref["y"] + 50}, {}))  # what slipped through
    for broken in (ref["y"] + 50, np.full_like(ref["y"], ref["y"].mean()), ref["y"][::-1].copy()):
        assert not nrmse.holds(nrmse.metric.score(ref, {"y": broken}, {}))
    noise = ref["y"] + 0.05 * 70 * rng.standard_normal(200).astype(np.float32)  # 5% of the spread: kept
    assert nrmse.metric.score(ref, {"y": noise}, {}) == pytest.approx(0.05, rel=0.15)
    assert nrmse.holds(nrmse.metric.score(ref, {"y": noise}, {}))
    assert nrmse.metric.score(ref, ref, {}) == 0.0
    still = {"y": np.full(50, 3.0, np.float32)}  # no spread: by its size, as rel-l2
    assert nrmse.metric.score(still, {"y": still["y"] * 1.01}, {}) == pytest.approx(0.01, rel=1e-4)


def test_outputs_no_task_is_recognised_in_are_judged_by_their_size_too() -> None:
    """A per-row cosine passes any scale: a feature extractor answering twice its fp32 values passed the generic
    budget. The error against the values' spread beside it (nrmse <= 0.15, about what the cosine allows in
    direction) refuses that, and lets through what the cosine lets through; and it sees an error an offset hides
    from both the cosine and rel-l2 (a forecaster's static int8, off by 0.8 of its answers' spread)."""
    from edgeserve.fidelity import Budget

    rng = np.random.default_rng(0)
    ref = {"features": rng.standard_normal((40, 16)).astype(np.float32)}
    targets, why = infer_targets({}, ref, {"features": 0})
    assert [t.metric.name for t in targets] == ["cosine", "nrmse"] and "passes any scale" in why
    budget = Budget(tuple(targets))
    doubled = budget.judge(ref, {"features": ref["features"] * 2}, {})
    assert doubled.scores["cosine"] > 0.999999 and not doubled.ok and doubled.missed[0].startswith("nrmse")
    noisy = {"features": ref["features"] + rng.standard_normal((40, 16)).astype(np.float32) * 0.03}
    assert budget.judge(ref, noisy, {}).ok  # int8-like noise: within both
    forecast = {"forecast": (1000 + 1.2 * rng.standard_normal((40, 12))).astype(np.float32)}
    off = {"forecast": forecast["forecast"] + rng.normal(0, 1.0, (40, 12)).astype(np.float32)}
    verdict = Budget(tuple(infer_targets({}, forecast, {"forecast": 0})[0])).judge(forecast, off, {})
    assert verdict.scores["cosine"] > 0.99999 and target("rel-l2").holds(target("rel-l2").metric.score(forecast, off, {}))
    assert not verdict.ok and verdict.missed[0].startswith("nrmse")


def test_a_kv_cache_decoder_is_judged_at_its_new_tokens_that_are_not_padding() -> None:
    """A decoder step with a cache: the mask covers the cache's 5 positions and then the 3 new tokens', so the
    logits [batch, 3, vocab] are compared where the mask's last 3 positions are 1 (a left-padded batch's pad token
    predicts nothing)."""
    rng = np.random.default_rng(0)
    mask = np.ones((2, 8), np.int64)
    mask[1, 5] = 0  # the second sequence's first new position is padding
    feed = {"input_ids": rng.integers(0, 50, (2, 3)), "attention_mask": mask,
            "past_key_values.0.key": rng.standard_normal((2, 4, 5, 16)).astype(np.float32)}
    ref = {"logits": rng.standard_normal((2, 3, 50)).astype(np.float32),
           "present.0.key": rng.standard_normal((2, 4, 8, 16)).astype(np.float32)}
    targets, why = infer_targets(feed, ref)
    # the cache it answers is held to its spread too: a broken one garbles every later step
    assert [t.metric.spec for t in targets] == ["top1,mask=attention_mask,output=logits",
                                                "nrmse,output=present.0.key"], why
    top1 = targets[0].metric
    flipped = {k: v.copy() for k, v in ref.items()}
    flipped["logits"][1, 0] = -flipped["logits"][1, 0]  # another top class at the padded position only
    assert top1.score(ref, flipped, feed) == 1.0
    flipped["logits"][0, 2] = -flipped["logits"][0, 2]  # and at a real one: 1 of 5 real positions disagrees
    assert top1.score(ref, flipped, feed) == pytest.approx(0.8)
    hidden = {"last_hidden_state": rng.standard_normal((2, 3, 16)).astype(np.float32)}
    pooled = metric("pooled-cosine")
    assert pooled.score(hidden, hidden, feed) == pytest.approx(1.0)  # the mask's last 3 positions weigh the states


def test_a_multi_task_heads_other_outputs_are_judged_beside_its_class_scores() -> None:
    """Gender logits beside an age: only the logits were held to anything, so a broken age passed."""
    from edgeserve.fidelity import Budget

    rng = np.random.default_rng(0)
    ref = {"gender_logits": rng.standard_normal((50, 2)).astype(np.float32),
           "age": (40 + 12 * rng.standard_normal((50, 1))).astype(np.float32),
           "embedding": rng.standard_normal((50, 8)).astype(np.float32),
           "label": rng.integers(0, 2, 50)}
    targets, why = infer_targets({}, ref, {k: 0 for k in ref})
    assert [t.metric.spec for t in targets] == ["top1,output=gender_logits", "prob-change,output=gender_logits",
                                                "nrmse,output=age", "nrmse,output=embedding"]
    assert [t.threshold for t in targets][2:] == [0.1, 0.15] and "age, embedding" in why
    budget = Budget(tuple(targets))
    assert budget.judge(ref, ref, {}).ok
    aged = {**ref, "age": ref["age"] + 10}  # ten years off, every row
    (missed,) = budget.judge(ref, aged, {}).missed
    assert missed.startswith("nrmse,output=age ")
    only = {"logits": ref["gender_logits"], "label": ref["label"]}  # a classifier: unchanged
    assert [t.metric.name for t in infer_targets({}, only, {"logits": 0, "label": 0})[0]] == ["top1", "prob-change"]


@pytest.mark.parametrize("task", ["pooled", "tagger", "detector"])
def test_the_outputs_beside_a_recognised_task_are_judged_too(task: str) -> None:
    """A sentence encoder's pooler output beside its hidden states, a tagger's second head, a segmenting
    detector's mask prototypes beside its detections: held to nothing, a broken one passed."""
    from edgeserve.fidelity import Budget

    rng = np.random.default_rng(0)
    feed = {"input_ids": rng.integers(0, 50, (8, 6)), "attention_mask": np.ones((8, 6), np.int64)}
    if task == "pooled":
        main = {"last_hidden_state": rng.standard_normal((8, 6, 16)).astype(np.float32)}
    elif task == "tagger":
        main = {"logits": rng.standard_normal((8, 6, 9)).astype(np.float32)}
    else:
        feed = {}
        scores = np.full((8, 3, 200), 0.01, np.float32)
        scores[:, :, :5] = 0.9
        boxes = rng.uniform(10, 200, (8, 4, 200)).astype(np.float32)
        main = {"output0": np.concatenate([boxes, scores], axis=1)}
    ref = {**main, "extra": np.tanh(rng.standard_normal((8, 16))).astype(np.float32)}
    targets, why = infer_targets(feed, ref, {k: 0 for k in ref})
    assert targets[-1].metric.spec == "nrmse,output=extra" and targets[-1].threshold == 0.15, why
    assert len(targets) == 2 and "and the RMS error over the values' spread of extra" in why
    assert targets[0].metric.name == {"pooled": "pooled-cosine", "tagger": "top1", "detector": "detection"}[task]
    budget = Budget(tuple(targets))
    assert budget.judge(ref, ref, feed).ok
    broken = {**ref, "extra": -ref["extra"]}
    (missed,) = budget.judge(ref, broken, feed).missed
    assert missed.startswith("nrmse,output=extra ")


def test_an_unnamed_output_of_an_image_model_is_judged_by_its_top1_as_well() -> None:
    """torchvision's and timm's exports call a classifier's logits 'output': judged by the cosine alone, an int8
    model that changes the class of near-tied images passes. An embedding, a landmark regressor or a tabular model's
    vector is judged as before."""
    rng = np.random.default_rng(0)
    image = {"input": rng.normal(0, 1, (64, 3, 32, 32)).astype(np.float32)}
    logits = rng.normal(0, 2, (64, 1000)).astype(np.float32)
    logits[:, 7] = logits.max(1) + 0.01  # every image's top two classes nearly tied
    ref = {"output": logits}
    flipped = logits.copy()
    flipped[:8, 7] -= 0.05  # 8 images change class; every row's cosine stays near 1
    cand = {"output": flipped}
    targets, why = infer_targets(image, ref)
    assert [t.metric.spec for t in targets] == ["top1,output=output", "cosine,output=output", "nrmse,output=output"]
    assert "image classifier's class scores" in why
    assert all(t.holds(t.metric.score(ref, ref, image)) for t in targets)
    assert all(t.holds(t.metric.score(ref, cand, image)) for t in generic_targets())  # the cosine cannot see it
    assert not all(t.holds(t.metric.score(ref, cand, image)) for t in targets)
    square = {"fc6_1": logits[:, :, None, None]}  # the ONNX model zoo's densenet: [batch, 1000, 1, 1]
    targets = infer_targets(image, square)[0]
    assert [t.metric.spec for t in targets] == ["top1,output=fc6_1", "cosine,output=fc6_1", "nrmse,output=fc6_1"]
    assert targets[0].metric.score(square, {"fc6_1": flipped[:, :, None, None]}, image) == pytest.approx(56 / 64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    named = {"prob": (probs / probs.sum(1, keepdims=True))[:, :, None, None]}
    assert [t.metric.name for t in infer_targets(image, named)[0]] == ["top1", "prob-change"]
    uint8_nhwc = {"images": rng.integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)}
    assert [t.metric.name for t in infer_targets(uint8_nhwc, ref)[0]] == ["top1", "cosine", "nrmse"]
    unit = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    arcface = {"fc1": rng.normal(0, 1, (64, 512)).astype(np.float32)}  # a face embedding, not normalised
    for inputs, outs in ((image, {"embeddings": logits}), (image, {"output": unit}), (image, {"landmarks": logits}),
                         (image, arcface),
                         ({"x": rng.normal(0, 1, (64, 20)).astype(np.float32)}, ref)):
        assert [t.metric.name for t in infer_targets(inputs, outs)[0]] == ["cosine", "nrmse"], list(outs)
