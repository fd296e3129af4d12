"""End-to-end benchmark runs on tiny models: every file is written and well formed, failures are contained."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeserve.bench import harness
from edgeserve.bench.harness import BenchConfig, bench
from edgeserve.cli import main
from edgeserve.errors import ConfigError, ConversionError

QUICK = BenchConfig(variants=("fp32", "int8-dynamic", "int8-static"), batch_sizes=(1, 4), concurrency=(2,), rounds=2,
                    time_budget=1.0, cold_start_repeats=1)


@pytest.fixture
def labelled(tmp_path: Path, mlp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, y=rng.integers(0, 4, 40))
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((40, 16)).astype(np.float32))
    return mlp_path, tmp_path / "eval.npz", tmp_path / "cal.npz"


def test_bench_writes_every_report(tmp_path: Path, labelled) -> None:
    model, ev, cal = labelled
    out = tmp_path / "out"
    results = bench([model], out, QUICK, data=ev, labels="y", calibration=cal)
    saved = json.loads((out / "results.json").read_text())
    assert saved["models"][0]["model"] == "mlp"
    env = saved["environment"]
    assert env["onnxruntime"] and env["cpu"]["cores"] >= 1 and "flags" in env["cpu"] and "git_revision" in env
    assert saved["settings"]["threads"] >= 1 and saved["settings"]["rounds"] == 2
    variants = {v["name"]: v for v in results["models"][0]["variants"]}
    assert set(variants) == {"fp32", "int8-dynamic", "int8-static"}
    for v in variants.values():
        assert v["status"] == "ok", v["error"]
        assert v["latency"]["p50"] > 0 and v["latency"]["p99"] >= v["latency"]["p50"]
        assert set(v["throughput"]) == {"1", "4"} and v["throughput"]["4"]["rows_per_s"] > 0
        assert v["concurrency"]["2"]["calls"] > 0 and v["concurrency_batched"]["2"]["calls"] > 0
        assert v["cold_start"]["process_to_first_answer_s"] > v["cold_start"]["load_s"] > 0
        assert v["cold_start"]["cache_hits"] == 1 and v["cold_start"]["load_cached_s"] > 0
        assert v["cold_start"]["peak_rss_bytes"] > 10 * 2**20
        assert v["size_bytes"] > 0 and v["accuracy"] is not None and v["accuracy_loss"] is not None
    assert variants["fp32"]["speedup"] == pytest.approx(1.0)
    assert variants["int8-dynamic"]["size_bytes"] < variants["fp32"]["size_bytes"]
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    report = (out / "report.md").read_text()
    assert "| variant |" in report and "int8-static" in report and "pareto.png" in report


def test_failing_variant_does_not_stop_the_run(tmp_path: Path, labelled, monkeypatch: pytest.MonkeyPatch) -> None:
    model, ev, _ = labelled
    real_convert = harness.convert

    def flaky(source, output, **kwargs):
        if Path(output).name == "int8-dynamic":
            raise ConversionError("simulated quantiser crash")
        return real_convert(source, output, **kwargs)

    monkeypatch.setattr(harness, "convert", flaky)
    results = bench([model], tmp_path / "out", QUICK, data=ev, labels="y")  # no calibration: static cannot build
    variants = {v["name"]: v for v in results["models"][0]["variants"]}
    assert variants["int8-dynamic"]["status"] == "failed"
    assert "simulated quantiser crash" in variants["int8-dynamic"]["error"]
    assert variants["int8-static"]["status"] == "skipped" and "calibration" in variants["int8-static"]["error"]
    assert variants["fp32"]["status"] == "ok" and variants["fp32"]["latency"]["p50"] > 0
    assert "FAILED: build: simulated quantiser crash" in (tmp_path / "out" / "report.md").read_text()


def test_a_failing_variant_is_named_exactly_not_by_substring(tmp_path: Path, labelled,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32-optimised failing at run time marks fp32-optimised failed, not fp32 (whose name it contains)."""
    from edgeserve.errors import InferenceError
    from edgeserve.runtime.model import Model

    model, ev, _ = labelled
    real_predict = Model.predict

    calls: dict[str, int] = {}

    def predict(self, *args, **kwargs):
        name = self.path.name if self.path is not None else ""
        calls[name] = calls.get(name, 0) + 1
        if name == "fp32-optimised" and calls[name] > 1:  # past its golden check at load: fails while measured
            raise InferenceError("simulated engine failure for fp32 (the variant named fp32-optimised)")
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(Model, "predict", predict)
    config = BenchConfig(variants=("fp32", "fp32-optimised"), batch_sizes=(1,), concurrency=(), rounds=1,
                         time_budget=0.5, cold_start_repeats=0)
    variants = {v["name"]: v for v in bench([model], tmp_path / "out", config, data=ev, labels="y")["models"][0]["variants"]}
    assert variants["fp32-optimised"]["status"] == "failed" and "simulated engine failure" in variants["fp32-optimised"]["error"]
    assert variants["fp32-optimised"]["error"].startswith("latency:")  # measured, then failed: not at load
    assert variants["fp32"]["status"] == "ok" and variants["fp32"]["speedup"] == pytest.approx(1.0)


