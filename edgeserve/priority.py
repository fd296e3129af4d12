"""Start threads below the caller's CPU priority: an engine's worker threads beside a server's event loop.

On Linux the nice value belongs to each thread, and a new thread inherits its creator's. So a session created on a
thread whose nice value was raised starts its engine's worker threads at that lower priority, and the event loop
(at the process's own priority) gets a core whenever it has work, while the workers still use every core when it
does not. An unprivileged process can lower a thread's priority but never raise it back, which is why the raise
happens on a short-lived thread of its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def supported() -> bool:
    """Whether a thread's priority can be lowered alone here (Linux)."""
    return hasattr(os, "setpriority") and os.path.isdir("/proc/self/task")


def lower_this_thread(nice: int) -> None:
    """Lower the calling thread's priority by ``nice`` steps (at most to 19); for good: it cannot be raised back.
    Nothing where priorities are per process, or where a sandbox forbids it."""
    if nice <= 0 or not supported():
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass


def lowered(nice: int, make: Callable[[], T]) -> T:
    """``make()`` run on a new thread ``nice`` steps below the caller's priority (at most 19, the lowest); what it
    starts inherits that. ``nice`` 0, or a system where priorities are per process: ``make()`` runs here."""
    if nice <= 0 or not supported():
        return make()
    out: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            lower_this_thread(nice)
            out.append(make())
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name="edgeserve-lowered", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return out[0]
