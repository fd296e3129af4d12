"""Occlusion explanations: exact for a linear model, one batched engine call, images by patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeserve
from edgeserve import InputError
from edgeserve.package import read_manifest
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


def _bag_of_words(path: Path, table: np.ndarray, *, mask: bool) -> Path:
    """logits = sum over positions of (mask x) the token's embedding row: removing a token takes its row away."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["rows"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    summed = "rows"
    if mask:
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]))
        nodes += [helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.DOUBLE),
                  helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
                  helper.make_node("Mul", ["rows", "m3"], ["kept"])]
        summed = "kept"
    nodes.append(helper.make_node("ReduceSum", [summed, "one"], ["logits"], keepdims=0))
    graph = helper.make_graph(nodes, "bag", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["batch", table.shape[1]])],
                              [numpy_helper.from_array(table, "table"),
                               numpy_helper.from_array(np.array([-1], np.int64), "last"),
                               numpy_helper.from_array(np.array([1], np.int64), "one")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("mask", [True, False])
def test_each_token_is_removed_in_turn_and_its_attribution_is_exact_for_a_bag_of_words(tmp_path: Path,
                                                                                      mask: bool) -> None:
    """Token ids cannot be averaged: a token is removed (its mask set to 0), or without a mask replaced by the
    padding id; for a bag of words the attribution of position j is then exactly its embedding row (less the
    padding row's)."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((20, 3))
    table[0] = 0.5  # the padding id's row
    ids = np.array([[3, 7, 7, 12, 0, 0], [5, 1, 2, 3, 4, 9]], np.int64)
    feed = {"input_ids": ids}
    if mask:
        feed["attention_mask"] = (ids != 0).astype(np.int64)
    with edgeserve.load(_bag_of_words(tmp_path / "bag.onnx", table, mask=mask)) as model:
        out = model.explain(feed)
        assert out.kind == "tokens" and out.input == "input_ids"
        att = out.attributions["logits"]  # [rows, positions, classes]
        expected = table[ids] * feed["attention_mask"][..., None] if mask else table[ids] - table[0]
        np.testing.assert_allclose(att, expected, atol=1e-9)
        np.testing.assert_allclose(out.outputs["logits"], model.predict(feed)["logits"])


def test_a_waveform_is_occluded_a_window_at_a_time_exactly_for_a_linear_model(tmp_path: Path) -> None:
    """A signal wider than a table (4000 samples) would cost 4001 rows per explanation as features; windows of
    samples cost 33, and for a linear model each window's attribution is w . (x - mean) over its samples."""
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal((4000, 2)), np.zeros(2)
    reference = rng.normal(0.3, 1.0, (120, 4000))
    pkg = edgeserve.convert(_linear(tmp_path / "wave.onnx", w, b), tmp_path / "pkg", quantize="none",
                            calibration={"x": reference})
    x = rng.normal(0, 1, (2, 4000))
    with edgeserve.load(pkg.path) as model:
        out = model.explain(x)
    assert out.kind == "segments" and out.patch == 125 and out.rows_run == 2 * 33
    mean = reference.mean()
    expected = np.stack([((x[:, None, :] - mean) * w[:, k]).reshape(2, 32, 125).sum(-1) for k in range(2)], -1)
    np.testing.assert_allclose(out.attributions["y"], expected, rtol=1e-6, atol=1e-6)


def test_inputs_whose_rows_are_not_on_axis_0_are_repeated_along_their_own_axis(tmp_path: Path) -> None:
    """A VAD-like model: ``state [2, batch, hidden]`` and a scalar sample rate beside the explained input. The
    occluded copies of a row must carry that row's state (on axis 1), and the one shared sample rate."""
    from tests.factories import vad_like_data, vad_like_model

    data = vad_like_data(rows=3)
    with edgeserve.load(save(vad_like_model(), tmp_path / "vad.onnx")) as model:
        out = model.explain(data, input="input")
        direct = model.predict(data)
        assert out.kind == "features" and out.attributions["output"].shape == (3, 64, 1)
        np.testing.assert_allclose(out.outputs["stateN"], direct["stateN"], rtol=1e-6)
        np.testing.assert_allclose(out.outputs["output"], direct["output"], rtol=1e-6)
        row = {"input": data["input"][1:2].copy(), "state": data["state"][:, 1:2], "sr": data["sr"]}
        row["input"][0, 5] = 0.0  # the occlusion of feature 5, by hand (no reference: zeros)
        by_hand = direct["output"][1] - model.predict(row)["output"][0]
        np.testing.assert_allclose(out.attributions["output"][1, 5], by_hand, rtol=1e-5, atol=1e-7)


def test_a_model_of_named_columns_is_explained_a_column_at_a_time(tmp_path: Path) -> None:
    """A pipeline over a DataFrame (text category, integer and float columns, one [rows, 1] input each): each
    column is replaced in turn by its reference value (most frequent category, median, mean), and its
    attribution is exactly the estimator's answer less its answer with that column replaced."""
    pd = pytest.importorskip("pandas")
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"city": rng.choice(["oslo", "lima", "pune"], 300, p=[0.5, 0.3, 0.2]),
                          "age": rng.integers(18, 80, 300), "income": rng.normal(50, 10, 300)})
    target = frame.age * 0.3 + frame.income * 0.1 + (frame.city == "lima") * 5.0
    prep = ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                              ("num", StandardScaler(), ["age", "income"])])
    pipe = Pipeline([("prep", prep), ("lin", LinearRegression())]).fit(frame, target)
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", example_inputs=frame[:4], calibration=frame, quantize="none")
    rows = frame.iloc[[3, 7, 11]].reset_index(drop=True)
    rows.loc[0, "city"] = "lima"  # not the most frequent: its replacement changes the answer
    with edgeserve.load(pkg.path) as model:
        out = model.explain(rows)
    assert out.kind == "columns" and out.extra["columns"] == ["city", "age", "income"]
    fills = {"city": "oslo", "age": int(round(np.percentile(frame.age, 50))),
             "income": float(np.float32(frame.income.mean()))}
    base = pipe.predict(rows)
    for j, name in enumerate(out.extra["columns"]):
        replaced = rows.copy()
        replaced[name] = fills[name]
        np.testing.assert_allclose(out.attributions["variable"][:, j, 0], base - pipe.predict(replaced),
                                   rtol=1e-3, atol=1e-3)
    assert abs(out.attributions["variable"][0, 0, 0]) > 1.0  # lima -> oslo moves the answer by about 5


