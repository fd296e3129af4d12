"""The server's only request in flight runs in the event loop when its model is quick enough (a thread hand-off and
back would cost more than holding the loop); requests read together go to the batcher together."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeserve import BatchConfig, Runtime
from edgeserve.runtime import model as model_module
from edgeserve.server.dataplane import DataPlane, InferRequest
from tests.factories import rows


@pytest.fixture(params=["batching", "no-batching"])
def plane(repo: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest):
    monkeypatch.setattr(model_module, "INLINE_S", 0.0)  # the model counts as too slow for the usual inline path
    monkeypatch.setattr(model_module, "INLINE_BATCHED_S", 0.0)
    runtime = Runtime(repo, batching=BatchConfig() if request.param == "batching" else None, guard=None)
    yield DataPlane(runtime)
    runtime.close()


def _request(n: int = 1) -> InferRequest:
    return InferRequest(model="mlp", version=None, inputs={"x": ("FP32", rows(n))})


def _in_loop(plane: DataPlane, rounds: list[int]) -> list[bool]:
    """Run ``rounds`` (how many requests arrive together, each round), after the model's probes; for each engine
    run, whether it ran in the event loop's thread."""
    seen: list[bool] = []
    with plane.runtime.using("mlp") as (model, _):
        owner = model.batcher or model  # what calls the engine
        run = owner._run if model.batcher else model._run_feed

        def spy(*args):
            seen.append(threading.current_thread() is loop_thread)
            return run(*args)

        if model.batcher:
            model.batcher._run = spy
            engine = model.batcher._engine
            if engine is not None:  # the batcher's direct way calls the engine itself

                def engine_spy(*args):
                    seen.append(threading.current_thread() is loop_thread)
                    return engine(*args)

                model.batcher._engine = engine_spy
        else:
            model._run_feed = spy
    loop_thread = None

    async def go() -> None:
        nonlocal loop_thread
        loop_thread = threading.current_thread()
        for _ in range(model_module.INLINE_PROBES):
            await plane.infer(_request())
        seen.clear()
        for together in rounds:
            answers = await asyncio.gather(*(plane.infer(_request()) for _ in range(together)))
            assert all(a.outputs["logits"].shape == (1, 4) for a in answers)

    asyncio.run(go())
    return seen


def test_a_lone_request_runs_in_the_event_loop(plane: DataPlane) -> None:
    assert _in_loop(plane, [1, 1, 1]) == [True, True, True]


def test_requests_that_arrive_together_are_not_run_in_the_loop(plane: DataPlane) -> None:
    used = _in_loop(plane, [4])
    assert used and not any(used)


def test_a_model_slower_than_alone_s_never_blocks_the_loop(plane: DataPlane, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "ALONE_S", 0.0)
    used = _in_loop(plane, [1, 1])
    assert used == [False, False]


def test_a_busy_engine_is_not_waited_for_in_the_loop(plane: DataPlane) -> None:
    with plane.runtime.using("mlp") as (model, _):
        model._inline_calls, model._inline_cost, model._inline_rows = model_module.INLINE_PROBES, 0.001, 1
        assert model._inline(1, alone=True)
        if model.batcher is None:  # nothing to wait for
            return
        model.batcher._busy = True  # another caller holds the engine
        try:
            assert not model._inline(1, alone=True)
        finally:
            model.batcher._busy = False
        assert not model._inline(1, alone=False)
        np.testing.assert_array_equal(model.predict(rows(1))["logits"].shape, (1, 4))
