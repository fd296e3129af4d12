"""The onnxruntime backend's work-arounds for engine crashes, each checked in a child process (a crash there is a
failed test, not a dead test run)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeserve.modelfile import check_model_file, computes_in_half
from tests.factories import mlp_model, save


def half_attention_projection() -> onnx.ModelProto:
    """The pattern of an fp16-converted transformer's attention (Cast -> Transpose -> MatMul on float16 weights),
    on which onnxruntime's NCHWc layout transformer crashes the process at the "all" level."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 12)).astype(np.float16), "w")
    nodes = [helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             helper.make_node("Transpose", ["xh"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("MatMul", ["xt", "w"], ["y"]),
             helper.make_node("Cast", ["y"], ["out"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_half_precision_graph_loads_and_answers_at_the_highest_optimisation_level(tmp_path: Path) -> None:
    path = save(half_attention_projection(), tmp_path / "half.onnx")
    code = textwrap.dedent(f"""
        import numpy as np, edgeserve
        from edgeserve import SessionConfig
        x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
        for cache in (None, {str(tmp_path / "cache")!r}, {str(tmp_path / "cache")!r}):  # no cache, miss, hit
            with edgeserve.load({str(path)!r}, config=SessionConfig(optimization_level="all", cache_dir=cache)) as m:
                np.save({str(tmp_path / "out.npy")!r}, m.predict({{"x": x}})["out"])
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    w = numpy_helper.to_array(half_attention_projection().graph.initializer[0]).astype(np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), x.transpose(1, 0, 2) @ w, rtol=1e-2, atol=1e-2)


def test_half_precision_is_told_from_the_weights(tmp_path: Path) -> None:
    assert computes_in_half(check_model_file(save(half_attention_projection(), tmp_path / "half.onnx")))
    assert not computes_in_half(check_model_file(save(mlp_model(), tmp_path / "mlp.onnx")))


def test_a_size_baked_into_a_reshape_is_explained(tmp_path: Path) -> None:
    """A graph that declares [batch, n] but reshapes to a traced constant: the error says what is going on."""
    import edgeserve

    shape = numpy_helper.from_array(np.array([2, 2], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "baked",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with edgeserve.load(save(model, tmp_path / "baked.onnx")) as loaded:
        assert loaded.predict(np.ones((1, 4), np.float32))["y"].shape == (2, 2)
        with pytest.raises(edgeserve.InferenceError, match="graph holds one fixed: send inputs of the size"):
            loaded.predict(np.ones((1, 5), np.float32))
