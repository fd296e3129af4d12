"""The conversion's memory budget: quantisers run in a child process that is stopped when it outgrows the budget.

Calibration is where memory explodes (a quantiser keeping every activation of every calibration row of a model
with a spectrogram inside); a Python thread cannot stop C code that is allocating, but the kernel can stop a
process. So each quantisation runs in a child forked from a small, single-threaded fork server that has already
imported the quantisers (tens of milliseconds a child, not an interpreter start), while a thread of the parent
reads the child's resident memory every few milliseconds and kills it the moment parent + child pass the budget.
One worker serves a conversion's quantisations in turn (each tool is imported once), replaced after a kill.
The candidate is then skipped with the reason, and the conversion goes on. The parent's own peak is sampled too
and recorded in the manifest with the children's.

Linux reads resident memory from ``/proc``; elsewhere the child still runs apart but unwatched.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, ConversionError

DEFAULT_FRACTION = 0.5
"""Without ``--max-memory``, a conversion may use this fraction of the machine's physical memory."""
POLL_S = 0.005
IN_PROCESS_ENV = "EDGESERVE_QUANTISE_IN_PROCESS"
"""Set to 1 to run quantisers in this process, unwatched (for a debugger; the memory budget is then not held)."""
_PRELOAD = ["edgeserve.converter.quantize", "onnx", "onnxruntime.quantization"]


class MemoryBudgetExceeded(ConversionError):
    """A step needed more memory than the conversion's budget and was stopped."""

    def __init__(self, message: str, peak: int) -> None:
        super().__init__(message)
        self.peak = peak


def machine_memory() -> int:
    """Physical memory in bytes."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def default_budget() -> int:
    return int(machine_memory() * DEFAULT_FRACTION)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int | float) -> int:
    """``8G``, ``512MiB``, ``1.5g``, ``50%`` (of the machine's memory) or a number of bytes."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        t = str(text).strip()
        if t.endswith("%"):
            try:
                pct = float(t[:-1])
            except ValueError:
                raise ConfigError(f"memory budget {text!r}: expected a percentage such as 50%") from None
            value = int(machine_memory() * pct / 100)
        else:
            m = _SIZE.match(t)
            if not m:
                raise ConfigError(f"memory budget {text!r}: expected a size such as 8G, 512M or 50%")
            value = int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    if value < 64 * 2**20:
        raise ConfigError(f"memory budget {text!r} is below 64 MiB; a conversion cannot run in that")
    return value


def rss(pid: int | None = None) -> int | None:
    """Resident memory of a process in bytes (this one by default); None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def fmt(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass
class MemoryBudget:
    """The limit for one conversion, and the peaks seen while it ran."""

    limit: int = field(default_factory=default_budget)
    peak_parent: int = 0
    peak_child: int = 0
    stopped: list[str] = field(default_factory=list)
    _watch: threading.Thread | None = field(default=None, repr=False)
    _worker: _Worker | None = field(default=None, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def __enter__(self) -> MemoryBudget:
        self._note_parent()
        self._done.clear()
        self._watch = threading.Thread(target=self._sample, name="edgeserve-memory", daemon=True)
        self._watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._done.set()
        if self._watch is not None:
            self._watch.join()
        self._note_parent()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self._note_parent()

    def _note_parent(self) -> None:
        now = rss()
        if now is not None:
            self.peak_parent = max(self.peak_parent, now)

    def record(self) -> dict[str, Any]:
        return {"budget_bytes": self.limit, "peak_rss_bytes": self.peak_parent + self.peak_child,
                "peak_parent_bytes": self.peak_parent, "peak_child_bytes": self.peak_child,
                "stopped": list(self.stopped)}

    def run(self, what: str, fn: Callable[..., Any], *args: Any,
            progress: Callable[[str, int, int], None] | None = None, **kwargs: Any) -> Any:
        """``fn(*args, progress=…, **kwargs)`` in the watched worker; its result, its exception, or
        :class:`MemoryBudgetExceeded` when parent + worker outgrew the budget (the worker is then replaced)."""
        if os.environ.get(IN_PROCESS_ENV) == "1":
            return fn(*args, progress=progress, **kwargs)
        worker = self._worker if self._worker is not None and self._worker.proc.is_alive() else _Worker()
        self._worker = worker
        stop = threading.Event()
        killed: dict[str, int] = {}

        def watch() -> None:
            while not stop.wait(POLL_S):
                used = rss(worker.proc.pid)
                if used is None:
                    continue
                self.peak_child = max(self.peak_child, used)
                parent = rss() or 0
                if parent + used > self.limit:
                    killed["peak"] = parent + used
                    worker.proc.kill()
                    return

        watcher = threading.Thread(target=watch, name="edgeserve-memory-watch", daemon=True)
        watcher.start()
        try:
            worker.conn.send((fn, args, kwargs))
            result = _receive(worker.conn, progress)
        finally:
            stop.set()
            watcher.join()
        if result is None or "peak" in killed:
            worker.close()
            self._worker = None
        elif (rss(worker.proc.pid) or 0) > self.limit // 4:  # memory a job left behind is not the next job's
            worker.close()
            self._worker = None
        if "peak" in killed:
            message = (f"{what} needed more than the memory budget ({fmt(self.limit)}; stopped at {fmt(killed['peak'])}); "
                       "raise it with --max-memory, or give fewer or smaller calibration rows")
            self.stopped.append(message)
            raise MemoryBudgetExceeded(message, killed["peak"])
        if result is None:
            raise ConversionError(f"{what} stopped unexpectedly (exit code {worker.proc.exitcode})")
        kind, value = result
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


class _Worker:
    """A child process that runs jobs sent over a pipe, one at a time, until told to stop (or killed)."""

    def __init__(self) -> None:
        ctx = _context()
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_serve, args=(child_end,), daemon=True, name="edgeserve-quantiser")
        self.proc.start()
        child_end.close()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=5)
            if self.proc.is_alive():
                self.proc.kill()
        self.proc.join()
        self.conn.close()


def _receive(conn: Any, progress: Callable[[str, int, int], None] | None) -> tuple[str, Any] | None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return None
        if message[0] == "progress":
            if progress is not None:
                progress(*message[1:])
            continue
        return message  # type: ignore[no-any-return]


def _serve(conn: Any) -> None:
    def progress(stage: str, done: int, total: int) -> None:
        conn.send(("progress", stage, done, total))

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, args, kwargs = job
        try:
            result = fn(*args, progress=progress, **kwargs)
            conn.send(("ok", result))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent, which decides
            try:
                conn.send(("error", exc))
            except Exception:  # an exception that does not pickle: send its text
                conn.send(("error", ConversionError(f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")))


_CTX: Any = None
_CTX_LOCK = threading.Lock()


def _context() -> Any:
    """The fork server's context (started once, with the quantisers imported); spawn where there is none."""
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                _CTX = multiprocessing.get_context("forkserver")
                _CTX.set_forkserver_preload([m for m in _PRELOAD if _importable(m)])
            else:
                _CTX = multiprocessing.get_context("spawn")
        return _CTX


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def work_rows(arrays: dict[str, Any], rows: int, target_bytes: int = 8 * 2**20, most: int = 64) -> int:
    """How many rows to run at once so one batch of inputs stays near ``target_bytes`` (at least 1)."""
    total = sum(getattr(a, "nbytes", 0) for a in arrays.values())
    per_row = total / max(rows, 1)
    return max(1, min(most, int(target_bytes // max(per_row, 1))))


__all__ = ["MemoryBudget", "MemoryBudgetExceeded", "default_budget", "parse_size", "rss", "work_rows"]
