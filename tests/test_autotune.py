"""quantize="auto": the fastest candidate inside the budget, measured; fp32 when nothing fits; the search recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import edgeserve
from edgeserve.cli import main
from edgeserve.config import QuantizeConfig
from edgeserve.converter.autotune import (
    CONFIRMATIONS,
    MIN_SPEEDUP,
    SAME_SPEED,
    Candidate,
    rank_sensitivity,
    worth_repairing,
)
from edgeserve.converter.data import check_samples
from edgeserve.converter.prepare import preprocess_for_quantization
from edgeserve.converter.quantize import quantize
from edgeserve.fidelity import Budget
from edgeserve.metrics import target
from tests.factories import cnn_opset11, example, mlp_model, rows, save


@pytest.fixture(scope="module")
def cnn_auto(tmp_path_factory: pytest.TempPathFactory):
    model, cal, ev = example("digits-cnn")
    out = tmp_path_factory.mktemp("auto") / "cnn"
    return edgeserve.convert(model, out, quantize="auto", calibration=cal, eval_data=ev, labels="labels",
                             max_accuracy_drop=0.01, time_budget=40)


def test_auto_records_the_whole_search(cnn_auto) -> None:
    recipe = cnn_auto.manifest.recipe
    auto = recipe["auto"]
    assert recipe["mode"] == "auto" and auto["budget"]["max_accuracy_drop"] == 0.01
    names = [c["name"] for c in auto["candidates"]]
    for expected in ("int8-dynamic", "int8-static-minmax", "int8-static-entropy", "int8-static-percentile", "fp16"):
        assert expected in names
    for c in auto["candidates"]:
        if c["status"] == "ok":
            assert c["speedup"] > 0 and c["latency_p50_ms"] > 0 and "cosine_min" in c["fidelity"]
            assert c["accuracy"] is not None
    assert auto["fp32_accuracy"] > 0.9 and auto["held_out_rows"] == 360


def test_auto_picks_a_measured_winner_inside_the_budget(cnn_auto) -> None:
    auto = cnn_auto.manifest.recipe["auto"]
    by_name = {c["name"]: c for c in auto["candidates"]}
    if auto["chosen"] == "fp32":
        assert "keeping the optimised fp32 model" in auto["reason"]
        return
    chosen = by_name[auto["chosen"]]
    assert chosen["within_budget"] and chosen["speedup"] >= MIN_SPEEDUP
    assert chosen["speedup_final_round"] is not None  # raced against fp32 alone before it was kept
    # whatever dynamic int8 measured on this convolutional network, it is only chosen if it won the race (of the
    # candidates raced alone, once CONFIRMATIONS races are spent; equally fast: within SAME_SPEED)
    raced = [c for c in auto["candidates"] if c["speedup_final_round"] is not None]
    rivals = raced if len(raced) >= CONFIRMATIONS else auto["candidates"]
    faster = [c for c in rivals if c["status"] == "ok" and c["within_budget"]
              and c["speedup"] > chosen["speedup"] * SAME_SPEED]
    assert not faster
    acc = cnn_auto.manifest.fidelity["accuracy"]
    assert acc["fp32"] - acc["converted"] <= 0.01


def test_impossible_budget_falls_back_to_fp32(tmp_path: Path, mlp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=rows(60))
    pkg = edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", calibration=tmp_path / "cal.npz",
                            min_cosine=1.0, time_budget=20)
    auto = pkg.manifest.recipe["auto"]
    # only a candidate whose answers are bit-identical to fp32 (an fp32 engine) can meet cosine 1.0, and it is
    # no faster than fp32
    assert auto["chosen"] == "fp32" and "keeping the optimised fp32 model" in auto["reason"]
    assert all(c["name"].startswith("openvino-f32") for c in auto["candidates"] if c["within_budget"])
    assert "budget_missed_by_fp32_fallback" in pkg.manifest.fidelity or pkg.manifest.fidelity["metrics"]["cosine"] >= 1.0
    assert pkg.manifest.recipe["auto_choice"] == "none"
    with edgeserve.load(pkg.path) as model:
        ops = {n.op_type for n in __import__("onnx").load(str(pkg.model_path)).graph.node}
        assert not ops & {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"}
        assert model.predict(rows(2))["logits"].shape == (2, 4)


def test_sensitive_nodes_are_kept_in_fp32(tmp_path: Path) -> None:
    """A layer with an outlier weight quantises badly; the repair keeps exactly such nodes in fp32."""
    model = mlp_model(n_in=16, hidden=64, n_out=8)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    values = np.frombuffer(w1.raw_data, dtype=np.float32).copy() if w1.raw_data else np.array(w1.float_data, np.float32)
    values[0] = 400.0  # one huge weight: per-tensor int8 steps become coarser than every other weight
    from onnx import numpy_helper

    w1.CopyFrom(numpy_helper.from_array(values.reshape(16, 64), "w1"))
    src = save(model, tmp_path / "outlier.onnx")
    np.savez(tmp_path / "cal.npz", x=rows(80, seed=3))
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="auto", calibration=tmp_path / "cal.npz",
                            min_cosine=0.999, time_budget=30)
    auto = pkg.manifest.recipe["auto"]
    cands = auto["candidates"]
    repaired = [c for c in cands if "+fp32x" in c["name"]]
    failed_first = [c for c in cands if c["status"] == "ok" and not c["within_budget"] and "+fp32x" not in c["name"]]
    assert failed_first, "per-tensor int8 cannot hold a 400x outlier inside cosine 0.999"
    # NOTE: whether the repair runs here depends on measured speedups (it repairs only int8 candidates faster than
    # fp32 and than everything inside the budget): which candidates it picks is tested on made-up measures below
    # (test_the_repair_works_on_fast_near_misses_only). Asserting here that it ran, from the recorded speedups,
    # failed twice in CI for a reason the records do not show, and could never run on a VM where int8 is slower
    assert all(c["nodes_kept_fp32"] for c in repaired)  # whatever ran kept nodes in fp32
    dynamic = [c for c in repaired if c["name"].startswith("int8-dynamic+")]
    if dynamic:  # per-tensor weights: the outlier's layer is the one to keep
        assert dynamic[0]["nodes_kept_fp32"][0].startswith("fc1")
    prepared, quantised = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    preprocess_for_quantization(src, prepared)
    quantize(prepared, quantised, QuantizeConfig(mode="dynamic"), calibration=None)
    held = check_samples({"x": rows(32, seed=5)}, _specs(src), what="test")
    ranking = rank_sensitivity(prepared, quantised, held, threads=1)
    assert ranking[0][0].startswith("fc1")  # the outlier layer ranks as most sensitive: the node a repair keeps


def test_the_repair_works_on_fast_near_misses_only() -> None:
    """Decided on made-up measures, so it holds on any machine (the search above repairs only where int8 beats
    fp32, which on a slow VM it may not): only int8 candidates outside the budget that beat fp32 and everything
    inside it are repaired, near misses first, at most two."""

    def cand(name: str, mode: str, speedup: float, inside: bool, shortfall: float = 0.0) -> Candidate:
        return Candidate(name, QuantizeConfig(mode=mode), status="ok", speedup=speedup, within_budget=inside,
                         shortfall=0.0 if inside else shortfall)

    fit = cand("fp16", "fp16", 1.2, True)
    plan = [fit,
            cand("far", "dynamic", 1.9, False, 0.5),
            cand("near", "static", 1.3, False, 0.001),
            cand("nearer-but-slow", "static", 1.1, False, 0.0001),  # beats fp32, not what fits already
            cand("fp16-miss", "fp16", 2.0, False, 0.001),  # not int8: nothing to keep in fp32
            cand("broken", "dynamic", 2.0, False, float("inf")),
            cand("middle", "nncf", 1.5, False, 0.01)]
    assert [c.name for c in worth_repairing(plan)] == ["near", "middle"]
    assert [c.name for c in worth_repairing(plan, most=5)] == ["near", "middle", "far"]
    fit.speedup = 1.6  # the fit is faster than "near" and "middle" now
    assert [c.name for c in worth_repairing(plan)] == ["far"]
    assert worth_repairing([c for c in plan if c.within_budget]) == []
    slow = [cand("int8", "dynamic", MIN_SPEEDUP - 0.01, False, 0.001)]  # no faster than fp32: not worth it
    assert worth_repairing(slow) == []


def test_rank_sensitivity_finds_the_outlier_layer(tmp_path: Path) -> None:
    from onnx import numpy_helper

    model = mlp_model(n_in=16, hidden=64, n_out=8)
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    values = numpy_helper.to_array(w2).copy()
    values[0, 0] = 300.0
    w2.CopyFrom(numpy_helper.from_array(values, "w2"))
    src = save(model, tmp_path / "m.onnx")
    prepared, quantised = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    preprocess_for_quantization(src, prepared)  # the quantiser keeps the prepared graph's names
    quantize(prepared, quantised, QuantizeConfig(mode="dynamic"), calibration=None)
    held = check_samples({"x": rows(32, seed=5)}, _specs(src), what="test")
    ranking = rank_sensitivity(prepared, quantised, held, threads=1)
    assert ranking[0][0].startswith("fc2") and ranking[0][1] > ranking[1][1]
    assert not list(tmp_path.glob("*.probe.onnx"))


def test_rank_sensitivity_sees_convolutions_whose_activation_the_quantiser_folded(tmp_path: Path) -> None:
    """Static int8 folds each Relu into the Conv before it (the Conv writes the Relu's output and its
    QuantizeLinear clamps): the ranking must still score every Conv, by the values its consumers read, so a CNN's
    repair can keep the convolution that breaks it in fp32 (before, only the final Gemm was ever ranked)."""
    from onnx import numpy_helper

    model = cnn_opset11()
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    values = numpy_helper.to_array(w2).copy()
    values[0, 0, 0, 0] = 60.0  # an outlier: per-tensor int8 steps of conv2's weights become coarse
    w2.CopyFrom(numpy_helper.from_array(values, "w2"))
    src = save(model, tmp_path / "cnn.onnx")
    prepared, quantised = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    preprocess_for_quantization(src, prepared)
    x = np.random.default_rng(0).standard_normal((48, 3, 16, 16)).astype(np.float32)
    specs = _specs(src)
    quantize(prepared, quantised, QuantizeConfig(mode="static"), calibration=check_samples({"x": x[:16]}, specs,
                                                                                          what="test"))
    writers = {n.name: n.output[0] for n in onnx.load(str(quantised)).graph.node}
    assert writers["conv1"] == "r1"  # the fold this test is about happened
    ranking = rank_sensitivity(prepared, quantised, check_samples({"x": x[16:]}, specs, what="test"), threads=1)
    names = [name for name, _ in ranking]
    assert {"conv1", "conv2"} <= set(names) and names[0] == "conv2", ranking
    assert dict(ranking)["conv1"] < 0.2  # the clamp is compared with the Relu, not with the Conv's raw output


def test_rank_sensitivity_ranks_the_node_that_writes_an_answer(tmp_path: Path) -> None:
    """A detector ends in a Concat of boxes in pixels and scores in [0, 1]: static int8 gives its output one scale,
    and every score moves by up to half a step of about 1. The quantiser writes that output renamed
    (``out_QuantizeLinear_Input``), so the node was never compared, and a repair never kept it in fp32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (16, n)).astype(np.float32), name)
               for name, n in (("w_box", 4), ("w_score", 3))]
    scale = numpy_helper.from_array(np.array(100.0, np.float32), "pixels")
    nodes = [helper.make_node("MatMul", ["x", "w_box"], ["raw"], name="box_head"),
             helper.make_node("Mul", ["raw", "pixels"], ["boxes"], name="to_pixels"),
             helper.make_node("MatMul", ["x", "w_score"], ["logits"], name="score_head"),
             helper.make_node("Sigmoid", ["logits"], ["scores"], name="sigmoid"),
             helper.make_node("Concat", ["boxes", "scores"], ["out"], name="answer", axis=1)]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 7])],
                              [*weights, scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    src = save(model, tmp_path / "det.onnx")
    prepared, quantised = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    preprocess_for_quantization(src, prepared)
    specs = _specs(src)
    quantize(prepared, quantised, QuantizeConfig(mode="static"),
             calibration=check_samples({"x": rows(32, seed=2)}, specs, what="test"))
    writer = next(n for n in onnx.load(str(quantised)).graph.node if n.name == "answer")
    assert writer.output[0] != "out"  # renamed, as the test needs
    ranking = rank_sensitivity(prepared, quantised, check_samples({"x": rows(32, seed=5)}, specs, what="test"),
                               threads=1)
    assert ranking and ranking[0][0] == "answer", ranking


def test_rank_sensitivity_leaves_out_nodes_the_recipe_did_not_quantise(tmp_path: Path) -> None:
    """A node the recipe left in float (excluded here; an Attention or GRU it does not cover in exported models)
    may still show more error at its output than at its input, carried in from quantised neighbours: keeping it
    in fp32 changes nothing, so the repair must not spend a trial on it."""
    src = save(mlp_model(n_in=16, hidden=64, n_out=8, seed=3), tmp_path / "m.onnx")
    prepared, quantised = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    preprocess_for_quantization(src, prepared)
    specs = _specs(src)
    fc2 = next(n.name for n in onnx.load(str(prepared)).graph.node if n.name.startswith("fc2"))
    quantize(prepared, quantised, QuantizeConfig(mode="static", nodes_to_exclude=(fc2,)),
             calibration=check_samples({"x": rows(16, seed=2)}, specs, what="test"))
    writer = next(n for n in onnx.load(str(quantised)).graph.node if n.name == fc2)
    assert any("DequantizeLinear" in i for i in writer.input)  # it reads a quantised activation, as the test needs
    ranking = rank_sensitivity(prepared, quantised, check_samples({"x": rows(32, seed=5)}, specs, what="test"),
                               threads=1)
    assert fc2 not in [name for name, _ in ranking]


def test_rank_sensitivity_leaves_out_nodes_that_add_no_error(tmp_path: Path) -> None:
    """A Gather that reorders activations (or reads a shape, as exporters write before every Reshape) is in the
    ops a quantiser may touch, but it adds no error: keeping it in fp32 cannot repair anything, and ranking it
    would spend one of the repair's trials on it."""
    from onnx import helper, numpy_helper

    model = mlp_model(n_in=16, hidden=64, n_out=8)
    graph = model.graph
    fc2 = next(n for n in graph.node if n.name == "fc2")
    fc2.input[0] = "h2r"
    graph.initializer.append(numpy_helper.from_array(np.arange(64, dtype=np.int64)[::-1].copy(), "reverse"))
    graph.node.insert(list(graph.node).index(fc2),
                      helper.make_node("Gather", ["h2", "reverse"], ["h2r"], name="reorder", axis=1))
    onnx.checker.check_model(model)
    src = save(model, tmp_path / "m.onnx")
    prepared, quantised = tmp_path / "prepared.onnx", tmp_path / "q.onnx"
    preprocess_for_quantization(src, prepared)
    quantize(prepared, quantised, QuantizeConfig(mode="static"),
             calibration=check_samples({"x": rows(16, seed=2)}, _specs(src), what="test"))
    held = check_samples({"x": rows(32, seed=5)}, _specs(src), what="test")
    ranking = rank_sensitivity(prepared, quantised, held, threads=1)
    assert "reorder" in {n.name for n in onnx.load(str(prepared)).graph.node}  # it reached the ranking's graph
    assert [name for name, _ in ranking] and all(name.startswith("fc") for name, _ in ranking)
    assert all(score > 0 for _, score in ranking)


def _specs(path: Path):
    with edgeserve.load(path) as model:
        return model.inputs


def test_time_budget_skips_the_rest(tmp_path: Path) -> None:
    src = save(cnn_opset11(), tmp_path / "cnn.onnx")
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="auto", calibration={"x": x}, time_budget=0.01)
    statuses = [c["status"] for c in pkg.manifest.recipe["auto"]["candidates"]]
    assert statuses[0] in ("ok", "failed") and "skipped" in statuses


