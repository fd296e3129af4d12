"""Dynamic micro-batching without a worker thread: callers take turns at the engine, and each gets its own rows
back.

Leader/follower ("combining"): a request that finds the engine idle runs at once, in its caller's thread, with no
hand-off at all. Requests that arrive while the engine runs queue up; when the run ends, the engine passes to the
oldest waiting caller, which runs everything queued that stacks with it (up to ``max_batch_size`` rows) as one
batch, hands each follower its rows, and passes the engine on. So batching never makes a lone request wait, and
under load there is one wake-up per batch for its leader plus one per follower's answer — no worker thread, no
timer, no future or condition variable per request on the synchronous path. Callers that cannot lead (``submit``,
``call_async``: an event loop must not run the model) get a batch run for them on a shared executor thread, one
job per batch, never a parked thread per request.

The decision "what runs next" is :func:`plan`, a pure function of the pending requests, the time and the
settings, tested without threads or sleeps. ``max_delay_ms`` (default 0) lets an idle engine wait that long for
company before a partial batch: for bulk traffic that prefers rows per second to latency.

What a caller can count on: it gets its own rows back or its own error. A batch that fails is re-run one request
at a time, so one request the engine refuses (a token id past the vocabulary, say) fails alone. A deadline bounds
how long a request waits for the engine (past it the request is withdrawn, or its answer discarded if it is
running); the engine's own run, once it holds the caller's request, is not interrupted.

# NOTE: onnxruntime releases the GIL inside run(), so whichever thread leads keeps the cores busy while the
# followers wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import BatchConfig
from ..errors import ClosedError, EdgeserveError, InferenceError, QueueFull, Timeout, first_line
from ..tensors import TensorSpec

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RunFn = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]

QUEUED, LEADING, RUNNING, DONE, WITHDRAWN = range(5)


class Pending:
    """One queued request, and how its caller hears back: a released lock (a blocked caller), a concurrent
    Future (``submit``) or an asyncio future (``call_async``)."""

    __slots__ = ("feed", "rows", "group", "enqueued", "deadline", "state", "result", "error", "signal", "future",
                 "loop", "discard")

    def __init__(self, feed: dict[str, np.ndarray], rows: int, group: tuple[Any, ...], enqueued: float,
                 deadline: float | None, *, future: Any = None, loop: Any = None, blocking: bool = False) -> None:
        self.feed = feed
        self.rows = rows
        self.group = group
        """Requests stack only with requests of the same group: equal dtypes and non-batch dims."""
        self.enqueued = enqueued
        self.deadline = deadline
        self.state = QUEUED
        self.result: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.signal: threading.Lock | None = None
        if blocking:
            self.signal = threading.Lock()
            self.signal.acquire()  # released once: the answer is in, or the engine is this caller's to lead
        self.future = future
        self.loop = loop
        self.discard = False

    @property
    def can_lead(self) -> bool:
        return self.signal is not None

    def claim(self) -> bool:
        """Mark as running; False when its caller gave up (a cancelled future), so it is skipped."""
        if self.loop is not None:
            if self.future.cancelled():
                return False
        elif self.future is not None and not self.future.set_running_or_notify_cancel():
            return False
        self.state = RUNNING
        return True

    def finish(self, result: dict[str, np.ndarray] | None = None, error: BaseException | None = None) -> None:
        self.state = DONE
        if self.discard:
            return
        if self.signal is not None:
            self.result, self.error = result, error
            try:
                self.signal.release()
            except RuntimeError:  # already released by a hand-off its caller has not taken up yet: it will see DONE
                pass
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        elif error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def _settle(future: Any, result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class Plan:
    """What the leader does now: run ``take`` together, fail ``expired``, else wait until ``wake_at``."""

    take: tuple[int, ...] = ()
    expired: tuple[int, ...] = ()
    wake_at: float | None = None


def plan(pending: Sequence[Pending], now: float, config: BatchConfig, *, gather_until: float = 0.0,
         expect: int = 0) -> Plan:
    """Decide the next batch, for an engine that is free now.

    Expired requests are dropped first. The oldest live request's group is the candidate batch: it runs when its
    rows reach ``max_batch_size`` or when the oldest has waited ``max_delay_ms`` (at once with the default 0);
    otherwise the leader waits until that moment (or the next deadline). A request bigger than
    ``max_batch_size`` runs alone.

    ``gather_until`` / ``expect``: the engine has just answered a batch of ``expect`` requests whose callers are
    likely to come straight back; the batch waits for them until ``gather_until`` at most (and not at all once
    ``expect`` requests are there), so that under load the first caller back does not run alone while the
    others queue behind it.
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
    due = max(oldest.enqueued + config.max_delay_ms / 1000.0, gather_until)
    if rows >= config.max_batch_size or now >= due or (expect and len(take) >= expect):
        return Plan(take=tuple(take), expired=expired)
    deadlines = [d for d in (pending[i].deadline for i in live) if d is not None]
    wake = min([due, *deadlines])
    return Plan(expired=expired, wake_at=wake)