def test_a_spectrogram_is_occluded_along_its_frames_not_its_mel_bins(tmp_path: Path) -> None:
    """[rows, 80 mel, frames] (a speech encoder's input) has its time on axis 2, the axis of variable size:
    windows of frames across every bin, exactly w . (x - mean) over each window for a linear model."""
    rng = np.random.default_rng(3)
    mel, frames = 8, 200
    w = rng.standard_normal((mel * frames, 2))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["y"])], "spec",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", mel, "frames"])],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["batch", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(2), "b")])
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "spec.onnx")
    reference = rng.normal(0.5, 1.0, (40, mel, frames))
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration={"x": reference})
    x = rng.normal(0, 1, (2, mel, frames))
    with edgeserve.load(pkg.path) as model:
        out = model.explain(x)
    size = -(-frames // 32)
    count = -(-frames // size)
    assert out.kind == "segments" and out.patch == size
    mean = float(np.float64(read_manifest(pkg.path).envelope["inputs"]["x"]["mean"]))
    contrib = ((x - mean)[:, :, :, None] * w.reshape(mel, frames, 2)[None]).sum(1)  # [rows, frames, 2]
    expected = np.stack([contrib[:, p * size:(p + 1) * size].sum(1) for p in range(count)], 1)
    np.testing.assert_allclose(out.attributions["y"], expected, rtol=1e-6, atol=1e-6)


def test_a_spectrogram_of_fixed_size_into_a_convolution_is_occluded_along_its_frames(tmp_path: Path) -> None:
    """[rows, 8 mel, 60 frames], both fixed: the convolution reading it says its channels (mel bins) are axis 1,
    so windows run along the frames, each occluded with its bins' reference means."""
    from tests.guard.test_envelope import _spectrogram_model

    mel, frames = 8, 60
    rng = np.random.default_rng(2)
    reference = rng.normal(np.arange(mel)[None, :, None], 1.0, (150, mel, frames)).astype(np.float32)
    pkg = edgeserve.convert(_spectrogram_model(tmp_path / "conv.onnx", mel, frames, conv=True), tmp_path / "pkg",
                            quantize="none", calibration={"x": reference})
    with edgeserve.load(pkg.path) as model:
        out = model.explain(reference[:2])
    size = -(-frames // 32)
    assert out.kind == "segments" and out.patch == size and out.attributions["y"].shape == (2, -(-frames // size), 2)
    assert out.reference == "reference mean per feature"


def _per_pixel(path: Path, size: int = 32, *, fixed: bool = True) -> Path:
    """[N, 3, size, size] -> [N, 8, size, size]: a segmentation head's shape, an answer per pixel (``fixed``:
    height and width declared, else named: [N, 3, h, w])."""
    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "w")
    side = [size, size] if fixed else ["h", "w"]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["scores"], pads=[1, 1, 1, 1])], "pixels",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *side])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 8, *side])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return save(model, path)


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed size", "any size"])
def test_an_explanation_too_large_to_hold_is_refused_before_it_runs(tmp_path: Path, monkeypatch, fixed: bool) -> None:
    """A segmentation network answers per pixel: its attributions are patches x its whole answer (514 MiB for one
    224 px image of 21 classes in 64 patches). Past the limit the request is refused naming the sizes and what to
    change, before any occluded copy runs: from the declared output size, or one run of the row as given."""
    from edgeserve.guard import explain as explain_module

    monkeypatch.setattr(explain_module, "MAX_ATTRIBUTION_BYTES", 8 * 2**20)
    images = np.random.default_rng(1).random((2, 3, 32, 32)).astype(np.float32)
    with edgeserve.load(_per_pixel(tmp_path / "pixels.onnx", fixed=fixed)) as model:
        rows_seen: list[int] = []
        run = model._run_feed
        model._run_feed = lambda feed: (rows_seen.append(len(feed["x"])), run(feed))[1]
        with pytest.raises(InputError, match=r"would hold 16 MiB of attributions \(1 row\(s\) x 256 occluded parts x "
                                             r"8192 output values, float64\), more than the 8 MiB allowed: .*patch="):
            model.explain(images[:1], patch=2)
        assert rows_seen == ([] if fixed else [1])  # at most the row as given
        e = model.explain(images, patch=8)  # 16 patches: 1 MiB a row
    assert e.attributions["scores"].shape == (2, 16, 8, 32, 32)


