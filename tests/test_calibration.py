"""Static calibration keeps its memory to what one pass of rows needs, whatever the model's depth or the rows' size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeserve.config import QuantizeConfig
from edgeserve.converter import quantize as quantize_module
from edgeserve.converter.data import check_samples
from edgeserve.tensors import TensorSpec
from tests.factories import mlp_model, rows, save


def _deep_chain(width: int, depth: int) -> onnx.ModelProto:
    """``x [batch, width]`` through ``depth`` Add+Relu pairs: many wide activations, each needed only once."""
    nodes, last = [], "x"
    for i in range(depth):
        nodes += [helper.make_node("Add", [last, "one"], [f"a{i}"]), helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        last = f"r{i}"
    nodes.append(helper.make_node("MatMul", [last, "w"], ["y"]))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
         onnx.numpy_helper.from_array(np.full((width, 2), 1e-3, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_min_max_calibration_frees_each_activation_once_reduced(tmp_path: Path) -> None:
    """onnxruntime's calibrator adds a ReduceMin and a ReduceMax on every tensor, and its default order runs them
    last, keeping every activation alive: 40 tensors of 16 rows x 250k floats would take 640 MB (ViT-B/16 took
    5.2 GB). In priority order a pass holds a few. Measured as the high-water mark of a child process."""
    src = save(_deep_chain(width=250_000, depth=20), tmp_path / "chain.onnx")
    script = f"""
import resource, numpy as np
from pathlib import Path
from edgeserve.converter import quantize as q
from edgeserve.converter.data import check_samples
from edgeserve.tensors import TensorSpec
from onnxruntime.quantization import CalibrationMethod
samples = check_samples({{"x": np.random.default_rng(0).random((16, 250_000), np.float32)}},
                        (TensorSpec("x", "float32", ("batch", 250_000), 0),), what="test")
tmp = Path({str(tmp_path)!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
q.calibrate(tmp / "chain.onnx", q._Reader(samples, 16, None), CalibrationMethod.MinMax, tmp / "ranges.json", tmp)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    grown_mib = int(done.stdout.split()[-1])
    assert grown_mib < 250, f"calibration grew the process by {grown_mib} MiB (one pass of all 40 tensors: 640)"
    assert src.exists()


def test_calibration_passes_keep_to_a_byte_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pass runs one row and measures its intermediate outputs; the others take as many rows as
    ``CALIBRATION_BYTES`` holds (16 at most). Min-max ranges do not depend on the passes: the models are equal."""
    src = save(mlp_model(), tmp_path / "mlp.onnx")
    samples = check_samples({"x": rows(40)}, (TensorSpec("x", "float32", ("batch", 16), 0),), what="test")
    answers, batches = [], []
    for budget in (1, 1 << 30):
        monkeypatch.setattr(quantize_module, "CALIBRATION_BYTES", budget)
        out = tmp_path / f"q{budget}.onnx"
        recipe = quantize_module.quantize(src, out, QuantizeConfig(mode="static"), calibration=samples)
        batches.append(recipe["calibration"]["batch_size"])
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        answers.append(session.run(None, {"x": rows(8, seed=3)})[0])
    assert batches == [1, 16]
    np.testing.assert_array_equal(answers[0], answers[1])
