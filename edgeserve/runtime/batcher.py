"""Dynamic micro-batching without a worker thread: callers take turns at the engine, and each gets its own rows
back.

Leader/follower ("combining"): a request that finds the engine idle runs at once, in its caller's thread, with no
hand-off at all. Requests that arrive while the engine runs queue up; when the run ends, the engine passes to the
oldest waiting caller, which runs everything queued that stacks with it (up to ``max_batch_size`` rows) as one
batch, hands each follower its rows, and passes the engine on. So batching never makes a lone request wait, and
under load there is one wake-up per batch for its leader plus one per follower's answer — no worker thread, no
timer, no future or condition variable per request on the synchronous path. Followers are woken in a chain, each
by the one before it as it takes its answer (see :func:`_answer`). Callers that cannot lead (``submit``,
``call_async``: an event loop must not run the model) get a batch run for them on a shared executor thread, one
job per batch, never a parked thread per request.

Batching is not always worth its hand-offs: for a model that answers a row in less time than a thread takes to
wake, callers do better running their requests side by side. So, unless ``adaptive=False`` or a ``max_delay_ms``
asks for batches, a :class:`~.chooser.Chooser` measures both ways under the current load and keeps the faster:
batched as above, or *direct* (each caller runs its own request at once, as without a batcher).

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

import bisect
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import held
from ..config import BatchConfig
from ..errors import ClosedError, EdgeserveError, InferenceError, QueueFull, Timeout, first_line
from ..pools import LazyPool
from ..tensors import TensorSpec, row_sets
from .chooser import DIRECT, Chooser

if TYPE_CHECKING:
    from concurrent.futures import Future

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RunFn = Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]]
WatchFn = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], int], None]
"""Sees a batch that ran: its inputs and outputs, stacked, and its rows (a model's drift monitor)."""
EngineFn = Callable[[list[str], dict[str, np.ndarray], None], Sequence[np.ndarray]]
"""An engine's own run, ``engine(output_names, feed, None)``, its errors untranslated (onnxruntime's C session run)."""

QUEUED, LEADING, RUNNING, DONE, WITHDRAWN = range(5)


class Pending:
    """One queued request, and how its caller hears back: a released lock (a blocked caller), a concurrent
    Future (``submit``) or an asyncio future (``call_async``)."""

    __slots__ = ("feed", "rows", "group", "enqueued", "deadline", "state", "result", "error", "signal", "future",
                 "loop", "discard", "thread", "next")

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
        self.thread = 0
        if blocking:
            self.signal = threading.Lock()
            self.signal.acquire()  # released once: the answer is in, or the engine is this caller's to lead
            self.thread = threading.get_ident()
        self.future = future
        self.loop = loop
        self.discard = False
        self.next: Pending | None = None
        """The blocked caller this one wakes once it has its answer (see :func:`_answer`)."""

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
        if self.signal is not None:
            self.result, self.error = result, error  # NOTE: before DONE: a caller that sees DONE reads them
        self.state = DONE
        if self.discard:
            return
        if self.signal is not None:
            _wake(self)
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)
        elif error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def _answer(answers: Sequence[tuple[Pending, dict[str, np.ndarray] | None, BaseException | None]],
            lock: threading.Lock) -> None:
    """Hand a batch's answers out. Callers on one event loop get theirs in a single hop onto it (one
    ``call_soon_threadsafe`` per batch, not per request: each hop wakes the loop and takes the GIL from it).

    Blocked callers are woken one after another, each by the one before it as it takes its answer (a baton,
    ``Pending.next``), the leader's own caller first. Woken all at once, 31 followers of a batch would each wake
    only to sleep again on the interpreter lock the waker holds, and queue on it together: a wake-up chain costs
    one sleep per caller instead of two (30 -> 20 us of CPU per request at 32 callers)."""
    by_loop: dict[Any, list[tuple[Any, Any, BaseException | None]]] = {}
    chain: list[Pending] = []
    me = threading.get_ident()
    with lock:  # NOTE: against _withdraw: a caller giving up is either marked discarded first, or finds itself DONE
        for p, result, error in answers:
            if p.signal is None or p.loop is not None:
                continue
            p.result, p.error = result, error
            p.state = DONE
            if not p.discard:
                if p.thread == me:
                    chain.insert(0, p)
                else:
                    chain.append(p)
        for a, b in zip(chain, chain[1:]):
            a.next = b
    for p, result, error in answers:
        if p.signal is not None and p.loop is None:
            continue
        if p.loop is not None:
            p.state = DONE
            if not p.discard:
                by_loop.setdefault(p.loop, []).append((p.future, result, error))
        else:
            p.finish(result, error)
    for loop, items in by_loop.items():
        loop.call_soon_threadsafe(_settle_all, items)
    if chain:
        _wake(chain[0])


def _wake(p: Pending) -> None:
    assert p.signal is not None
    try:
        p.signal.release()
    except RuntimeError:  # already released by a hand-off its caller has not taken up yet: it will see DONE
        pass


