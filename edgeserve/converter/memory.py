"""The conversion's memory budget: quantisers run in a child process that is stopped when it outgrows the budget.

Calibration is where memory explodes (a quantiser keeping every activation of every calibration row of a model
with a spectrogram inside); a Python thread cannot stop C code that is allocating, but the kernel can stop a
process. So each quantisation runs in a worker process while a thread of the parent reads the worker's resident memory
every few milliseconds and kills it the moment parent + worker pass the budget. Workers are kept between jobs
(each tool is imported once per worker), and replaced after a kill or when a job left much memory behind.
The candidate is then skipped with the reason, and the conversion goes on. The parent's own peak is sampled too
and recorded in the manifest with the children's.

Linux reads resident memory from ``/proc``; elsewhere the child still runs apart but unwatched.
"""

from __future__ import annotations

import atexit
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
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def __enter__(self) -> MemoryBudget:
        self._note_parent()
        self._done.clear()
        self._watch = threading.Thread(target=self._sample, name="edgeserve-memory", daemon=True)
        self._watch.start()
        return self

    def __exit__(self, *exc: object) -> None:
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
        worker = _take_worker()
        stop = threading.Event()
        killed: dict[str, int] = {}

        def watch() -> None:
            while not stop.wait(POLL_S):
                used = rss(worker.pid)
                if used is None:
                    continue
                self.peak_child = max(self.peak_child, used)
                parent = rss() or 0
                if parent + used > self.limit:
                    killed["peak"] = parent + used
                    worker.kill()
                    return

        watcher = threading.Thread(target=watch, name="edgeserve-memory-watch", daemon=True)
        watcher.start()
        try:
            try:
                worker.conn.send((fn, args, kwargs))
                result = _receive(worker.conn, progress)
            except OSError:  # the worker died (or was stopped) while the job was being handed over
                result = None
        except BaseException:
            worker.kill()
            worker.close()
            raise
        finally:
            stop.set()
            watcher.join()
        if result is None or "peak" in killed:
            worker.close()
        else:
            _give_back(worker, self.limit)
        if "peak" in killed:
            message = (f"{what} needed more than the memory budget ({fmt(self.limit)}; stopped at {fmt(killed['peak'])}); "
                       "raise it with --max-memory, or give fewer or smaller calibration rows")
            self.stopped.append(message)
            raise MemoryBudgetExceeded(message, killed["peak"])
        if result is None:
            raise ConversionError(f"{what} stopped unexpectedly (exit code {worker.proc.returncode})")
        kind, value = result
        if kind == "error":
            raise value
        return value


class _Worker:
    """A Python process that runs jobs sent over a pipe, one at a time, until told to stop (or killed).

    Started as ``python -c`` with this process's import path, never by multiprocessing's spawn or fork server:
    those re-run the caller's ``__main__`` script in the child, so a user script calling ``convert`` at top level
    would convert again inside it."""

    def __init__(self) -> None:
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        parent_fd, child_fd = _socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)}
        code = f"from edgeserve.converter.memory import _serve_fd; _serve_fd({child_fd})"
        # NOTE: the tools' progress bars and prints (NNCF writes to stdout directly) go nowhere: what the worker
        # has to say comes back over the pipe
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child_fd,), env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        os.close(child_fd)
        self.conn = Connection(parent_fd)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        if self.alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - a worker that will not stop is killed
                self.proc.kill()
        self.proc.wait()
        self.conn.close()


def _socketpair() -> tuple[int, int]:
    import socket

    a, b = socket.socketpair()
    fa, fb = a.detach(), b.detach()
    os.set_inheritable(fb, True)
    return fa, fb


_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()


@atexit.register
def _close_idle() -> None:
    with _IDLE_LOCK:
        while _IDLE:
            _IDLE.pop().close()


def _take_worker() -> _Worker:
    with _IDLE_LOCK:
        while _IDLE:
            worker = _IDLE.pop()
            if worker.alive():
                return worker
    return _Worker()


def _give_back(worker: _Worker, limit: int) -> None:
    """Keep a healthy worker for the next job (its imports are done), unless memory a job left behind would
    count against the next one."""
    if worker.alive() and (rss(worker.pid) or 0) <= limit // 4:
        with _IDLE_LOCK:
            if len(_IDLE) < 2:
                _IDLE.append(worker)
                return
    worker.close()


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


def _serve_fd(fd: int) -> None:
    from multiprocessing.connection import Connection

    if os.environ.get("EDGESERVE_DEBUG") != "1":
        import onnxruntime

        # the worker is edgeserve's own process: the tools' sessions (opened with default options) keep their C++
        # warnings ("Removing initializer ... not used by any node") to themselves; errors still come through
        onnxruntime.set_default_logger_severity(3)
        import warnings

        # and numpy's warnings from inside the tools ("All-NaN axis encountered" in the calibrator's nanmin, when a
        # batch of calibration rows leaves a tensor all NaN: a column of missing values the model imputes)
        warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnxruntime\.quantization")
    _serve(Connection(fd))


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


def work_rows(arrays: dict[str, Any], rows: int, target_bytes: int = 8 * 2**20, most: int = 64) -> int:
    """How many rows to run at once so one batch of inputs stays near ``target_bytes`` (at least 1)."""
    total = sum(getattr(a, "nbytes", 0) for a in arrays.values())
    per_row = total / max(rows, 1)
    return max(1, min(most, int(target_bytes // max(per_row, 1))))


__all__ = ["MemoryBudget", "MemoryBudgetExceeded", "default_budget", "parse_size", "rss", "work_rows"]