def test_budget_validation(tmp_path: Path, mlp_path: Path) -> None:
    with pytest.raises(edgeserve.DataError, match="needs labelled evaluation data"):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", max_accuracy_drop=0.01)
    with pytest.raises(edgeserve.ConfigError, match="max_accuracy_drop must be between 0 and 1"):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", max_accuracy_drop=3)
    assert Budget(max_accuracy_drop=0.1, relative=True).judge({}, {}, {}, 0.5, 0.44).missed == ["accuracy drop 0.0600 > 0.0500"]
    assert Budget(max_accuracy_drop=0.1).judge({}, {}, {}, 0.5, 0.44).ok


def test_auto_times_candidates_on_calls_of_the_rows_asked_for(tmp_path: Path, mlp_path: Path) -> None:
    """``timing_batch`` rows a call, taken in turn and from the first again when the held-out rows run out; one
    row a call by default; one sample a call for a model without a batch axis."""
    from contextlib import ExitStack
    from dataclasses import replace

    from edgeserve.converter.autotune import _Evaluator, timing_feeds
    from edgeserve.converter.data import Samples
    from edgeserve.runtime.model import load

    with load(mlp_path) as model:
        specs = model.inputs
    held_out = check_samples({"x": rows(10)}, specs, what="held-out rows")
    assert [f["x"].shape[0] for f in timing_feeds(held_out, 1)] == [1] * 10
    assert [f["x"].shape[0] for f in timing_feeds(held_out, 4)] == [4, 4]
    (wide,) = timing_feeds(held_out, 32)
    np.testing.assert_array_equal(wide["x"], held_out.arrays["x"][np.arange(32) % 10])
    batchless = Samples(tuple(replace(s, batch_axis=None) for s in specs), {"x": rows(3)}, 3)
    assert [f["x"].shape for f in timing_feeds(batchless, 8)] == [rows(1)[0].shape] * 3  # one sample a call

    class Counting:
        sizes: list[int] = []

        def run(self, feed):
            self.sizes.append(len(feed["x"]))

    with ExitStack() as sessions:
        evaluator = _Evaluator(mlp_path, held_out, None, Budget((target("cosine"),)), 1, sessions, timing_batch=4)
        call = evaluator.timing_call(Counting())
        for _ in range(3):
            call()
    assert Counting.sizes == [4, 4, 4]


