"""Thread pools started on first use: a process that never needs one (a CLI run, a synchronous caller) never starts
its threads or imports ``concurrent.futures``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor


class LazyPool:
    """``max_workers`` threads named ``prefix``-N, created by the first :meth:`submit`, each ``nice`` steps below
    the priority of the thread that starts it (see :mod:`edgeserve.priority`)."""

    def __init__(self, max_workers: int, prefix: str, *, nice: int = 0) -> None:
        self._max_workers = max_workers
        self._prefix = prefix
        self._nice = nice
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor  # NOTE: here, only for who needs it

                    from .priority import lower_this_thread

                    nice = self._nice
                    self._pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix=self._prefix,
                                                    initializer=(lambda: lower_this_thread(nice)) if nice else None)
                pool = self._pool
        return pool.submit(fn, *args)
