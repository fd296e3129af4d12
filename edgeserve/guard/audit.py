"""The audit log: one hash-chained row per answered request and per management action, in SQLite (WAL).

Each row carries the hash of the row before it (``prev``) and its own (``hash`` = sha256 over ``prev`` and the row's
fields), and the ``head`` table holds the last row's sequence number and hash, written in the same transaction:
:func:`verify` finds any edited, deleted, inserted or reordered row, and a truncated tail. (Someone who can write
the file can rebuild the whole chain; export :func:`head` elsewhere now and then to pin it.)

Prediction records are *group-committed*: whatever queued while the last transaction committed goes into the
next one, written by a caller waiting for it (a thread that finds the database free, an event loop at the end of
its turn), in bounded mode by a background thread. In ``durability="ack"`` (the default) a caller is answered only
after its record is committed (:meth:`AuditLog.wait`); WAL with ``synchronous=NORMAL`` makes a committed
transaction survive the process being killed (``sync="full"`` also survives power loss, at an fsync per
commit). ``durability="bounded"`` answers at once and queues at most ``max_queue`` records; what does not fit is
dropped, and the number dropped is itself written to the log. Management actions always commit before
:meth:`AuditLog.action` returns.

Retention (:meth:`AuditLog.prune`) deletes the oldest rows and appends a ``checkpoint`` row carrying the hash of
the last row it deleted, so the chain still verifies from where it now starts.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import held
from ..errors import AuditError, ConfigError

GENESIS = "0" * 64
FIELDS = ("seq", "time", "kind", "request_id", "model", "version", "digest", "input_digest", "output", "latency_us",
          "caller", "outcome", "flags", "detail", "prev", "hash")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, time REAL NOT NULL, kind TEXT NOT NULL, request_id TEXT, model TEXT, version TEXT,
    digest TEXT, input_digest TEXT, output TEXT, latency_us INTEGER, caller TEXT, outcome TEXT, flags TEXT,
    detail TEXT, prev TEXT NOT NULL, hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS records_model_time ON records (model, time);
CREATE INDEX IF NOT EXISTS records_request ON records (request_id);
CREATE TABLE IF NOT EXISTS head (one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
INSERT OR IGNORE INTO head (one, seq, hash) VALUES (1, 0, '%s');
CREATE TRIGGER IF NOT EXISTS records_follow_the_head BEFORE INSERT ON records
WHEN NEW.seq IS NOT (SELECT seq FROM head) + 1 OR NEW.prev IS NOT (SELECT hash FROM head)
BEGIN SELECT RAISE(ABORT, 'edgeserve audit: stale head'); END;
CREATE TRIGGER IF NOT EXISTS records_move_the_head AFTER INSERT ON records
BEGIN UPDATE head SET seq = NEW.seq, hash = NEW.hash WHERE one = 1; END;
""" % ("0" * 64)
STALE = "edgeserve audit: stale head"
MAX_GROUP = 8192
"""Records per transaction at most."""
WINDOW_S = 0.001
"""How long the writer lets records gather after the first arrives (unless ``GATHER`` are queued already): a
group of many records costs one commit, where one per record would bound throughput by the commit rate."""
GATHER = 256


MAX_ROWS_BITS = 10
"""Rows per INSERT statement at most: 2**10 x 16 fields stays under SQLite's 32,766 bound parameters."""
STATEMENTS = 256
"""INSERT statements (one per group size) kept prepared."""


@functools.lru_cache(maxsize=STATEMENTS)
def _insert(rows: int) -> str:
    """One INSERT of ``rows`` rows (see :meth:`AuditLog._commit`)."""
    one = f"({', '.join('?' * len(FIELDS))})"
    return f"INSERT INTO records ({', '.join(FIELDS)}) VALUES {', '.join([one] * rows)}"


def _digest(row: tuple[Any, ...], prev: str) -> str:
    """sha256 of the previous hash and the row's ``repr`` (str, int, float and None round-trip through SQLite
    unchanged, and a float's repr is exact)."""
    return hashlib.sha256(f"{prev}{row!r}".encode()).hexdigest()