def test_occluded_copies_run_in_runs_of_bounded_bytes(tmp_path: Path, monkeypatch) -> None:
    """4096 occluded copies of a large image in one run would take gigabytes: the copies run in runs of at most
    RUN_BYTES of input, with the same attributions."""
    from edgeserve.guard import explain as explain_module

    images = np.random.default_rng(1).random((1, 3, 32, 32)).astype(np.float32)
    with edgeserve.load(_per_pixel(tmp_path / "pixels.onnx")) as model:
        whole = model.explain(images, patch=8)
        monkeypatch.setattr(explain_module, "RUN_BYTES", 3 * images[0].nbytes)
        rows_seen: list[int] = []
        run = model._run_feed
        model._run_feed = lambda feed: (rows_seen.append(len(feed["x"])), run(feed))[1]
        cut = model.explain(images, patch=8)
    assert max(rows_seen) == 3 and sum(rows_seen) == 1 + 16  # the row as given and its 16 occluded copies
    np.testing.assert_allclose(cut.attributions["scores"], whole.attributions["scores"], rtol=1e-6, atol=1e-6)


def test_inputs_counted_apart_are_explained_against_the_others_whole(tmp_path: Path) -> None:
    """CLIP scores N images against M texts. Explaining 3 images against 2 texts took the texts' rows for the
    images' (2 rows explained, each against one text); now every run holds all texts, the scores are attributed
    along their image axis (along the text axis when texts are explained), and the text embeddings, which no image
    moves, are left out. Exact for this linear scorer: image feature j of image i moves score (i, t) by
    text[t, j] * x[i, j] (occluded with 0: no reference)."""
    from tests.factories import image_text_model

    rng = np.random.default_rng(0)
    image, text = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((2, 4)).astype(np.float32)
    with edgeserve.load(save(image_text_model(), tmp_path / "clip.onnx")) as model:
        e = model.explain({"image": image, "text": text}, input="image")
        by_text = model.explain({"image": image, "text": text}, input="text")
    assert set(e.attributions) == {"logits_per_image"}  # text_embeds has the texts' rows: left out
    np.testing.assert_allclose(e.attributions["logits_per_image"], image[:, :, None] * text.T[None, :, :], atol=1e-5)
    np.testing.assert_allclose(e.outputs["logits_per_image"], image @ text.T, atol=1e-5)
    att = by_text.attributions["logits_per_image"]  # [texts, features, images]
    np.testing.assert_allclose(att, text[:, :, None] * image.T[None, :, :], atol=1e-5)
    assert by_text.attributions["text_embeds"].shape == (2, 4, 4)


