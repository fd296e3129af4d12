"""The envelope: reference statistics as the converter records them, and the checks every request passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeserve
from edgeserve import EnvelopeError, GuardConfig
from edgeserve.converter.prepare import embedding_inputs
from edgeserve.package import read_manifest
from tests.factories import encoder_data, encoder_model, save

STRICT = GuardConfig(non_finite="reject", range="reject", vocabulary="reject", drift=False)


def test_reference_statistics_record_layout_knots_and_output_confidence(digits_package: Path, digits) -> None:
    env = read_manifest(digits_package).envelope
    reference = digits[0]
    assert env["source"] == "reference" and env["rows"] == len(reference)
    x = env["inputs"]["x"]
    assert x["layout"]["kind"] == "tabular" and len(x["drift"]["knots"]) == 64
    assert x["range"]["max"] == pytest.approx(reference.max(axis=0).tolist())
    knots = np.asarray(x["drift"]["knots"])
    assert np.all(np.diff(knots, axis=1) >= 0)  # quantiles, in order
    assert env["outputs"]["logits"]["layout"] == {"kind": "confidence", "axis": 1, "probabilities": False}


def test_an_embedding_output_is_summarised_by_its_norm_not_as_class_scores() -> None:
    from edgeserve.guard.reference import output_layout

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 384)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert output_layout(unit, "output").kind == "norm"  # rows of unit length: a normalised embedding
    assert output_layout(vectors, "sentence_embedding").kind == "norm"
    assert output_layout(vectors, "pooler_output").kind == "norm"
    assert output_layout(vectors, "output").kind == "confidence"  # unnamed logits stay class scores
    assert output_layout(vectors, "logits").kind == "confidence"
    probabilities = np.exp(vectors) / np.exp(vectors).sum(axis=1, keepdims=True)
    assert output_layout(probabilities, "probs").kind == "confidence"


def test_a_recognisers_per_step_distribution_is_watched_by_its_confidence() -> None:
    """PP-OCRv4's [rows, 40 steps, 6625 characters]: the top character's probability averaged over the steps, for
    probabilities and log-probabilities alike (its norm said little), whatever the number of steps."""
    from edgeserve.guard.reference import output_layout, row_features

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (8, 12, 30))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    layout = output_layout(probs.astype(np.float32), "softmax_11.tmp_0")
    assert layout.kind == "step-confidence" and layout.probabilities
    expected = probs.max(axis=2).mean(axis=1, keepdims=True)
    np.testing.assert_allclose(row_features(layout, probs), expected)
    log_layout = output_layout(np.log(probs), "log_probs")
    assert log_layout.kind == "step-confidence" and not log_layout.probabilities
    np.testing.assert_allclose(row_features(log_layout, np.log(probs)), expected)
    assert row_features(layout, probs[:, :5]).shape == (8, 1)  # a narrower image: fewer steps, one summary
    assert output_layout(rng.normal(size=(8, 12, 30)), "last_hidden_state").kind == "rms"  # not a distribution


def test_no_false_rejection_on_the_reference_itself(digits_package: Path, digits) -> None:
    with edgeserve.load(digits_package, guard=STRICT) as model:
        for i in range(0, len(digits[0]), 37):
            model.predict(digits[0][i:i + 37])  # every reference row, through the strictest envelope
        assert model.envelope is not None and model.envelope.stats()["rejections"] == {
            "non_finite": 0, "range": 0, "vocabulary": 0, "category": 0}


def test_nan_is_rejected_naming_input_position_and_value(digits_package: Path, digits) -> None:
    x = digits[1][:4].copy()
    x[2, 17] = np.nan
    x[3, 5] = np.inf
    with edgeserve.load(digits_package, guard=STRICT) as model, pytest.raises(EnvelopeError) as caught:
        model.predict(x)
    message = str(caught.value)
    assert "'x'" in message and "non_finite" in message and "[2, 17] = nan" in message and "[3, 5] = inf" in message
    assert caught.value.check == "non_finite" and caught.value.input == "x"
    alone = digits[1][:1].copy()
    alone[0, 0] = np.nan  # NaN alone: no comparison is true for it, so the fused check must read "inside" as False
    with edgeserve.load(digits_package, guard=STRICT) as model, pytest.raises(EnvelopeError, match=r"\[0, 0\] = nan"):
        model.predict(alone)


def test_out_of_range_value_rejected_or_counted_by_policy(digits_package: Path, digits) -> None:
    x = digits[1][:2].copy()
    x[1, 30] = 100.0  # pixels are 0..16
    with edgeserve.load(digits_package, guard=STRICT) as model, pytest.raises(EnvelopeError, match=r"\[1, 30\] = 100.0"):
        model.predict(x)
    with edgeserve.load(digits_package, guard=GuardConfig(range="warn", drift=False)) as model:
        out, flags = model.answer(x)
        assert flags == ("range:x",) and out["logits"].shape == (2, 10)
        assert model.envelope is not None and model.envelope.stats()["warnings"]["range"] == 1
    with edgeserve.load(digits_package, guard=GuardConfig(range="off", drift=False)) as model:
        assert model.answer(x)[1] == ()


def test_token_ids_outside_the_embedding_table_are_rejected(tmp_path: Path) -> None:
    path = save(encoder_model(vocab=50), tmp_path / "enc.onnx")
    assert embedding_inputs(path) == {"input_ids": 50}
    data = encoder_data(rows=128)
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration=data)
    tokens = pkg.manifest.envelope["inputs"]["input_ids"]
    assert tokens["layout"]["kind"] == "tokens" and tokens["tokens"]["vocabulary"] == 50
    bad = {k: v[:2].copy() for k, v in data.items()}
    bad["input_ids"][1, 0] = 50
    with edgeserve.load(pkg.path, guard=STRICT) as model:
        model.predict({k: v[:8] for k, v in data.items()})  # in the table: answered
        with pytest.raises(EnvelopeError, match=r"input 'input_ids'.*vocabulary.*\(0\.\.49\).*\[1, 0\] = 50"):
            model.predict(bad)


def test_a_nan_let_through_is_not_counted_as_out_of_range(digits_package: Path, digits) -> None:
    x = digits[1][:1].copy()
    x[0, 3] = np.nan
    with edgeserve.load(digits_package, guard=GuardConfig(non_finite="off", range="warn", drift=False)) as model:
        assert model.answer(x)[1] == ()
        assert model.envelope is not None and model.envelope.stats()["warnings"]["range"] == 0


def test_an_attention_mask_is_a_sequence_not_a_table(tmp_path: Path) -> None:
    """The reference's rows are never shorter than 10 tokens; a 3-token request is still inside the envelope, since
    the mask's positions are steps of a sequence (the model declares its length variable), not columns."""
    path = save(encoder_model(vocab=50), tmp_path / "enc.onnx")
    data = encoder_data(rows=128)
    data["attention_mask"][:, :10] = 1
    data["input_ids"][:, :10] = np.maximum(data["input_ids"][:, :10], 1)
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration=data)
    mask = pkg.manifest.envelope["inputs"]["attention_mask"]
    assert mask["layout"]["kind"] == "flat" and len(mask["range"]["min"]) == 1
    short = {k: v[:2].copy() for k, v in data.items()}
    short["attention_mask"][:, 3:] = 0
    short["input_ids"][:, 3:] = 0
    with edgeserve.load(pkg.path, guard=STRICT) as model:
        assert model.answer(short)[1] == ()
        longer = {k: np.concatenate([v[:2], v[:2, :4]], axis=1) for k, v in data.items()}  # 16 steps
        assert model.answer(longer)[1] == ()