def input_digest(feed: Mapping[str, np.ndarray]) -> str:
    """blake2b-128 over each input's name, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(feed) if len(feed) > 1 else feed:
        a = feed[name]
        key = (name, a.dtype.str, a.shape)
        head = _HEADS.get(key)
        if head is None:  # NOTE: one encode per input signature, not per request (5.2 -> 4.0 us, one 64-float row)
            head = f"{name}|{a.dtype.str}|{a.shape}|".encode()
            if len(_HEADS) < HEADS_KEPT:
                _HEADS[key] = head
        h.update(head)
        if a.dtype == object:
            h.update(repr(a.tolist()).encode())
        else:
            held.update(h, a)
    return h.hexdigest()


HEADS_KEPT = 4096
"""Input signatures whose digest header :func:`input_digest` keeps encoded (sequences of many lengths fill it), and
output names whose JSON spelling :func:`output_summary` keeps."""
_HEADS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}
_NAMES: dict[str, str] = {}


def output_summary(outputs: Mapping[str, np.ndarray], rows_shown: int = 8) -> str:
    """Per output: shape, digest, and for class scores of a few rows, each row's top class and score; compact JSON.

    NOTE: written as text, not a dict through ``json``: every answer's record pays it (7.6 -> 4.7 us for one
    ``[1, 10]`` output); only values ``repr`` cannot write as JSON (NaN, infinity, text) go through the encoder."""
    parts = []
    for name, a in outputs.items():
        key = _NAMES.get(name)
        if key is None:
            key = _COMPACT.encode(name)
            if len(_NAMES) < HEADS_KEPT:
                _NAMES[name] = key
        shape = ",".join(map(str, a.shape))
        kind = a.dtype.kind
        if kind == "O":
            parts.append(f'{key}:{{"shape":[{shape}]}}')
            continue
        h = hashlib.blake2b(digest_size=8)
        held.update(h, a)
        extra = ""
        if a.ndim == 2 and 1 < a.shape[1] and len(a) <= rows_shown and kind in "fiub":
            extra = ',"top":' + _numbers(_top(a.tolist()))
        elif a.ndim == 1 and len(a) <= rows_shown:
            extra = ',"values":' + _COMPACT.encode(a.tolist())
        parts.append(f'{key}:{{"shape":[{shape}],"digest":"{h.hexdigest()}"{extra}}}')
    return "{" + ",".join(parts) + "}"


def _numbers(pairs: list[list[Any]]) -> str:
    """``[[class, score], ...]`` as compact JSON: ``repr`` for ints and finite floats, as ``json`` writes them."""
    for _, v in pairs:
        if not (type(v) is int or (type(v) is float and v - v == 0.0)):  # NaN, inf, bool: the encoder's spelling
            return _COMPACT.encode(pairs)
    return "[" + ",".join([f"[{t},{v!r}]" for t, v in pairs]) + "]"


def _top(rows: list[list[Any]]) -> list[list[Any]]:
    """Each row's top class and its score, as ``argmax`` picks it (the first greatest; a NaN counts as greatest).
    NOTE: in Python, not ``a.argmax(axis=1)``: numpy's argmax gives up the interpreter lock at any size, and under
    load each request then waited to get it back behind every busy thread (see :mod:`edgeserve.held`)."""
    out = []
    for row in rows:
        t = row.index(max(row))
        if math.isnan(sum(row)):  # NaN, or inf - inf: argmax's pick is the first NaN, if there is one
            t = next((i for i, v in enumerate(row) if v != v), t)
        out.append([t, row[t]])
    return out


_COMPACT = json.JSONEncoder(separators=(",", ":"))


class AuditLog:
    """An append-only, hash-chained audit log at ``path`` (a SQLite file, created if missing)."""

    def __init__(self, path: str | os.PathLike[str], *, durability: str = "ack", sync: str = "normal",
                 max_queue: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        if durability not in ("ack", "bounded"):
            raise ConfigError(f"audit durability must be 'ack' or 'bounded', got {durability!r}")
        if sync not in ("normal", "full"):
            raise ConfigError(f"audit sync must be 'normal' or 'full', got {sync!r}")
        self.path = Path(path)
        self.durability = durability
        self.max_queue = max_queue
        self._clock = clock
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                       timeout=30.0,  # another writer's transaction: wait for it
                                       cached_statements=STATEMENTS + 16)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={sync.upper()}")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}; give a writable path") from None
        self._head: tuple[int, str] | None = None
        """The chain's last (seq, hash) as this log last wrote it; None: read it from the file."""
        self._queue: deque[tuple[int, tuple[Any, ...]]] = deque()
        self._tickets = itertools.count(1)
        self._last = 0
        self._append_lock = threading.Lock()
        self._write_lock = threading.Lock()
        """Held by whoever is writing to the database: a caller committing a group, or the background thread."""
        self._state = threading.Lock()
        """Guards the waiters, the sleepers and the committed count."""
        self._committed = 0
        self._groups = 0
        """Groups written so far."""
        self._waiters: list[tuple[int, Any, Any]] = []
        """Async callers waiting for a commit: (ticket, loop, future)."""
        self._sleepers: list[tuple[int, threading.Lock]] = []
        """Threads waiting for a commit (:meth:`_committed_by`): (ticket, a lock released to wake it)."""
        self._loops_committing: set[Any] = set()
        """Event loops with a :meth:`_commit_in_loop` scheduled."""
        self._sync = sync
        self._wake = threading.Event()
        self._closed = False
        self.dropped = 0
        self._dropped_written = 0
        self.written = 0
        self._ids = f"{uuid.uuid4().hex[:12]}-"
        self._id_count = itertools.count(1)
        self._error: str | None = None
        self._thread = threading.Thread(target=self._background, name="edgeserve-audit", daemon=True)
        self._thread.start()

    # -- writing --------------------------------------------------------------------------------------------------
    def new_request_id(self) -> str:
        return f"{self._ids}{next(self._id_count)}"

    def record(self, *, request_id: str | None, model: str, version: Any, digest: str | None,
               input_digest: str | None, output: str | None, latency_s: float, caller: str | None, outcome: str,
               flags: str = "", kind: str = "predict", detail: str | None = None) -> int:
        """Queue a prediction record; returns the ticket :meth:`wait` takes (0 when it was dropped)."""
        if self._closed:
            raise AuditError("the audit log is closed")
        row = (self._clock(), kind, request_id, model, None if version is None else str(version), digest,
               input_digest, output, int(latency_s * 1e6), caller, outcome, flags, detail)
        if self.durability == "bounded":
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                return 0
            ticket = self._enqueue(row)
            if len(self._queue) >= GATHER and self._write_lock.acquire(blocking=False):
                self._write_held()  # a full group: this caller writes it (see _write_held)
            return ticket
        return self._enqueue(row)

    def _enqueue(self, row: tuple[Any, ...]) -> int:
        with self._append_lock:  # ticket order is queue order
            ticket = self._last = next(self._tickets)
            self._queue.append((ticket, row))
        # NOTE: only bounded mode wakes the background thread: an ack record's caller writes it (a thread waiting, an
        # event loop at the end of its turn), and waking that thread per record had it take groups, and the
        # interpreter lock, from the loop (py-spy on `edgeserve serve`, 32 connections: 19% of the samples writing
        # on that thread, 4% on the loop). A record nobody waits for (a drift event) goes with the next group, or
        # the background thread's poll (0.5 s) writes it.
        if self.durability == "bounded" and not self._wake.is_set():
            self._wake.set()
        return ticket

    def wait(self, ticket: int, timeout: float | None = 30.0) -> None:
        """Block until the record with ``ticket`` is committed (at once in bounded mode)."""
        if ticket == 0 or self.durability == "bounded" or self._committed >= ticket:
            return
        self._committed_by(ticket, timeout)

    def _committed_by(self, ticket: int, timeout: float | None) -> None:
        """Wait for ``ticket``'s commit, writing the group it is in when the database is free.

        NOTE: the waiting callers write the records themselves ("combining"): the first to find the database free
        commits everything queued, every record queued meanwhile goes into the next group, written by one of its
        own waiters. A background writer thread competes with every request thread for the interpreter lock and
        under load is starved of it (measured at 32 callers: 86 us per record against ~10 alone). A caller that
        finds the database busy sleeps on a lock of its own, released when its record is committed or when the
        writer leaves records queued for it to write: waking every waiter at every commit (a condition's
        notify_all) had ~30 threads take the interpreter lock in turn per group, only to sleep again. Measured at
        32 callers, digits MLP: with another process busy on one of the two cores, 6.3k -> 16.2k answers/s; on
        an idle machine no difference (10.5-11.9k against 10.5-10.9k)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._committed >= ticket:
                return
            if self._error is not None:
                raise AuditError(f"the audit log {self.path} cannot be written: {self._error}")
            if self._write_lock.acquire(blocking=False):
                self._write_held(ticket)
                continue
            sleeper = threading.Lock()
            sleeper.acquire()
            with self._state:
                if self._committed >= ticket or self._error is not None:
                    continue
                self._sleepers.append((ticket, sleeper))
                free = not self._write_lock.locked()  # released since: write it ourselves, do not sleep
            left = None if end is None else end - time.monotonic()
            if not free and not sleeper.acquire(timeout=-1 if left is None else max(left, 0.0)):
                with self._state:
                    if (ticket, sleeper) in self._sleepers:
                        self._sleepers.remove((ticket, sleeper))
                if self._committed < ticket:
                    raise AuditError(f"the audit log {self.path} did not commit within {timeout} s")
            elif free:
                with self._state:
                    if (ticket, sleeper) in self._sleepers:
                        self._sleepers.remove((ticket, sleeper))

    async def wait_async(self, ticket: int) -> None:
        """:meth:`wait` for asyncio: no thread is parked. The loop itself commits, once per turn, the records of
        every request that waits in that turn (see :meth:`_commit_in_loop`); with ``sync="full"`` (an fsync per
        commit, too long to hold a loop) the background thread does."""
        if ticket == 0 or self.durability == "bounded" or self._committed >= ticket:
            return
        import asyncio

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._state:
            if self._committed >= ticket:
                return
            self._waiters.append((ticket, loop, future))
        if self._sync == "full":
            self._wake.set()
        elif loop not in self._loops_committing:
            self._loops_committing.add(loop)
            loop.call_soon(self._commit_in_loop, loop)
        await future

    def _commit_in_loop(self, loop: Any) -> None:
        """Commit what is queued, on the event loop, after the requests of this turn have queued their records.

        NOTE: the loop, not the background thread: handing every group to that thread cost the loop the
        interpreter lock at each hand-off (measured on ``edgeserve serve``, digits MLP, wrk, 32 connections, one
        run: 6.5-6.7k answers/s and 1.17 cores with the thread writing, 7.2k and 0.99 cores with the loop; 9.3k
        without the audit; at 1 connection no difference, 2.9-3.0k against 6.1k without). A WAL commit with
        ``synchronous=NORMAL`` is a write to the log file, no fsync: tens of microseconds, one per turn however
        many requests wait in it. When another writer holds the database, its group takes these records along
        (it writes until the queue is empty), and the background thread catches any it leaves."""
        self._loops_committing.discard(loop)
        if not self._queue:
            return
        if self._write_lock.acquire(blocking=False):
            try:
                self._write_held()
            except AuditError:
                pass  # the waiters are told: _write_group set the error and woke them
        else:
            self._wake.set()

    def action(self, *, action: str, model: str | None = None, version: Any = None, digest: str | None = None,
               caller: str | None = None, outcome: str = "ok", detail: Mapping[str, Any] | None = None) -> None:
        """Record a management action (publish, reload, rollback, load, unload, doctor, trigger…) and wait for
        its commit, whatever the durability mode."""
        row = (self._clock(), "action", None, model, None if version is None else str(version), digest, None, None,
               None, caller, outcome, action, json.dumps(detail, sort_keys=True, default=str) if detail else None)
        self._committed_by(self._enqueue(row), None)

    def _write_held(self, ticket: int = 0) -> None:
        """Write what is queued, in groups, then release the write lock (which the caller acquired): until
        ``ticket`` is committed and then one group more at most (a caller's answer must not wait behind everyone
        else's records), handing what is left to a sleeping caller."""
        groups = 0
        try:
            while (self._queue or self.dropped != self._dropped_written) and (self._committed < ticket
                                                                                or groups < 2):
                self._write_group()
                groups += 1
        finally:
            self._write_lock.release()
        if self._queue:
            with self._state:
                if self._sleepers:  # the oldest waiter writes the rest
                    self._sleepers.pop(0)[1].release()
                    return
            self._wake.set()

    def _write_group(self) -> None:
        group: list[tuple[int, tuple[Any, ...]]] = []
        queue = self._queue
        while queue and len(group) < MAX_GROUP:
            group.append(queue.popleft())
        if self.dropped != self._dropped_written:
            lost = self.dropped - self._dropped_written
            self._dropped_written = self.dropped
            group.append((0, (self._clock(), "dropped", None, None, None, None, None, None, None, None, "ok",
                              "", json.dumps({"dropped": lost, "total": self.dropped}))))
        try:
            self._commit([row for _, row in group])
        except sqlite3.Error as exc:
            with self._state:
                self._error = str(exc)
                self._groups += 1
                for _, sleeper in self._sleepers:
                    sleeper.release()
                self._sleepers = []
                failed, self._waiters = self._waiters, []
            error = AuditError(f"the audit log {self.path} cannot be written: {exc}")
            for _, loop, future in failed:  # an async caller waits on its future alone: tell it too
                _settle(loop, future, error)
            raise error from None
        last = max(t for t, _ in group)
        with self._state:
            if last > self._committed:
                self._committed = last
            committed = self._committed
            self._groups += 1
            ready = [w for w in self._waiters if w[0] <= committed]
            if ready:
                self._waiters = [w for w in self._waiters if w[0] > committed]
            sleepers = self._sleepers
            if sleepers and sleepers[0][0] <= committed:  # tickets only grow: the committed ones lead the list...
                woken = [w for w in sleepers if w[0] <= committed]  # ... mostly: a retry appends late
                self._sleepers = [w for w in sleepers if w[0] > committed]
                for _, sleeper in woken:
                    sleeper.release()
        for _, loop, future in ready:
            _settle(loop, future, None)

    def _background(self) -> None:
        """Write what no caller will: bounded-mode records (after a short gathering window), async waiters'
        records, a flush's."""
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            if not self._queue and self.dropped == self._dropped_written:
                if self._closed:
                    return
                continue
            if self.durability == "bounded" and len(self._queue) < GATHER and not self._closed:
                time.sleep(WINDOW_S)
            elif self.durability == "ack" and not (self._waiters and self._sync == "full") and not self._closed:
                time.sleep(WINDOW_S)  # ack callers (threads, event loops) write their own groups; this only
                # catches what they leave
            if not self._write_lock.acquire(timeout=0.5):
                continue
            try:
                self._write_held()
            except AuditError:
                return
            if self._queue:
                self._wake.set()

    def _commit(self, rows: list[tuple[Any, ...]]) -> None:
        """Chain ``rows`` onto the log's head and write them, up to ``2**MAX_ROWS_BITS`` rows per transaction.

        Each transaction is one multi-row INSERT (autocommit): the schema's triggers refuse a row that does not
        follow the head and move the head along, so the rows and the head change together. The head is kept here
        and re-read only when another writer — a ``serve --workers`` process, a ``models publish`` next to a
        server — has moved it (the insert fails as stale): all of them extend one chain.

        NOTE: one statement per group, not BEGIN / SELECT / ``executemany`` / COMMIT: sqlite3 releases the
        interpreter lock around every step, and under load each re-acquisition waits behind the request threads
        (0.2-1.5 ms per statement measured at 32 callers)."""
        db = self._db
        limit = 1 << MAX_ROWS_BITS
        for start in range(0, len(rows), limit):
            part = rows[start:start + limit]
            for attempt in range(5):
                if self._head is None:
                    seq, prev = db.execute("SELECT seq, hash FROM head").fetchone()
                    self._head = (int(seq), str(prev))
                seq, prev = self._head
                params: list[Any] = []
                for row in part:
                    seq += 1
                    full = (seq, *row)
                    digest = _digest(full, prev)
                    params += (*full, prev, digest)
                    prev = digest
                try:
                    db.execute(_insert(len(part)), params)
                except sqlite3.DatabaseError as exc:
                    if STALE not in str(exc) or attempt == 4:
                        raise
                    self._head = None  # another writer moved it: read it again
                    continue
                self._head = (seq, prev)
                break
        self.written += len(rows)

    # -- retention ------------------------------------------------------------------------------------------------
    def prune(self, *, older_than_s: float | None = None, keep_rows: int | None = None) -> int:
        """Delete the oldest rows (older than ``older_than_s`` seconds, or all but the newest ``keep_rows``) and
        append a checkpoint row with the hash of the last one deleted; returns how many were deleted."""
        self.flush()
        db = self._db
        with self._write_lock:  # between groups
            cut = 0
            if older_than_s is not None:
                row = db.execute("SELECT MAX(seq) FROM records WHERE time < ?", (self._clock() - older_than_s,)).fetchone()
                cut = max(cut, int(row[0] or 0))
            if keep_rows is not None:
                cut = max(cut, int(db.execute("SELECT seq FROM head").fetchone()[0]) - keep_rows)
            first = db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
            if not cut or first is None or cut < first:
                return 0
            last_hash = db.execute("SELECT hash FROM records WHERE seq = ?", (cut,)).fetchone()[0]
            db.execute("BEGIN IMMEDIATE")
            count = db.execute("DELETE FROM records WHERE seq <= ?", (cut,)).rowcount
            db.execute("COMMIT")
            detail = json.dumps({"pruned_through": cut, "pruned_hash": last_hash, "count": count})
            self._commit([(self._clock(), "checkpoint", None, None, None, None, None, None, None, None, "ok", "",
                           detail)])
            return int(count)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Wait until everything queued so far is committed (writing it here when the database is free)."""
        with self._append_lock:
            ticket = self._last
        if ticket:
            self._committed_by(ticket, timeout)
        if self.dropped != self._dropped_written:
            with self._write_lock:
                if self.dropped != self._dropped_written:
                    self._write_group()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        except AuditError:
            pass  # the error was raised to the callers waiting; closing still releases the file
        self._closed = True
        self._wake.set()
        self._thread.join(10)
        with self._write_lock:
            self._db.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resolve(future: Any, error: BaseException | None = None) -> None:
    if not future.done():
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _settle(loop: Any, future: Any, error: BaseException | None) -> None:
    """Resolve an async waiter's future: at once on its own loop (a commit the loop made), else through it."""
    import asyncio

    if asyncio._get_running_loop() is loop:
        _resolve(future, error)
    else:
        loop.call_soon_threadsafe(_resolve, future, error)


# -- reading --------------------------------------------------------------------------------------------------------
def _open_read(path: str | os.PathLike[str]) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise AuditError(f"no audit log at {p}")
    try:
        db = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)  # as_uri: a '?' or '#' in the path
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit log {p}: {exc}") from None
    try:  # NOTE: connecting reads nothing; a file that is no audit log fails here, not at the first query
        db.execute("SELECT seq FROM records LIMIT 1").fetchone()
    except sqlite3.Error as exc:
        db.close()
        raise AuditError(f"{p} is not an edgeserve audit log ({exc}); give REPO, or REPO/.edgeserve/audit.sqlite3"
                         ) from None
    return db


