"""One loaded model: its signature, its input contract, and a backend session behind them."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .. import held
from ..backends import Session, get_backend
from ..config import BatchConfig, CacheConfig, GoldenPolicy, GuardConfig, SessionConfig
from ..errors import (
    ClosedError,
    ConfigError,
    EdgeserveError,
    GoldenMismatchError,
    InputError,
    PackageError,
    QueueFull,
    Timeout,
)
from ..golden import TASK_SLACK, mismatches, task_agrees, tolerance_for
from ..guard.contract import InputContract
from ..modelfile import check_model_file, sha256_file
from ..package import Manifest, is_package, read_golden, read_manifest, verify_files
from ..tensors import TensorSpec, join_rows, rows_one_at_a_time
from .batcher import Batcher, can_batch
from .cache import MISS, ResponseCache, cache_key

if TYPE_CHECKING:
    from ..guard.checks import Envelope
    from ..guard.explain import Explanation
    from ..guard.monitor import DriftMonitor
    from ..guard.trigger import Trigger

T = TypeVar("T")
INLINE_S = 0.00025
"""A model whose fastest of its first ``INLINE_PROBES`` async calls (run on a worker thread) took less than this
runs later async requests of up to that call's rows in the event loop (a hand-off to a thread and back costs
~100-200 us on a busy 2-core machine); slower models and bigger requests never block it."""
INLINE_BATCHED_S = 0.0001
"""``INLINE_S`` for a model with a batcher: a run in the event loop blocks it, so no other request can queue to share
the next run. Measured with ``edgeserve serve``, 32 connections, a 512->2048->2048->10 MLP (its fastest probe
140-330 us): 3.3k req/s run in the loop, batch 1 every time, against 4.7-5.8k batched (~17 rows a run); without a
batcher the loop does better (3.4k against 2.5-2.8k handed to threads one by one). The digits MLP's fastest probe
reads 16-35 us under the same load: it stays in the loop."""
INLINE_PROBES = 8
THREAD_QUEUE = 1024
"""Async requests to a model without a batcher waiting for a worker thread at most, as ``BatchConfig.max_queue``
bounds a batched model's; the next one is refused at once with QueueFull (a server's 503)."""
THREAD_TIMEOUT_MS = BatchConfig.timeout_ms
"""Their deadline unless the request gives its own (``timeout_ms``): past it a request not yet running is withdrawn,
and one running has its answer discarded, with Timeout."""
ALONE_S = 0.005
"""A request with no other in flight (``answer_if_fast(alone=True)``) runs in the event loop when the model's
measured run is under this: a hand-off to a thread and back then costs more than sharing the loop does (nothing
else is waiting to be read, and a request arriving meanwhile would wait for the engine anyway), and at this bound
the loop is never held longer than a few milliseconds."""
OFF_LOOP_CHECK = 8192
"""Requests with more values than this have their envelope checked on a worker thread, not in the event loop (up to
it the check holds the interpreter lock: see ``guard.checks.PIECEWISE``)."""

log = logging.getLogger(__name__)


class Model:
    """A model ready to answer: ``predict`` checks the input contract, then runs the backend session.

    Use it as a context manager, or call :meth:`close`; a closed model raises :class:`ClosedError`.
    """

    def __init__(self, session: Session, *, name: str, version: str | None = None,
                 manifest: Manifest | None = None, path: Path | None = None,
                 batching: BatchConfig | None = None, cache: CacheConfig | ResponseCache | None = None,
                 identity: str | None = None, guard: GuardConfig | None = None) -> None:
        self.name = name
        self.version = version
        self.manifest = manifest
        self.path = path
        self.identity = identity or f"session-{uuid.uuid4().hex}"
        """What decides this model's answers (model file digest, engine, precision): the response cache's key.
        Without one given, a unique id: such a model shares cache entries with no other."""
        self.digest: str | None = manifest.digests.get(manifest.model_file) if manifest else self.identity
        """The model file's digest, as audit records name the model (without a manifest: its identity)."""
        self._session = session
        self._turn_session: Session | None = None
        """The session event-loop turns run on (see :meth:`answer_turns_with`), when it is not ``_session``."""
        self.engine: str = getattr(session, "engine", "onnxruntime")
        """The engine that answers: ``onnxruntime`` or ``openvino`` (a package verified on OpenVINO loads there)."""
        self.inputs: tuple[TensorSpec, ...] = manifest.inputs if manifest else session.inputs
        self.outputs: tuple[TensorSpec, ...] = manifest.outputs if manifest else session.outputs
        one_at_a_time = rows_one_at_a_time(self.inputs, self.outputs)
        self._contract = InputContract(self.inputs, rows_on_batch_one=one_at_a_time)
        self._output_names = [o.name for o in self.outputs]
        self._one_at_a_time = one_at_a_time
        self._run = self._row_by_row if one_at_a_time else session.run
        self._engine = None if one_at_a_time else getattr(session, "engine_run", None)
        self.from_cache: bool = bool(getattr(session, "from_cache", False))
        """True when the backend took the optimised graph from the on-disk cache instead of optimising again."""
        self._closed = False
        self._lock = threading.Lock()
        self.batcher: Batcher | None = None
        dependence = manifest.recipe.get("batch_dependence") if manifest is not None else None
        if batching is not None and dependence and not batching.batch_dependent:
            log.info("model %s: its answers move with the rows batched beside them (by up to %.2g of an output's "
                     "range: dynamic int8), and batch_dependent is off: each request runs alone", name, dependence)
        elif batching is not None:
            self.outputs = self._confirmed_batch_axes(manifest)
            if can_batch(self.inputs, self.outputs):
                self.batcher = Batcher(self._run_feed, self.inputs, self.outputs, batching, name=self.name,
                                       nice=getattr(session, "nice", 0), engine=self._engine,
                                       engine_failed=getattr(session, "failed", None))
            else:
                log.info("model %s has no batch axis on every input and output: requests bypass the batcher", name)
        self.cache: ResponseCache | None = ResponseCache(cache) if isinstance(cache, CacheConfig) else cache
        self.golden_check: str | None = None
        """What re-running the golden samples at load found (``match``, …, or why it did not run)."""
        self.parity: dict[str, Any] | None = None
        """What differs from the machine that verified the package (set by the Runtime when it loads it)."""
        self.envelope: Envelope | None = None
        self.monitor: DriftMonitor | None = None
        self.guard = guard
        if guard is not None:
            from ..guard.checks import Envelope  # NOTE: here: a model loaded without a guard never imports them
            from ..guard.monitor import DriftMonitor

            reference = manifest.envelope if manifest else {}
            envelope = Envelope(self.inputs, reference, guard)
            self.envelope = envelope if envelope.active else None
            if guard.drift and reference:
                self.monitor = DriftMonitor.build(
                    self.inputs, self.outputs, reference, guard,
                    {"model": name, "version": version,
                     "digest": manifest.digests.get(manifest.model_file) if manifest else None},
                    _trigger(guard))
        unguarded = self.cache is None and self.envelope is None and self.monitor is None
        self._fast = self.batcher is None and unguarded
        self._batched_only = self.batcher is not None and unguarded
        self._inline_calls = 0
        self._probing = False
        self._async_waiting = 0
        """``answer_async`` callers past the fast paths, waiting for their answer (a lone one may run in the loop)."""
        self._thread_waiting = 0
        """Async requests to a model without a batcher waiting for a worker thread (see ``THREAD_QUEUE``)."""
        self._inline_cost = float("inf")
        self._inline_rows = 0
        """Async calls: how many probes ran, the fastest one's time and its rows (see ``predict_async``)."""

    def _confirmed_batch_axes(self, manifest: Manifest | None) -> tuple[TensorSpec, ...]:
        """The outputs, with the batch axes that running rows together and apart confirms (the converter measured
        them already for a package it wrote; see :mod:`edgeserve.batch_axes`)."""
        if not can_batch(self.inputs, self.outputs) or (manifest and manifest.recipe.get("batch_axes") == "measured"):
            return self.outputs
        from ..batch_axes import confirm_batch_axes, stand_in_rows

        try:
            rows = stand_in_rows(self.inputs)
        except EdgeserveError:
            return self.outputs  # string inputs: nothing to stand in with; the names' guess stands
        names = self._output_names
        return confirm_batch_axes(lambda feed: dict(zip(names, self._session.run(feed, names))), self.inputs,
                                  self.outputs, rows, label=f"model '{self.name}'")

    def _row_by_row(self, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """An export fixed at batch 1 given several rows: each runs alone, the answers join on the batch-1 axis."""
        run = self._session.run
        rows = len(next(iter(feed.values())))
        if rows == 1:
            return run(feed, names)  # type: ignore[no-any-return]
        answers = [run({k: v[i:i + 1] for k, v in feed.items()}, names) for i in range(rows)]
        return [join_rows([a[j] for a in answers]) for j in range(len(names))]

    def _run_feed(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        engine = self._engine
        if engine is not None:
            try:
                return engine(self._output_names, feed, None)  # type: ignore[no-any-return]
            except Exception as exc:
                raise self._session.failed(exc, feed) from exc
        return self._run(feed, self._output_names)

    def predict(self, inputs: Any = None, /, *, timeout_ms: float | None = None, **named: Any) -> dict[str, np.ndarray]:
        """Run the model. ``inputs`` is one array (single-input models) or a dict of name to array; returns
        every output by name. Raises :class:`InputError` for data that breaks the contract (:class:`EnvelopeError`
        for values the guard rejects), and with batching :class:`QueueFull` or :class:`Timeout` (``timeout_ms``
        overrides the batching deadline)."""
        if self._fast:  # no batcher, no cache, no guard: the contract, then the engine, nothing else on the way
            if self._closed:
                raise ClosedError(f"model '{self.name}' is closed; load it again to use it")
            feed = self._contract.feed(inputs, named)
            if self._engine is not None:
                try:
                    return dict(zip(self._output_names, self._engine(self._output_names, feed, None)))
                except Exception as exc:
                    raise self._session.failed(exc, feed) from exc
            return dict(zip(self._output_names, self._run(feed, self._output_names)))
        if self._batched_only:  # the contract, then the batcher (which may run it at once, the direct way)
            if self._closed:
                raise ClosedError(f"model '{self.name}' is closed; load it again to use it")
            return self.batcher.call(self._contract.feed(inputs, named), timeout_ms)  # type: ignore[union-attr]
        return self.answer(inputs, named, timeout_ms=timeout_ms)[0]

    def answer(self, inputs: Any = None, named: dict[str, Any] | None = None, *,
               timeout_ms: float | None = None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        """``predict``, and the envelope checks that warned (``("range:x",)``; empty when none did)."""
        feed, flags = self._checked(inputs, named)
        key, hit = self._cached(feed)
        if hit is not None:
            return self._watched(feed, hit), flags
        if self.batcher is not None:
            out = self.batcher.call(feed, timeout_ms)
        else:
            out = dict(zip(self._output_names, self._run_feed(feed)))
        return self._watched(feed, self._remember(key, out)), flags

    async def predict_async(self, inputs: Any = None, /, *, timeout_ms: float | None = None,
                            **named: Any) -> dict[str, np.ndarray]:
        """``predict`` for asyncio: waits on the batcher (or a worker thread) without blocking the event loop —
        except for small requests to a model that answers them faster than a hand-off to a thread and back
        (``INLINE_S``, measured on its first calls), which the event loop runs itself, as a hand-written async
        server would."""
        return (await self.answer_async(inputs, named, timeout_ms=timeout_ms))[0]

    async def answer_async(self, inputs: Any = None, named: dict[str, Any] | None = None, *,
                           timeout_ms: float | None = None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        """``predict_async``, and the envelope checks that warned."""
        feed = self._fed(inputs, named)
        flags: tuple[str, ...] = ()
        if self.envelope is not None:
            if sum(v.size for v in feed.values()) > OFF_LOOP_CHECK:  # an O(n) pass over a big request: off the loop
                flags = await self._on_a_thread(timeout_ms, self.envelope.check, feed)
            else:
                flags = self.envelope.check(feed, hold=True)
        key, hit = self._cached(feed)
        if hit is not None:
            return self._watched(feed, hit, defer=True), flags
        rows = _rows(feed, self.inputs)
        if self._inline(rows):
            return self._watched(feed, self._remember(key, self._predict_now(feed, timeout_ms)), defer=True), flags
        if self._inline_calls < INLINE_PROBES and not self._probing:  # on a worker thread: never blocks the loop
            import asyncio

            self._probing = True  # NOTE: one at a time: probes run side by side time each other, not the model
            try:
                out, took = await asyncio.get_running_loop().run_in_executor(None, self._timed, feed)
            finally:
                self._probing = False
            self._inline_calls += 1
            if took < self._inline_cost:  # NOTE: the fastest of the first calls: a session's first run is slow
                self._inline_cost, self._inline_rows = took, rows
            return self._watched(feed, self._remember(key, out), defer=True), flags
        self._async_waiting += 1  # NOTE: counted on the event loop's thread, as the loop runs its callers one by one
        try:
            if self._async_waiting == 1 and self.batcher is not None and self._inline_cost < INLINE_S:
                import asyncio

                # NOTE: a model the batcher keeps out of the loop (INLINE_BATCHED_S) whose runs the loop could afford
                # (INLINE_S): a lone caller runs it here, as before there was a batcher, and saves the hand-off
                # (wide MLP, one caller after another: 127-145 us a call here against 238-301 us handed off).
                # One turn of the loop first, so that requests made together count in and batch instead. The
                # server's DataPlane._alone asks the same server-wide (no other request in flight, any model) and
                # so may hold the loop longer (ALONE_S); this one knows only this model's callers.
                await asyncio.sleep(0)
                if self._async_waiting == 1 and self._inline(rows, alone=True):
                    out = self._predict_now(feed, timeout_ms)
                    return self._watched(feed, self._remember(key, out), defer=True), flags
            if self.batcher is not None:
                out = await self.batcher.call_async(feed, timeout_ms)
            else:
                out = dict(zip(self._output_names, await self._on_a_thread(timeout_ms, self._run_feed, feed)))
        finally:
            self._async_waiting -= 1
        return self._watched(feed, self._remember(key, out), defer=True), flags

    async def _on_a_thread(self, timeout_ms: float | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread for an async caller (a model without a batcher, or a big request's
        envelope check): at most ``THREAD_QUEUE`` of this model's requests wait on worker threads at once
        (QueueFull beyond: the executor's own queue has no bound, and under overload it grew with every request's
        inputs), each within its deadline (Timeout past it)."""
        import asyncio  # NOTE: here, not at the top: a process that never awaits must not pay for asyncio

        if self._thread_waiting >= THREAD_QUEUE:
            raise QueueFull(f"model '{self.name}': {self._thread_waiting} requests already wait for a worker thread "
                            f"(at most {THREAD_QUEUE}); retry later")
        limit = timeout_ms if timeout_ms is not None else THREAD_TIMEOUT_MS
        self._thread_waiting += 1  # NOTE: on the event loop's thread, as the loop runs its callers one by one
        try:
            job = asyncio.get_running_loop().run_in_executor(None, fn, *args)
            return await asyncio.wait_for(job, limit / 1000.0 if limit is not None else None)
        except asyncio.TimeoutError:  # wait_for withdrew it if it had not started
            raise Timeout(f"model '{self.name}': no answer within {limit:g} ms (timeout_ms); the request was "
                          "withdrawn, or its answer discarded if it was running") from None
        finally:
            self._thread_waiting -= 1

    def predict_if_fast(self, inputs: Any = None, /, *, timeout_ms: float | None = None,
                        **named: Any) -> dict[str, np.ndarray] | None:
        """``predict`` now, in the calling thread, if this model answers a request this size faster than a
        hand-off to a thread and back (what ``predict_async`` would run in the event loop); else None, and the
        caller awaits ``predict_async``. Lets an async server skip its per-request wait machinery."""
        done = self.answer_if_fast(inputs, named, timeout_ms=timeout_ms)
        return None if done is None else done[0]

    def answer_if_fast(self, inputs: Any = None, named: dict[str, Any] | None = None, *,
                       timeout_ms: float | None = None,
                       alone: bool = False) -> tuple[dict[str, np.ndarray], tuple[str, ...]] | None:
        """``predict_if_fast``, and the envelope checks that warned. ``alone``: the caller knows no other request
        is in flight (a server's only one), so a model whose runs take up to ``ALONE_S`` runs now too, if its
        engine is idle."""
        start = self._in_the_loop(inputs, named, alone)
        if start is None:
            return None
        feed, flags, key, hit = start
        if hit is not None:
            return self._watched(feed, hit, defer=True), flags
        return self._watched(feed, self._remember(key, self._predict_now(feed, timeout_ms)), defer=True), flags

    def _in_the_loop(self, inputs: Any, named: dict[str, Any] | None, alone: bool = False) -> tuple[
            dict[str, np.ndarray], tuple[str, ...], bytes | None, dict[str, np.ndarray] | None] | None:
        """A request that runs in the event loop: its feed, the envelope checks that warned, its cache key and
        cached answer (see ``_cached``); None when the model is too slow for the loop at its size."""
        feed = self._fed(inputs, named)
        if not self._inline(_rows(feed, self.inputs), alone):
            return None  # NOTE: before the envelope: the caller's answer_async checks it, once
        flags = self.envelope.check(feed, hold=True) if self.envelope is not None else ()
        return (feed, flags, *self._cached(feed))

    async def answer_in_turn(self, inputs: Any = None, named: dict[str, Any] | None = None, *,
                             timeout_ms: float | None = None) -> tuple[dict[str, np.ndarray], tuple[str, ...]] | None:
        """``answer_if_fast`` for an event loop with more requests read and about to start in this turn (a server
        knows): a request that would run in the loop waits for the end of the turn and runs there in one batch
        with the others (see ``Batcher.call_in_turn``). A model without a batcher runs it now, as
        ``answer_if_fast`` does; None when it would not run in the loop (await ``answer_async``)."""
        batcher = self.batcher
        if batcher is None:
            return self.answer_if_fast(inputs, named, timeout_ms=timeout_ms)
        start = self._in_the_loop(inputs, named)
        if start is None:
            return None
        feed, flags, key, hit = start
        if hit is not None:
            return self._watched(feed, hit, defer=True), flags
        return self._remember(key, await batcher.call_in_turn(feed, self._watch_batch)), flags

    def _watch_batch(self, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray], rows: int) -> None:
        """A batch of requests run together in an event loop's turn, seen by the drift monitor at once (one
        request's ``_watched`` each cost ~3 us on the loop)."""
        if self.monitor is not None:
            self.monitor.observe(feed, outputs, rows, defer=True)

    def answer_turns_with(self, session: Session) -> None:
        """Run the batches of event-loop turns on ``session`` (the same model with fewer threads, see
        ``SessionConfig.turn_threads``); this model closes it."""
        assert self.batcher is not None and self._turn_session is None
        self._turn_session = session
        self.batcher.turn_run = functools.partial(session.run, output_names=self._output_names)

    def gathering(self, loop: Any) -> bool:
        """Requests of ``loop``'s current turn wait to run together at its end (see :meth:`answer_in_turn`)."""
        return self.batcher is not None and self.batcher.gathering(loop)

    def explain(self, inputs: Any = None, /, *, input: str | None = None, patch: int | None = None,
                **named: Any) -> Explanation:
        """Occlusion attributions of each feature (or image patch) of ``input`` to every output, per row, in one
        batched engine call per row (see :mod:`edgeserve.guard.explain`). The envelope checks apply; the
        occluded rows bypass the batcher, the cache and drift monitoring."""
        from ..guard.explain import explain

        feed, _ = self._checked(inputs, named)
        if self.one_row_per_call:
            raise InputError(f"model '{self.name}' was exported at batch 1 and the length of its outputs depends on "
                             "the values: an occluded copy's answer has no row to attribute")

        def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(self._output_names, self._run_feed(batch)))

        return explain(run, self.inputs, feed, self.manifest.envelope if self.manifest else {}, input=input,
                       patch=patch, out_axes={s.name: s.batch_axis for s in self.outputs if s.batch_axis},
                       outputs=self.outputs)

    @property
    def one_row_per_call(self) -> bool:
        """Exported at batch 1 with outputs whose length depends on the values (a detector's kept boxes): each
        call takes one row, and several rows' answers cannot be joined into one array."""
        return not self._one_at_a_time and all(s.batch_axis is None and s.shape[:1] == (1,) for s in self.inputs)

    def _inline(self, rows: int, alone: bool = False) -> bool:
        if self._inline_calls < INLINE_PROBES or rows > self._inline_rows:
            return False
        if self._inline_cost < (INLINE_S if self.batcher is None else INLINE_BATCHED_S):
            return True
        # NOTE: a busy engine would block the loop behind another caller's batch: only when it is idle
        return alone and self._inline_cost < ALONE_S and (self.batcher is None or self.batcher.idle)

    def _predict_now(self, feed: dict[str, np.ndarray], timeout_ms: float | None) -> dict[str, np.ndarray]:
        if self.batcher is not None:
            return self.batcher.call(feed, timeout_ms)
        return dict(zip(self._output_names, self._run_feed(feed)))

    def _timed(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
        """A probe: the engine's own run, timed. NOTE: not queued in the batcher, where it would time the load
        instead (the digits MLP, ~8 us a run, read 16-450 us through the queue under 32 connections, and now and
        then its fastest of 8 over ``INLINE_BATCHED_S``)."""
        started = time.perf_counter()
        if self.batcher is not None:
            out = self.batcher.run_now(feed)
        else:
            out = dict(zip(self._output_names, self._run_feed(feed)))
        return out, time.perf_counter() - started

    def _checked(self, inputs: Any, named: dict[str, Any] | None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
        """The feed (contract checked) and the envelope checks that warned; raises for what the guard rejects."""
        feed = self._fed(inputs, named)
        return feed, (self.envelope.check(feed) if self.envelope is not None else ())

    def _fed(self, inputs: Any, named: dict[str, Any] | None) -> dict[str, np.ndarray]:
        if self._closed:
            raise ClosedError(f"model '{self.name}' is closed; load it again to use it")
        return self._contract.feed(inputs, named)

    def _watched(self, feed: dict[str, np.ndarray], out: dict[str, np.ndarray], *,
                 defer: bool = False) -> dict[str, np.ndarray]:
        """Hand the answered request to the drift monitor; ``defer``: an event loop's caller, whose chunks holding a
        big request are folded on the monitors' own thread (see :meth:`DriftMonitor.observe`)."""
        if self.monitor is not None:
            self.monitor.observe(feed, out, _rows(feed, self.inputs), defer=defer)
        return out

    def _cached(self, feed: dict[str, np.ndarray]) -> tuple[bytes | None, dict[str, np.ndarray] | None]:
        """(cache key, the caller's own copy of the cached outputs, or None); (None, None) without a cache."""
        if self.cache is None:
            return None, None
        key = cache_key(self.identity, feed)
        hit = self.cache.get(key)
        # NOTE: a hit hands out copies, so every call returns the same kind of result as a miss: arrays that are
        # the caller's own to change
        return key, (None if hit is MISS else {k: held.copy(v) for k, v in hit.items()})

    def _remember(self, key: bytes | None, out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if key is not None and self.cache is not None:
            self.cache.put(key, self.identity, out)
        return out

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, finish the queued ones (at most ``timeout`` seconds), release the session."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._engine = None
        if self.batcher is not None:
            self.batcher.close(timeout)
        self._session.close()
        if self._turn_session is not None:
            self._turn_session.close()
        if self.monitor is not None:
            self.monitor.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        state = " closed" if self._closed else ""
        return f"<Model {self.name}{'@' + self.version if self.version else ''} ({sig}){state}>"


def load(path: str | os.PathLike[str], *, config: SessionConfig | None = None, golden: GoldenPolicy = "error",
         allowed_domains: Sequence[str] = (), batching: BatchConfig | None = None,
         cache: CacheConfig | ResponseCache | None = None, guard: GuardConfig | None = None) -> Model:
    """Load a package folder (verifying digests and golden samples) or a bare ``.onnx`` file.

    ``golden``: what to do when this machine's answers differ from those recorded at conversion
    (``"error"`` refuses the load, ``"warn"`` logs a warning, ``"off"`` skips the check).
    ``batching`` turns on dynamic batching; ``cache`` a response cache (a config, or a cache shared with others);
    ``guard`` the envelope checks and drift monitoring against the package's reference statistics.
    """
    config = config or SessionConfig()
    if golden not in ("error", "warn", "off"):
        raise ConfigError(f"golden must be 'error', 'warn' or 'off', got {golden!r}")
    path = Path(path)
    if path.is_dir():  # NOTE: a folder is a package, never its model file alone: one whose manifest is gone is
        return _load_package(path, config, golden, allowed_domains, batching, cache, guard)  # refused, not trusted
    if not path.exists():
        raise PackageError(f"nothing to load at {path}: give a package folder or an .onnx file")
    proto = check_model_file(path, allowed_domains=allowed_domains)  # checked before any engine
    backend_name = config.backend or "onnxruntime"
    session = get_backend(backend_name).open(path, config, label=path.name, view=proto)
    with _closing_on_error(session):
        digest = sha256_file(path) if cache is not None else None  # only a cache needs to know what computes
        model = Model(session, name=path.stem, path=path, batching=batching, cache=cache, guard=guard,
                      identity=identity_of(digest, backend_name, config.precision) if digest else None)
    _add_turn_session(model, backend_name, path, config, label=path.name, view=proto)
    return model


def _load_package(folder: Path, config: SessionConfig, golden: GoldenPolicy, allowed_domains: Sequence[str],
                  batching: BatchConfig | None, cache: CacheConfig | ResponseCache | None,
                  guard: GuardConfig | None = None) -> Model:
    if not is_package(folder):
        raise PackageError(f"{folder} is not an edgeserve package (no edgeserve.json); convert a model first")
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    model_path = folder / manifest.model_file
    proto = check_model_file(model_path, allowed_domains=allowed_domains)
    backend_name, config = choose_backend(manifest, config)
    digest = manifest.digests[manifest.model_file]
    session = get_backend(backend_name).open(model_path, config, label=f"{manifest.name}@{manifest.version}",
                                             digest=digest, view=proto)
    with _closing_on_error(session):
        _check_signature(manifest, session)
        model = Model(session, name=manifest.name, version=manifest.version, manifest=manifest, path=folder)
        checked = "not checked (golden='off')" if golden == "off" else "none recorded"
        if golden != "off" and manifest.golden.get("count", 0):
            checked = _check_golden(model, folder, manifest, golden)
        if batching is not None or cache is not None or guard is not None:
            # golden samples were checked on the bare model; the served one adds batching, caching and the guard
            model = Model(session, name=manifest.name, version=manifest.version, manifest=manifest, path=folder,
                          batching=batching, cache=cache, guard=guard,
                          identity=identity_of(digest, backend_name, config.precision))
        model.golden_check = checked
    _add_turn_session(model, backend_name, model_path, config, label=f"{manifest.name}@{manifest.version}",
                      digest=digest, view=proto)
    return model


TURN_MAX_BYTES = 16 * 2**20
"""The largest model file given a turn session (``SessionConfig.turn_threads``): one quick enough to run in an
event loop reads its weights in well under 0.1 ms, and a second copy of a small model costs little memory."""


def _add_turn_session(model: Model, backend: str, path: Path, config: SessionConfig, **open_args: Any) -> None:
    """Give a batched model its turn session, when ``config`` asks for one with fewer threads than its own."""
    turns = config.turn_threads
    if (turns is None or turns >= config.threads or model.batcher is None or backend != "onnxruntime"
            or path.stat().st_size > TURN_MAX_BYTES):
        return  # NOTE: OpenVINO schedules its own threads; an external-data model is not small
    fewer = replace(config, intra_op_threads=turns, turn_threads=None)
    try:
        model.answer_turns_with(get_backend(backend).open(path, fewer, **open_args))
    except BaseException:
        model.close()
        raise


def identity_of(model_digest: str, backend: str, precision: str | None) -> str:
    """What decides a model's answers: its file's sha256, the engine and the engine's precision."""
    return f"{model_digest}:{backend}:{precision or 'native'}"


@contextmanager
def _closing_on_error(session: Session) -> Iterator[None]:
    """Close ``session`` if anything (an edgeserve error or not) goes wrong before a Model owns it."""
    try:
        yield
    except BaseException:
        session.close()
        raise


def verified_backends(manifest: Manifest) -> list[dict[str, Any]]:
    """The (backend, precision) pairs the converter verified, in order of preference."""
    listed = manifest.recipe.get("backends")
    if isinstance(listed, list) and listed:
        return [b for b in listed if isinstance(b, dict) and b.get("backend")]
    return [{"backend": manifest.backend, "precision": manifest.recipe.get("precision")}]


def choose_backend(manifest: Manifest, config: SessionConfig) -> tuple[str, SessionConfig]:
    """The backend to run a package with: the caller's choice, else the first verified one installed here.

    Engines are tried in the manifest's order and imported only when reached, so a package verified for
    onnxruntime never imports OpenVINO."""
    from dataclasses import replace

    from ..backends.base import get_backend

    if config.backend is not None:
        return config.backend, config
    verified = verified_backends(manifest)
    missing = []
    for choice in verified:
        try:
            get_backend(choice["backend"])
        except ConfigError as exc:
            missing.append(f"{choice['backend']} ({exc})")
            continue
        if missing:
            log.warning(
                "package %s@%s was verified fastest on %s, which is not installed here; falling back to %s "
                "(also verified)", manifest.name, manifest.version, verified[0]["backend"], choice["backend"])
        return choice["backend"], replace(config, precision=config.precision or choice.get("precision"))
    raise PackageError(
        f"package {manifest.name}@{manifest.version} was verified on {', '.join(b['backend'] for b in verified)}, "
        f"none of which is installed here; install one, or load with SessionConfig(backend=...) to run it unverified"
    )


def _check_signature(manifest: Manifest, session: Session) -> None:
    recorded = [(s.name, s.dtype) for s in manifest.inputs], [(s.name, s.dtype) for s in manifest.outputs]
    actual = [(s.name, s.dtype) for s in session.inputs], [(s.name, s.dtype) for s in session.outputs]
    if recorded != actual:
        raise PackageError(
            f"package {manifest.name}: the model's inputs/outputs {actual} differ from the manifest's {recorded}"
        )


def _check_golden(model: Model, folder: Path, manifest: Manifest, policy: GoldenPolicy) -> str:
    """Re-run the golden samples; raise on a mismatch under ``policy="error"``; say what was found."""
    inputs, expected = read_golden(folder, manifest)
    actual = model.predict(inputs)
    tol = float(manifest.golden.get("rel_tolerance", tolerance_for(manifest.recipe.get("mode", "none"))))
    problems = mismatches(actual, expected, tol)
    if not problems:
        return "match"
    if not mismatches(actual, expected, TASK_SLACK * tol) and task_agrees(actual, expected, inputs,
                                                                         list(manifest.golden.get("targets") or [])):
        log.info("package %s@%s: golden answers differ beyond %g here, but the task metrics hold (%s)",
                 manifest.name, manifest.version, tol, "; ".join(problems))
        return f"differ beyond {tol:g}, but the task metrics hold"
    recorded_cpu = manifest.environment.get("cpu", {}).get("model", "another machine")
    message = (
        f"package {manifest.name}@{manifest.version}: this machine's answers differ from those recorded at "
        f"conversion on {recorded_cpu}: {'; '.join(problems)}. Re-convert on this machine, or load with "
        "golden='warn' to accept"
    )
    if policy == "error":
        raise GoldenMismatchError(message)
    log.warning("%s", message)
    return f"MISMATCH accepted by golden='warn': {'; '.join(problems)}"


def _trigger(guard: GuardConfig) -> Trigger | None:
    if guard.trigger is None:
        return None
    from ..guard.trigger import Trigger

    return Trigger(guard.trigger)


def _rows(feed: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> int:
    for spec in specs:
        value = feed.get(spec.name)
        axis = spec.batch_axis if spec.batch_axis is not None else 0 if spec.rows_on_axis0 else None
        if value is not None and axis is not None and value.ndim > axis:
            return int(value.shape[axis])
    return 1
