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
from tests.factories import gather_model, rows, save, two_input_model

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


SPEC = TensorSpec("x", "float32", ("batch", 1), 0)


def _x(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 1), value, np.float32)}


class Gate:
    """A run function that blocks inside the engine until released, and says when it got there."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen: list[float] = []
        self.fail_on = fail_on

    def __call__(self, feed):
        self.seen.extend(feed["x"].ravel().tolist())
        self.entered.set()
        assert self.release.wait(10), "the test never released the gate"
        return [feed["x"] * 2]


def test_queue_full_rejects_at_once() -> None:
    gate = Gate()
    batcher = Batcher(gate, [SPEC], [SPEC], BatchConfig(max_batch_size=1, max_delay_ms=0, max_queue=2), name="m")
    try:
        first = batcher.submit(_x(1))
        assert gate.entered.wait(5)  # the worker is inside run() with the first request
        batcher.submit(_x(2))
        batcher.submit(_x(3))
        with pytest.raises(QueueFull, match="max_queue=2"):
            batcher.submit(_x(4))
        assert batcher.stats["rejected"] == 1
    finally:
        gate.release.set()
        batcher.close()
    assert first.result(1)["x"][0, 0] == 2


def test_expired_deadline_gives_timeout_and_the_request_is_not_run() -> None:
    """The worker drops a request whose deadline passed while it waited: time comes from an injected clock."""
    now = [0.0]
    gate = Gate()
    batcher = Batcher(gate, [SPEC], [SPEC], BatchConfig(max_batch_size=1, max_delay_ms=0), name="m",
                      clock=lambda: now[0])
    try:
        batcher.submit(_x(1))
        assert gate.entered.wait(5)
        late = batcher.submit(_x(2), timeout_ms=20)
        now[0] = 1.0  # a second passes while the engine is busy
        gate.release.set()
        with pytest.raises(Timeout, match="deadline"):
            late.result(5)
    finally:
        gate.release.set()
        batcher.close()
    assert gate.seen == [1.0] and batcher.stats["expired"] == 1


def test_a_deadline_bounds_the_wait_even_while_the_engine_is_stuck() -> None:
    """call() returns at its deadline although the worker never comes back from run(); the withdrawn request
    never runs afterwards."""
    gate = Gate()
    batcher = Batcher(gate, [SPEC], [SPEC], BatchConfig(max_batch_size=1, max_delay_ms=0), name="m")
    try:
        batcher.submit(_x(1))
        assert gate.entered.wait(5)
        with pytest.raises(Timeout, match="withdrawn before it ran"):
            batcher.call(_x(2), timeout_ms=30)
        assert not gate.release.is_set()  # it returned while the engine was still stuck
        with pytest.raises(Timeout):
            batcher.call(_x(3), timeout_ms=1)
    finally:
        gate.release.set()
        batcher.close()
    assert gate.seen == [1.0]


def test_an_async_deadline_bounds_the_wait_too() -> None:
    gate = Gate()
    batcher = Batcher(gate, [SPEC], [SPEC], BatchConfig(max_batch_size=1, max_delay_ms=0), name="m")
    try:
        batcher.submit(_x(1))
        assert gate.entered.wait(5)
        with pytest.raises(Timeout, match="deadline of 30 ms"):
            asyncio.run(batcher.call_async(_x(2), timeout_ms=30))
        assert not gate.release.is_set()
    finally:
        gate.release.set()
        batcher.close()
    assert gate.seen == [1.0]  # the withdrawn request never ran


def test_an_engine_crash_fails_its_batch_and_the_next_batch_still_runs() -> None:
    """An engine that raises past Exception fails the callers of that batch with the cause; there is no worker
    to die, so the next request is served."""

    class Crash(BaseException):
        pass

    entered, release = threading.Event(), threading.Event()
    calls: list[float] = []

    def run(feed):
        calls.append(float(feed["x"].ravel()[0]))
        if len(calls) == 1:
            entered.set()
            release.wait(10)
            raise Crash("engine crashed hard")
        return [feed["x"] * 2]

    batcher = Batcher(run, [SPEC], [SPEC], BatchConfig(max_batch_size=1, max_delay_ms=0, timeout_ms=None), name="m")
    running = batcher.submit(_x(1))
    assert entered.wait(5)
    queued = batcher.submit(_x(2))  # no deadline: only the engine passing on can release it
    release.set()
    with pytest.raises(edgeserve.InferenceError, match="engine crashed hard"):
        running.result(5)
    assert queued.result(5)["x"][0, 0] == 4
    assert batcher.alive and batcher.call(_x(3))["x"][0, 0] == 6
    batcher.close()


def test_a_request_at_an_idle_engine_runs_at_once_in_its_own_thread() -> None:
    """Batching never makes a lone request wait: no delay, no hand-off to another thread."""
    ran_in: list[str] = []

    def run(feed):
        ran_in.append(threading.current_thread().name)
        return [feed["x"] * 2]

    batcher = Batcher(run, [SPEC], [SPEC], BatchConfig(max_batch_size=32), name="m")
    try:
        assert batcher.call(_x(1))["x"][0, 0] == 2
        assert ran_in == [threading.current_thread().name] and batcher.stats["ran_at_once"] == 1
    finally:
        batcher.close()


def test_requests_arriving_while_a_batch_runs_are_gathered_for_the_next() -> None:
    """While the engine runs one request, the callers that arrive queue; the oldest of them then leads one batch
    of all of them, in its own thread, and hands each its rows."""
    gate = Gate()
    batches: list[tuple[int, str]] = []

    def run(feed):
        if not batches:
            batches.append((len(feed["x"]), threading.current_thread().name))
            return gate(feed)
        batches.append((len(feed["x"]), threading.current_thread().name))
        return [feed["x"] * 2]

    batcher = Batcher(run, [SPEC], [SPEC], BatchConfig(max_batch_size=32), name="m")
    with ThreadPoolExecutor(6, thread_name_prefix="caller") as pool:
        first = pool.submit(batcher.call, _x(1))
        assert gate.entered.wait(5)
        later = [pool.submit(batcher.call, _x(v)) for v in range(2, 7)]
        deadline = time.monotonic() + 10
        while batcher.queued < 5:  # a condition to reach, not an ordering by sleeping
            assert time.monotonic() < deadline, "the callers never queued"
            time.sleep(0.001)
        gate.release.set()
        assert first.result(5)["x"][0, 0] == 2
        assert [f.result(5)["x"][0, 0] for f in later] == [4, 6, 8, 10, 12]
    assert [n for n, _ in batches] == [1, 5]
    assert batches[1][1].startswith("caller")  # a follower led the second batch: no worker thread
    assert batcher.stats["batches"] == 2 and batcher.stats["rows"] == 6
    batcher.close()


def test_answers_split_back_along_a_batch_axis_that_is_not_the_first() -> None:
    """A time-major model (sequence, batch, features): requests stack along axis 1 and each caller gets its own
    columns back, whatever its number of rows."""
    spec = TensorSpec("x", "float32", ("time", "batch", 2), 1)
    gate = Gate()
    runs: list[tuple[int, ...]] = []

    def run(feed):
        runs.append(feed["x"].shape)
        if len(runs) == 1:
            return gate(feed)
        return [feed["x"] * 2]

    def request(value: float, rows: int) -> dict[str, np.ndarray]:
        return {"x": np.full((3, rows, 2), value, np.float32) + np.arange(3, dtype=np.float32)[:, None, None]}

    batcher = Batcher(run, [spec], [spec], BatchConfig(max_batch_size=32), name="m")
    try:
        first = batcher.submit(request(0, 1))
        assert gate.entered.wait(5)
        later = [(v, rows, batcher.submit(request(v, rows))) for v, rows in ((10, 2), (20, 1), (30, 3))]
        gate.release.set()
        assert first.result(5)["x"].shape == (3, 1, 2)
        for v, rows, future in later:
            np.testing.assert_array_equal(future.result(5)["x"], request(v, rows)["x"] * 2)
    finally:
        gate.release.set()
        batcher.close()
    assert runs[1] == (3, 6, 2)  # the three were stacked into one run


def test_a_leader_waiting_for_company_is_woken_only_when_it_must_act() -> None:
    """Each arrival wakes a leader that waits for company only if its batch is now full, or its deadline comes
    before the leader means to run: waking it at every arrival cost a thread switch per request."""

    class Counting:
        notified = 0

        def notify_all(self) -> None:
            self.notified += 1

    batcher = Batcher(lambda feed: [feed["x"]], [SPEC], [SPEC], BatchConfig(max_batch_size=4, timeout_ms=None),
                      name="m")
    counting = Counting()
    batcher._cond = counting  # type: ignore[assignment]
    batcher._busy = True
    batcher._leader_wakes_at = 1.010  # the leader means to run then
    batcher._queue(Pending(_x(1), 1, ("g",), 1.000, 31.0))  # a deadline long after it: nothing to do
    batcher._queue(Pending(_x(2), 1, ("g",), 1.001, None))
    assert counting.notified == 0
    batcher._queue(Pending(_x(3), 1, ("g",), 1.002, 1.005))  # due before the leader's wake-up
    assert counting.notified == 1
    batcher._queue(Pending(_x(4), 1, ("g",), 1.003, None))  # the batch is full
    assert counting.notified == 2


def test_a_caller_that_gave_up_inside_a_running_batch_does_not_stall_the_callers_woken_after_it() -> None:
    """A batch's blocked callers are woken one after another, each by the one before it. One that left at its
    deadline while the batch ran is out of that chain, so the callers behind it still get their answers."""
    first_gate, second_entered, second_release = Gate(), threading.Event(), threading.Event()
    runs: list[int] = []

    def run(feed):
        runs.append(len(feed["x"]))
        if len(runs) == 1:
            return first_gate(feed)
        second_entered.set()
        assert second_release.wait(10), "the test never released the second batch"
        return [feed["x"] * 2]

    def queued(n: int) -> None:
        deadline = time.monotonic() + 10
        while batcher.queued < n:  # a condition to reach, not an ordering by sleeping
            assert time.monotonic() < deadline, "the callers never queued"
            time.sleep(0.001)

    batcher = Batcher(run, [SPEC], [SPEC], BatchConfig(max_batch_size=32), name="m")
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(batcher.call, _x(1))
        assert first_gate.entered.wait(5)
        early = pool.submit(batcher.call, _x(2))
        queued(1)
        leaving = pool.submit(batcher.call, _x(3), 100)
        queued(2)
        late = pool.submit(batcher.call, _x(4))
        queued(3)
        first_gate.release.set()
        assert second_entered.wait(5)  # the three run as one batch, which now holds the engine
        with pytest.raises(Timeout, match="its answer is discarded"):
            leaving.result(10)
        second_release.set()
        assert first.result(5)["x"][0, 0] == 2 and early.result(5)["x"][0, 0] == 4
        assert late.result(5)["x"][0, 0] == 8
    assert runs == [1, 3]
    batcher.close()


def test_failing_batch_fails_exactly_the_request_that_broke_it() -> None:
    def run(feed):
        if np.any(feed["x"] < 0):
            raise edgeserve.InferenceError("negative input in this batch")
        return [feed["x"] * 2]

    batcher = Batcher(run, [SPEC], [SPEC], BatchConfig(max_batch_size=4, max_delay_ms=10_000), name="m")
    try:
        futures = [batcher.submit(_x(v)) for v in (1, -1, 2, 3)]  # one batch of 4
        with pytest.raises(edgeserve.InferenceError, match="negative input"):
            futures[1].result(5)
        assert [f.result(5)["x"][0, 0] for f in (futures[0], futures[2], futures[3])] == [2, 4, 6]
        assert batcher.stats["failed_batches"] == 1 and batcher.stats["retried_alone"] == 4
    finally:
        batcher.close()


def test_a_poisoned_request_fails_alone_in_a_real_model(tmp_path: Path) -> None:
    """A token id past the embedding table passes the contract and fails in onnxruntime; stacked with good
    requests, only it fails."""
    path = save(gather_model(vocab=10), tmp_path / "gather.onnx")
    ids = [np.full((1, 3), v, np.int64) for v in (1, 2, 99, 3, 4, 5)]
    with edgeserve.load(path, batching=BatchConfig(max_batch_size=len(ids), max_delay_ms=10_000)) as model:
        futures = [model.batcher.submit({"ids": x}) for x in ids]
        for x, f in zip(ids, futures):
            if x[0, 0] == 99:
                with pytest.raises(edgeserve.InferenceError, match="onnxruntime failed"):
                    f.result(5)
            else:
                assert np.all(f.result(5)["out"] == x[0, 0])


def test_cancelled_requests_are_skipped() -> None:
    gate = Gate()
    batcher = Batcher(gate, [SPEC], [SPEC], BatchConfig(max_batch_size=1, max_delay_ms=0), name="m")
    try:
        batcher.submit(_x(1))
        assert gate.entered.wait(5)
        gone = batcher.submit(_x(2))
        assert gone.cancel()  # the caller went away while queued
        kept = batcher.submit(_x(3))
        gate.release.set()
        assert kept.result(5)["x"][0, 0] == 6
    finally:
        gate.release.set()
        batcher.close()
    assert gate.seen == [1.0, 3.0]


def test_hurry_runs_what_waits_without_waiting_for_company() -> None:
    gate = Gate()
    gate.release.set()
    batcher = Batcher(gate, [SPEC], [SPEC], BatchConfig(max_batch_size=64, max_delay_ms=60_000), name="m")
    try:
        waiting = batcher.submit(_x(1))
        assert not waiting.done()
        batcher.hurry()
        assert waiting.result(5)["x"][0, 0] == 2
    finally:
        batcher.close()


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


def test_mixed_callers_under_load_each_get_their_own_rows(mlp_package: Path) -> None:
    """Blocking calls, futures and asyncio callers at once, some with deadlines short enough to expire: every
    caller gets its own answer or a Timeout, nobody hangs, nothing is mixed up."""
    with edgeserve.load(mlp_package, batching=BatchConfig(max_batch_size=8)) as model:
        batcher = model.batcher
        inputs = [rows(1 + i % 3, seed=i) for i in range(120)]
        with edgeserve.load(mlp_package) as plain:
            expected = [plain.predict(x)["logits"] for x in inputs]

        def blocking(i: int):
            try:
                return i, batcher.call({"x": inputs[i]}, timeout_ms=None if i % 5 else 0.05)
            except Timeout:
                return i, None

        async def many_async():
            async def one(i: int):
                return i, await batcher.call_async({"x": inputs[i]})
            return await asyncio.gather(*(one(i) for i in range(80, 120)))

        with ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(blocking, i) for i in range(0, 60)]
            futures = [(i, batcher.submit({"x": inputs[i]})) for i in range(60, 80)]
            answers = asyncio.run(many_async())
            answers += [f.result(30) for f in calls]
            answers += [(i, f.result(30)) for i, f in futures]
        assert len(answers) == 120
        for i, out in answers:
            if out is not None:
                np.testing.assert_allclose(out["logits"], expected[i], rtol=1e-4, atol=1e-5)
        assert batcher.queued == 0


def test_a_runs_cost_is_fitted_as_a_fixed_time_plus_a_time_per_row() -> None:
    from edgeserve.runtime.batcher import RunCost

    cost = RunCost()
    assert cost.of(32) == 0  # nothing measured yet: nothing refused
    for n in (1, 32, 4, 32, 1, 16):
        cost.add(n, 0.020 + 0.0001 * n)  # compute-bound: a batch of 1 costs nearly what a batch of 32 does
    assert cost.line() == pytest.approx((0.020, 0.0001))
    assert cost.of(32) == pytest.approx(0.0232)
    assert cost.of(0) == 0


def test_a_runs_cost_is_proportional_until_two_sizes_are_seen_and_never_negative() -> None:
    from edgeserve.runtime.batcher import RunCost

    same = RunCost()
    for _ in range(3):
        same.add(8, 0.008)
    assert same.line() == pytest.approx((0.0, 0.001))
    below = RunCost()  # a line through these would cross zero below 10 rows: the origin's line is used
    below.add(10, 0.001)
    below.add(20, 0.010)
    fixed, per_row = below.line()
    d = RunCost.DECAY  # the older run weighs less
    assert fixed == 0 and per_row == pytest.approx((d * 0.001 + 0.010) / (d * 10 + 20))


def test_a_runs_cost_follows_an_engine_that_slows_down() -> None:
    from edgeserve.runtime.batcher import RunCost

    cost = RunCost()
    for n in (1, 32) * 20:
        cost.add(n, 0.010 + 0.001 * n)
    for n in (1, 32) * 40:
        cost.add(n, 2 * (0.010 + 0.001 * n))
    assert cost.of(32) == pytest.approx(2 * 0.042, rel=0.01)


def test_the_expected_wait_is_the_runs_rest_the_full_batches_ahead_then_its_own() -> None:
    from edgeserve.runtime.batcher import RunCost, expected_wait_s

    cost = RunCost()
    for n in (1, 32):
        cost.add(n, 0.010 + 0.001 * n)  # 11 ms for 1 row, 42 ms for 32

    def wait(running: int, since: float, queued: int, rows: int = 1, arriving: float = 0.0) -> float:
        return expected_wait_s(cost, running_rows=running, running_for_s=since, queued_rows=queued, rows=rows,
                               max_batch_size=32, arriving_per_s=arriving)

    assert wait(0, 0.0, 0) == pytest.approx(0.011)  # nothing ahead: its own run
    assert wait(32, 0.005, 0) == pytest.approx(0.037 + 0.011)  # the rest of the run in progress, then its own
    assert wait(32, 0.050, 0) == pytest.approx(0.011)  # overdue: not negative
    # 31 one-row requests queued: the next joins their batch; rows times the time per row of 1-row runs
    # (11 ms) would have said 352 ms
    assert wait(32, 0.0, 31) == pytest.approx(0.042 + 0.042)
    assert wait(32, 0.0, 32) == pytest.approx(0.042 + 0.042 + 0.011)  # a full batch ahead of the one it starts
    assert wait(32, 0.0, 31, rows=2) == pytest.approx(0.042 + 0.042 + 0.012)  # 2 rows do not fit beside 31
    assert wait(0, 0.0, 70) == pytest.approx(2 * 0.042 + 0.017)  # nothing running: two full batches, then 7 rows
    assert wait(0, 0.0, 0, rows=40) == pytest.approx(0.050)  # bigger than a batch: alone
    # its batch fills while it waits: 42 ms at 500 rows/s is 21 more rows before it runs, 10 ms + 22 ms
    assert wait(32, 0.0, 0, arriving=500.0) == pytest.approx(0.042 + 0.032)
    assert wait(32, 0.0, 0, arriving=1e6) == pytest.approx(0.042 + 0.042)  # but never past a full batch
    assert wait(32, 0.0, 0, arriving=float("inf")) == pytest.approx(0.042 + 0.042)


def test_arrivals_are_rows_a_second_over_recent_gaps() -> None:
    from edgeserve.runtime.batcher import Arrivals

    arrivals = Arrivals()
    assert arrivals.per_s() == 0
    for i in range(200):
        arrivals.add(2, i * 0.001)  # 2 rows every millisecond
    assert arrivals.per_s() == pytest.approx(2000)
    arrivals.add(2, 3600.0)  # after an idle hour: counted as a 1 s gap, so the rate comes back quickly
    for i in range(1, 40):
        arrivals.add(2, 3600.0 + i * 0.001)
    assert arrivals.per_s() > 500


def test_max_wait_refuses_what_would_wait_too_long_and_admits_the_rest() -> None:
    """Engine time is faked: each run advances the batcher's clock by 10 ms a row; the clock stands still between
    runs, so queued requests arrive together (each batch is full by the time it runs). With max_wait_ms=50 and
    batches of 2 rows, a request queues while the rest of the run in progress, the full batches ahead of it and its
    own batch take at most 50 ms; the next is refused at once with QueueFull."""
    now = [0.0]
    gate = threading.Event()

    def run(feed):
        if feed["x"][0, 0] == 1.0:  # the blocking request holds the engine until the test says
            assert gate.wait(10)
        now[0] += 0.010 * len(feed["x"])
        return [feed["x"] * 2]

    config = BatchConfig(max_batch_size=2, max_wait_ms=50.0, timeout_ms=None, adaptive=False)
    batcher = Batcher(run, [SPEC], [SPEC], config, name="m", clock=lambda: now[0])
    try:
        assert batcher.call(_x(0.0))["x"][0, 0] == 0  # measured: 10 ms a row
        with ThreadPoolExecutor(1) as pool:
            holding = pool.submit(batcher.call, _x(1.0))  # 1 row running: 10 ms
            deadline = time.monotonic() + 10
            while batcher.stats["requests"] < 2:  # a state to reach, not an ordering by sleeping
                assert time.monotonic() < deadline
                time.sleep(0.001)
            admitted = [batcher.submit(_x(2.0, rows=2))]  # 10 ms + its own batch, 20
            assert batcher.refuses_now() is None  # what a server asks before reading a body
            admitted.append(batcher.submit(_x(3.0, rows=2)))  # 10 + one batch ahead + its own: 50, not more
            assert "~70 ms, more than max_wait_ms=50" in (batcher.refuses_now() or "")
            with pytest.raises(QueueFull, match="~70 ms, more than max_wait_ms=50"):
                batcher.submit(_x(9.0))  # 10 + two batches ahead + its own, filled by the time it runs
            gate.set()
            assert holding.result(10)["x"][0, 0] == 2.0
            assert [f.result(10)["x"][0, 0] for f in admitted] == [4.0, 6.0]
        assert batcher.stats["rejected"] == 1
    finally:
        gate.set()
        batcher.close()


def test_timings_count_every_run_its_rows_and_every_queued_wait() -> None:
    gate = Gate()
    now = [0.0]
    batcher = Batcher(gate, [SPEC], [SPEC], BatchConfig(max_batch_size=32, adaptive=False, timeout_ms=None),
                      name="m", clock=lambda: now[0])
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(batcher.call, _x(1))
            assert gate.entered.wait(5)
            later = [batcher.submit(_x(v)) for v in (2, 3, 4)]  # queued at t=0
            now[0] = 0.004  # they have waited 4 ms when the engine takes them
            gate.release.set()
            first.result(5)
            [f.result(5) for f in later]
        t = batcher.timings()
        assert sum(t["batch_rows"]["counts"]) == 2 and t["batch_rows"]["sum"] == 4  # runs of 1 and 3 rows
        assert sum(t["run_s"]["counts"]) == 2
        assert sum(t["queue_s"]["counts"]) == 3 and t["queue_s"]["sum"] == pytest.approx(0.012)
        bucket = t["queue_s"]["bounds"].index(0.005)  # 4 ms lands in the (2 ms, 5 ms] bucket
        assert t["queue_s"]["counts"][bucket] == 3
    finally:
        batcher.close()


def test_regather_waits_for_returning_callers_only_where_a_run_s_fixed_time_outweighs_the_queue() -> None:
    from edgeserve.runtime.batcher import RunCost, regather

    bound = RunCost()  # compute-bound: a run of 1 row costs nearly what a run of 32 does
    linear = RunCost()  # every row costs the same: waiting buys nothing
    for n in (1, 32, 4, 16):
        bound.add(n, 0.004 + 0.0001 * n)
        linear.add(n, 0.0001 * n)
    assert regather(16, 10, 10, 32, bound) == 26  # the 16 callers just answered, and the 10 waiting
    assert regather(16, 10, 10, 32, linear) == 0
    assert regather(1, 10, 10, 32, bound) == 0  # a lone caller's answer: nobody else comes back
    assert regather(16, 0, 0, 32, bound) == 0  # nothing queued: the idle engine's own gathering applies
    assert regather(16, 32, 32, 32, bound) == 0  # the queue fills a batch already


def test_a_queued_request_waits_for_the_callers_of_the_batch_just_answered_when_runs_cost_a_fixed_time() -> None:
    """Two cohorts of callers must not alternate, each running while the other's callers return: after a batch of
    two, the one request queued behind it waits (on the batcher's clock, which only the runs move here) until the
    two callers are back, and the three run as one batch."""
    now = [0.0]
    sizes: list[int] = []
    first, second = Gate(), Gate()

    def run(feed):
        now[0] += 0.001  # each run takes a millisecond of the batcher's clock; the wait for company uses it
        sizes.append(len(feed["x"]))
        if len(sizes) == 1:
            return first(feed)
        if len(sizes) == 2:
            return second(feed)
        return [feed["x"] * 2]

    batcher = Batcher(run, [SPEC], [SPEC], BatchConfig(max_batch_size=32, adaptive=False), name="m",
                      clock=lambda: now[0])
    for n in (1, 32, 4, 16):  # a compute-bound engine, as measured runs would show
        batcher._cost.add(n, 0.004 + 0.0001 * n)

    def reach(condition, what: str) -> None:
        deadline = time.monotonic() + 10
        while not condition():  # a condition to reach, not an ordering by sleeping
            assert time.monotonic() < deadline, what
            time.sleep(0.001)

    with ThreadPoolExecutor(6, thread_name_prefix="caller") as pool:
        lone = pool.submit(batcher.call, _x(0))
        assert first.entered.wait(5)
        pair = [pool.submit(batcher.call, _x(v)) for v in (1, 2)]
        reach(lambda: batcher.queued == 2, "the pair never queued")
        first.release.set()
        assert second.entered.wait(5)
        behind = pool.submit(batcher.call, _x(3))
        reach(lambda: batcher.queued == 1, "the request behind never queued")
        second.release.set()
        assert [f.result(5)["x"][0, 0] for f in (lone, *pair)] == [0, 2, 4]
        back = [pool.submit(batcher.call, _x(v)) for v in (4, 5)]  # the pair's callers, back with their next
        assert [f.result(5)["x"][0, 0] for f in (behind, *back)] == [6, 8, 10]
    assert sizes == [1, 2, 3]
    batcher.close()