def _settle_all(items: list[tuple[Any, Any, BaseException | None]]) -> None:
    for future, result, error in items:
        _settle(future, result, error)


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


def regather(answered: int, queued: int, queued_rows: int, max_rows: int, cost: RunCost) -> int:
    """After a batch of ``answered`` requests, with ``queued`` requests (``queued_rows`` rows) already waiting: how
    many requests the next batch should wait for (its callers coming back, see ``plan``), or 0 to run what waits now.

    It waits when the queue does not fill a batch and a run's fixed time outweighs the rows queued: then the
    returning callers ride in the same run nearly for free, where running the queue now leaves them a run of their
    own, fixed time and all. NOTE: under 32 callers of one row, two cohorts otherwise alternate, each running
    while the other's callers return (wide MLP: batches of 20-21 rows on average; 22-24 waiting so, and 0.56-0.62
    -> 0.61-0.63 of one thread's batches of 32)."""
    if answered < 2 or not queued or queued_rows >= max_rows:
        return 0
    fixed, per_row = cost.line()
    return answered + queued if fixed > per_row * queued_rows else 0


class RunCost:
    """The engine's time for a run of ``rows`` rows as ``fixed + per_row * rows``, fitted by least squares over
    recent runs, each weighing ``DECAY`` times less than the next (so the fit follows a machine that slows down).

    NOTE: not a time per row: a batch of 1 row costs a compute-bound model nearly what a batch of 8 does (the weights
    are read once either way), so rows times the time per row of small runs overstated the wait of a queue that runs
    in full batches: under overload the refusals then shrank the batches, which raised the estimate, which refused
    more (a 2048->8192->4096 MLP answered 0.6-0.75x of its capacity under 3x load, and still after it).
    Until runs of two sizes have been seen, the time is proportional to the rows."""

    DECAY = 0.9
    __slots__ = ("_w", "_b", "_bb", "_t", "_bt")

    def __init__(self) -> None:
        self._w = self._b = self._bb = self._t = self._bt = 0.0

    def add(self, rows: float, seconds: float) -> None:
        d = self.DECAY
        self._w = d * self._w + 1.0
        self._b = d * self._b + rows
        self._bb = d * self._bb + rows * rows
        self._t = d * self._t + seconds
        self._bt = d * self._bt + rows * seconds

    def line(self) -> tuple[float, float]:
        """(fixed, per_row) seconds: both 0 until a run has been measured, neither negative."""
        if self._b <= 0:
            return 0.0, 0.0
        spread = self._w * self._bb - self._b * self._b
        if spread <= 1e-6 * self._w * self._bb:  # runs of one size: nothing tells fixed from per-row time
            return 0.0, self._t / self._b
        per_row = max(0.0, (self._w * self._bt - self._b * self._t) / spread)
        fixed = (self._t - per_row * self._b) / self._w
        if fixed < 0:  # noise: a line through the origin fits better than one below it
            return 0.0, self._t / self._b
        return fixed, per_row

    def of(self, rows: float) -> float:
        """Seconds for a run of ``rows`` rows (0 for none; a fraction of a row where it is an expectation)."""
        if rows <= 0:
            return 0.0
        fixed, per_row = self.line()
        return fixed + per_row * rows


class Arrivals:
    """Rows queued per second: moving averages of the gap between queued requests and of their rows."""

    MAX_GAP_S = 1.0
    """A longer gap (an idle spell) counts as this long, so the rate comes back within a few requests of a burst."""
    __slots__ = ("_last", "_gap", "_rows")

    def __init__(self) -> None:
        self._last: float | None = None
        self._gap: float | None = None
        self._rows = 0.0

    def add(self, rows: int, now: float) -> None:
        if self._last is not None:
            gap = min(max(0.0, now - self._last), self.MAX_GAP_S)
            self._gap = gap if self._gap is None else 0.9 * self._gap + 0.1 * gap
            self._rows = 0.9 * self._rows + 0.1 * rows
        else:
            self._rows = rows
        self._last = now

    def per_s(self) -> float:
        if self._gap is None:
            return 0.0
        return self._rows / self._gap if self._gap > 0 else math.inf


def expected_wait_s(cost: RunCost, *, running_rows: int, running_for_s: float, queued_rows: int, rows: int,
                    max_batch_size: int, arriving_per_s: float = 0.0) -> float:
    """How long a request of ``rows`` rows arriving now would wait for its answer: the rest of the run in progress,
    the full batches queued ahead of it, then the run of the batch it joins — with the rows that will have joined
    it by the time it starts, at ``arriving_per_s`` (under load that batch fills up before it runs; counting only
    the rows queued now made the estimate short by most of a run). 0 until a run has been measured."""
    left = max(0.0, cost.of(running_rows) - running_for_s) if running_rows else 0.0
    ahead, last = divmod(queued_rows, max_batch_size)  # full batches, and the rows of the partial one
    if last + rows > max_batch_size:  # it does not fit beside them: that batch runs without it
        ahead, last = ahead + (last > 0), 0
    starts_in = left + ahead * cost.of(max_batch_size)
    if rows >= max_batch_size:  # a full batch of its own, or bigger than a batch: it runs alone
        return starts_in + cost.of(rows)
    joined = last + rows + arriving_per_s * starts_in if arriving_per_s < math.inf else max_batch_size
    return starts_in + cost.of(min(max_batch_size, joined))