def query(path: str | os.PathLike[str], *, model: str | None = None, since: float | None = None,
          request_id: str | None = None, kind: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Rows as dicts, oldest first, filtered by model, time (epoch seconds), request id or kind."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("model", model), ("request_id", request_id), ("kind", kind)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    sql = f"SELECT {', '.join(FIELDS)} FROM records" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    db = _open_read(path)
    try:
        for row in db.execute(sql, args):
            yield dict(zip(FIELDS, row))
    finally:
        db.close()


@dataclass
class Verdict:
    ok: bool
    rows: int
    problems: list[str]
    head: tuple[int, str] | None


def verify(path: str | os.PathLike[str], *, limit: int = 20) -> Verdict:
    """Walk the chain: every row's hash must match its fields, its ``prev`` the row before's hash, sequence
    numbers must run without gaps, and the last row must be the recorded head."""
    db = _open_read(path)
    problems: list[str] = []
    rows = 0
    try:
        head = db.execute("SELECT seq, hash FROM head").fetchone()
        checkpoints = {}
        for (detail,) in db.execute("SELECT detail FROM records WHERE kind = 'checkpoint'"):
            try:
                d = json.loads(detail)
                checkpoints[int(d["pruned_through"])] = str(d["pruned_hash"])
            except (ValueError, KeyError, TypeError):
                problems.append("a checkpoint row has an unreadable detail")
        prev_seq, prev_hash = None, None
        for row in db.execute(f"SELECT {', '.join(FIELDS)} FROM records ORDER BY seq"):
            rows += 1
            seq, stored_prev, stored = row[0], row[-2], row[-1]
            if prev_seq is None:
                expected_prev = GENESIS if seq == 1 else checkpoints.get(seq - 1)
                if expected_prev is None:
                    problems.append(f"row {seq}: the log starts here without a checkpoint for rows 1..{seq - 1}")
                    expected_prev = stored_prev
            else:
                expected_prev = prev_hash
                if seq != prev_seq + 1:
                    problems.append(f"rows {prev_seq + 1}..{seq - 1} are missing")
            if stored_prev != expected_prev:
                problems.append(f"row {seq}: does not follow the row before it (deleted, inserted or reordered)")
            if _digest(tuple(row[:-2]), stored_prev) != stored:
                problems.append(f"row {seq}: its contents were changed after it was written")
            prev_seq, prev_hash = seq, stored
            if len(problems) >= limit:
                break
        if head is None and rows:
            problems.append("the head record is missing")
        elif head is not None and len(problems) < limit and (prev_seq or 0, prev_hash or GENESIS) != (head[0], head[1]):
            problems.append(f"the log ends at row {prev_seq}, but its head says row {head[0]}: rows were cut from "
                            "the end or the head was changed")
    except sqlite3.DatabaseError as exc:
        problems.append(f"the file is not a readable audit log: {exc}")
        head = None
    finally:
        db.close()
    return Verdict(not problems, rows, problems, (int(head[0]), str(head[1])) if head else None)