def _cached_step(path: Path, table: np.ndarray) -> Path:
    """A decoder step with a cache: logits [batch, seq, 3] = the new tokens' embeddings times the mask's last seq
    positions (the mask covers the cache, then the new tokens); present = past then the new embeddings."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["e"]),
        helper.make_node("Concat", ["past_key_values.0.key", "e"], ["present.0.key"], axis=1),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.DOUBLE),
        helper.make_node("Shape", ["input_ids"], ["seq"], start=1, end=2),
        helper.make_node("Neg", ["seq"], ["from_end"]),
        helper.make_node("Slice", ["maskf", "from_end", "big", "one"], ["new"]),
        helper.make_node("Unsqueeze", ["new", "two"], ["new3"]),
        helper.make_node("Mul", ["e", "new3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "step",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence_length"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                       ["batch", "past_sequence_length + sequence_length"]),
         helper.make_tensor_value_info("past_key_values.0.key", TensorProto.DOUBLE,
                                       ["batch", "past_sequence_length", 3])],
        [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["batch", "sequence_length", 3]),
         helper.make_tensor_value_info("present.0.key", TensorProto.DOUBLE,
                                       ["batch", "past_sequence_length + sequence_length", 3])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1 << 30], np.int64), "big"),
         numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([2], np.int64), "two")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_decoder_with_a_cache_is_explained_by_its_new_tokens_through_the_mask_over_both(tmp_path: Path) -> None:
    """Not by its cache (a float input, which the first float input used to be chosen for: a GPT-2 step was
    explained as an image of its past keys), and each new token is removed by zeroing its place at the end of the
    mask, which also covers the cache (it failed on the longer mask)."""
    table = np.random.default_rng(1).standard_normal((20, 3))
    ids = np.array([[3, 7], [5, 9]], np.int64)
    mask = np.ones((2, 6), np.int64)
    mask[1, 4] = 0  # the second row's first new token is padding
    feed = {"input_ids": ids, "attention_mask": mask,
            "past_key_values.0.key": np.random.default_rng(2).standard_normal((2, 4, 3))}
    with edgeserve.load(_cached_step(tmp_path / "step.onnx", table)) as model:
        out = model.explain(feed)
    assert out.kind == "tokens" and out.input == "input_ids"
    np.testing.assert_allclose(out.attributions["logits"][:, :, :, :],
                               np.einsum("rjc,rj,jk->rjkc", table[ids], mask[:, -2:], np.eye(2)), atol=1e-12)
