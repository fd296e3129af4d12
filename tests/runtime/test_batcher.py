"""Dynamic batching: the pure policy with a fake clock, then the worker against plain onnxruntime."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import edgeserve
from edgeserve import BatchConfig, QueueFull, Timeout
from edgeserve.runtime.batcher import Batcher, Pending, plan
from edgeserve.tensors import TensorSpec
from tests.factories import rows, save, two_input_model

CFG = BatchConfig(max_batch_size=8, max_delay_ms=10.0, max_queue=100, timeout_ms=None)


def _p(rows: int, t: float, group: str = "a", deadline: float | None = None) -> Pending:
    return Pending({}, rows, (group,), t, deadline)


# --- the policy, no threads, no sleeps -----------------------------------------------------------------------------

def test_waits_for_company_until_the_delay() -> None:
    pending = [_p(1, 0.000), _p(2, 0.004)]
    decision = plan(pending, now=0.005, config=CFG)
    assert decision.take == () and decision.wake_at == pytest.approx(0.010)
    assert plan(pending, now=0.010, config=CFG).take == (0, 1)


def test_full_batch_runs_at_once() -> None:
    pending = [_p(3, 0.0), _p(3, 0.001), _p(2, 0.002), _p(1, 0.003)]
    assert plan(pending, now=0.003, config=CFG).take == (0, 1, 2)  # 8 rows: no waiting, the 4th waits for the next


def test_groups_never_mix() -> None:
    pending = [_p(1, 0.0, "a"), _p(1, 0.001, "b"), _p(1, 0.002, "a")]
    assert plan(pending, now=1.0, config=CFG).take == (0, 2)


def test_oversized_request_runs_alone() -> None:
    assert plan([_p(20, 0.0), _p(1, 0.0)], now=0.0, config=CFG).take == (0,)


def test_expired_requests_are_dropped_not_run() -> None:
    pending = [_p(1, 0.0, deadline=0.002), _p(1, 0.001, deadline=0.5)]
    decision = plan(pending, now=0.003, config=CFG)
    assert decision.expired == (0,) and decision.take == ()
    assert decision.wake_at == pytest.approx(0.011)  # the survivor's own delay


def test_wakes_for_the_nearest_deadline() -> None:
    decision = plan([_p(1, 0.0, deadline=0.004)], now=0.001, config=CFG)
    assert decision.wake_at == pytest.approx(0.004)


# --- the worker ----------------------------------------------------------------------------------------------------

@pytest.fixture
def served(mlp_package: Path):
    with edgeserve.load(mlp_package, batching=BatchConfig(max_batch_size=16, max_delay_ms=5.0)) as model:
        yield model


def test_batched_outputs_equal_unbatched_plain_onnxruntime(served, mlp_package: Path) -> None:
    sess = ort.InferenceSession(str(mlp_package / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = [rows(1 + i % 3, seed=i) for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(served.predict, inputs))
    for x, out in zip(inputs, results):
        np.testing.assert_allclose(out["logits"], sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    stats = served.batcher.stats
    assert stats["requests"] == 48 and stats["rows"] == sum(len(x) for x in inputs)
    assert stats["batches"] < 48  # requests really were stacked


def test_every_response_reaches_its_own_caller_with_random_shapes(tmp_path: Path) -> None:
    """Requests with different sequence lengths (non-batch dims) must never be stacked together."""
    path = save(two_input_model(), tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    with edgeserve.load(path, batching=BatchConfig(max_batch_size=8, max_delay_ms=3.0)) as model:
        def call(i: int):
            n, seq = int(rng.integers(1, 4)), int(rng.integers(1, 5))
            ids = np.full((n, seq), i, dtype=np.int64)
            scale = np.full((n, 1), 1.0, dtype=np.float32)
            return i, n, seq, model.predict({"ids": ids, "scale": scale})["out"]

        with ThreadPoolExecutor(12) as pool:
            for i, n, seq, out in pool.map(call, range(200)):
                assert out.shape == (n, seq) and np.all(out == i)


def test_queue_full_rejects_at_once() -> None:
    gate = threading.Event()

    def slow_run(feed):
        gate.wait(5)
        return [feed["x"]]

    spec = TensorSpec("x", "float32", ("batch", 2), 0)
    batcher = Batcher(slow_run, [spec], [spec], BatchConfig(max_batch_size=1, max_delay_ms=0, max_queue=2), name="m")
    try:
        first = batcher.submit({"x": np.zeros((1, 2), np.float32)})
        time.sleep(0.05)  # the worker is now stuck inside slow_run with the first request
        batcher.submit({"x": np.zeros((1, 2), np.float32)})
        batcher.submit({"x": np.zeros((1, 2), np.float32)})
        t0 = time.perf_counter()
        with pytest.raises(QueueFull, match="max_queue=2"):
            batcher.submit({"x": np.zeros((1, 2), np.float32)})
        assert time.perf_counter() - t0 < 0.05
        assert batcher.stats["rejected"] == 1
    finally:
        gate.set()
        batcher.close()
    assert first.result(1)["x"].shape == (1, 2)


def test_expired_deadline_gives_timeout_and_the_request_is_not_run() -> None:
    ran: list[int] = []
    gate = threading.Event()

    def run(feed):
        ran.append(int(feed["x"][0, 0]))
        gate.wait(5)
        return [feed["x"]]

    spec = TensorSpec("x", "float32", ("batch", 2), 0)
    batcher = Batcher(run, [spec], [spec], BatchConfig(max_batch_size=1, max_delay_ms=0), name="m")
    try:
        batcher.submit({"x": np.full((1, 2), 1, np.float32)})
        time.sleep(0.05)
        late = batcher.submit({"x": np.full((1, 2), 2, np.float32)}, timeout_ms=20)
        time.sleep(0.1)
        gate.set()
        with pytest.raises(Timeout, match="deadline"):
            late.result(2)
    finally:
        gate.set()
        batcher.close()
    assert ran == [1]


def test_failing_batch_fails_exactly_its_requests() -> None:
    def run(feed):
        if np.any(feed["x"] < 0):
            raise edgeserve.InferenceError("negative input in this batch")
        return [feed["x"] * 2]

    spec = TensorSpec("x", "float32", ("batch", 1), 0)
    batcher = Batcher(run, [spec], [spec], BatchConfig(max_batch_size=4, max_delay_ms=20), name="m")
    try:
        bad = [batcher.submit({"x": np.full((1, 1), v, np.float32)}) for v in (1, -1, 2, 3)]  # one batch of 4
        for f in bad:
            with pytest.raises(edgeserve.InferenceError, match="negative input"):
                f.result(2)
        good = batcher.submit({"x": np.full((1, 1), 5, np.float32)})
        assert good.result(2)["x"][0, 0] == 10
    finally:
        batcher.close()


def test_cancelled_requests_are_skipped() -> None:
    gate = threading.Event()
    seen: list[float] = []

    def run(feed):
        seen.extend(feed["x"].ravel().tolist())
        gate.wait(5)
        return [feed["x"]]

    spec = TensorSpec("x", "float32", ("batch", 1), 0)
    batcher = Batcher(run, [spec], [spec], BatchConfig(max_batch_size=1, max_delay_ms=0), name="m")
    try:
        batcher.submit({"x": np.full((1, 1), 1, np.float32)})
        time.sleep(0.05)
        gone = batcher.submit({"x": np.full((1, 1), 2, np.float32)})
        assert gone.cancel()  # the caller went away while queued
        kept = batcher.submit({"x": np.full((1, 1), 3, np.float32)})
        gate.set()
        assert kept.result(2)["x"][0, 0] == 3
    finally:
        gate.set()
        batcher.close()
    assert seen == [1.0, 3.0]


def test_close_drains_the_queue(mlp_package: Path) -> None:
    model = edgeserve.load(mlp_package, batching=BatchConfig(max_batch_size=64, max_delay_ms=10_000))
    futures = [model.batcher.submit({"x": rows(1, seed=i)}) for i in range(10)]
    model.close(timeout=5)  # would otherwise wait 10 s for company
    assert all(f.result(0)["logits"].shape == (1, 4) for f in futures)
    with pytest.raises(edgeserve.ClosedError):
        model.predict(rows(1))


def test_predict_async_goes_through_the_batcher(served) -> None:
    async def main():
        return await asyncio.gather(*(served.predict_async(rows(1, seed=i)) for i in range(20)))

    results = asyncio.run(main())
    assert len(results) == 20 and served.batcher.stats["requests"] == 20
    np.testing.assert_allclose(results[3]["logits"], served.predict(rows(1, seed=3))["logits"], rtol=1e-5)


def test_models_without_a_batch_axis_bypass_the_batcher(tmp_path: Path) -> None:
    from tests.factories import mlp_model

    path = save(mlp_model(batch=1), tmp_path / "fixed.onnx")
    with edgeserve.load(path, batching=BatchConfig()) as model:
        assert model.batcher is None
        assert model.predict(rows(1))["logits"].shape == (1, 4)
