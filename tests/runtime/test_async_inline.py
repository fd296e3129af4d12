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
    run = model._run_feed

    def spy(feed):
        seen.append(threading.current_thread() is loop_thread)
        return run(feed)

    model._run_feed = spy
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
