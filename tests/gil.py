"""Whether an operation keeps the interpreter lock, observed with a busy rival thread."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def rival() -> Iterator[Callable[[Callable[[], object]], int]]:
    """Yields ``steps_during(op)``: how many steps a busy thread takes while the calling thread runs ``op`` (0 when
    ``op`` keeps the interpreter lock). The switch interval is long enough that the lock is never taken from a
    holder during ``op``; a ``sleep(0)`` first lets the rival run, so the interval starts afresh just before ``op``.

    Assert after the ``with`` block: while the rival runs, every wait for the lock takes a whole (long) switch
    interval, and pytest's report of a failure, which waits for it thousands of times, would take minutes."""
    steps = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            steps[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    thread = threading.Thread(target=spin, daemon=True)
    thread.start()

    def steps_during(op: Callable[[], object]) -> int:
        time.sleep(0)
        before = steps[0]
        op()
        return steps[0] - before

    try:
        yield steps_during
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