@settings(max_examples=150, deadline=None)
@given(shape=st.lists(st.integers(1, 40), min_size=1, max_size=4), limit=st.integers(1, 600))
def test_pieces_cover_every_value_once_and_none_is_bigger_than_the_limit(shape, limit) -> None:
    from edgeserve.guard.checks import pieces

    seen = np.zeros(shape, dtype=np.int64)
    for p in pieces(tuple(shape), limit):
        assert seen[p].size <= limit
        seen[p] += 1
    assert (seen == 1).all()


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 6), features=st.integers(90, 1400), kind=st.sampled_from(["features", "scalar", "channels"]),
       nan=st.booleans(), outside=st.booleans(), seed=st.integers(0, 2**16))
def test_piecewise_check_agrees_with_the_plain_one(rows, features, kind, nan, outside, seed) -> None:
    from edgeserve.guard.checks import within

    rng = np.random.default_rng(seed)
    if kind == "channels":  # [rows, channels, h, w] with per-channel bounds
        x = rng.uniform(0, 1, (rows, 3, features // 30 + 1, 10)).astype(np.float32)
        lo, hi = np.full((1, 3, 1, 1), -0.01, np.float32), np.full((1, 3, 1, 1), 1.01, np.float32)
    else:
        x = rng.uniform(0, 1, (rows, features)).astype(np.float32)
        lo, hi = ((np.full((1, features), -0.01, np.float32), np.full((1, features), 1.01, np.float32))
                  if kind == "features" else (np.array(-0.01, np.float32), np.array(1.01, np.float32)))
    flat = x.reshape(-1)
    if nan:
        flat[rng.integers(0, flat.size)] = np.nan
    if outside:
        flat[rng.integers(0, flat.size)] = 1.5
    assert within(x, lo, hi, hold=True) == bool(((x >= lo) & (x <= hi)).all()) == (not nan and not outside)
    assert within(x, lo, hi) == within(x, lo, hi, hold=True)


def test_a_check_keeps_its_pieces_only_for_the_shape_and_bounds_they_were_cut_for() -> None:
    """One input's check, asked about requests of changing sizes and against its two sets of bounds (per feature,
    and the whole tensor's), in pieces: every answer equals the plain comparison's."""
    from edgeserve.guard.checks import _InputCheck

    lo, hi = np.full((1, 90), -0.01, np.float32), np.full((1, 90), 1.01, np.float32)
    hi[0, 80] = 0.6  # a per-feature bound tighter than the whole tensor's
    check = _InputCheck("x", lo, hi, np.array(-0.01, np.float32), np.array(1.01, np.float32), True, None)
    rng = np.random.default_rng(0)
    cases = ((6, None, 0), (24, 23, 1.5), (24, 23, 0.7), (6, 5, 0.7), (24, None, 0))
    bounds = ((check.lo, check.hi), (check.lo_all, check.hi_all))
    asked = [(case, b) for b in bounds for case in cases]  # the size changes under the same bounds...
    asked += [(case, b) for case in cases for b in bounds]  # ... and the bounds under the same size
    for (rows, where, value), (low, high) in asked:
        x = rng.uniform(0.45, 0.55, (rows, 90)).astype(np.float32)
        if where is not None:
            x[where, 80] = value  # the last row: outside pieces cut for fewer rows
        assert x.size > 500  # checked in pieces
        assert check.within(x, low, high, hold=True) == bool(((x >= low) & (x <= high)).all()), (rows, value)


def test_an_event_loop_checks_in_pieces_that_keep_the_lock_and_a_thread_in_one_pass(
        digits_package: Path, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy gives up the interpreter lock over GIL_HELD values: an event loop that gives it up waits behind every
    thread that wants it, so its checks of a 32-row request (2048 values) compare in pieces; a plain caller's check
    is one pass (in pieces, 32 threads answered 0.67-0.76x as much)."""
    import asyncio

    import edgeserve.guard.checks as checks

    sizes: list[int] = []
    inside = checks._inside

    def spy(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
        sizes.append(x.size)
        return inside(x, lo, hi)

    monkeypatch.setattr(checks, "_inside", spy)
    x = digits[0][:32]  # reference rows: inside the envelope, so every piece is looked at
    with edgeserve.load(digits_package, guard=GuardConfig(drift=False)) as model:
        model.predict(x)
        assert sizes == [x.size]
        sizes.clear()
        asyncio.run(model.predict_async(x))
        assert len(sizes) > 1 and max(sizes) <= checks.GIL_HELD and sum(sizes) == x.size


def test_a_state_fed_back_is_checked_for_nan_only_and_never_watched_for_drift(tmp_path: Path) -> None:
    """Calibration holds a stream's first state (zeros); served requests hold whatever the stream reached. A range
    or drift reference of that state would warn on, or reject, every request after the first."""
    from tests.factories import vad_like_data, vad_like_model

    data = vad_like_data(rows=150)
    data["state"] = np.zeros_like(data["state"])
    pkg = edgeserve.convert(save(vad_like_model(), tmp_path / "vad.onnx"), tmp_path / "pkg", quantize="none",
                            calibration=data)
    env = read_manifest(pkg.path).envelope
    assert env["inputs"]["state"].get("state") and "range" not in env["inputs"]["state"]
    assert "range" in env["inputs"]["input"] and "drift" in env["inputs"]["input"]
    assert "stateN" not in env.get("outputs", {})
    with edgeserve.load(pkg.path, guard=GuardConfig(range="reject")) as model:
        feed = {k: v[:, :4] if k == "state" else v[:4] if v.ndim else v for k, v in data.items()}
        for _ in range(5):  # a stream: each answer's state goes into the next request
            feed["state"] = model.predict(feed)["stateN"] * 3
        assert float(np.abs(feed["state"]).max()) > 1.0  # far outside the zeros the calibration held
        assert model.monitor is not None and "state" not in " ".join(model.monitor.labels)
        broken = dict(feed, state=feed["state"].copy())
        broken["state"][1, 2, 3] = np.nan
        with pytest.raises(EnvelopeError, match=r"'state'.*non_finite.*\[1, 2, 3\] = nan"):
            model.predict(broken)
        far = dict(feed, input=feed["input"] + 1000)
        with pytest.raises(EnvelopeError, match="'input'.*range"):
            model.predict(far)


def test_an_unseen_category_is_flagged_naming_it_and_free_text_records_none(tmp_path: Path) -> None:
    """A OneHotEncoder(handle_unknown='ignore') answers for a city it never saw as if the column were empty:
    the guard says so (warn by default, reject on request), never on the reference's own values."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from edgeserve.guard.envelope import categories

    rng = np.random.default_rng(0)
    cities = rng.choice(["oslo", "lima", "pune"], (300, 1))
    pipe = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression())
    pipe.fit(cities, (cities[:, 0] == "lima").astype(int))
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", example_inputs=cities[:4], calibration=cities)
    name = pkg.manifest.inputs[0].name
    assert read_manifest(pkg.path).envelope["inputs"][name]["categories"] == ["lima", "oslo", "pune"]
    unseen = np.array([["oslo"], ["paris"], ["lima"]])
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        assert model.answer(unseen)[1] == (f"category:{name}",)
        assert model.answer(cities[:50])[1] == ()
    with edgeserve.load(pkg.path, guard=GuardConfig(category="reject")) as model:
        model.predict(cities)  # the reference itself passes
        with pytest.raises(EnvelopeError, match=r"'category'.*'lima', 'oslo', 'pune'.*\[1, 0\] = 'paris'"):
            model.predict(unseen)
    with edgeserve.load(pkg.path, guard=GuardConfig(category="off")) as model:
        assert model.answer(unseen)[1] == ()
    names = np.array([[f"customer {i}"] for i in range(300)])
    assert categories(names) is None  # free text: no category list


def _spectrogram_model(path: Path, mel: int, frames: int | str, *, conv: bool) -> Path:
    """[rows, mel, frames] -> [rows, 2]: a 1-D convolution over the frames (channels first), or a flatten + Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if conv:
        nodes = [helper.make_node("Conv", ["x", "k"], ["c"], kernel_shape=[3], pads=[1, 1]),
                 helper.make_node("ReduceMean", ["c"], ["m"], axes=[2], keepdims=0),
                 helper.make_node("Gemm", ["m", "w", "b"], ["y"])]
        inits = [numpy_helper.from_array(rng.standard_normal((4, mel, 3)).astype(np.float32), "k"),
                 numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "w")]
    else:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
                 helper.make_node("Gemm", ["m", "w", "b"], ["y"])]
        inits = [numpy_helper.from_array(rng.standard_normal((mel, 2)).astype(np.float32), "w")]
    graph = helper.make_graph(nodes, "spec", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", mel, frames])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
                              [*inits, numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_a_spectrogram_read_by_a_convolution_has_its_mel_bins_as_features(tmp_path: Path) -> None:
    """[rows, 8 mel, 40 frames], both fixed, into a 1-D convolution: the features are the mel bins, each with its
    own range over every frame. A sound the reference only held early, heard late, is in range (bounds per frame
    warned on it); a value out of its own bin's range is caught (bounds per frame, across bins, missed it)."""
    mel, frames = 8, 40
    rng = np.random.default_rng(1)
    scale = np.where(np.arange(mel) == 0, 100.0, 1.0)[None, :, None]  # bin 0 is loud, the others quiet
    reference = (rng.uniform(0, 1, (200, mel, frames)) * scale).astype(np.float32)
    reference[:, :, frames // 2:] *= 0.01  # the reference's sounds are in the first half of the frames
    pkg = edgeserve.convert(_spectrogram_model(tmp_path / "conv.onnx", mel, frames, conv=True), tmp_path / "pkg",
                            quantize="none", calibration={"x": reference})
    entry = read_manifest(pkg.path).envelope["inputs"]["x"]
    assert entry["layout"] == {"kind": "series", "axis": 1, "averaged": frames}  # a mean over the frames
    from edgeserve.summary import manifest_lines

    assert any(line.startswith("  x [series, features on axis 1]:") for line in manifest_lines(pkg))
    assert len(entry["range"]["min"]) == mel and len(entry["drift"]["knots"]) == mel
    late = np.roll(reference[:4], frames // 2, axis=2)
    loud = reference[:1].copy()
    loud[0, 3, 5] = 50.0  # bin 3 never went past 1
    with edgeserve.load(pkg.path, guard=GuardConfig(range="reject")) as model:
        model.predict(late)
        with pytest.raises(EnvelopeError, match=r"'range'.*\[0, 3, 5\] = 50"):
            model.predict(loud)
        report = model.monitor.report()  # the live rows are summarised the same way: one mean per mel bin
        assert report["requests"] == 4 and report["skipped"] == 0
        assert sum(label.startswith("input:x:") for label in model.monitor.labels) == mel


def test_the_feature_axis_of_a_series_follows_the_signature_then_the_graph(tmp_path: Path) -> None:
    """A variable axis holds steps, so the fixed one holds features; with both fixed, a convolution's input is
    channels first and anything else ([rows, steps, features] into an RNN or a MatMul) features last."""
    from edgeserve.converter.api import series_feature_axes
    from edgeserve.converter.prepare import conv_inputs
    from edgeserve.tensors import TensorSpec

    conv = _spectrogram_model(tmp_path / "conv.onnx", 8, 40, conv=True)
    dense = _spectrogram_model(tmp_path / "dense.onnx", 8, 40, conv=False)
    assert conv_inputs(conv) == {"x"} and conv_inputs(dense) == set()
    specs = [TensorSpec("fixed", "float32", ("batch", 8, 40)), TensorSpec("frames", "float32", ("batch", 80, "t")),
             TensorSpec("steps", "float32", ("batch", "t", 20)), TensorSpec("table", "float32", ("batch", 20))]
    assert series_feature_axes(specs, {"fixed"}) == {"fixed": 1, "frames": 1, "steps": 2}
    assert series_feature_axes(specs, set()) == {"fixed": 2, "frames": 1, "steps": 2}


def _imputing_model(path: Path, features: int = 6) -> Path:
    """``y = softmax(where(isnan(x), 0, x) @ w)``: a model that takes missing values as NaN, as an imputer does."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((features, 3)).astype(np.float32)
    nodes = [helper.make_node("IsNaN", ["x"], ["missing"]), helper.make_node("Where", ["missing", "zero", "x"], ["filled"]),
             helper.make_node("MatMul", ["filled", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probabilities"])]
    graph = helper.make_graph(nodes, "impute", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0, np.float32), "zero")])
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _with_missing(rows: int, seed: int, share: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 6)).astype(np.float32)
    x[rng.random(x.shape) < share] = np.nan
    return x


def test_missing_values_the_reference_holds_pass_the_guard_and_never_read_as_drift(tmp_path: Path) -> None:
    """A model fit with missing values (NaN, filled by its imputer) and a reference holding them: NaN passes the
    default guard (infinity is still refused), and a long stream from the reference's own population, 10% missing,
    raises no drift alarm (a NaN read as the lowest value possible alarmed within a few hundred requests)."""
    pkg = edgeserve.convert(_imputing_model(tmp_path / "impute.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": _with_missing(2000, 1)})
    missing = read_manifest(pkg.path).envelope["inputs"]["x"]["nan"]
    assert missing > 0
    from edgeserve.summary import manifest_lines

    assert any(f"{missing} missing (NaN, let through)" in line for line in manifest_lines(pkg))
    stream = _with_missing(4000, 2)
    with edgeserve.load(pkg.path, guard=GuardConfig(non_finite="reject")) as model:
        for i in range(0, len(stream), 4):
            model.predict(stream[i:i + 4])
        report = model.monitor.report()
        assert report["requests"] == 4000 and report["alarms"] == 0, report["top"]
        infinite = stream[:2].copy()
        infinite[1, 3] = np.inf
        with pytest.raises(EnvelopeError, match=r"'non_finite': 1 infinite values .*\[1, 3\] = inf"):
            model.predict(infinite)


def test_a_reference_too_small_for_the_drift_detectors_is_warned_about() -> None:
    """Below 300 rows the detectors' margin for the reference's sampling error is not enough (a 200-row reference
    of a classifier with 90 distinct answers alarmed on its own population); convert and inspect say so."""
    from edgeserve.summary import reference_lines

    inputs = {"x": {"min": 0.0}}
    assert list(reference_lines({"rows": 900, "inputs": inputs})) == []
    [few] = reference_lines({"rows": 200, "inputs": inputs})
    assert few.startswith("WARNING: the reference holds 200 rows, fewer than 300") and "--reference" in few
    [none] = reference_lines({"rows": 40, "inputs": inputs})
    assert "too few for drift detection (it needs 100)" in none


def test_padding_is_the_id_rows_end_with_only_when_enough_rows_end_with_it() -> None:
    """Token rows padded with 0 give padding id 0 and their real lengths. A decoder's one-token steps end with
    whatever id comes next: the most frequent of those (one row in 50) was taken for padding, so rows holding it
    read as length 0. Now no padding is seen, every row is its full length, and the summary says so."""
    from edgeserve.guard.envelope import envelope
    from edgeserve.guard.reference import NO_PAD, input_layout

    rng = np.random.default_rng(0)
    padded = rng.integers(5, 500, (200, 12))
    lengths = rng.integers(3, 13, 200)
    padded[np.arange(12)[None, :] >= lengths[:, None]] = 0
    assert input_layout(padded, vocabulary=500).pad == 0
    steps = rng.integers(5, 500, (200, 1))
    assert input_layout(steps, vocabulary=500).pad == NO_PAD
    tokens = envelope({"ids": steps}, source="test", vocabularies={"ids": 500})["inputs"]["ids"]["tokens"]
    assert tokens["pad"] == NO_PAD and tokens["lengths"]["min"] == tokens["lengths"]["max"] == 1


def _positions_model(vocab: int = 30, positions: int = 16, dim: int = 4, *, counted: str | None = None):
    """Token ids through a word table plus a position table indexed by a slice of a constant ``0 .. P-1`` to the
    sequence's length, as transformers' BERT exports it: a longer sequence fails in the engine (the slice stops at
    P, and the add cannot broadcast). ``counted``: the positions are ``Range(start, length, 1)`` instead, with
    ``start`` the name of its first input (``"zero_s"``, as torch.export writes GPT-2's ``arange``; a longer
    sequence indexes past the table)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "words"),
             numpy_helper.from_array(rng.standard_normal((positions, dim)).astype(np.float32), "positions_table"),
             numpy_helper.from_array(np.arange(positions, dtype=np.int64)[None, :], "buffer_0"),
             numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array(0, np.int64), "zero_s"),
             numpy_helper.from_array(np.array(1, np.int64), "one_s")]
    nodes = [helper.make_node("Shape", ["input_ids"], ["shape"]),
             helper.make_node("Slice", ["shape", "one", "two"], ["seq"])]
    if counted is None:
        nodes.append(helper.make_node("Slice", ["buffer_0", "zero", "seq", "one"], ["pos"]))
    else:
        nodes += [helper.make_node("Squeeze", ["seq", "zero"], ["length"]),
                  helper.make_node("Range", [counted, "length", "one_s"], ["counted"]),
                  helper.make_node("Unsqueeze", ["counted", "zero"], ["pos"])]
    nodes += [
             helper.make_node("Gather", ["positions_table", "pos"], ["pe"]),
             helper.make_node("Gather", ["words", "input_ids"], ["we"]),
             helper.make_node("Add", ["we", "pe"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["out"], axes=[1], keepdims=0)]
    graph = helper.make_graph(nodes, "positions", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                               ["batch", "seq"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("counted", [None, "zero_s"], ids=["sliced constant", "range from zero"])
def test_a_sequence_longer_than_the_position_table_is_refused_saying_how_long_it_may_be(
        tmp_path: Path, counted: str | None) -> None:
    from edgeserve.converter.prepare import position_table

    path = save(_positions_model(positions=16, counted=counted), tmp_path / "pos.onnx")
    assert position_table(path) == 16
    external = tmp_path / "external"  # a model over 2 GB keeps even its small constants in external data
    external.mkdir()
    onnx.save_model(_positions_model(positions=16, counted=counted), str(external / "pos.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="pos.onnx.data", size_threshold=0)
    assert position_table(external / "pos.onnx") == 16
    assert position_table(onnx.load(str(external / "pos.onnx"), load_external_data=False), external) == 16
    ids = np.random.default_rng(1).integers(0, 30, (120, 10))
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration={"input_ids": ids})
    assert pkg.manifest.envelope["inputs"]["input_ids"]["tokens"]["max_length"] == 16
    with edgeserve.load(pkg.path, guard=STRICT) as model:
        assert model.predict(np.ones((2, 16), np.int64))["out"].shape == (2, 4)  # as long as it may be: answered
        with pytest.raises(EnvelopeError, match=r"input 'input_ids' fails the envelope check 'vocabulary': .*position "
                                                 r"table \(20 tokens a row, where it holds 16: truncate"):
            model.predict(np.ones((2, 20), np.int64))
    with edgeserve.load(pkg.path) as model, pytest.raises(edgeserve.InferenceError):
        model.predict(np.ones((2, 20), np.int64))  # what the check spares the user: the engine's own failure


def test_positions_computed_from_the_input_set_no_limit(tmp_path: Path) -> None:
    """Only a constant 0 .. P-1 marks a position table: an encoder without one has no length limit recorded."""
    from edgeserve.converter.prepare import position_table

    assert position_table(save(encoder_model(vocab=50), tmp_path / "enc.onnx")) is None
    model = _positions_model()
    model.graph.initializer[2].CopyFrom(__import__("onnx").numpy_helper.from_array(
        np.arange(16, dtype=np.int64)[None, ::-1].copy(), "buffer_0"))  # not 0 .. P-1
    assert position_table(model) is None
    assert position_table(_positions_model(counted="one_s")) is None  # a range that does not start at 0


def test_a_feature_always_missing_in_the_reference_bounds_no_request_out(tmp_path: Path) -> None:
    """A column the reference never fills (its model imputes it) had NaN as its range: numpy warned on the user's
    terminal while converting, and a range check that rejects refused every request with a value there."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x[:, 2] = np.nan
    pipe = make_pipeline(SimpleImputer(strategy="constant", fill_value=0.0, keep_empty_features=True),
                         LogisticRegression()).fit(x, (x[:, 0] > 0).astype(int))
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", quantize="none", calibration=x)  # a numpy warning fails here
    bounds = pkg.manifest.envelope["inputs"]["X"]["range"]
    assert np.isfinite(bounds["min"]).all() and np.isfinite(bounds["max"]).all()
    with edgeserve.load(pkg.path, guard=GuardConfig(range="reject")) as model:
        request = x[:3].copy()
        request[:, 2] = 0.5
        model.predict(request)  # inside the tensor's range: no reason to refuse it
        request[:, 2] = 50.0
        with pytest.raises(edgeserve.EnvelopeError, match="range"):
            model.predict(request)
