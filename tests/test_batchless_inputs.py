"""Inputs real graphs have: a 0-d sample rate (no batch axis) beside batched audio and a recurrent state
([2, batch, hidden]), as in silero-VAD. It is shared by every row through calibration, verification, auto,
golden samples, predict, batching and bench, in every mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.bench.harness import BenchConfig, bench
from tests.factories import save, vad_like_data, vad_like_model

MODES = ["none", "dynamic", "static", "fp16", "int4", "nncf", "auto"]


@pytest.fixture(scope="module")
def vad(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("vad")
    data = vad_like_data()
    np.savez(tmp / "cal.npz", **data)
    return save(vad_like_model(), tmp / "vad.onnx"), tmp / "cal.npz", data


def test_the_signature_keeps_the_state_batched_and_the_rate_shared(vad) -> None:
    src, _, _ = vad
    with edgeserve.load(src) as model:
        axes = {s.name: s.batch_axis for s in model.inputs}
    assert axes == {"input": 0, "state": 1, "sr": None}


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converts_and_serves_a_model_with_a_scalar_input(vad, mode: str, tmp_path: Path) -> None:
    if mode == "nncf":
        pytest.importorskip("nncf")
    src, cal, data = vad
    try:
        pkg = edgeserve.convert(src, tmp_path / mode, quantize=mode, calibration=cal, time_budget=15)
    except edgeserve.ConversionError as exc:
        if mode == "int4":  # int4 needs two MatMuls with constant weights of a block's size; the verdict is clear
            assert "int4" in str(exc)
            return
        raise
    assert pkg.manifest.golden["count"] > 0
    assert "max-abs" in pkg.manifest.fidelity["budget"]["targets"][0]["metric"]  # a stateful model's default
    feed = {"input": data["input"][:3], "state": data["state"][:, :3], "sr": np.array(16000, np.int64)}
    with edgeserve.load(pkg.path, batching=edgeserve.BatchConfig(max_batch_size=8)) as model:
        out = model.predict(feed)  # the golden samples were re-checked on load
        assert out["output"].shape == (3, 1) and out["stateN"].shape == (2, 3, 16)
        one = model.predict({"input": data["input"][:1], "state": data["state"][:, :1], "sr": np.array(16000)})
        # dynamic int8 picks its activation scale per batch, so a row's answer moves a little with its batch-mates
        np.testing.assert_allclose(one["output"], out["output"][:1], rtol=0, atol=1e-2 if mode != "none" else 1e-6)
        other_rate = model.predict({**feed, "sr": np.array(8000, np.int64)})
        assert not np.allclose(other_rate["output"], out["output"])  # the scalar reaches the graph


def test_a_shared_input_given_per_row_is_refused_with_the_fix(vad, tmp_path: Path) -> None:
    src, _, data = vad
    with pytest.raises(edgeserve.DataError, match=r"'sr' has no batch axis .* give it once in that shape"):
        edgeserve.convert(src, tmp_path / "pkg", quantize="dynamic",
                          calibration={**data, "sr": np.full(48, 16000, np.int64)})


def test_bench_measures_a_model_with_a_scalar_input(vad, tmp_path: Path) -> None:
    src, cal, _ = vad
    config = BenchConfig(variants=("fp32", "int8-dynamic"), batch_sizes=(1, 4), concurrency=(2,), rounds=2,
                         time_budget=1.0, cold_start_repeats=1)
    results = bench([src], tmp_path / "out", config, data=cal, calibration=cal)
    for v in results["models"][0]["variants"]:
        assert v["status"] == "ok", v["error"]
        assert v["latency"]["p50"] > 0 and v["throughput"]["4"]["rows_per_s"] > 0
        assert v["metrics"] and "max-abs" in next(iter(v["metrics"]))


def test_requests_are_batched_with_those_of_the_same_rate_and_each_gets_its_own_answer(vad) -> None:
    """The batcher stacks the audio and the states of requests whose ``sr`` is equal and gives the batch that one
    rate; a request at another rate waits for a batch of its own. Every answer is what it is alone."""
    src, _, data = vad
    feeds = [{"input": data["input"][i:i + 1], "state": data["state"][:, i:i + 1],
              "sr": np.array(16000 if i < 4 else 8000, np.int64)} for i in range(6)]
    with edgeserve.load(src) as plain:
        alone = [plain.predict(f) for f in feeds]
    runs: list[tuple[int, int]] = []
    config = edgeserve.BatchConfig(max_batch_size=6, max_delay_ms=10_000, adaptive=False)
    with edgeserve.load(src, batching=config) as model:
        assert model.batcher is not None  # the scalar input no longer keeps the model out of the batcher
        run = model.batcher._run
        model.batcher._run = lambda feed: runs.append((len(feed["input"]), int(feed["sr"]))) or run(feed)
        futures = [model.batcher.submit(f) for f in feeds]
        model.batcher.hurry()
        answers = [f.result(10) for f in futures]
    assert sorted(runs) == [(2, 8000), (4, 16000)]
    for got, want in zip(answers, alone):
        np.testing.assert_allclose(got["output"], want["output"], rtol=1e-6)
        np.testing.assert_allclose(got["stateN"], want["stateN"], rtol=1e-6)


def test_a_state_axis_without_a_name_is_found_in_the_data(tmp_path: Path) -> None:
    """silero-VAD's own export: ``state [2, ?, 128]``, ``stateN [?, ?, ?]``. The names cannot tell the state's
    batch axis; calibration data holding one state per row along axis 1 does, and running rows together and
    apart finds ``stateN``'s. The package then splits, verifies and batches the streams like a named export."""
    src = save(vad_like_model(unnamed=True), tmp_path / "vad.onnx")
    data = vad_like_data()
    with edgeserve.load(src) as bare:
        assert {s.name: s.batch_axis for s in bare.inputs}["state"] is None  # the names alone do not say
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="none", calibration=data)
    assert {s.name: s.batch_axis for s in pkg.manifest.inputs} == {"input": 0, "state": 1, "sr": None}
    assert {s.name: s.batch_axis for s in pkg.manifest.outputs} == {"output": 0, "stateN": 1}
    feeds = [{"input": data["input"][i:i + 1], "state": data["state"][:, i:i + 1], "sr": data["sr"]}
             for i in range(4)]
    with edgeserve.load(src) as plain:
        alone = [plain.predict(f) for f in feeds]
    config = edgeserve.BatchConfig(max_batch_size=4, max_delay_ms=10_000, adaptive=False)
    with edgeserve.load(pkg.path, batching=config) as model:
        assert model.batcher is not None
        futures = [model.batcher.submit(f) for f in feeds]
        model.batcher.hurry()
        answers = [f.result(10) for f in futures]
        assert model.batcher.stats["batches"] == 1
    for got, want in zip(answers, alone):
        np.testing.assert_allclose(got["stateN"], want["stateN"], rtol=1e-6)
        np.testing.assert_allclose(got["output"], want["output"], rtol=1e-6)


@pytest.mark.parametrize("states", ["first", "reached"])
def test_answers_of_streams_at_their_first_state_get_no_drift_reference(vad, tmp_path: Path, states: str) -> None:
    """Calibration rows at a stream's first state (zeros) answer as a stream's first step; served streams go on,
    so a drift reference of those answers would alarm on every long stream. Rows with reached states keep it."""
    src, _, _ = vad
    data = vad_like_data(rows=160)
    if states == "first":
        data = {**data, "state": np.zeros_like(data["state"])}
    pkg = edgeserve.convert(src, tmp_path / "pkg", quantize="none", calibration=data)
    envelope = pkg.manifest.envelope
    assert "drift" in envelope["inputs"]["input"]
    if states == "first":
        assert "output" not in envelope.get("outputs", {})
        assert "state all 0" in envelope["outputs_unwatched"]
    else:
        assert "drift" in envelope["outputs"]["output"] and "outputs_unwatched" not in envelope
