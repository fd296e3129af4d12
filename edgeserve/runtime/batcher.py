"""Dynamic micro-batching: requests queue, run together, and each gets its own rows back.

The decision "what runs next" is :func:`plan`, a pure function of the pending requests, the time and the
settings, tested without threads or sleeps. :class:`Batcher` wraps it with one worker thread.

What a caller can count on: it gets its own rows back or its own error. A batch that fails is re-run one request
at a time, so one request the engine refuses (a token id past the vocabulary, say) fails alone. A deadline bounds
how long :meth:`Batcher.call` blocks, whatever the worker is doing; a worker that dies fails everything queued and
every later request with the cause, and says so in ``stats``.

# NOTE: onnxruntime releases the GIL inside run(), so one worker thread keeps the cores busy while callers wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..config import BatchConfig
from ..errors import ClosedError, EdgeserveError, InferenceError, QueueFull, Timeout, first_line
from ..tensors import TensorSpec

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RunFn = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]


@dataclass
class Pending:
    """One queued request."""

    feed: dict[str, np.ndarray]
    rows: int
    group: tuple[Any, ...]
    """Requests stack only with requests of the same group: equal dtypes and non-batch dims."""
    enqueued: float
    deadline: float | None
    future: Future[dict[str, np.ndarray]] = field(default_factory=Future)


@dataclass(frozen=True)
class Plan:
    """What the worker does now: run ``take`` together, fail ``expired``, then sleep until ``wake_at``."""

    take: tuple[int, ...] = ()
    expired: tuple[int, ...] = ()
    wake_at: float | None = None


def plan(pending: Sequence[Pending], now: float, config: BatchConfig) -> Plan:
    """Decide the next batch.

    Expired requests are dropped first. The oldest live request's group is the candidate batch: it runs when its
    rows reach ``max_batch_size`` or when the oldest has waited ``max_delay_ms``; otherwise the worker sleeps until
    that moment (or the next deadline). A request bigger than ``max_batch_size`` runs alone.
    """
    expired = tuple(i for i, p in enumerate(pending) if p.deadline is not None and p.deadline <= now)
    gone = set(expired)
    live = [i for i in range(len(pending)) if i not in gone]
    if not live:
        return Plan(expired=expired)
    oldest = pending[live[0]]
    group = [i for i in live if pending[i].group == oldest.group]
    take: list[int] = []
    rows = 0
    for i in group:
        if take and rows + pending[i].rows > config.max_batch_size:
            break
        take.append(i)
        rows += pending[i].rows
    due = oldest.enqueued + config.max_delay_ms / 1000.0
    if rows >= config.max_batch_size or now >= due:
        return Plan(take=tuple(take), expired=expired)
    deadlines = [d for d in (pending[i].deadline for i in live) if d is not None]
    wake = min([due, *deadlines])
    return Plan(expired=expired, wake_at=wake)


class Batcher:
    """A queue and one worker thread in front of a model's run function."""

    def __init__(self, run: RunFn, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], config: BatchConfig,
                 *, name: str = "model", clock: Clock = time.monotonic) -> None:
        self.config = config
        self._run = run
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._name = name
        self._clock = clock
        self._pending: list[Pending] = []
        self._pending_rows = 0
        self._cond = threading.Condition()
        self._closing = False
        self._hurry = False
        self.error: str | None = None
        """Why the worker died, or None while it runs."""
        self.stats = {"batches": 0, "rows": 0, "requests": 0, "rejected": 0, "expired": 0, "failed_batches": 0,
                      "retried_alone": 0}
        self._thread = threading.Thread(target=self._loop, name=f"edgeserve-batcher-{name}", daemon=True)
        self._thread.start()

    # -- callers -----------------------------------------------------------------------------------------------------
    def call(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None = None) -> dict[str, np.ndarray]:
        """Queue a checked feed and wait for its outputs, at most until its deadline (``timeout_ms``, else the
        config's): past it the request is withdrawn (or, if it is running, its answer discarded) and
        :class:`Timeout` raised."""
        future, deadline = self._enqueue(feed, timeout_ms)
        try:
            return future.result(None if deadline is None else max(0.0, deadline - self._clock()))
        except FutureTimeout:
            withdrawn = future.cancel()
            if withdrawn:
                with self._cond:
                    self.stats["expired"] += 1
            elif future.done() and not future.cancelled():  # it finished in the instant between
                return future.result()
            raise Timeout(
                f"model '{self._name}': no answer within the deadline of {self._limit_ms(timeout_ms):g} ms "
                f"({'withdrawn before it ran' if withdrawn else 'it was running; its answer is discarded'})"
            ) from None
        except CancelledError:
            raise Timeout(f"model '{self._name}': the request was cancelled before it ran") from None

    async def call_async(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None = None) -> dict[str, np.ndarray]:
        """:meth:`call` for asyncio: the event loop never blocks, and the same deadline applies."""
        import asyncio

        future, deadline = self._enqueue(feed, timeout_ms)
        try:
            # NOTE: wait_for cancels the wrapped future on timeout, which withdraws a request that has not run yet
            return await asyncio.wait_for(asyncio.wrap_future(future),
                                          None if deadline is None else max(0.0, deadline - self._clock()))
        except asyncio.TimeoutError:
            raise Timeout(f"model '{self._name}': no answer within the deadline of "
                          f"{self._limit_ms(timeout_ms):g} ms") from None

    def submit(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None = None) -> Future[dict[str, np.ndarray]]:
        """Queue a checked feed; the future resolves to its outputs or to the error that stopped it. The worker
        fails it with :class:`Timeout` once its deadline passes unrun; waiting on the future is the caller's."""
        return self._enqueue(feed, timeout_ms)[0]

    def _limit_ms(self, timeout_ms: float | None) -> float | None:
        return timeout_ms if timeout_ms is not None else self.config.timeout_ms

    def _enqueue(self, feed: Mapping[str, np.ndarray],
                 timeout_ms: float | None) -> tuple[Future[dict[str, np.ndarray]], float | None]:
        first = self._inputs[0]
        rows = int(feed[first.name].shape[first.batch_axis or 0])
        group = tuple((s.name, feed[s.name].dtype.str, _non_batch(feed[s.name].shape, s.batch_axis)) for s in self._inputs)
        now = self._clock()
        limit = self._limit_ms(timeout_ms)
        item = Pending(dict(feed), rows, group, now, now + limit / 1000.0 if limit is not None else None)
        with self._cond:
            if self.error is not None:
                raise InferenceError(f"model '{self._name}': its batching worker stopped ({self.error}); "
                                     "reload the model")
            if self._closing:
                raise ClosedError(f"model '{self._name}' is closing; it takes no new requests")
            if len(self._pending) >= self.config.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(
                    f"model '{self._name}': {len(self._pending)} requests already queued (max_queue="
                    f"{self.config.max_queue}); retry later or raise BatchConfig.max_queue"
                )
            self._pending.append(item)
            self._pending_rows += rows
            self.stats["requests"] += 1
            # NOTE: wake the worker only when it has something new to decide: the first request (it may be asleep
            # with nothing to wait for) or a full batch. Otherwise it wakes by itself when the oldest is due;
            # waking it on every submit costs a plan() per request under load.
            if len(self._pending) == 1 or self._pending_rows >= self.config.max_batch_size or item.deadline is not None \
                    and item.deadline < self._pending[0].enqueued + self.config.max_delay_ms / 1000.0:
                self._cond.notify()
        return item.future, item.deadline

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def alive(self) -> bool:
        return self.error is None and self._thread.is_alive()

    def hurry(self) -> None:
        """Run what is queued without waiting for more company (the model is being replaced); still takes requests."""
        with self._cond:
            self._hurry = True
            self._cond.notify()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, run what is queued, and stop the worker (waiting at most ``timeout`` seconds)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            left, self._pending = self._pending, []
            self._pending_rows = 0
        for p in left:  # only when the drain timed out
            _fail(p, ClosedError(f"model '{self._name}' closed before this request ran"))

    # -- worker ------------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # a bug or an engine that raised past Exception: fail loudly, never hang callers
            log.error("model %s: batching worker stopped: %r", self._name, exc)
            with self._cond:
                self.error = f"{type(exc).__name__}: {first_line(exc)}"
                left, self._pending = self._pending, []
                self._pending_rows = 0
            for p in left:
                _fail(p, InferenceError(f"model '{self._name}': its batching worker stopped ({self.error})"))

    def _serve(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._pending:
                        if self._closing:
                            return
                        self._cond.wait()
                        continue
                    now = self._clock()
                    decision = plan(self._pending, now, self.config)
                    if (self._closing or self._hurry) and not decision.take and not decision.expired:
                        # draining: run what is there now instead of waiting for company
                        decision = plan(self._pending, now, replace(self.config, max_delay_ms=0.0))
                    if decision.take or decision.expired:
                        chosen = set(decision.take) | set(decision.expired)
                        batch = [self._pending[i] for i in decision.take]
                        expired = [self._pending[i] for i in decision.expired]
                        self._pending = [p for i, p in enumerate(self._pending) if i not in chosen]
                        self._pending_rows = sum(p.rows for p in self._pending)
                        break
                    self._cond.wait(max(0.0, (decision.wake_at or now) - now))
            for p in expired:
                self.stats["expired"] += 1
                _fail(p, Timeout(f"model '{self._name}': the request waited past its deadline and was not run"))
            if batch:
                self._execute(batch)

    def _execute(self, batch: list[Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # callers that gave up are skipped
        if not live:
            return
        try:
            if len(live) == 1:
                results = [self._outputs_of(self._run(live[0].feed))]
            else:
                merged = {s.name: np.concatenate([p.feed[s.name] for p in live], axis=s.batch_axis or 0)
                          for s in self._inputs}
                results = self._split(self._outputs_of(self._run(merged)), [p.rows for p in live])
        except Exception as exc:
            self.stats["failed_batches"] += 1
            if len(live) == 1:
                live[0].future.set_exception(_edgeserve_error(exc))
                return
            # NOTE: one request the engine refuses must not fail the others it was stacked with: run each alone,
            # so every caller gets its own answer or its own error
            self.stats["retried_alone"] += len(live)
            for p in live:
                try:
                    result = self._outputs_of(self._run(p.feed))
                except Exception as alone:
                    p.future.set_exception(_edgeserve_error(alone))
                else:
                    self._count(p.rows)
                    p.future.set_result(result)
            return
        except BaseException as exc:  # the worker is going down: its callers hear why first
            for p in live:
                p.future.set_exception(InferenceError(f"model '{self._name}': batch aborted ({exc!r})"))
            raise
        self._count(sum(p.rows for p in live))
        for p, result in zip(live, results):
            p.future.set_result(result)

    def _count(self, rows: int) -> None:
        self.stats["batches"] += 1
        self.stats["rows"] += rows

    def _outputs_of(self, values: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {s.name: v for s, v in zip(self._outputs, values)}

    def _split(self, outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
        total = sum(rows)
        cuts = np.cumsum(rows)[:-1]
        per_request: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for spec in self._outputs:
            value = outputs[spec.name]
            axis = spec.batch_axis
            if axis is None or value.ndim <= axis or value.shape[axis] != total:
                raise EdgeserveError(
                    f"model '{self._name}': output '{spec.name}' {list(value.shape)} cannot be split back into "
                    f"{len(rows)} requests along a batch axis; turn batching off for this model"
                )
            for i, part in enumerate(np.split(value, cuts, axis=axis)):
                per_request[i][spec.name] = part
        return per_request


def _non_batch(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    return tuple(d for i, d in enumerate(shape) if i != (axis or 0))


def _edgeserve_error(exc: Exception) -> EdgeserveError:
    return exc if isinstance(exc, EdgeserveError) else InferenceError(f"batch failed: {first_line(exc)}")


def _fail(p: Pending, exc: BaseException) -> None:
    if p.future.set_running_or_notify_cancel():
        p.future.set_exception(exc)


def can_batch(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Batching needs a batch axis on every input and output (else requests bypass the batcher)."""
    return all(s.batch_axis is not None for s in (*inputs, *outputs))