def test_cli_bench_and_compare(tmp_path: Path, labelled) -> None:
    model, ev, cal = labelled
    args = ["bench", str(model), "--variants", "fp32,int8-dynamic", "--data", str(ev), "--labels", "y",
            "--batch-sizes", "1,2", "--concurrency", "2", "--rounds", "2", "--time-budget", "1",
            "--cold-start-repeats", "0"]
    first = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")], catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "int8-dynamic" in first.stdout and "speedup" in first.stdout and "results.json" in first.stdout
    second = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--compare", str(tmp_path / "a" / "results.json")],
                                catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert "changes against" in second.stdout and "p50 latency" in second.stdout
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert {c["variant"] for c in saved["comparison"]} == {"fp32", "int8-dynamic"}
    machine = saved["models"][0]["machine"]  # the reference workload, timed in the same rounds as the variants
    assert machine["latency_p50"] > 0 and set(machine["throughput"]) == {"1", "2"}
    assert all(c["machine"] > 0 for c in saved["comparison"] if c["metric"] in ("p50 latency", "throughput"))
    assert "judged against the machine" in second.stdout
    assert "Machine reference" in (tmp_path / "b" / "report.md").read_text()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown variant"):
        BenchConfig(variants=("int3",))
    with pytest.raises(ConfigError, match="batch sizes"):
        BenchConfig(batch_sizes=(0,))
    with pytest.raises(ConfigError, match="neither a bundled example"):
        bench(["no-such-model"], tmp_path / "out", QUICK)
    result = CliRunner().invoke(main, ["bench", "--batch-sizes", "a,b", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    bad = tmp_path / "old.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="not an edgeserve bench results.json"):
        bench(["digits-mlp"], tmp_path / "out", QUICK, compare_with=bad)


def test_an_engine_without_the_models_operators_is_skipped_not_failed(tmp_path: Path) -> None:
    """OpenVINO reads no ONNX-ML operators: a scikit-learn export's openvino variants say so, and are not FAILED."""
    pytest.importorskip("openvino")
    from onnx import TensorProto, helper

    from edgeserve.bench.report import rows
    from tests.factories import save

    scaler = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.5] * 4, scale=[2.0] * 4)
    graph = helper.make_graph([scaler], "scaler", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    path = save(model, tmp_path / "scaler.onnx")
    config = BenchConfig(variants=("fp32", "openvino-f32"), batch_sizes=(1,), concurrency=(), rounds=1,
                         time_budget=0.5, cold_start_repeats=0)
    result = bench([path], tmp_path / "out", config)["models"][0]
    variants = {v["name"]: v for v in result["variants"]}
    assert variants["fp32"]["status"] == "ok"
    assert variants["openvino-f32"]["status"] == "skipped"
    assert variants["openvino-f32"]["error"] == "openvino has no ai.onnx.ml operators (Scaler)"
    assert ["openvino-f32", "skipped: openvino has no ai.onnx.ml operators (Scaler)"] in rows(result)


def test_a_variant_that_quantised_nothing_is_skipped_not_measured(tmp_path: Path) -> None:
    """An ONNX-ML graph has no operator an int8 quantiser takes: its int8-dynamic variant is the fp32 model under
    another name, and timing it against fp32 would report noise as a speedup."""
    from onnx import TensorProto, helper

    from edgeserve.bench.report import rows
    from tests.factories import save

    scaler = helper.make_node("Scaler", ["x"], ["y"], domain="ai.onnx.ml", offset=[0.5] * 4, scale=[2.0] * 4)
    graph = helper.make_graph([scaler], "scaler", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    config = BenchConfig(variants=("fp32", "int8-dynamic"), batch_sizes=(1,), concurrency=(), rounds=1,
                         time_budget=0.5, cold_start_repeats=0)
    result = bench([save(model, tmp_path / "scaler.onnx")], tmp_path / "out", config)["models"][0]
    variants = {v["name"]: v for v in result["variants"]}
    assert variants["fp32"]["status"] == "ok"
    assert variants["int8-dynamic"]["status"] == "skipped" and variants["int8-dynamic"]["speedup"] is None
    assert "found no operator to quantise" in variants["int8-dynamic"]["error"]
    assert any(r[0] == "int8-dynamic" and r[1].startswith("skipped: ") for r in rows(result))


def test_without_evaluation_data_the_variants_run_on_the_held_out_calibration_rows(tmp_path: Path) -> None:
    """Timing a recurrent model on stand-in sequences 8 steps long says nothing about its 30-step inputs."""
    import edgeserve
    from edgeserve.bench.sources import ModelSource, data_label, load_samples
    from tests.factories import gru_model, save

    src = save(gru_model(), tmp_path / "gru.onnx")
    cal = np.random.default_rng(0).standard_normal((40, 30, 4)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=cal)
    source = ModelSource("gru", src, tmp_path / "cal.npz", None, None)
    with edgeserve.load(src) as model:
        samples = load_samples(source, {"fp32": model})
        assert samples is not None
        np.testing.assert_array_equal(samples.arrays["x"], cal[32:])  # the rows the converter held out too
        assert "calibration" in data_label(source)
        assert load_samples(ModelSource("gru", src, None, None, None), {"fp32": model}).arrays["x"].shape[1] == 8


def test_the_speedup_column_pairs_the_rounds_as_auto_does() -> None:
    """Pooled p50s let a slow spell that hit more of fp32's calls read a candidate 2.7x faster; paired round by
    round it is what it is."""
    from edgeserve.bench.measure import summarise_rounds

    results = {name: harness.VariantResult(name=name, status="ok") for name in ("fp32", "int8-static", "gone")}
    results["fp32"].latency = summarise_rounds([[1.0] * 4, [1.0] * 4, [3.0] * 6, [3.0] * 6])
    results["int8-static"].latency = summarise_rounds([[1.1] * 6, [1.1] * 6, [3.3] * 4, [3.3] * 4])
    harness._relate_to_baseline(results)
    assert results["fp32"].speedup == 1.0 and results["int8-static"].speedup == pytest.approx(1 / 1.1)
    assert results["gone"].speedup is None


def test_a_regressors_variants_show_their_rmse_against_the_targets(tmp_path: Path) -> None:
    """Targets given as labels to a regressor: the table showed '-' for accuracy and loss, so the benchmark said
    nothing of how far each variant's predictions moved from the truth."""
    from edgeserve.bench.report import loss_axis, rows
    from tests.factories import mlp_model, save

    model = save(mlp_model(n_in=16, hidden=32, n_out=1, seed=3), tmp_path / "reg.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((60, 16)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, y=rng.standard_normal(60) * 3 + 100)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((40, 16)).astype(np.float32))
    config = BenchConfig(variants=("fp32", "int8-dynamic"), batch_sizes=(1,), concurrency=(), rounds=1,
                         time_budget=0.5, cold_start_repeats=0)
    result = bench([model], tmp_path / "out", config, data=tmp_path / "eval.npz", labels="y",
                   calibration=tmp_path / "cal.npz")["models"][0]
    report = (tmp_path / "out" / "report.md").read_text()
    variants = {v["name"]: v for v in result["variants"]}
    for v in variants.values():
        assert v["status"] == "ok", v["error"]
        assert v["accuracy"] is None and v["label_rmse"] > 90  # predictions near 0 against targets near 100
    fp32, int8 = variants["fp32"], variants["int8-dynamic"]
    assert fp32["label_rmse_increase"] == 0.0
    assert int8["label_rmse_increase"] == pytest.approx(int8["label_rmse"] - fp32["label_rmse"])
    assert int8["label_rmse_increase"] != 0.0
    table = {r[0]: r for r in rows(result)}
    assert table["int8-dynamic"][9:11] == [f"{int8['label_rmse']:.4g}", f"{int8['label_rmse_increase']:+.4g}"]
    assert loss_axis(result) == ("RMSE increase against the labels",
                                 {"fp32": 0.0, "int8-dynamic": int8["label_rmse_increase"]})
    assert "| label rmse | rmse + |" in report and f"| {int8['label_rmse']:.4g} |" in report


def test_a_static_variant_without_calibration_data_is_skipped_not_failed(tmp_path: Path, mlp_path: Path) -> None:
    """``edgeserve bench model.onnx`` with no data: int8-static read FAILED, as if edgeserve had broken."""
    from edgeserve.bench.report import rows

    config = BenchConfig(variants=("fp32", "int8-static"), batch_sizes=(1,), concurrency=(), rounds=1,
                         time_budget=0.5, cold_start_repeats=0)
    result = bench([mlp_path], tmp_path / "out", config)["models"][0]
    static = {v["name"]: v for v in result["variants"]}["int8-static"]
    assert static["status"] == "skipped" and static["error"] == "needs calibration data (--calibration CAL.npz)"
    assert ["int8-static", "skipped: needs calibration data (--calibration CAL.npz)"] in rows(result)
