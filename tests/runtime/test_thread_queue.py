"""Async requests to a model without a batcher wait for a worker thread in a bounded queue, within a deadline (the
executor's own queue has neither)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import edgeserve
from edgeserve.errors import QueueFull, Timeout
from edgeserve.runtime import model as model_module
from tests.factories import rows


def _held(model: edgeserve.Model) -> tuple[threading.Event, threading.Event]:
    """Make the model's runs wait for ``release``; ``entered`` is set when one is waiting."""
    entered, release = threading.Event(), threading.Event()
    run = model._run_feed

    def held(feed):
        entered.set()
        assert release.wait(30)
        return run(feed)

    model._run_feed = held  # type: ignore[method-assign]
    return entered, release


def test_requests_beyond_the_thread_queue_are_refused_at_once(mlp_package: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "THREAD_QUEUE", 2)
    monkeypatch.setattr(model_module, "INLINE_PROBES", 0)  # no probes: every call takes the worker-thread path
    with edgeserve.load(mlp_package) as model:
        entered, release = _held(model)

        async def go():
            waiting = [asyncio.create_task(model.predict_async(rows(1, seed=i))) for i in range(2)]
            while model._thread_waiting < 2:  # a state to reach: both are queued or running
                await asyncio.sleep(0)
            with pytest.raises(QueueFull, match="2 requests already wait for a worker thread"):
                await model.predict_async(rows(1))
            release.set()
            return await asyncio.wait_for(asyncio.gather(*waiting), 30)

        try:
            answers = asyncio.run(go())
        finally:
            release.set()
        assert [a["logits"].shape for a in answers] == [(1, 4), (1, 4)]
        assert model._thread_waiting == 0
        assert asyncio.run(model.predict_async(rows(1)))["logits"].shape == (1, 4)  # room again


def test_a_request_past_its_deadline_times_out_and_the_next_is_answered(mlp_package: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "INLINE_PROBES", 0)
    with edgeserve.load(mlp_package) as model:
        entered, release = _held(model)

        async def go():
            with pytest.raises(Timeout, match="no answer within 50 ms"):  # the run is held past its deadline
                await asyncio.wait_for(model.predict_async(rows(1), timeout_ms=50), 10)
            assert entered.is_set() and model._thread_waiting == 0
            release.set()  # NOTE: before the loop closes: it waits for its executor's jobs, this one among them
            return await asyncio.wait_for(model.predict_async(rows(1)), 30)

        try:
            assert asyncio.run(go())["logits"].shape == (1, 4)
        finally:
            release.set()


def test_a_big_requests_envelope_check_waits_in_the_same_bounded_queue(mlp_package: Path, monkeypatch) -> None:
    monkeypatch.setattr(model_module, "THREAD_QUEUE", 1)
    monkeypatch.setattr(model_module, "OFF_LOOP_CHECK", 0)  # every request's check runs on a worker thread
    with edgeserve.load(mlp_package, guard=edgeserve.GuardConfig()) as model:
        assert model.envelope is not None
        entered, release = threading.Event(), threading.Event()
        check = model.envelope.check

        def held(feed, hold=False):
            entered.set()
            assert release.wait(30)
            return check(feed, hold=hold)

        model.envelope.check = held  # type: ignore[method-assign]

        async def go():
            first = asyncio.create_task(model.predict_async(rows(1)))
            while model._thread_waiting < 1:
                await asyncio.sleep(0)
            with pytest.raises(QueueFull):
                await model.predict_async(rows(1))
            release.set()
            return await asyncio.wait_for(first, 30)

        try:
            assert asyncio.run(go())["logits"].shape == (1, 4)
        finally:
            release.set()
