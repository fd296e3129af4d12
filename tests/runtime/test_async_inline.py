"""predict_async runs small requests to a fast model in the event loop (a hand-off to a thread costs more than the
model), and never blocks the loop with a slow model or a bigger request."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np

import edgeserve
from edgeserve.runtime import model as model_module
from tests.factories import rows


def _threads_used(model, feeds) -> list[bool]:
    """For each call, whether the engine ran in the event loop's own thread."""
    seen: list[bool] = []
    owner = model.batcher if model.batcher is not None else model  # what calls the engine
    attribute = "_run" if model.batcher is not None else "_run_feed"
    run = getattr(owner, attribute)

    def spy(feed):
        seen.append(threading.current_thread() is loop_thread)
        return run(feed)

    setattr(owner, attribute, spy)
    loop_thread = None

    async def go() -> None:
        nonlocal loop_thread
        loop_thread = threading.current_thread()
        for feed in feeds:
            out = await model.predict_async(feed)
            assert out["logits"].shape == (len(feed), 4)

    asyncio.run(go())
    return seen


def test_a_fast_model_runs_in_the_loop_after_its_probes(mlp_package: Path) -> None:
    with edgeserve.load(mlp_package) as model:
        used = _threads_used(model, [rows(1)] * 12 + [rows(64)])
    probes = model_module.INLINE_PROBES
    assert used[:probes] == [False] * probes  # probes run on a worker thread
    assert used[probes:12] == [True] * (12 - probes)  # then the loop runs them itself
    assert used[12] is False  # 64 rows: more than any probe had, back to a worker thread


def test_a_slow_model_never_blocks_the_loop(mlp_package: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "INLINE_S", 0.0)  # no model is this fast
    with edgeserve.load(mlp_package) as model:
        assert not any(_threads_used(model, [rows(1)] * 12))


def test_async_answers_equal_sync_answers(mlp_package: Path) -> None:
    with edgeserve.load(mlp_package, batching=edgeserve.BatchConfig()) as model:
        x = rows(3)

        async def go():
            return [await model.predict_async(x) for _ in range(12)]

        for out in asyncio.run(go()):
            np.testing.assert_array_equal(out["logits"], model.predict(x)["logits"])


def test_probes_run_one_at_a_time(mlp_package: Path) -> None:
    """Probes that run side by side time each other: requests that arrive while one probe runs take the usual way."""
    with edgeserve.load(mlp_package, batching=edgeserve.BatchConfig()) as model:
        probes = []
        timed = model._timed

        def spy(feed):
            probes.append(len(feed["x"]))
            return timed(feed)

        model._timed = spy
        inputs = [rows(1, seed=i) for i in range(20)]

        async def go():
            return await asyncio.gather(*(model.predict_async(x) for x in inputs))

        answers = asyncio.run(go())
        assert probes == [1] and model._inline_calls == 1
        for x, out in zip(inputs, answers):
            np.testing.assert_allclose(out["logits"], model.predict(x)["logits"], rtol=1e-5)


def test_a_probe_times_the_engine_not_the_queue(mlp_package: Path) -> None:
    """A probe runs beside a batch that holds the engine, not behind it: queued, it would time the wait."""
    with edgeserve.load(mlp_package, batching=edgeserve.BatchConfig()) as model:
        run = model.batcher._run
        entered, release = threading.Event(), threading.Event()

        def held(feed):
            if len(feed["x"]) == 3:  # the blocking caller's batch
                entered.set()
                release.wait()
            return run(feed)

        model.batcher._run = held
        blocker = threading.Thread(target=model.predict, args=(rows(3),))
        blocker.start()
        try:
            assert entered.wait(10)

            async def probe():
                return await asyncio.wait_for(model.predict_async(rows(1)), 10)

            out = asyncio.run(probe())  # a TimeoutError here: the probe queued behind the held batch
            assert out["logits"].shape == (1, 4) and model._inline_calls == 1
        finally:
            release.set()
            blocker.join()


def test_a_batched_model_runs_in_the_loop_for_a_lone_caller_only(mlp_package: Path, monkeypatch) -> None:
    """A model the batcher keeps out of the loop (``INLINE_BATCHED_S``: a run there keeps other requests from
    queueing to share the next), though the loop could afford its runs (``INLINE_S``): one caller at a time runs it
    in the loop (no hand-off); callers that await together go to the batcher and share runs. Without a batcher,
    the same model runs in the loop."""
    monkeypatch.setattr(model_module, "INLINE_S", 1.0)  # the loop could afford it...
    monkeypatch.setattr(model_module, "INLINE_BATCHED_S", 0.0)  # ... but the batcher keeps it out
    with edgeserve.load(mlp_package) as model:
        assert _threads_used(model, [rows(1)] * 12)[8:] == [True] * 4
    with edgeserve.load(mlp_package, batching=edgeserve.BatchConfig()) as model:
        assert _threads_used(model, [rows(1)] * 12)[8:] == [True] * 4  # after the probes: one after another

        seen: list[bool] = []
        run = model.batcher._run

        def spy(feed):
            seen.append(threading.current_thread() is loop_thread)
            return run(feed)

        model.batcher._run = spy
        loop_thread = None
        inputs = [rows(1, seed=i) for i in range(16)]

        async def together():
            nonlocal loop_thread
            loop_thread = threading.current_thread()
            return await asyncio.gather(*(model.predict_async(x) for x in inputs))

        answers = asyncio.run(together())
        assert seen and not any(seen)  # none in the loop
        assert len(seen) < len(inputs)  # and they shared runs
        for x, out in zip(inputs, answers):
            np.testing.assert_allclose(out["logits"], model.predict(x)["logits"], rtol=1e-5)
