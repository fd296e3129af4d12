"""The shortest input a variable axis takes: measured at conversion, recorded, and refused by the contract with a
message that says how long the input must be, instead of the engine's failure from deep inside a Conv node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeserve
from edgeserve.converter.shortest import _least, variable_axes
from edgeserve.errors import InferenceError, InputError
from edgeserve.tensors import TensorSpec
from tests.factories import save


def _strided_audio_model(seed: int = 0):
    """A raw waveform ``[batch, samples]`` through two strided 1-D convolutions (kernel 10 stride 5, kernel 3
    stride 2, no padding: 20 samples at least) and a mean over time: a wav2vec2 feature extractor in small."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 10)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((3, 4, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [helper.make_node("Unsqueeze", ["samples", "one"], ["x"]),
             helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[5]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2]),
             helper.make_node("ReduceMean", ["c2"], ["logits"], axes=[2], keepdims=0)]
    graph = helper.make_graph(nodes, "strided", [helper.make_tensor_value_info("samples", TensorProto.FLOAT,
                                                                             ["batch", "time"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_an_input_shorter_than_the_model_takes_is_refused_saying_how_long_it_must_be(tmp_path: Path) -> None:
    path = save(_strided_audio_model(), tmp_path / "audio.onnx")
    waves = np.random.default_rng(1).standard_normal((40, 300)).astype(np.float32)
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration={"samples": waves})
    assert pkg.manifest.inputs[0].shortest == ((1, 20),)  # (20 - 10) // 5 + 1 = 3 frames, (3 - 3) // 2 + 1 = 1
    with edgeserve.load(pkg.path) as model:
        assert model.predict(waves[:2, :20])["logits"].shape == (2, 3)  # as short as it may be: answered
        assert model.predict(waves[:2, :257])["logits"].shape == (2, 3)  # any length above it too
        with pytest.raises(InputError, match=r"input 'samples': dimension 1 is 19 long, and the model needs at least "
                                             r"20 \(float32 \[batch, time>=20\].*pad or lengthen it"):
            model.predict(waves[:2, :19])
    with edgeserve.load(path) as bare, pytest.raises(InferenceError, match="Conv"):  # what the check spares the user
        bare.predict(waves[:2, :19])


def test_a_model_that_runs_at_any_length_records_no_shortest(tmp_path: Path) -> None:
    from tests.factories import gru_model

    path = save(gru_model(), tmp_path / "gru.onnx")
    steps = np.random.default_rng(2).standard_normal((24, 9, 4)).astype(np.float32)
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration={"x": steps})
    assert all(not spec.shortest for spec in pkg.manifest.inputs)


def test_the_search_finds_the_shortest_length_that_runs_not_a_bisection_from_the_full_one() -> None:
    """A network that pools five times takes multiples of 32 only: from 224 a bisection lands on failures (112,
    168…) and would refuse 32, 64, … that run."""
    tried: list[int] = []

    def multiples_of_32(n: int) -> bool:
        tried.append(n)
        return n % 32 == 0

    assert _least(multiples_of_32, 224) == 32
    assert _least(lambda n: n >= 400, 16_000) == 400  # strided convolutions: a floor, found in ~log2 runs
    assert _least(lambda n: True, 16_000) == 1
    assert _least(lambda n: n >= 7, 7) == 7  # only the full length runs
    assert len(tried) <= 12


def test_axes_that_share_a_name_are_cut_together() -> None:
    specs = [TensorSpec("input_ids", "int64", ("batch", "sequence"), 0),
             TensorSpec("attention_mask", "int64", ("batch", "sequence"), 0),
             TensorSpec("image", "float32", ("batch", 3, None, None), 0)]
    assert variable_axes(specs) == [[("input_ids", 1), ("attention_mask", 1)], [("image", 2)], [("image", 3)]]
    dotted = [TensorSpec("x", "float32", ("p2o.DynamicDimension.0", 3, "p2o.DynamicDimension.1"), 0)]
    assert variable_axes(dotted) == [[("x", 2)]]  # paddle2onnx's names are names, not expressions of others


def test_a_manifest_with_a_shortest_length_outside_the_shape_is_refused(tmp_path: Path) -> None:
    import json

    path = save(_strided_audio_model(), tmp_path / "audio.onnx")
    waves = np.random.default_rng(1).standard_normal((40, 60)).astype(np.float32)
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration={"samples": waves})
    manifest = pkg.path / "edgeserve.json"
    data = json.loads(manifest.read_text())
    data["inputs"][0]["shortest"] = [[5, 20]]
    manifest.write_text(json.dumps(data))
    with pytest.raises(edgeserve.PackageError, match="shortest length outside its shape"):
        edgeserve.load(pkg.path)


def test_inputs_that_must_match_each_other_are_not_given_a_floor(tmp_path: Path) -> None:
    """Two inputs whose lengths must agree, under different names (a decoder's ``input_ids`` beside a mask of
    ``past_sequence_length + sequence_length``): cut one alone and the model runs only at the full length. That
    is no floor: shorter requests that keep them in step must still be answered."""
    nodes = [helper.make_node("Concat", ["a", "b"], ["c"], axis=0),  # lengths must agree (no broadcasting)
             helper.make_node("ReduceSum", ["c"], ["r"], axes=[1], keepdims=0),
             helper.make_node("Split", ["r"], ["r1", "r2"], axis=0),
             helper.make_node("Add", ["r1", "r2"], ["out"])]
    graph = helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "n"]),
                                              helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "m"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    path = save(model, tmp_path / "pair.onnx")
    data = np.random.default_rng(0).standard_normal((20, 12)).astype(np.float32)
    pkg = edgeserve.convert(path, tmp_path / "pkg", quantize="none", calibration={"a": data, "b": data})
    assert all(not spec.shortest for spec in pkg.manifest.inputs)
    with edgeserve.load(pkg.path) as served:
        assert served.predict({"a": data[:2, :3], "b": data[:2, :3]})["out"].shape == (2,)
    exprs = [TensorSpec("ids", "int64", ("batch", "sequence_length"), 0),
             TensorSpec("mask", "int64", ("batch", "past_sequence_length + sequence_length"), 0),
             TensorSpec("past", "float32", ("batch", 4, "past_sequence_length", 8), 0)]
    assert variable_axes(exprs) == []  # tied by an expression: never cut