GATHER_MAX_S = 0.002
"""The longest an engine that just answered several callers waits for them to come back (see ``plan``)."""

_EXECUTOR: ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """Threads that lead a batch for callers that cannot (``submit``, ``call_async``): one job per batch."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            from concurrent.futures import ThreadPoolExecutor  # NOTE: only for submit and async callers


            _EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="edgeserve-batch")
        return _EXECUTOR


class Batcher:
    """A queue in front of a model's run function; whoever finds the engine free runs the next batch."""

    def __init__(self, run: RunFn, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], config: BatchConfig,
                 *, name: str = "model", clock: Clock = time.monotonic) -> None:
        self.config = config
        self._run = run
        self._inputs = tuple(inputs)
        self._outputs = tuple(outputs)
        self._output_names = [s.name for s in outputs]
        self._name = name
        self._clock = clock
        self._pending: list[Pending] = []
        self._pending_rows = 0
        self._busy = False
        """True while a leader holds the engine (running, or about to take the next batch)."""
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        """Wakes a leader waiting for company (max_delay_ms > 0), and close() waiting for the engine to idle."""
        self._closing = False
        self._hurry = False
        self._gather_until = 0.0
        """After a batch of several requests, the next one waits for their callers' return until then."""
        self._expect = 0
        """How many requests that batch held."""
        self.stats = {"batches": 0, "rows": 0, "requests": 0, "rejected": 0, "expired": 0, "failed_batches": 0,
                      "retried_alone": 0, "ran_at_once": 0}

    # -- callers -----------------------------------------------------------------------------------------------------
    def call(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None = None) -> dict[str, np.ndarray]:
        """Run a checked feed with whatever it can stack with and return its own outputs. Waits for the engine at
        most until the deadline (``timeout_ms``, else the config's): past it the request is withdrawn (or, if it
        is running, its answer discarded) and :class:`Timeout` raised."""
        now = self._clock()
        limit = self._limit_ms(timeout_ms)
        deadline = now + limit / 1000.0 if limit is not None else None
        rows = self._rows_of(feed)
        with self._lock:
            self._admit()
            self.stats["requests"] += 1
            if not self._busy and self.config.max_delay_ms == 0 and now >= self._gather_until:  # nobody queued
                self._busy = True
                alone = True
            else:
                alone = False
                item = Pending(dict(feed), rows, self._group_of(feed), now, deadline, blocking=True)
                self._queue(item)
                lead_now = not self._busy
                if lead_now:
                    self._busy = True
                    item.state = LEADING
        if alone:
            return self._run_alone(feed, rows)
        if lead_now:
            self._lead()
        return self._wait(item, timeout_ms)

    async def call_async(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None = None) -> dict[str, np.ndarray]:
        """:meth:`call` for asyncio: the event loop never blocks and no thread waits per request; the same
        deadline applies (a request still queued at it is withdrawn)."""
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        item, deadline = self._enqueue(feed, timeout_ms, future=future, loop=loop)
        try:
            return await asyncio.wait_for(future, None if deadline is None else max(0.0, deadline - self._clock()))
        except asyncio.TimeoutError:
            withdrawn = self._withdraw(item)
            raise Timeout(f"model '{self._name}': no answer within the deadline of "
                          f"{self._limit_ms(timeout_ms):g} ms ({self._why(withdrawn)})") from None
        except asyncio.CancelledError:
            self._withdraw(item)
            raise

    def submit(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None = None) -> Future[dict[str, np.ndarray]]:
        """Queue a checked feed; the future resolves to its outputs or to the error that stopped it. A request
        still queued at its deadline fails with :class:`Timeout` unrun; waiting on the future is the caller's."""
        from concurrent.futures import Future

        future: Future[dict[str, np.ndarray]] = Future()
        self._enqueue(feed, timeout_ms, future=future)
        return future

    def _limit_ms(self, timeout_ms: float | None) -> float | None:
        return timeout_ms if timeout_ms is not None else self.config.timeout_ms

    def _rows_of(self, feed: Mapping[str, np.ndarray]) -> int:
        first = self._inputs[0]
        return int(feed[first.name].shape[first.batch_axis or 0])

    def _group_of(self, feed: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
        return tuple((s.name, feed[s.name].dtype.str, _non_batch(feed[s.name].shape, s.batch_axis)) for s in self._inputs)

    def _admit(self) -> None:
        """Refuse a request the batcher cannot take (called holding the lock)."""
        if self._closing:
            raise ClosedError(f"model '{self._name}' is closing; it takes no new requests")
        if len(self._pending) >= self.config.max_queue:
            self.stats["rejected"] += 1
            raise QueueFull(
                f"model '{self._name}': {len(self._pending)} requests already queued (max_queue="
                f"{self.config.max_queue}); retry later or raise BatchConfig.max_queue"
            )

    def _queue(self, item: Pending) -> None:
        """Append (holding the lock); wake a leader waiting for company when the batch is now full or this
        request's deadline comes before the leader means to run."""
        self._pending.append(item)
        self._pending_rows += item.rows
        if self._busy and (self._pending_rows >= self.config.max_batch_size or item.deadline is not None
                           or 0 < self._expect <= len(self._pending)):
            self._cond.notify_all()

    def _enqueue(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None, *, future: Any,
                 loop: Any = None) -> tuple[Pending, float | None]:
        now = self._clock()
        limit = self._limit_ms(timeout_ms)
        deadline = now + limit / 1000.0 if limit is not None else None
        item = Pending(dict(feed), self._rows_of(feed), self._group_of(feed), now, deadline, future=future, loop=loop)
        with self._lock:
            self._admit()
            self.stats["requests"] += 1
            self._queue(item)
            start = not self._busy
            if start:
                self._busy = True
        if start:
            _executor().submit(self._lead)
        return item, deadline

    def _run_alone(self, feed: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """The fast path: the engine was idle and nobody waits, so the caller runs its own request now."""
        try:
            values = self._run(dict(feed))
        except Exception as exc:
            self.stats["failed_batches"] += 1
            self._pass_engine()
            raise _edgeserve_error(exc) from exc
        except BaseException:
            self._pass_engine()
            raise
        self.stats["ran_at_once"] += 1  # counted while this caller still holds the engine: no other writer
        self._count(rows)
        self._pass_engine()
        return dict(zip(self._output_names, values))

    def _wait(self, item: Pending, timeout_ms: float | None) -> dict[str, np.ndarray]:
        assert item.signal is not None
        while True:
            remaining = None if item.deadline is None else item.deadline - self._clock()
            got = item.signal.acquire(timeout=max(0.0, remaining)) if remaining is not None else item.signal.acquire()
            if not got:
                withdrawn = self._withdraw(item)
                if withdrawn is None:  # answered (or handed the engine) in the instant between
                    continue
                raise Timeout(f"model '{self._name}': no answer within the deadline of "
                              f"{self._limit_ms(timeout_ms):g} ms ({self._why(withdrawn)})") from None
            if item.state == DONE:
                if item.error is not None:
                    raise item.error
                assert item.result is not None
                return item.result
            self._lead()  # the engine was passed to this caller: run the next batch (most likely its own)

    @staticmethod
    def _why(withdrawn: bool | None) -> str:
        return "withdrawn before it ran" if withdrawn else "it was running; its answer is discarded"

    def _withdraw(self, item: Pending) -> bool | None:
        """A caller gives up: True if its request was still queued (now removed, it never runs), False if it is
        running (its answer will be discarded), None if it had already been answered or handed the engine."""
        lead = False
        with self._lock:
            if item.state == QUEUED:
                self._pending.remove(item)
                self._pending_rows -= item.rows
                item.state = WITHDRAWN
                self.stats["expired"] += 1
                return True
            if item.state == RUNNING:
                item.discard = True
                return False
            if item.state == LEADING:  # the engine was just passed to a caller that gives up: pass it on
                self._pending.remove(item)
                self._pending_rows -= item.rows
                item.state = WITHDRAWN
                self.stats["expired"] += 1
                lead = True
        if lead:
            assert item.signal is not None
            item.signal.acquire()  # consume the hand-off wake-up
            self._lead()
            return True
        return None

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def alive(self) -> bool:
        return not self._closing

    def hurry(self) -> None:
        """Run what is queued without waiting for more company (the model is being replaced); still takes requests."""
        with self._lock:
            self._hurry = True
            self._cond.notify_all()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, let what is queued run, and return once the engine is idle (waiting at most
        ``timeout`` seconds; what is still queued then fails with :class:`ClosedError`)."""
        with self._lock:
            self._closing = True
            self._cond.notify_all()
            end = None if timeout is None else time.monotonic() + timeout
            while self._busy or self._pending:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            left_over, self._pending = self._pending, []
            self._pending_rows = 0
        for p in left_over:  # only when the drain timed out
            p.state = WITHDRAWN
            if p.claim():
                p.finish(error=ClosedError(f"model '{self._name}' closed before this request ran"))

    # -- the leader --------------------------------------------------------------------------------------------------
    def _lead(self) -> None:
        """Hold the engine: run the next batch (waiting for company if the settings say so), answer it, and pass
        the engine to the next caller, or leave it idle."""
        with self._lock:
            while True:
                now = self._clock()
                config = self.config
                if self._closing or self._hurry:  # draining: run what is there now instead of waiting for company
                    config = replace(config, max_delay_ms=0.0)
                gather = not (self._closing or self._hurry)
                decision = plan(self._pending, now, config, gather_until=self._gather_until if gather else 0.0,
                                expect=self._expect if gather else 0)
                if decision.take or decision.expired or not self._pending:
                    break
                self._cond.wait(max(0.0, (decision.wake_at or now) - now))
            chosen = set(decision.take) | set(decision.expired)
            batch = [self._pending[i] for i in decision.take]
            expired = [self._pending[i] for i in decision.expired]
            if chosen:
                self._pending = [p for i, p in enumerate(self._pending) if i not in chosen]
                self._pending_rows = sum(p.rows for p in self._pending)
            for p in expired:
                p.state = RUNNING
            self.stats["expired"] += len(expired)
            self._gather_until, self._expect = 0.0, 0
        for p in expired:
            p.finish(error=Timeout(f"model '{self._name}': the request waited past its deadline and was not run"))
        started = self._clock()
        answers: list[tuple[Pending, dict[str, np.ndarray] | None, BaseException | None]] = []
        try:
            if batch:
                answers = self._execute(batch)
        finally:
            # NOTE: the engine goes to the next batch before this one's callers are answered, so waking them
            # (one thread switch each) overlaps the next run instead of leaving the engine idle
            self._pass_engine(len(batch), self._clock() - started)
            for p, result, error in answers:
                p.finish(result, error)

    def _pass_engine(self, answered: int = 0, took_s: float = 0.0) -> None:
        """Give the engine to the oldest waiting caller that can lead, or to an executor thread for callers that
        cannot, or leave it idle. After a batch of several requests, the engine is left to gather their callers'
        next requests for up to as long as that batch took (at most GATHER_MAX_S): a caller under load waits
        that little, a lone caller never (it finds no batch of several just answered)."""
        with self._lock:
            head = self._pending[0] if self._pending else None
            if head is None:
                self._busy = False
                self._hurry = False
                if answered > 1 and not self._closing:
                    self._gather_until = self._clock() + min(took_s, GATHER_MAX_S)
                    self._expect = answered
                self._cond.notify_all()  # close() may be waiting for the engine to idle
                return
            if head.can_lead:
                # NOTE: it stays queued (its own batch is the next one); LEADING marks the hand-off, and the
                # caller, woken, runs _lead()
                head.state = LEADING
            job = None if head.can_lead else self._lead
        if job is not None:
            _executor().submit(job)
        else:
            assert head.signal is not None
            head.signal.release()

    def _execute(self, batch: list[Pending]) -> list[tuple[Pending, dict[str, np.ndarray] | None,
                                                          BaseException | None]]:
        """Run a batch; its answers (each caller's rows or error), for the leader to hand out."""
        live = [p for p in batch if p.claim()]  # callers that gave up are skipped
        if not live:
            return []
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
                return [(live[0], None, _edgeserve_error(exc))]
            # NOTE: one request the engine refuses must not fail the others it was stacked with: run each alone,
            # so every caller gets its own answer or its own error
            self.stats["retried_alone"] += len(live)
            answers: list[tuple[Pending, dict[str, np.ndarray] | None, BaseException | None]] = []
            for p in live:
                try:
                    alone = self._outputs_of(self._run(p.feed))
                except Exception as failed:
                    answers.append((p, None, _edgeserve_error(failed)))
                else:
                    self._count(p.rows)
                    answers.append((p, alone, None))
            return answers
        except BaseException as exc:  # the leader's thread is going down: its followers hear why first
            for p in live:
                p.finish(error=InferenceError(f"model '{self._name}': batch aborted ({exc!r})"))
            raise
        self._count(sum(p.rows for p in live))
        return [(p, result, None) for p, result in zip(live, results)]

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


def can_batch(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Batching needs a batch axis on every input and output (else requests bypass the batcher)."""
    return all(s.batch_axis is not None for s in (*inputs, *outputs))
