"""The retraining trigger's actions: a Python callback, a command (argument list, no shell, the event as JSON on
its stdin) and a webhook (POST of the event as JSON), run on one background thread with retries and timeouts, so
a request never waits for them. A full queue drops the event and counts it."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import TriggerConfig

log = logging.getLogger(__name__)
QUEUE = 64


class Trigger:
    """Runs a :class:`TriggerConfig`'s actions for each event handed to :meth:`fire`."""

    def __init__(self, config: TriggerConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.history: deque[dict[str, Any]] = deque(maxlen=32)
        """The last events and how each action went."""
        self.dropped = 0
        self.listeners: list[Callable[[dict[str, Any], dict[str, str]], None]] = []
        """Called with (event, outcome per action) after the actions ran (the runtime's audit log listens)."""
        self._sleep = sleep
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def fire(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for the actions; never blocks."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="edgeserve-trigger", daemon=True)
                self._thread.start()
            self._idle.clear()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            log.warning("retraining trigger: %d events queued, dropped one", QUEUE)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every queued event's actions have run (for tests and shutdown)."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _work(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            outcome = self._act(event)
            self.history.append({"event": event, "outcome": outcome})
            for listener in self.listeners:
                try:
                    listener(event, outcome)
                except Exception:  # a listener's failure must not stop the trigger
                    log.exception("retraining trigger: a listener failed")
            if self._queue.empty():
                self._idle.set()

    def _act(self, event: dict[str, Any]) -> dict[str, str]:
        outcome = {}
        c = self.config
        if c.callback is not None:
            callback = c.callback
            outcome["callback"] = self._attempt(lambda: callback(event), retries=0)
        if c.command:
            outcome["command"] = self._attempt(lambda: self._run_command(event), retries=c.retries)
        if c.webhook:
            outcome["webhook"] = self._attempt(lambda: self._post(event), retries=c.retries)
        return outcome

    def _attempt(self, action: Callable[[], Any], retries: int) -> str:
        delay = 0.5
        for attempt in range(retries + 1):
            try:
                action()
                return "ok" if attempt == 0 else f"ok after {attempt + 1} attempts"
            except Exception as exc:  # noqa: BLE001 - any failure of user code or the network is reported, not raised
                why = f"{type(exc).__name__}: {exc}"[:300]
                if attempt == retries:
                    log.warning("retraining trigger failed after %d attempts: %s", attempt + 1, why)
                    return f"failed: {why}"
                self._sleep(delay)
                delay *= 2
        return "failed"  # pragma: no cover

    def _run_command(self, event: dict[str, Any]) -> None:
        import subprocess  # NOTE: here and below: loading a model never pays for these imports

        done = subprocess.run(list(self.config.command), input=json.dumps(event).encode(), capture_output=True,
                              timeout=self.config.timeout_s, check=False, shell=False)
        if done.returncode != 0:
            raise RuntimeError(f"exit status {done.returncode}: {done.stderr.decode(errors='replace')[-200:]}")

    def _post(self, event: dict[str, Any]) -> None:
        import urllib.error
        import urllib.request

        assert self.config.webhook is not None
        request = urllib.request.Request(self.config.webhook, data=json.dumps(event).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "edgeserve"})
        with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:  # noqa: S310 - http(s) only
            if response.status >= 300:
                raise urllib.error.HTTPError(self.config.webhook, response.status, "not accepted", response.headers, None)