def test_cli_auto_and_inspect(tmp_path: Path, mlp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=rows(60))
    out = tmp_path / "pkg"
    result = CliRunner().invoke(main, ["convert", str(mlp_path), "-o", str(out), "-q", "auto", "--calibration",
                                       str(tmp_path / "cal.npz"), "--min-cosine", "0.99", "--time-budget", "15"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "auto chose" in result.stdout and "int8-static-minmax" in result.stdout
    assert "rows a call" not in result.stdout  # one row a call: the default, not said
    batched = CliRunner().invoke(main, ["convert", str(mlp_path), "-o", str(tmp_path / "b"), "-q", "auto",
                                        "--calibration", str(tmp_path / "cal.npz"), "--time-budget", "5",
                                        "--timing-batch", "8"], catch_exceptions=False)
    assert batched.exit_code == 0, batched.output
    assert "threads=" in batched.stdout and ", 8 rows a call," in batched.stdout
    assert edgeserve.Package.open(tmp_path / "b").manifest.recipe["auto"]["timing_batch"] == 8
    shown = CliRunner().invoke(main, ["inspect", str(out)]).stdout
    assert "auto chose" in shown and "candidate" in shown
    bad = CliRunner().invoke(main, ["convert", str(mlp_path), "-o", str(tmp_path / "x"), "-q", "auto",
                                    "--max-accuracy-drop", "lots"])
    assert bad.exit_code == 2 and "expected a number such as 0.01 or 1%" in bad.output


def test_a_candidate_whose_prepared_graph_fails_is_retried_from_the_exported_one(tmp_path: Path, mlp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformed graph an engine cannot take is not the end of a candidate: the exported graph is tried before
    the failure is recorded, and the candidate says which graph it was built from and why the other failed."""
    from edgeserve.converter import autotune

    real = autotune.quantize

    def picky(src, dst, config, **kwargs):
        if "int8-source" in str(src):
            raise edgeserve.ConversionError("Kernel after dilation has a size of 0 (simulated)")
        return real(src, dst, config, **kwargs)

    monkeypatch.setattr(autotune, "quantize", picky)
    monkeypatch.setenv("EDGESERVE_QUANTISE_IN_PROCESS", "1")  # the patch lives in this process
    np.savez(tmp_path / "cal.npz", x=rows(60))
    pkg = edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", calibration=tmp_path / "cal.npz",
                            min_cosine=0.9, time_budget=600)  # NOTE: a slow machine under load took over 20 s
    dynamic = next(c for c in pkg.manifest.recipe["auto"]["candidates"] if c["name"] == "int8-dynamic")
    assert dynamic["status"] == "ok" and dynamic["recipe"]["graph"] == "exported", dynamic


def test_the_repair_ranks_nodes_by_their_effect_on_the_metric(tmp_path: Path) -> None:
    """Activation error picks the suspects; what keeping each alone in fp32 does to the budget's metric orders them
    (a node whose error the task never sees goes last), and every probe is recorded as a candidate."""
    import math

    from edgeserve.converter.autotune import Candidate, Search

    search = Search(plan=[], graphs=None, work=tmp_path, calibration=None, budget=Budget(), memory=None,  # type: ignore[arg-type]
                    evaluator=None, deadline=math.inf, timing_s=0.1, step=lambda *a: None)  # type: ignore[arg-type]
    left_after = {"loud": 5.0, "quiet": 0.1, "middling": 2.0}

    def trial(c: Candidate) -> None:
        c.status, c.shortfall = "ok", left_after[c.config.nodes_to_exclude[0]]

    search.trial = trial  # type: ignore[method-assign]
    cand = Candidate("int8-static-minmax", QuantizeConfig(mode="static"))
    ranking = [("loud", 0.9), ("quiet", 0.5), ("middling", 0.4), ("untried", 0.1)]
    assert [n for n, _ in search._by_effect_on_the_metric(cand, ranking)] == ["quiet", "middling", "loud", "untried"]
    assert [c.name for c in search.plan] == [f"int8-static-minmax+fp32[{n}]" for n in ("loud", "quiet", "middling")]
    # the node writing an answer is probed wherever it ranks: a detector's last Concat showed little activation
    # error, and was what broke the task
    left_after["answer"] = 0.0
    search.plan = []
    search.writers = frozenset({"answer"})
    ranked = search._by_effect_on_the_metric(cand, [*ranking, ("answer", 0.01)])
    assert [n for n, _ in ranked] == ["answer", "quiet", "middling", "loud", "untried"]
    assert search.plan[-1].name == "int8-static-minmax+fp32[answer]"


def test_a_repair_of_a_node_named_like_a_path_builds(tmp_path: Path) -> None:
    """Exporters name nodes like paths ("/enc/layers.1/MatMul"); a candidate keeping one in fp32 still gets a file."""
    import math
    from contextlib import ExitStack

    from edgeserve.converter.autotune import Candidate, Graphs, Search, _Evaluator
    from edgeserve.converter.memory import MemoryBudget

    model = mlp_model(n_in=16, hidden=32, n_out=4)
    for node in model.graph.node:
        node.name = f"/encoder/layers.0/{node.name}"
    src = save(model, tmp_path / "paths.onnx")
    held = check_samples({"x": rows(32, seed=5)}, _specs(src), what="test")
    with ExitStack() as sessions:
        search = Search(plan=[], graphs=Graphs(src, src, src), work=tmp_path, calibration=None, budget=Budget(),
                        memory=MemoryBudget(), evaluator=_Evaluator(src, held, None, Budget(), 1, sessions),
                        deadline=math.inf, timing_s=0.05, step=lambda *a: None)
        name = "/encoder/layers.0/fc1"
        cand = Candidate(f"int8-dynamic+fp32[{name}]", QuantizeConfig(mode="dynamic", nodes_to_exclude=(name,)))
        search.trial(cand)
    assert cand.status == "ok", cand.reason
    assert cand.recipe["nodes_excluded"] == [name]
    assert {p.parent for p in tmp_path.rglob("auto-*.onnx")} == {tmp_path}


def test_a_repair_stops_doubling_when_a_doubling_gains_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PP-OCRv4's detector under NNCF int8 stayed at 0.34 map-iou of 0.95 with 2, 4 and 8 nodes kept in fp32: a
    doubling that takes less than a tenth off the shortfall ends the repair; one that helps goes on."""
    import math

    from edgeserve.converter import autotune
    from edgeserve.converter.autotune import Candidate, Search

    monkeypatch.setattr(autotune, "rank_sensitivity", lambda *a, **k: [(f"n{i}", 1.0 - i / 100) for i in range(40)])
    for left_after, tried in (({2: 0.64, 4: 0.64, 8: 0.64}, [2]), ({2: 0.4, 4: 0.2, 8: 0.1, 16: 0.05}, [2, 4, 8, 16])):
        search = Search(plan=[], graphs=autotune.Graphs(tmp_path, tmp_path, tmp_path), work=tmp_path,  # type: ignore[arg-type]
                        calibration=None, budget=Budget(), memory=None, evaluator=type("E", (), {"held_out": None})(),  # type: ignore[arg-type]
                        deadline=math.inf, timing_s=0.1, step=lambda *a: None)
        search._by_effect_on_the_metric = lambda cand, ranking: ranking  # type: ignore[method-assign]

        def trial(c: Candidate, left_after=left_after) -> None:
            c.status, c.speedup, c.within_budget = "ok", 2.0, False
            c.shortfall = left_after[len(c.config.nodes_to_exclude)]

        search.trial = trial  # type: ignore[method-assign]
        near = Candidate("int8-nncf", QuantizeConfig(mode="nncf"))
        near.status, near.speedup, near.within_budget, near.shortfall, near.path = "ok", 2.0, False, 0.64, tmp_path
        search.plan = [near]
        search.repair_near_misses()
        assert [len(c.config.nodes_to_exclude) for c in search.plan[1:]] == tried


def test_of_equally_fast_candidates_the_one_closest_to_fp32_is_chosen(tmp_path: Path) -> None:
    """Speedups within ``SAME_SPEED`` of the fastest are the timing's noise: of those, the candidate that uses
    least of the budget wins (on a real resnet, NNCF int8 at cosine 0.9949 was kept over OpenVINO's QDQ int8 at
    0.9997, both 1.36x). A clearly faster candidate still wins however close to the budget it is."""
    import math

    from edgeserve.converter.autotune import SAME_SPEED, Candidate, Search
    from edgeserve.metrics import target

    def cand(name: str, speedup: float, cosine: float) -> Candidate:
        return Candidate(name, QuantizeConfig(mode="static"), status="ok", speedup=speedup, within_budget=True,
                         scores={"cosine": cosine}, path=tmp_path / name)

    def choose(*plan: Candidate) -> tuple[str, str]:
        search = Search(plan=list(plan), graphs=None, work=tmp_path, calibration=None,  # type: ignore[arg-type]
                        budget=Budget((target("cosine"),)), memory=None, evaluator=None,  # type: ignore[arg-type]
                        deadline=math.inf, timing_s=0.1, step=lambda *a: None)
        chosen, _, why = search.choice()
        assert chosen is not None
        return chosen.name, why

    near = cand("nncf", 1.36, 0.9949)
    name, why = choose(near, cand("qdq", 1.36 / (SAME_SPEED - 0.01), 0.9997), cand("bf16", 1.19, 1.0))
    assert name == "qdq" and "as fast as the fastest inside the budget (nncf, 1.36x" in why
    assert "closer to fp32 (3% of the budget used against 51%)" in why
    assert choose(near, cand("qdq", 1.36 / (SAME_SPEED + 0.01), 0.9997))[0] == "nncf"  # clearly slower
    assert choose(cand("a", 1.5, 0.995), cand("b", 1.5, 0.999))[0] == "b"


def test_a_pick_the_race_against_fp32_alone_does_not_confirm_is_not_kept(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The final round races several candidates at once, and one can read fast there by luck (a small uint8 CNN's
    static int8 read 1.25x there and ran at 0.8-0.9x head to head): every pick is raced against fp32 alone, takes
    that speed, and the choice is made again; after ``CONFIRMATIONS`` races, only among the confirmed."""
    import math

    from edgeserve.converter import autotune
    from edgeserve.converter.autotune import CONFIRMATIONS, Candidate, Graphs, Search
    from edgeserve.metrics import target

    class Raced(Search):
        head_to_head: dict[str, float] = {}
        raced: list[str] = []

        def race(self, cand: Candidate) -> float:
            self.raced.append(cand.name)
            return self.head_to_head[cand.name]

    def choose(head_to_head: dict[str, float], **final_round: float) -> tuple[str | None, list[str], str]:
        plan = [Candidate(n, QuantizeConfig(mode="static"), status="ok", speedup=v, within_budget=True,
                          scores={"cosine": 0.999}, path=tmp_path / n) for n, v in final_round.items()]
        search = Raced(plan=plan, graphs=Graphs(tmp_path, tmp_path / "fp32.onnx", tmp_path),
                       work=tmp_path, calibration=None, budget=Budget((target("cosine"),)), memory=None,  # type: ignore[arg-type]
                       evaluator=None, deadline=math.inf, timing_s=0.1, step=lambda *a: None)  # type: ignore[arg-type]
        search.head_to_head, search.raced = head_to_head, []
        chosen, _, why = search.confirmed_choice()
        return chosen.name if chosen else None, search.raced, why

    monkeypatch.setattr(autotune, "quantised_ops", lambda path: False)
    name, raced, why = choose({"lucky": 0.85, "real": 1.2}, lucky=1.25, real=1.15)
    assert (name, raced) == ("real", ["lucky", "real"])
    assert why == "fastest inside the budget: 1.20x fp32 head to head, 1.15x in the final round"
    name, raced, why = choose({"lucky": 0.85, "real": 1.01}, lucky=1.25, real=1.15)
    assert (name, raced) == (None, ["lucky", "real"])
    assert why.startswith("no candidate inside the budget beat fp32 by 1.03x or more (lucky: 0.85x head to head, "
                          "1.25x in the final round) (real: 1.01x head to head, 1.15x in the final round)")
    assert choose({"a": 1.5}, a=1.4)[:2] == ("a", ["a"])  # confirmed faster still: kept
    # each race lowers the pick below the next: after CONFIRMATIONS races the choice is among the raced only
    finals = {f"c{i}": 2.0 - 0.1 * i for i in range(CONFIRMATIONS + 2)}
    name, raced, _ = choose({n: v - 0.5 for n, v in finals.items()}, **finals)
    assert raced == list(finals)[:CONFIRMATIONS] and name == "c0"


def test_the_plan_tries_what_needs_no_calibration_before_what_does(tmp_path: Path) -> None:
    """A time budget cuts the end of the plan: OpenVINO's float recipes (no calibration to build, often the
    fastest on x86) come before the calibrated ones, so a big model's search still measures them."""
    pytest.importorskip("openvino")
    from edgeserve.converter.autotune import plan_candidates

    names = [c.name for c in plan_candidates(save(mlp_model(), tmp_path / "m.onnx"), has_calibration=True)]
    calibrated = min(names.index(n) for n in names if "static" in n or "nncf" in n or "qdq" in n)
    assert names.index("openvino-f32") < calibrated and names[:2] == ["int8-dynamic", "int8-dynamic-per-channel"]


def test_auto_passes_over_a_recipe_that_quantised_nothing(tmp_path: Path) -> None:
    """A tree ensemble holds no operator an int8 quantiser takes: each int8 recipe gives back the fp32 model, which
    timed against fp32 read 1.03-1.21x by noise, and auto chose "int8-static" for a model without one int8 value."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(x, y)
    pkg = edgeserve.convert(forest, tmp_path / "pkg", quantize="auto", calibration=x, time_budget=60)
    auto = pkg.manifest.recipe["auto"]
    int8 = [c for c in auto["candidates"] if c["name"].startswith(("int8", "int4", "openvino-int8", "openvino-nncf"))]
    assert int8 and all(c["status"] == "skipped" and "quantis" in c["reason"] for c in int8), int8
    assert not auto["chosen"].startswith(("int8", "int4", "openvino-int8", "openvino-nncf"))
    # NOTE: one model build each showed it; the variants of a mode that quantised nothing are not built again (an
    # IsolationForest spent 5 s on each of its static recipes)
    static = [c for c in auto["candidates"] if c["name"].startswith("int8-static")]
    assert len(static) > 1 and all(c["reason"].startswith(f"as {static[0]['name']}: ") for c in static[1:]), static
