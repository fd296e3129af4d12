"""Tiny models and data built in code, seeded; no test downloads anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
EXAMPLES = {
    "digits-mlp": ("digits_mlp.onnx", "digits_mlp_calibration.npz", "digits_mlp_eval.npz"),
    "digits-cnn": ("digits_cnn.onnx", "digits_cnn_calibration.npz", "digits_cnn_eval.npz"),
    "tiny-bert": ("tiny_bert.onnx", "tiny_bert_calibration.npz", "tiny_bert_eval.npz"),
}


def example(name: str) -> tuple[Path, Path, Path]:
    model, cal, ev = EXAMPLES[name]
    return MODELS / model, MODELS / cal, MODELS / ev


def mlp_model(n_in: int = 16, hidden: int = 32, n_out: int = 4, *, seed: int = 0, opset: int = 17,
              batch: str | int = "batch") -> onnx.ModelProto:
    """x[batch, n_in] → Gemm → Relu → Gemm → logits[batch, n_out]."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((n_in, hidden)).astype(np.float32) * 0.3, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, n_out)).astype(np.float32) * 0.3, "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(n_out).astype(np.float32) * 0.1, "b2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"], name="fc2"),
        helper.make_node("Add", ["h3", "b2"], ["logits"], name="bias2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, n_out])],
        [w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_input_model() -> onnx.ModelProto:
    """ids int64 [batch, seq] and scale float32 [batch, 1] → out float32 [batch, seq]."""
    nodes = [
        helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["idsf", "scale"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def rows(n: int, n_in: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n_in)).astype(np.float32)
