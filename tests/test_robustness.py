"""Real exporters' output: every mode converts, or fails with a precise reason, on the awkward cases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgeserve
from edgeserve import InputError
from tests.factories import cnn_opset11, control_flow_model, example, mlp_model, rows, save, save_with_external_data

MODES = ["none", "dynamic", "static", "fp16"]


def _plain(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def _check(pkg_path: Path, source: Path, feed: dict[str, np.ndarray], min_cos: float = 0.98) -> None:
    with edgeserve.load(pkg_path) as model:
        got = model.predict(feed)
    ref = _plain(source, feed)
    for name, value in ref.items():
        a, b = got[name].astype(np.float64).ravel(), value.astype(np.float64).ravel()
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)
        assert cos > min_cos, (name, cos)


@pytest.mark.parametrize("mode", MODES)
def test_opset_11_cnn(tmp_path: Path, mode: str) -> None:
    src = save(cnn_opset11(), tmp_path / "cnn11.onnx")
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    cfg = edgeserve.QuantizeConfig(mode=mode, per_channel=mode == "static")  # type: ignore[arg-type]
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize=cfg, calibration=tmp_path / "cal.npz")
    if mode in ("dynamic", "static"):
        assert pkg.manifest.recipe["opset_upgraded_from"] == 11
    _check(pkg.path, src, {"x": x[:4]})


@pytest.mark.parametrize("mode", MODES)
def test_external_data(tmp_path: Path, mode: str) -> None:
    src = save_with_external_data(mlp_model(), tmp_path / "ext.onnx")
    assert (tmp_path / "ext.onnx.data").exists()
    np.savez(tmp_path / "cal.npz", x=rows(40))
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize=mode, calibration=tmp_path / "cal.npz")
    assert sorted(pkg.manifest.digests) == ["golden.npz", "model.onnx"]  # weights folded into the package's model
    _check(pkg.path, src, {"x": rows(3)})


@pytest.mark.parametrize("mode", ["none", "dynamic", "static"])
def test_if_and_loop(tmp_path: Path, mode: str) -> None:
    src = save(control_flow_model(), tmp_path / "control.onnx")
    x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=x)
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize=mode, calibration=tmp_path / "cal.npz")
    _check(pkg.path, src, {"x": x[:3]}, min_cos=0.95)
    _check(pkg.path, src, {"x": -np.abs(x[:3])}, min_cos=0.95)  # the else branch too


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_of_a_model_computing_inside_control_flow_stays_float_with_every_calibration(
        tmp_path: Path, method: str) -> None:
    """Everything the quantiser would take sits inside If/Loop (silero-VAD's export): min-max went on to quantise
    nothing, the histogram methods failed with onnxruntime's "Histogram has not been collected". Every method now
    converts to the float model, and the recipe says why."""
    from edgeserve import QuantizeConfig

    src = save(control_flow_model(), tmp_path / "control.onnx")
    x = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize=QuantizeConfig(mode="static", calibration_method=method),
                            calibration={"x": x})
    assert "inside If/Loop subgraphs" in pkg.manifest.recipe["nothing_quantised"]
    _check(pkg.path, src, {"x": x[:3]}, min_cos=0.999)


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_bert_fused_by_the_transformers_optimizer(tmp_path: Path, mode: str) -> None:
    from onnxruntime.transformers import optimizer

    model_path, cal, ev = example("tiny-bert")
    fused = optimizer.optimize_model(str(model_path), model_type="bert", num_heads=4, hidden_size=128, opt_level=1)
    fused_path = tmp_path / "fused.onnx"
    fused.save_model_to_file(str(fused_path))
    ops = {n.op_type for n in fused.model.graph.node}
    assert ops & {"SkipLayerNormalization", "Attention", "FastGelu", "Gelu", "BiasGelu", "LayerNormalization"}
    pkg = edgeserve.convert(fused_path, tmp_path / "pkg", quantize=mode, calibration=cal, eval_data=ev)
    assert pkg.manifest.fidelity["summary"]["cosine_min"] > 0.95
    with np.load(ev) as data:
        feed = {k: data[k][:4] for k in data.files}
    _check(pkg.path, fused_path, feed)


def test_yolo_like_detector_with_several_outputs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tests.factories import torch_yolo_like

    net = torch_yolo_like()
    x = np.random.default_rng(0).random((24, 3, 32, 32), dtype=np.float32)
    for mode in ("static", "dynamic"):
        pkg = edgeserve.convert(net, tmp_path / mode, example_inputs=torch.from_numpy(x[:2]), quantize=mode,
                                output_names=["boxes", "objectness"], calibration={"x": x})
        assert [o.name for o in pkg.manifest.outputs] == ["boxes", "objectness"]
        with edgeserve.load(pkg.path) as model, torch.no_grad():
            out = model.predict(x[:3])
            boxes, obj = (t.numpy() for t in net(torch.from_numpy(x[:3])))
        assert out["boxes"].shape == boxes.shape == (3, 12, 8, 8) and out["objectness"].shape == obj.shape
        np.testing.assert_allclose(out["boxes"], boxes, atol=0.1)
        np.testing.assert_allclose(out["objectness"], obj, atol=0.1)


def test_lstm_with_state_inputs_and_outputs(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tests.factories import torch_lstm

    net = torch_lstm()
    rng = np.random.default_rng(0)
    n = 20
    x = rng.standard_normal((n, 7, 12)).astype(np.float32)
    h0 = rng.standard_normal((1, n, 32)).astype(np.float32) * 0.1
    c0 = rng.standard_normal((1, n, 32)).astype(np.float32) * 0.1
    axes = {"x": {0: "batch", 1: "steps"}, "h0": {1: "batch"}, "c0": {1: "batch"},
            "tags": {0: "batch", 1: "steps"}, "hn": {1: "batch"}, "cn": {1: "batch"}}
    example_in = tuple(torch.from_numpy(a) for a in (x[:2], h0[:, :2], c0[:, :2]))
    for mode in ("none", "dynamic", "static"):
        pkg = edgeserve.convert(net, tmp_path / mode, example_inputs=example_in, input_names=["x", "h0", "c0"],
                                output_names=["tags", "hn", "cn"], dynamic_axes=axes, quantize=mode,
                                calibration={"x": x, "h0": h0, "c0": c0})
        specs = {s.name: s.batch_axis for s in pkg.manifest.inputs}
        assert specs == {"x": 0, "h0": 1, "c0": 1}  # the state's batch axis is found from the shared dim name
        with edgeserve.load(pkg.path) as model, torch.no_grad():
            out = model.predict({"x": x[:5], "h0": h0[:, :5], "c0": c0[:, :5]})
            tags, hn, _ = (t.numpy() for t in net(*(torch.from_numpy(a) for a in (x[:5], h0[:, :5], c0[:, :5]))))
        assert out["hn"].shape == (1, 5, 32)
        tol = 1e-4 if mode == "none" else 0.15
        np.testing.assert_allclose(out["tags"], tags, atol=tol)
        np.testing.assert_allclose(out["hn"], hn, atol=tol)


PEAK_SCRIPT = """
import json, sys, numpy as np, edgeserve
def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((n, 3, 64, 64)).astype(np.float32)
before = peak()
cfg = edgeserve.QuantizeConfig(mode='static', calibration_method='percentile')
edgeserve.convert(src, out, quantize=cfg, calibration={'x': x}, eval_data={'x': x[:8]})
print(json.dumps({'before': before, 'after': peak()}))
"""


def test_calibration_memory_is_bounded(tmp_path: Path) -> None:
    """Calibrating 400 samples must not hold 400 samples' activations: run in a fresh process, read its peak.

    Percentile (like entropy) calibration collects whole activations, not just their min and max, so it is the
    method whose memory grows with the sample count unless the data is streamed in shards."""
    import json
    import subprocess
    import sys

    src = save(cnn_opset11(size=64), tmp_path / "cnn.onnx")
    growth = {}
    for n in (40, 400):
        proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(src), str(tmp_path / f"pkg{n}"), str(n)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks = json.loads(proc.stdout.strip().splitlines()[-1])
        growth[n] = peaks["after"] - peaks["before"]
    # Held all at once, 400 samples' activations (8x64x64 + 16x32x32 floats each, several tensors) would add
    # hundreds of MB over 40 samples'; streamed in shards the peak barely moves.
    assert growth[400] < growth[40] + 60 * 2**20, growth


def test_cpu_defaults_follow_vnni(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mlp_path: Path) -> None:
    from edgeserve.converter import quantize as q

    monkeypatch.setattr(q, "has_vnni", lambda: False)
    monkeypatch.setenv("EDGESERVE_QUANTISE_IN_PROCESS", "1")  # the patch lives in this process
    monkeypatch.setattr(q, "is_arm", lambda: False)
    np.savez(tmp_path / "cal.npz", x=rows(30))
    pkg = edgeserve.convert(mlp_path, tmp_path / "no-vnni", quantize="static", calibration=tmp_path / "cal.npz")
    assert pkg.manifest.recipe["reduce_range"] is True and pkg.manifest.recipe["cpu_vnni"] is False
    assert pkg.manifest.recipe["activation_type"] == "uint8"
    monkeypatch.setattr(q, "has_vnni", lambda: True)
    pkg = edgeserve.convert(mlp_path, tmp_path / "vnni", quantize="static", calibration=tmp_path / "cal.npz")
    assert pkg.manifest.recipe["reduce_range"] is False and pkg.manifest.recipe["cpu_vnni"] is True
    monkeypatch.setattr(q, "is_arm", lambda: True)
    pkg = edgeserve.convert(mlp_path, tmp_path / "arm", quantize="static", calibration=tmp_path / "cal.npz")
    assert pkg.manifest.recipe["activation_type"] == "int8"


def test_failed_symbolic_shape_inference_leaves_nothing_in_the_working_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime's symbolic shape inference saves sym_shape_infer_temp.onnx and UUID-named weight files into the
    current folder when it fails (it does on scikit-learn graphs); a conversion writes nothing there, so two
    conversions in one folder, or a user's own files, are never touched."""
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    clf = LogisticRegression(max_iter=300).fit(X, y)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.data").write_bytes(b"user file")
    with ThreadPoolExecutor(2) as pool:
        pkgs = list(pool.map(lambda i: edgeserve.convert(clf, tmp_path / "out" / f"p{i}", example_inputs=X[:4],
                                                         quantize="dynamic", calibration={"X": X}), range(2)))
    for pkg in pkgs:
        assert "Incomplete symbolic shape inference" in pkg.manifest.recipe["preprocess_fallback_reason"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.data", "out"]


def test_a_quantiser_outgrowing_the_memory_budget_is_stopped_and_skipped(tmp_path: Path) -> None:
    """Raw 9 s audio with a spectrogram inside: each calibration batch is large. With a budget barely above what
    this process already uses, every quantiser is stopped by the watchdog; auto records why, keeps fp32, and the
    conversion finishes instead of taking the machine down."""
    from edgeserve.converter.memory import rss
    from tests.factories import raw_audio_model

    audio = np.random.default_rng(0).standard_normal((24, 144_000)).astype(np.float32)
    src = save(raw_audio_model(), tmp_path / "audio.onnx")
    budget = (rss() or 0) + 80 * 2**20
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="auto", calibration={"audio": audio},
                            max_memory=budget, time_budget=60)
    memory = pkg.manifest.recipe["memory"]
    assert memory["budget_bytes"] == budget and memory["stopped"]
    skipped = [c for c in pkg.manifest.recipe["auto"]["candidates"] if c["status"] == "skipped"]
    assert skipped and all("memory budget" in c["reason"] for c in skipped)
    quantised = [c for c in pkg.manifest.recipe["auto"]["candidates"] if c["name"].startswith("int8")]
    assert quantised and all(c["status"] == "skipped" for c in quantised)


def test_the_memory_budget_is_parsed_and_checked() -> None:
    from edgeserve.converter.memory import parse_size

    assert parse_size("1G") == 2**30 and parse_size("512MiB") == 512 * 2**20 and parse_size(2**28) == 2**28
    for bad in ("lots", "1Q", "10M"):
        with pytest.raises(edgeserve.ConfigError, match="memory budget"):
            parse_size(bad)


def test_an_empty_request_never_reaches_an_engine_that_would_abort_the_process(tmp_path: Path) -> None:
    """onnxruntime kills the whole process (``terminate called without an active exception``) when a GRU gets 0
    rows or 0 steps: the contract refuses both, naming the input and the axis, and the process goes on to answer
    a real request. Run in a child process, so a regression fails this test instead of killing the suite."""
    from tests.factories import gru_model

    path = save(gru_model(), tmp_path / "gru.onnx")
    script = f"""
import numpy as np, edgeserve
model = edgeserve.load({str(path)!r}, batching=edgeserve.BatchConfig())
for shape in ((0, 3, 4), (2, 0, 4)):
    try:
        model.predict(np.zeros(shape, np.float32))
    except edgeserve.InputError as exc:
        print("refused:", exc)
print("answered", model.predict(np.ones((2, 3, 4), np.float32))["y"].shape)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    lines = done.stdout.splitlines()
    assert lines[0] == "refused: input 'x' has no rows ([0, 3, 4], 0 along its batch axis 0); send at least one row"
    assert lines[1].startswith("refused: input 'x' is empty along axis 1 ([2, 0, 4]")
    assert lines[2] == "answered (2, 8)"


def test_a_cache_fed_back_may_be_empty_at_the_first_step() -> None:
    """A decoder's ``past_key [batch, heads, 0, dim]`` before its first token is a real request, not an error."""
    from edgeserve.guard.contract import InputContract
    from edgeserve.tensors import TensorSpec

    contract = InputContract([TensorSpec("ids", "int64", ("batch", "seq"), batch_axis=0),
                              TensorSpec("past_key", "float32", ("batch", 2, "past", 8), batch_axis=0)])
    feed = contract.feed({"ids": np.ones((1, 3), np.int64), "past_key": np.zeros((1, 2, 0, 8), np.float32)})
    assert feed["past_key"].shape == (1, 2, 0, 8)
    with pytest.raises(InputError, match="'ids' has no rows"):
        contract.feed({"ids": np.ones((0, 3), np.int64), "past_key": np.zeros((0, 2, 0, 8), np.float32)})


def test_a_model_exported_in_half_precision_converts_in_every_float_mode(tmp_path: Path) -> None:
    """float16 weights and inputs, and an operator (Erf) onnxruntime's CPU kernels take in float32 only: its
    optimiser wraps it in casts, which the fp16 tool used to turn into a graph that does not load."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 32)) * 0.3).astype(np.float16), "w1"),
             numpy_helper.from_array((rng.standard_normal((32, 4)) * 0.3).astype(np.float16), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Erf", ["h"], ["e"]),
             helper.make_node("MatMul", ["e", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["b", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["b", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = save(model, tmp_path / "half.onnx")
    x = rng.standard_normal((40, 16)).astype(np.float16)
    np.savez(tmp_path / "cal.npz", x=x)
    for mode in ("none", "fp16"):
        pkg = edgeserve.convert(src, tmp_path / mode, quantize=mode, calibration=tmp_path / "cal.npz")
        with edgeserve.load(pkg.path) as m:
            got = m.predict({"x": x[:5]})["y"]
        np.testing.assert_allclose(got.astype(np.float32), _plain(src, {"x": x[:5]})["y"].astype(np.float32),
                                   atol=1e-2)


def test_fp16_of_a_detector_whose_suppression_sits_in_a_branch_loads_and_keeps_its_boxes(tmp_path: Path) -> None:
    """torchvision's detectors run NonMaxSuppression inside an If branch; it has no float16 kernel, and onnxruntime's
    float16 tool put the casts it adds around it in the main graph, reading a value the branch makes: every such
    model's fp16 failed to load ("Node input ... is not a graph input")."""
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, dtype=d), n) for n, v, d in
              (("one", 1.0, np.float32), ("keep", [10], np.int64), ("iou", [0.5], np.float32),
               ("thr", [0.0], np.float32), ("zero", 0.0, np.float32))]
    branch = helper.make_graph(
        [helper.make_node("Mul", ["boxes", "one"], ["b2"]), helper.make_node("Mul", ["scores", "one"], ["s2"]),
         helper.make_node("NonMaxSuppression", ["b2", "s2", "keep", "iou", "thr"], ["picked"])],
        "suppress", [], [helper.make_tensor_value_info("picked", TensorProto.INT64, ["n", 3])])
    none = helper.make_graph([helper.make_node("Constant", [], ["empty"], value=numpy_helper.from_array(
        np.zeros((0, 3), np.int64)))], "none", [], [helper.make_tensor_value_info("empty", TensorProto.INT64, ["n", 3])])
    nodes = [helper.make_node("Mul", ["x", "one"], ["boxes"]),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[2], keepdims=0),
             helper.make_node("Unsqueeze", ["m"], ["scores"], axes=[1]),
             helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("Greater", ["top", "zero"], ["any"]),
             helper.make_node("If", ["any"], ["picked_out"], then_branch=branch, else_branch=none)]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 20, 4])],
                              [helper.make_tensor_value_info("picked_out", TensorProto.INT64, ["n", 3])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    src = save(model, tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 50, (1, 20, 2))
    x = np.concatenate([lo, lo + rng.uniform(5, 20, (1, 20, 2))], -1).astype(np.float32)
    pkg = edgeserve.convert(src, tmp_path / "fp16", quantize="fp16")
    with edgeserve.load(pkg.path) as m:
        got = m.predict({"x": x})["picked_out"]
    np.testing.assert_array_equal(got, _plain(src, {"x": x})["picked_out"])


def test_static_of_a_model_with_nothing_to_quantise_says_which_operators_it_has(tmp_path: Path) -> None:
    """A scikit-learn linear model is one LinearClassifier: no If/Loop to blame, and the message must not."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    pkg = edgeserve.convert(clf, tmp_path / "pkg", quantize="static", calibration=x.astype(np.float32))
    why = pkg.manifest.recipe["nothing_quantised"]
    assert "LinearClassifier" in why and "If/Loop" not in why, why
