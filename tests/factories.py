"""Tiny models and data built in code, seeded; no test downloads anything."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

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


def gather_model(vocab: int = 10, dim: int = 4) -> onnx.ModelProto:
    """ids int64 [batch, seq] → embedding rows out float32 [batch, seq, dim] (row i of the table is all i).

    An id outside the table passes the input contract and fails in the engine, as a real token id past the
    vocabulary does: the request that poisons a batch."""
    table = numpy_helper.from_array(np.repeat(np.arange(vocab, dtype=np.float32)[:, None], dim, axis=1), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], axis=0)], "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq", dim])], [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def rows(n: int, n_in: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, n_in)).astype(np.float32)


def cnn_opset11(seed: int = 0, size: int = 16) -> onnx.ModelProto:
    """An opset-11 CNN made with onnx.helper: Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn11",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 16, 8, 3, 3), init("b2", 16), init("w3", 5, 16), init("b3", 5)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.checker.check_model(model)
    return model


def control_flow_model(seed: int = 0) -> onnx.ModelProto:
    """x[batch, 8] → If(sum(x) > 0: x @ A, else: x @ B) → Loop (2 iterations of Relu(h @ C)) → y."""
    rng = np.random.default_rng(seed)
    a, b, c = (numpy_helper.from_array((rng.standard_normal((8, 8)) * 0.3).astype(np.float32), n) for n in "ABC")
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "A"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["batch", 8])])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "B"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["batch", 8])])
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("MatMul", ["h_in", "C"], ["hc"]),
         helper.make_node("Relu", ["hc"], ["h_out"])],
        "body",
        [helper.make_tensor_value_info("iter", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["batch", 8])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["pos"]),
        helper.make_node("If", ["pos"], ["h0"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trips", "true", "h0"], ["y"], body=body),
    ]
    graph = helper.make_graph(
        nodes, "control",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [a, b, c, numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
         numpy_helper.from_array(np.array(2, np.int64), "trips"), numpy_helper.from_array(np.array(True), "true")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_with_external_data(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return path


def torch_yolo_like():
    """A YOLO-like detector: strided conv backbone, upsample + concat neck, two heads with Sigmoid."""
    import torch
    from torch import nn

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.SiLU())
            self.down = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1), nn.SiLU())
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.fuse = nn.Sequential(nn.Conv2d(96, 32, 1), nn.SiLU())
            self.box = nn.Conv2d(32, 4 * 3, 1)
            self.obj = nn.Conv2d(64, 3 * 5, 1)

        def forward(self, x):
            p3 = self.stem(x)
            p4 = self.down(p3)
            f = self.fuse(torch.cat([p3, self.up(p4)], dim=1))
            return self.box(f).sigmoid(), self.obj(p4).sigmoid()

    torch.manual_seed(0)
    return Detector().eval()


def torch_lstm():
    """A recurrent model with explicit state in and out: (x, h0, c0) → (y, hn, cn)."""
    import torch
    from torch import nn

    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(12, 32, batch_first=True)
            self.head = nn.Linear(32, 6)

        def forward(self, x, h0, c0):
            out, (hn, cn) = self.lstm(x, (h0, c0))
            return self.head(out), hn, cn

    torch.manual_seed(0)
    return Tagger().eval()


def vad_like_model(samples: int = 64, hidden: int = 16, seed: int = 0, *, unnamed: bool = False) -> onnx.ModelProto:
    """A stateful audio model built like silero-VAD: ``input [batch, samples]``, ``state [2, batch, hidden]`` fed
    back, and a scalar ``sr`` (sample rate, no batch axis, shared by every row) → ``output [batch, 1]``, ``stateN``.
    ``unnamed``: the state's batch dim has no name and ``stateN`` is ``[?, ?, ?]``, as silero's own export."""
    state = [2, None if unnamed else "batch", hidden]
    state_out = [None, None, None] if unnamed else state
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((samples, hidden)).astype(np.float32) * 0.2, "w")
    v = numpy_helper.from_array(rng.standard_normal((hidden, 1)).astype(np.float32) * 0.5, "v")
    scale = numpy_helper.from_array(np.array(1 / 16000, np.float32), "scale")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["h"], name="proj"),
        helper.make_node("Relu", ["h"], ["hr"], name="proj_act"),
        helper.make_node("ReduceMean", ["state"], ["s_mean"], name="state_mean", axes=[0], keepdims=0),
        helper.make_node("Add", ["hr", "s_mean"], ["hs"], name="mix"),
        helper.make_node("Cast", ["sr"], ["sr_f"], name="sr_cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sr_f", "scale"], ["sr_s"], name="sr_scale"),
        helper.make_node("Mul", ["hs", "sr_s"], ["hs2"], name="rate"),
        helper.make_node("Tanh", ["hs2"], ["t"], name="act"),
        helper.make_node("MatMul", ["t", "v"], ["logit"], name="head"),
        helper.make_node("Sigmoid", ["logit"], ["output"], name="prob"),
        helper.make_node("Unsqueeze", ["t", "zero"], ["t0"], name="t_unsq"),
        helper.make_node("Add", ["state", "t0"], ["stateN_raw"], name="state_add"),
        helper.make_node("Tanh", ["stateN_raw"], ["stateN"], name="state_act"),
    ]
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    graph = helper.make_graph(
        nodes, "vad_like",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", samples]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, state),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, state_out)],
        initializer=[w, v, scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def vad_like_data(rows: int = 48, samples: int = 64, hidden: int = 16, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": rng.standard_normal((rows, samples)).astype(np.float32),
            "state": (rng.standard_normal((2, rows, hidden)) * 0.1).astype(np.float32),
            "sr": np.array(16000, dtype=np.int64)}


def encoder_model(vocab: int = 50, dim: int = 32, *, sentinel: str = "-1e4", seed: int = 0) -> onnx.ModelProto:
    """A one-layer attention encoder as exporters write it: ``input_ids``, ``attention_mask [batch, seq]`` →
    ``last_hidden_state [batch, seq, dim]``; the mask enters as ``-1e4·(1 - mask)`` added to the scores (or as
    ``-inf`` through Where, with ``sentinel="-inf"``). Padded positions still get (meaningless) hidden states."""
    rng = np.random.default_rng(seed)
    init = [numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "emb")]
    for name in ("wq", "wk", "wv", "wo"):
        init.append(numpy_helper.from_array((rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32), name))
    init += [numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "scale"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "big"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
             numpy_helper.from_array(np.array(-np.inf, np.float32), "neg_inf"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="scores"),
        helper.make_node("Mul", ["qk", "scale"], ["qk_s"], name="scaled"),
    ]
    if sentinel == "-inf":
        nodes += [helper.make_node("Cast", ["attention_mask"], ["mask_b"], name="mask_cast", to=TensorProto.BOOL),
                  helper.make_node("Where", ["mask_b", "zero_f", "neg_inf"], ["bias2"], name="mask_where")]
    else:
        nodes += [helper.make_node("Cast", ["attention_mask"], ["mask_f"], name="mask_cast", to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["one", "mask_f"], ["inv"], name="mask_inv"),
                  helper.make_node("Mul", ["inv", "big"], ["bias2"], name="mask_bias")]
    nodes += [
        helper.make_node("Unsqueeze", ["bias2", "axis1"], ["bias"], name="mask_unsq"),
        helper.make_node("Add", ["qk_s", "bias"], ["masked"], name="mask_add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="attend"),
        helper.make_node("MatMul", ["ctx", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["o", "x"], ["last_hidden_state"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes, "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", dim])],
        initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def encoder_data(rows: int = 64, seq: int = 12, vocab: int = 50, seed: int = 5) -> dict[str, np.ndarray]:
    """Padded batches: each row has 3..seq real tokens, the rest id 0 with mask 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, seq + 1, size=rows)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, size=(rows, seq)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask}


def _conv(name: str, x: str, out: str, cin: int, cout: int, rng: np.random.Generator, k: int = 3,
          init: list | None = None) -> list:
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32), f"{name}_w")
    b = numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b")
    assert init is not None
    init += [w, b]
    return [helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], name=name, pads=[k // 2] * 4)]


def prob_map_model(seed: int = 0) -> onnx.ModelProto:
    """A text-detection-style network: ``image [batch, 1, 16, 16]`` → ``prob_map [batch, 1, 16, 16]`` through a
    sigmoid whose logits sit near -12 where the image is empty, so an empty image maps to ~1e-5 everywhere."""
    rng = np.random.default_rng(seed)
    init: list = [numpy_helper.from_array(np.array(8.0, np.float32), "gain"),
                  numpy_helper.from_array(np.array(-12.0, np.float32), "offset")]
    nodes = _conv("c1", "image", "h1", 1, 8, rng, init=init) + [helper.make_node("Relu", ["h1"], ["r1"], name="a1")]
    nodes += _conv("c2", "r1", "h2", 8, 1, rng, init=init)
    nodes += [helper.make_node("Abs", ["h2"], ["h2a"], name="mag"),
              helper.make_node("Mul", ["h2a", "gain"], ["h3"], name="gain_mul"),
              helper.make_node("Add", ["h3", "offset"], ["logits"], name="bias_add"),
              helper.make_node("Sigmoid", ["logits"], ["prob_map"], name="sigmoid")]
    graph = helper.make_graph(nodes, "prob_map",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 16, 16])],
                              [helper.make_tensor_value_info("prob_map", TensorProto.FLOAT, ["batch", 1, 16, 16])],
                              initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def prob_map_data(rows: int = 64, seed: int = 2) -> np.ndarray:
    """Half the images empty (zeros), half with a bright block somewhere."""
    rng = np.random.default_rng(seed)
    x = np.zeros((rows, 1, 16, 16), np.float32)
    for i in range(0, rows, 2):
        r, c = rng.integers(0, 10, size=2)
        x[i, 0, r:r + 5, c:c + 6] = rng.uniform(0.5, 1.5)
    return x


def ctc_model(classes: int = 12, steps: int = 20, seed: int = 0) -> onnx.ModelProto:
    """A CTC recogniser head as CRNN-style exporters write it: ``features [batch, steps, classes]`` →
    ``log_probs [batch, steps, classes]`` (log-softmax; class 0 the blank). Peaked like a trained recogniser, so
    the decoded string is stable while the large negative log-probabilities of unlikely classes are not."""
    rng = np.random.default_rng(seed)
    eye = np.eye(classes, dtype=np.float32)
    w1 = numpy_helper.from_array(np.concatenate([eye, -eye], 1) + rng.normal(0, 0.02, (classes, 2 * classes)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((np.concatenate([eye, -eye], 0) * 12).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["features", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["logits_raw"], name="fc2"),
             helper.make_node("LogSoftmax", ["logits_raw"], ["logits"], name="log_softmax", axis=-1)]
    graph = helper.make_graph(nodes, "ctc",
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", steps, classes])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", steps, classes])],
                              initializer=[w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def detection_outputs(rows: int = 8, classes: int = 3, anchors: int = 60, seed: int = 4) -> np.ndarray:
    """YOLO-style ``[batch, 4 + classes, anchors]``: boxes (cx, cy, w, h) in pixels, sigmoid class scores with a
    few confident anchors per image."""
    rng = np.random.default_rng(seed)
    boxes = np.concatenate([rng.uniform(50, 590, (rows, 2, anchors)), rng.uniform(20, 120, (rows, 2, anchors))], 1)
    scores = rng.uniform(0, 0.1, (rows, classes, anchors))
    for r in range(rows):
        hot = rng.choice(anchors, 6, replace=False)
        scores[r, rng.integers(0, classes, 6), hot] = rng.uniform(0.5, 0.95, 6)
    return np.concatenate([boxes, scores], 1).astype(np.float32)


def kept_boxes_model(anchors: int = 48, seed: int = 0) -> onnx.ModelProto:
    """A post-processed detector exported at batch 1, as torchvision's are: ``candidates [1, anchors, 6]``
    (x1, y1, x2, y2, objectness logit, class logit) → the boxes scored above 0.5 (``boxes [kept, 4]``, through a
    learned 4x4 refinement, ``scores [kept]``, ``labels [kept]`` int64), their number depending on the values."""
    rng = np.random.default_rng(seed)
    refine = numpy_helper.from_array((np.eye(4) + rng.normal(0, 0.01, (4, 4))).astype(np.float32), "refine")
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in
              (("zero", 0), ("axis1", [1]), ("s0", [0]), ("s4", [4]), ("s5", [5]), ("s6", [6]))]
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    zero_f = numpy_helper.from_array(np.array(0.0, np.float32), "zero_f")
    nodes = [
        helper.make_node("Gather", ["candidates", "zero"], ["c"], axis=0, name="first"),  # [anchors, 6]
        helper.make_node("Slice", ["c", "s0", "s4", "axis1"], ["xyxy"], name="coords"),
        helper.make_node("MatMul", ["xyxy", "refine"], ["refined"], name="refine_boxes"),
        helper.make_node("Slice", ["c", "s4", "s5", "axis1"], ["obj"], name="objectness"),
        helper.make_node("Sigmoid", ["obj"], ["prob2"], name="sigmoid"),
        helper.make_node("Squeeze", ["prob2", "axis1"], ["prob"], name="squeeze_prob"),
        helper.make_node("Slice", ["c", "s5", "s6", "axis1"], ["cls2"], name="class_logit"),
        helper.make_node("Squeeze", ["cls2", "axis1"], ["cls"], name="squeeze_cls"),
        helper.make_node("Greater", ["cls", "zero_f"], ["cls_on"], name="class_of"),
        helper.make_node("Cast", ["cls_on"], ["cls_id"], to=TensorProto.INT64, name="as_label"),
        helper.make_node("Greater", ["prob", "half"], ["on"], name="threshold"),
        helper.make_node("NonZero", ["on"], ["nz"], name="kept"),
        helper.make_node("Squeeze", ["nz", "s0"], ["idx"], name="squeeze_idx"),
        helper.make_node("Gather", ["refined", "idx"], ["boxes"], axis=0, name="gather_boxes"),
        helper.make_node("Gather", ["prob", "idx"], ["scores"], axis=0, name="gather_scores"),
        helper.make_node("Gather", ["cls_id", "idx"], ["labels"], axis=0, name="gather_labels"),
    ]
    graph = helper.make_graph(
        nodes, "kept_boxes",
        [helper.make_tensor_value_info("candidates", TensorProto.FLOAT, [1, anchors, 6])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["kept", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["kept"]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["kept"])],
        [refine, half, zero_f, *consts],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def kept_boxes_data(samples: int = 24, anchors: int = 48, seed: int = 1) -> np.ndarray:
    """``[samples, anchors, 6]``: boxes 8-40 px wide on a 256 px image, objectness logits of a few anchors
    high, the rest low (a handful kept per sample, a different number each). Rows are stacked on the model's
    batch-1 axis."""
    rng = np.random.default_rng(seed)
    lo = rng.uniform(0, 216, (samples, anchors, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(8, 40, (samples, anchors, 2))], -1)
    objectness = np.where(rng.random((samples, anchors, 1)) < 0.15, 4.0, -4.0) + rng.normal(0, 0.5, (samples, anchors, 1))
    return np.concatenate([boxes, objectness, rng.normal(0, 1, (samples, anchors, 1))], -1).astype(np.float32)


def ctc_data(rows: int = 64, classes: int = 12, steps: int = 20, seed: int = 1) -> np.ndarray:
    """Label sequences with blanks between characters, as one-hot evidence plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((rows, steps)) < 0.4, 0, rng.integers(1, classes, (rows, steps)))
    x = np.eye(classes, dtype=np.float32)[labels] * 2.0 + rng.normal(0, 0.15, (rows, steps, classes)).astype(np.float32)
    return x.astype(np.float32)


def raw_audio_model(samples: int = 144_000, frame: int = 400, bins: int = 201, seed: int = 0) -> onnx.ModelProto:
    """A speech-quality-style model on raw 16 kHz audio: ``audio [batch, samples]`` framed inside the graph and
    multiplied by a DFT-like basis (a spectrogram: large activations) → ``score [batch, 1]``."""
    rng = np.random.default_rng(seed)
    basis = numpy_helper.from_array((rng.standard_normal((frame, bins)) / np.sqrt(frame)).astype(np.float32), "basis")
    head = numpy_helper.from_array((rng.standard_normal((bins, 1)) / np.sqrt(bins)).astype(np.float32), "head")
    shape = numpy_helper.from_array(np.array([0, samples // frame, frame], np.int64), "frames")
    nodes = [helper.make_node("Reshape", ["audio", "frames"], ["framed"], name="frame"),
             helper.make_node("MatMul", ["framed", "basis"], ["spec"], name="spectrogram"),
             helper.make_node("Abs", ["spec"], ["mag"], name="magnitude"),
             helper.make_node("ReduceMean", ["mag"], ["pooled"], name="pool", axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["score"], name="head_mm")]
    graph = helper.make_graph(nodes, "raw_audio",
                              [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", samples])],
                              [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
                              initializer=[basis, head, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


ECHO_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE, "BYTES": TensorProto.STRING,
}


def echo_model() -> onnx.ModelProto:
    """One input per Open Inference Protocol datatype (``in_FP32`` [batch, 3] …), each echoed to ``out_<type>``."""
    nodes = [helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]) for t in ECHO_TYPES]
    graph = helper.make_graph(
        nodes, "echo",
        [helper.make_tensor_value_info(f"in_{t}", code, ["batch", 3]) for t, code in ECHO_TYPES.items()],
        [helper.make_tensor_value_info(f"out_{t}", code, ["batch", 3]) for t, code in ECHO_TYPES.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def echo_inputs(rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Values for :func:`echo_model` spanning each type's range."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in ECHO_TYPES:
        if t == "BOOL":
            v = rng.random((rows, 3)) > 0.5
        elif t == "BYTES":
            v = np.array([[f"r{i}c{j}-é".encode() for j in range(3)] for i in range(rows)], dtype=object)
        elif t.startswith("FP"):
            v = rng.standard_normal((rows, 3)).astype({"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}[t])
        else:
            dt = np.dtype(t.lower())
            info = np.iinfo(dt)
            v = np.array([[info.min, info.max, 7]] * rows, dtype=dt)
        out[f"in_{t}"] = v
    return out


def gru_model(features: int = 4, hidden: int = 8, seed: int = 0, *, time_major: bool = False) -> onnx.ModelProto:
    """``x [batch, steps, features]`` (``[steps, batch, features]`` when ``time_major``, as PyTorch's RNNs take
    it) through an ONNX GRU to its last state ``y [batch, hidden]``: onnxruntime aborts the process
    (``terminate called``) when a GRU or LSTM is given 0 rows or 0 steps."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, features)).astype(np.float32) * 0.3, "W"),
             numpy_helper.from_array(rng.standard_normal((1, 3 * hidden, hidden)).astype(np.float32) * 0.3, "R"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [helper.make_node("Transpose", ["x"], ["steps_first"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["steps_first", "W", "R"], ["", "last"], hidden_size=hidden),
             helper.make_node("Squeeze", ["last", "axis0"], ["y"])]
    shape = ["steps", "batch", features] if time_major else ["batch", "steps", features]
    if time_major:
        nodes[0] = helper.make_node("Identity", ["x"], ["steps_first"])
    graph = helper.make_graph(nodes, "gru", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def image_text_model(images: str = "image_batch_size", texts: str = "text_batch_size") -> onnx.ModelProto:
    """CLIP's shape: N images [images, 4] scored against M texts [texts, 4]: scores [images, texts]."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["text"], ["text_t"], perm=[1, 0]),
         helper.make_node("MatMul", ["image", "text_t"], ["logits_per_image"]),
         helper.make_node("Identity", ["text"], ["text_embeds"])],
        "clip_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [images, 4]),
         helper.make_tensor_value_info("text", TensorProto.FLOAT, [texts, 4])],
        [helper.make_tensor_value_info("logits_per_image", TensorProto.FLOAT, [images, texts]),
         helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, [texts, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds (a state the test observes, not a guess at how long something takes)."""
    done = threading.Event()
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        done.wait(0.001)