class Histogram:
    """Fixed buckets, their counts and a sum — what a Prometheus histogram needs — filled under the batcher's lock
    (a bisect and two additions), read at scrape time."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}


TIME_BOUNDS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0)
ROW_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)

GATHER_MAX_S = 0.002
"""The longest an engine that just answered several callers waits for them to come back (see ``plan``)."""

_EXECUTORS: dict[int, LazyPool] = {}
"""Threads that lead a batch for callers that cannot (``submit``, ``call_async``): one job per batch. One pool per
priority: a server's leaders run the engine below its event loop, as the engine's own workers do."""
_EXECUTORS_LOCK = threading.Lock()


def _executor(nice: int) -> LazyPool:
    pool = _EXECUTORS.get(nice)
    if pool is None:
        with _EXECUTORS_LOCK:
            pool = _EXECUTORS.setdefault(nice, LazyPool(8, "edgeserve-batch", nice=nice))
    return pool


class Batcher:
    """A queue in front of a model's run function; whoever finds the engine free runs the next batch."""

    def __init__(self, run: RunFn, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], config: BatchConfig,
                 *, name: str = "model", clock: Clock = time.monotonic, nice: int = 0,
                 engine: EngineFn | None = None, engine_failed: Callable[[Exception, Any], Exception] | None = None) -> None:
        self.config = config
        self._engine = engine if engine_failed is not None else None
        """The direct way's run when the model has one: the engine itself (``run`` wraps it in a Python frame or
        two), and ``engine_failed``, what its error becomes."""
        self._engine_failed = engine_failed
        self.turn_run: RunFn | None = None
        """What the batches of event-loop turns run on (``Model.answer_turns_with``); None: ``run``."""
        self._executor = _executor(nice)
        """Where a batch is led for callers that cannot lead: threads ``nice`` steps below the process."""
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
        self._turns: dict[Any, tuple[list[Pending], WatchFn | None]] = {}
        """Per event loop: the requests gathered in its current turn, and who watches them (see
        :meth:`call_in_turn`)."""
        self._leader_wakes_at = math.inf
        """When a leader waiting for company means to run (inf: none waits): an arrival wakes it sooner only if its
        deadline comes first, the batch is full, or the callers it waits for are back."""
        self._running_rows = 0
        """Rows of the run in progress (for the expected wait of a request arriving now)."""
        self._running_since = 0.0
        """When that run started, on the batcher's clock."""
        self._arrivals = Arrivals()
        """Rows queued per second (how full the batch a request joins will be when it runs)."""
        self._cost = RunCost()
        """The engine's time for a run of so many rows, fitted over batched runs: what ``max_wait_ms`` estimates
        with."""
        self.histograms = {"queue_s": Histogram(TIME_BOUNDS), "run_s": Histogram(TIME_BOUNDS),
                           "batch_rows": Histogram(ROW_BOUNDS)}
        """Time queued requests waited for the engine, time per engine run, rows per run (batched and lone runs;
        direct runs are not timed)."""
        self._direct: deque[None] = deque()
        """One entry per caller running its own request right now, beside the engine's batches (the direct way).
        NOTE: deque append/pop are atomic, so the direct way needs no lock: a caller appends before it looks at
        ``_closing``, and close() sets ``_closing`` before it looks at the deque, so one of them sees the other."""
        self._direct_done: deque[int] = deque()
        """Direct calls since the last fold into the stats and the chooser (done under the lock): the rows of one
        that ran, ``-rows - 1`` for one that failed."""
        first = next(s for s in self._inputs if s.batch_axis is not None)
        self._rows_name, self._rows_axis = first.name, first.batch_axis or 0
        self.chooser: Chooser | None = Chooser() if config.adaptive and config.max_delay_ms == 0 else None
        """Measures whether batching pays under the current load (None: always batch, as configured)."""
        self._stats = {"batches": 0, "rows": 0, "requests": 0, "rejected": 0, "expired": 0, "failed_batches": 0,
                       "retried_alone": 0, "ran_at_once": 0, "ran_direct": 0, "ran_in_turn": 0}

    def timings(self) -> dict[str, dict[str, Any]]:
        """A copy of :attr:`histograms`, each as ``{"bounds", "counts", "sum"}`` (the last count: above all bounds)."""
        with self._lock:
            return {name: h.snapshot() for name, h in self.histograms.items()}

    @property
    def stats(self) -> dict[str, int]:
        """Counts since the start: requests, engine runs (``batches``) and their rows, how requests ran
        (``ran_at_once``, ``ran_direct``, the rest batched), and what went wrong."""
        with self._lock:
            self._fold()
            return dict(self._stats)

    # -- callers -----------------------------------------------------------------------------------------------------
    def call(self, feed: Mapping[str, np.ndarray], timeout_ms: float | None = None) -> dict[str, np.ndarray]:
        """Run a checked feed with whatever it can stack with and return its own outputs. Waits for the engine at
        most until the deadline (``timeout_ms``, else the config's): past it the request is withdrawn (or, if it
        is running, its answer discarded) and :class:`Timeout` raised."""
        now = self._clock()
        chooser = self.chooser
        if chooser is not None and now < chooser.direct_until:
            # NOTE: the direct way, without the lock: under load, a lock every caller takes twice per request costs
            # more than a small model's run (and on a ~14 us model each Python call here is ~1% of its throughput)
            self._direct.append(None)
            if not self._closing:
                engine = self._engine
                if engine is None or type(feed) is not dict:
                    return self._run_direct(feed, feed[self._rows_name].shape[self._rows_axis])
                # NOTE: _run_direct's common case written out, calling the engine itself: under load every Python
                # frame here is paid once per request while the callers queue for the interpreter lock (digits MLP,
                # 4 callers, against no batcher, both ways in one process: 0.79-0.83 through _run_direct and the
                # model's run, 0.82-0.92 so)
                try:
                    values = engine(self._output_names, feed, None)
                except BaseException as exc:
                    self._direct_left(-feed[self._rows_name].shape[self._rows_axis] - 1)
                    if isinstance(exc, Exception):
                        raise self._engine_failed(exc, feed) from exc  # type: ignore[misc]
                    raise
                self._direct_done.append(feed[self._rows_name].shape[self._rows_axis])
                self._direct.pop()
                if self._closing:
                    self._closed_direct()
                return dict(zip(self._output_names, values))
            self._direct.pop()
        limit = self._limit_ms(timeout_ms)
        deadline = now + limit / 1000.0 if limit is not None else None
        rows = self._rows_of(feed)
        with self._lock:
            self._admit()
            if chooser is not None and self._direct_done:
                self._fold()
            way = chooser.arrived(now) if chooser is not None else None
            if way == DIRECT:  # counted as a request when its answer is folded in, as lock-free ones are
                self._direct.append(None)
                alone = False
                item = None
            elif not self._busy and self.config.max_delay_ms == 0 and now >= self._gather_until:  # nobody queued
                self._stats["requests"] += 1
                self._busy = True
                self._running_rows, self._running_since = rows, now
                alone = True
            else:
                self._admit_wait(rows, now)
                self._stats["requests"] += 1
                alone = False
                item = Pending(dict(feed), rows, self._group_of(feed), now, deadline, blocking=True)
                self._queue(item)
                lead_now = not self._busy
                if lead_now:
                    self._busy = True
                    item.state = LEADING
        if alone:
            return self._run_alone(feed, rows)
        if item is None:
            return self._run_direct(feed, rows)
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

    async def call_in_turn(self, feed: Mapping[str, np.ndarray], watch: WatchFn | None = None) -> dict[str, np.ndarray]:
        """For an event loop's caller whose request runs in the loop (a model faster than a hand-off to a thread,
        see ``Model.answer_if_fast``), when more requests are about to run in the same turn of the loop: gather
        them, and at the end of the turn run them in the loop as one batch (one per group, ``max_batch_size`` rows
        at most), each caller answered with its own rows or its own error. ``watch(feed, outputs, rows)`` (the
        first caller's of the turn: one model's) sees each batch that ran whole, stacked, once.

        NOTE: an asyncio server reads the requests of every ready connection in one pass and starts a task for
        each; run one by one in the loop, each paid an engine run. ``edgeserve serve``, digits MLP with the
        guard, wrk at 32 connections: ~20 rows a turn, 10.3-10.7k -> 13.2-13.6k requests/s (with the server's
        ``gc.freeze``; p99 5.9 -> 4.3-4.8 ms). A lone request does not wait for a turn: it runs at once."""
        import asyncio

        if self._closing:
            raise ClosedError(f"model '{self._name}' is closing; it takes no new requests")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        item = Pending(dict(feed), self._rows_of(feed), self._group_of(feed), 0.0, None, future=future, loop=loop)
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = ([], watch)
            self._direct.append(None)  # NOTE: counted as a direct call until it has run: close() waits for it
            loop.call_soon(self._run_turn, loop)
        turn[0].append(item)
        return await future  # type: ignore[no-any-return]

    def gathering(self, loop: Any) -> bool:
        """Requests of this loop's current turn wait to run together at its end (see :meth:`call_in_turn`)."""
        return loop in self._turns

    def _run_turn(self, loop: Any) -> None:
        """Run what the loop's turn gathered, group by group, in batches of ``max_batch_size`` rows at most."""
        items, watch = self._turns.pop(loop, ([], None))
        groups: dict[tuple[Any, ...], list[Pending]] = {}
        for item in items:
            groups.setdefault(item.group, []).append(item)
        try:
            for group in groups.values():
                start = 0
                while start < len(group):
                    batch, rows = [group[start]], group[start].rows
                    start += 1
                    while start < len(group) and rows + group[start].rows <= self.config.max_batch_size:
                        rows += group[start].rows
                        batch.append(group[start])
                        start += 1
                    self._run_turn_batch(batch, watch)
        except BaseException as exc:  # NOTE: no caller of the turn may be left waiting
            for item in items:
                _settle(item.future, None, InferenceError(f"model '{self._name}': batch aborted ({exc!r})"))
            raise
        finally:
            self._direct.pop()
            if self._closing:
                self._closed_direct()

    def _run_turn_batch(self, batch: list[Pending], watch: WatchFn | None) -> None:
        started = self._clock()
        answers, tally = self._execute(batch, watch, self.turn_run)
        tally.busy_s = self._clock() - started
        with self._lock:
            self._stats["requests"] += len(batch)
            self._stats["ran_in_turn"] += len(batch)
            # NOTE: not the chooser's measure: it weighs the two ways threads' requests run, not these
            self._record(tally, chooser=False)
        for item, result, error in answers:
            item.state = DONE
            _settle(item.future, result, error)

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
        return int(feed[self._rows_name].shape[self._rows_axis])

    def _group_of(self, feed: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
        key = []
        for s in self._inputs:
            a = feed[s.name]
            key.append((a.dtype, _non_batch(a.shape, s.batch_axis)) if s.batch_axis is not None
                       else _shared_key(s.name, a))
        return tuple(key)

    def _admit(self) -> None:
        """Refuse a request the batcher cannot take (called holding the lock)."""
        if self._closing:
            raise ClosedError(f"model '{self._name}' is closing; it takes no new requests")
        if len(self._pending) >= self.config.max_queue:
            self._stats["rejected"] += 1
            raise QueueFull(
                f"model '{self._name}': {len(self._pending)} requests already queued (max_queue="
                f"{self.config.max_queue}); retry later or raise BatchConfig.max_queue"
            )

    def refuses_now(self) -> str | None:
        """Why a request arriving now would be refused for its wait (``max_wait_ms``), or None. A cheap look
        without the lock, for a server to answer 503 before it reads a request's body; the request itself is
        checked again, exactly, when it queues."""
        limit = self.config.max_wait_ms
        if limit is None or not self._busy:
            return None
        wait = self._wait_s(1, self._clock())
        if wait * 1000.0 > limit:
            return (f"model '{self._name}': the work queued ahead would keep a request waiting ~{wait * 1000.0:.0f} "
                    f"ms, more than max_wait_ms={limit:g}; retry later")
        return None

    def _wait_s(self, rows: int, now: float) -> float:
        return expected_wait_s(self._cost, running_rows=self._running_rows, running_for_s=now - self._running_since,
                               queued_rows=self._pending_rows, rows=rows, max_batch_size=self.config.max_batch_size,
                               arriving_per_s=self._arrivals.per_s())

    def _admit_wait(self, rows: int, now: float) -> None:
        """Refuse a request that would wait longer than ``max_wait_ms`` (holding the lock; it is about to queue)."""
        limit = self.config.max_wait_ms
        if limit is None:
            return
        wait = self._wait_s(rows, now)
        if wait * 1000.0 > limit:
            self._stats["rejected"] += 1
            raise QueueFull(f"model '{self._name}': the work queued ahead would keep this request waiting ~"
                            f"{wait * 1000.0:.0f} ms, more than max_wait_ms={limit:g}; retry later")

    def _queue(self, item: Pending) -> None:
        """Append (holding the lock); wake a leader waiting for company when the batch is now full or this
        request's deadline comes before the leader means to run."""
        self._pending.append(item)
        self._pending_rows += item.rows
        self._arrivals.add(item.rows, item.enqueued)
        if self._busy and (self._pending_rows >= self.config.max_batch_size
                           or (item.deadline is not None and item.deadline < self._leader_wakes_at)
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
            if self._busy:
                self._admit_wait(item.rows, now)
            self._stats["requests"] += 1
            self._queue(item)
            start = not self._busy
            if start:
                self._busy = True
        if start:
            self._executor.submit(self._lead)
        return item, deadline

    def _run_alone(self, feed: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """The fast path: the engine was idle and nobody waits, so the caller runs its own request now."""
        started = self._clock()
        try:
            values = self._run(dict(feed))
        except Exception as exc:
            self._pass_engine(Tally(requests=1, rows=rows, failed_batches=1, busy_s=self._clock() - started))
            raise _edgeserve_error(exc) from exc
        except BaseException:
            self._pass_engine()
            raise
        busy_s = self._clock() - started
        with self._lock:  # NOTE: the common case inline (no Tally, no hand-off): this is a lone caller's path
            stats = self._stats
            stats["batches"] += 1
            stats["rows"] += rows
            stats["ran_at_once"] += 1
            if self.chooser is not None:
                self.chooser.answered(1, rows, busy_s)
            self._measured(busy_s, rows)
            self.histograms["run_s"].observe(busy_s)
            self.histograms["batch_rows"].observe(rows)
            self._running_rows = 0
            idle = not self._pending and not self._closing
            if idle:
                self._busy = False
                self._hurry = False
        if not idle:
            self._pass_engine()
        return dict(zip(self._output_names, values))

    def run_now(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a checked feed at once in this thread, beside whatever the engine runs, not queued (counted as the
        direct way counts its calls): for a caller that times the engine itself (``Model``'s event-loop probes)."""
        self._direct.append(None)
        if self._closing:
            self._direct.pop()
            raise ClosedError(f"model '{self._name}' is closing; it takes no new requests")
        rows = self._rows_of(feed)
        started = self._clock()
        out = self._run_direct(feed, rows)
        with self._lock:  # NOTE: timed, unlike the direct way's every call: this one is rare
            self.histograms["run_s"].observe(self._clock() - started)
            self.histograms["batch_rows"].observe(rows)
        return out

    def _run_direct(self, feed: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """The direct way: batching does not pay under this load, so the caller runs its own request now, beside
        whatever the engine is running (its entry in ``_direct`` is already made)."""
        try:
            values = self._run(feed if type(feed) is dict else dict(feed))
        except BaseException as exc:
            self._direct_left(-rows - 1)
            if isinstance(exc, Exception):
                raise _edgeserve_error(exc) from exc
            raise
        self._direct_done.append(rows)  # NOTE: _direct_left inline: this is the direct way's every call
        self._direct.pop()
        if self._closing:
            self._closed_direct()
        return dict(zip(self._output_names, values))

    def _direct_left(self, entry: int) -> None:
        """A direct call ended: its rows if it ran, ``-rows - 1`` if it failed (see ``_direct_done``)."""
        self._direct_done.append(entry)
        self._direct.pop()
        if self._closing:
            self._closed_direct()

    def _closed_direct(self) -> None:
        """A direct call ended while closing: close() may be waiting for the direct callers to finish."""
        with self._lock:
            self._cond.notify_all()

    def _measured(self, busy_s: float, rows: int, runs: int = 1) -> None:
        """Fold engine runs into the cost of a run (holding the lock): what ``max_wait_ms`` estimates with."""
        if busy_s > 0 and rows:
            self._cost.add(rows / runs, busy_s / runs)

    def _fold(self) -> None:
        """Move the direct calls' counts into the stats and the chooser's measure (holding the lock)."""
        done = self._direct_done
        requests = ran = ran_rows = all_rows = 0
        for _ in range(len(done)):  # NOTE: only what is there now: callers keep appending meanwhile
            entry = done.popleft()
            rows = entry if entry >= 0 else -entry - 1
            requests += 1
            all_rows += rows
            if entry >= 0:
                ran += 1
                ran_rows += rows
        if not requests:
            return
        stats = self._stats
        stats["requests"] += requests
        stats["batches"] += ran
        stats["rows"] += ran_rows
        stats["ran_direct"] += ran
        stats["failed_batches"] += requests - ran
        if self.chooser is not None:
            self.chooser.answered(requests, all_rows)

    def _record(self, tally: Tally, *, chooser: bool = True) -> None:
        """Add what the engine did to the stats and (``chooser``) the chooser's measure (holding the lock)."""
        stats = self._stats
        if tally.runs and not tally.ran_direct:
            self._measured(tally.busy_s, tally.rows, tally.runs)
            self.histograms["run_s"].observe(tally.busy_s)
            self.histograms["batch_rows"].observe(tally.rows)
        stats["batches"] += tally.runs
        stats["rows"] += tally.rows_ok
        stats["failed_batches"] += tally.failed_batches
        stats["retried_alone"] += tally.retried_alone
        stats["ran_at_once"] += tally.ran_at_once
        stats["ran_direct"] += tally.ran_direct
        if chooser and self.chooser is not None and tally.requests:
            self.chooser.answered(tally.requests, tally.rows, tally.busy_s)

    def _wait(self, item: Pending, timeout_ms: float | None) -> dict[str, np.ndarray]:
        assert item.signal is not None
        try:
            while True:
                remaining = None if item.deadline is None else item.deadline - self._clock()
                got = item.signal.acquire(timeout=max(0.0, remaining)) if remaining is not None else item.signal.acquire()
                if not got:
                    withdrawn = self._withdraw(item)
                    if withdrawn is None:  # answered (or handed the engine) in the instant between
                        if item.state == DONE:  # its wake-up is still coming down the chain: not needed
                            return _taken(item)
                        continue
                    raise Timeout(f"model '{self._name}': no answer within the deadline of "
                                  f"{self._limit_ms(timeout_ms):g} ms ({self._why(withdrawn)})") from None
                if item.state == DONE:
                    return _taken(item)
                self._lead()  # the engine was passed to this caller: run the next batch (most likely its own)
        except BaseException:
            if item.state in (QUEUED, RUNNING):  # leaving without its answer (interrupted): out of any chain to come
                self._withdraw(item)
            raise
        finally:
            follower = item.next  # NOTE: however this caller leaves, the caller after it in the chain is woken
            if follower is not None:
                item.next = None
                _wake(follower)

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
                self._stats["expired"] += 1
                return True
            if item.state == RUNNING:
                item.discard = True
                return False
            if item.state == LEADING:  # the engine was just passed to a caller that gives up: pass it on
                self._pending.remove(item)
                self._pending_rows -= item.rows
                item.state = WITHDRAWN
                self._stats["expired"] += 1
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
    def idle(self) -> bool:
        """Nothing queued and the engine free (a racy look, without the lock)."""
        return not self._busy and not self._pending and not self._direct

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
            while self._busy or self._pending or self._direct:
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
                self._leader_wakes_at = decision.wake_at or now
                self._cond.wait(max(0.0, self._leader_wakes_at - now))
                self._leader_wakes_at = math.inf
            chosen = set(decision.take) | set(decision.expired)
            batch = [self._pending[i] for i in decision.take]
            expired = [self._pending[i] for i in decision.expired]
            if chosen:
                self._pending = [p for i, p in enumerate(self._pending) if i not in chosen]
                self._pending_rows = sum(p.rows for p in self._pending)
            for p in expired:
                p.state = RUNNING
            self._stats["expired"] += len(expired)
            self._gather_until, self._expect = 0.0, 0
            self._running_rows, self._running_since = sum(p.rows for p in batch), now
            waited = self.histograms["queue_s"]
            for p in batch:
                waited.observe(now - p.enqueued)
        for p in expired:
            p.finish(error=Timeout(f"model '{self._name}': the request waited past its deadline and was not run"))
        started = self._clock()
        answers: list[tuple[Pending, dict[str, np.ndarray] | None, BaseException | None]] = []
        tally = Tally()
        try:
            if batch:
                answers, tally = self._execute(batch)
        finally:
            # NOTE: the engine goes to the next batch before this one's callers are answered, so waking them
            # (one thread switch each) overlaps the next run instead of leaving the engine idle
            tally.busy_s = self._clock() - started
            self._pass_engine(tally)
            _answer(answers, self._lock)

    def _pass_engine(self, tally: Tally | None = None) -> None:
        """Give the engine to the oldest waiting caller that can lead, or to an executor thread for callers that
        cannot, or leave it idle. After a batch of several requests, the engine is left to gather their callers'
        next requests for up to as long as that batch took (at most GATHER_MAX_S): a caller under load waits
        that little, a lone caller never (it finds no batch of several just answered). With requests already
        queued, the next batch waits for them too when that pays (see :func:`regather`)."""
        answered, took_s = (tally.requests, tally.busy_s) if tally is not None else (0, 0.0)
        with self._lock:
            if tally is not None:
                self._record(tally)
            self._running_rows = 0
            head = self._pending[0] if self._pending else None
            if head is None:
                self._busy = False
                self._hurry = False
                if answered > 1 and not self._closing:
                    self._gather_until = self._clock() + min(took_s, GATHER_MAX_S)
                    self._expect = answered
                if self._closing:  # close() may be waiting for the engine to idle
                    self._cond.notify_all()
                return
            expect = 0 if self._closing else regather(answered, len(self._pending), self._pending_rows,
                                                          self.config.max_batch_size, self._cost)
            if expect:
                self._gather_until = self._clock() + min(took_s, GATHER_MAX_S)
                self._expect = expect
            if head.can_lead:
                # NOTE: it stays queued (its own batch is the next one); LEADING marks the hand-off, and the
                # caller, woken, runs _lead()
                head.state = LEADING
            job = None if head.can_lead else self._lead
        if job is not None:
            self._executor.submit(job)
        else:
            assert head.signal is not None
            head.signal.release()

    def _execute(self, batch: list[Pending], watch: WatchFn | None = None, run: RunFn | None = None) -> tuple[
            list[tuple[Pending, dict[str, np.ndarray] | None, BaseException | None]], Tally]:
        """Run a batch (on ``run``, else the model's own run); its answers (each caller's rows or error), for the
        leader to hand out, and what the engine did. ``watch`` sees the batch's inputs and outputs, stacked, when
        it ran whole."""
        live = [p for p in batch if p.claim()]  # callers that gave up are skipped
        if not live:
            return [], Tally()
        run = run or self._run
        rows = sum(p.rows for p in live)
        try:
            if len(live) == 1:
                merged = live[0].feed
                outputs = self._outputs_of(run(merged))
                results = [outputs]
            else:
                merged = {s.name: held.concat([p.feed[s.name] for p in live], axis=s.batch_axis)
                          if s.batch_axis is not None else live[0].feed[s.name]  # equal in every request
                          for s in self._inputs}
                outputs = self._outputs_of(run(merged))
                results = self._split(outputs, [p.rows for p in live])
        except Exception as exc:
            if len(live) == 1:
                return [(live[0], None, _edgeserve_error(exc))], Tally(requests=1, rows=rows, failed_batches=1)
            # NOTE: one request the engine refuses must not fail the others it was stacked with: run each alone,
            # so every caller gets its own answer or its own error
            answers: list[tuple[Pending, dict[str, np.ndarray] | None, BaseException | None]] = []
            ok = 0
            rows_ok = 0
            for p in live:
                try:
                    alone = self._outputs_of(run(p.feed))
                except Exception as failed:
                    answers.append((p, None, _edgeserve_error(failed)))
                else:
                    ok += 1
                    rows_ok += p.rows
                    answers.append((p, alone, None))
            return answers, Tally(requests=len(live), rows=rows, runs=ok, rows_ok=rows_ok,
                                  failed_batches=1, retried_alone=len(live))
        except BaseException as exc:  # the leader's thread is going down: its followers hear why first
            for p in live:
                p.finish(error=InferenceError(f"model '{self._name}': batch aborted ({exc!r})"))
            raise
        if watch is not None:
            try:
                watch(merged, outputs, rows)
            except Exception:  # noqa: BLE001 - watching must never fail the requests it watches
                log.exception("model '%s': watching a batch failed", self._name)
        return [(p, result, None) for p, result in zip(live, results)], Tally(requests=len(live), rows=rows, runs=1)

    def _outputs_of(self, values: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        return {s.name: v for s, v in zip(self._outputs, values)}

    def _split(self, outputs: dict[str, np.ndarray], rows: list[int]) -> list[dict[str, np.ndarray]]:
        """Each request's rows of the outputs, as views. NOTE: slices, not ``np.split``, which costs a few
        microseconds per part in Python (its swapaxes) while the batch's callers wait for their answers."""
        total = sum(rows)
        bounds = list(itertools.accumulate(rows, initial=0))
        per_request: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for spec in self._outputs:
            value = outputs[spec.name]
            axis = spec.batch_axis
            if axis is None or value.ndim <= axis or value.shape[axis] != total:
                raise EdgeserveError(
                    f"model '{self._name}': output '{spec.name}' {list(value.shape)} cannot be split back into "
                    f"{len(rows)} requests along a batch axis; turn batching off for this model"
                )
            lead = (slice(None),) * axis
            for i, answer in enumerate(per_request):
                answer[spec.name] = value[(*lead, slice(bounds[i], bounds[i + 1]))]
        return per_request


def _taken(item: Pending) -> dict[str, np.ndarray]:
    if item.error is not None:
        raise item.error
    assert item.result is not None
    return item.result


class Tally:
    """What the engine did for some requests, added to the batcher's stats under its lock."""

    __slots__ = ("requests", "rows", "runs", "rows_ok", "failed_batches", "retried_alone", "ran_at_once",
                 "ran_direct", "busy_s")

    def __init__(self, *, requests: int = 0, rows: int = 0, runs: int = 0, rows_ok: int | None = None,
                 failed_batches: int = 0, retried_alone: int = 0, ran_at_once: int = 0, ran_direct: int = 0,
                 busy_s: float = 0.0) -> None:
        self.requests = requests
        self.rows = rows
        """Rows the engine was given (answered or failed): the chooser's measure of work done."""
        self.runs = runs
        """Successful engine runs."""
        self.rows_ok = (rows if runs else 0) if rows_ok is None else rows_ok
        """Rows answered successfully."""
        self.failed_batches = failed_batches
        self.retried_alone = retried_alone
        self.ran_at_once = ran_at_once
        self.ran_direct = ran_direct
        self.busy_s = busy_s
        """How long the engine ran for them (the batched way; direct runs overlap and are not counted)."""


def _non_batch(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    axis = axis or 0
    return shape[:axis] + shape[axis + 1:]


def _edgeserve_error(exc: Exception) -> EdgeserveError:
    return exc if isinstance(exc, EdgeserveError) else InferenceError(f"batch failed: {first_line(exc)}")


SHARED_BYTES = 4096
"""An input without a batch axis (a sample rate, a threshold) of up to this size groups requests by its value;
a bigger one is never compared, and its request runs without company."""


def _shared_key(name: str, value: np.ndarray) -> tuple[Any, ...]:
    """Requests stack only where an input without a batch axis holds the same value in each: the batch is given
    that one value."""
    if value.nbytes > SHARED_BYTES:
        return (name, object())
    return (name, value.dtype.str, value.shape, value.tobytes())


def can_batch(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> bool:
    """Batching needs a batch axis on every output and on some input (else requests bypass the batcher); an input
    without one (a VAD's sample rate) is shared by the requests stacked together, which hold the same value. Inputs
    whose rows are counted apart (CLIP's images and texts, see :func:`edgeserve.tensors.row_sets`) do not stack."""
    return (all(s.batch_axis is not None for s in outputs) and any(s.batch_axis is not None for s in inputs)
            and len(row_sets(inputs)) == 1)
