"""Keep the quantisation tools quiet without touching the host application's logging or output.

onnxruntime's quantisation tools print progress to stdout, log through the root logger (``logging.info(...)``,
which configures the root logger with a stderr handler when it has none) and, on import, call
``logging.basicConfig``. A conversion inside a web app must change none of that process-wide state: the root
logger's level, ``sys.stdout`` and other threads' logging stay as they were. So, while :func:`quiet_tools` is
active:

- records below ERROR that the tools' own code emits *in a converting thread* are filtered out (a filter on the
  root logger and on the tools' loggers, matched by thread and by the tool's source folder), so the host's own
  records, from any thread, pass;
- when the root logger has no handler, a stand-in handler keeps ``logging.info`` from configuring one, and hands
  every record that is not filtered to :data:`logging.lastResort`, exactly as Python does without handlers;
- ``print`` inside the tools' modules is shadowed by one that drops output from converting threads.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

TOOL_PACKAGES = ("onnxruntime", "onnx", "onnx_ir", "onnxscript", "nncf")
"""Packages whose log records and prints a conversion silences (in its own thread only)."""
PRINTING_MODULES = ("onnxruntime.quantization.calibrate", "onnxruntime.quantization.matmul_nbits_quantizer")
"""Tool modules that print progress with ``print``."""


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: dict[int, int] = {}  # thread id -> nesting depth
        self.folders: tuple[str, ...] = ()
        self.guard: logging.Handler | None = None
        self.loggers: list[logging.Logger] = []
        self.printing: list[ModuleType] = []


_STATE = _State()


class _ToolFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or record.thread not in _STATE.threads:
            return True
        return not record.pathname.startswith(_STATE.folders)


class _LastResort(logging.Handler):
    """Stands in for "no handler": records the filter lets through go where Python sends them without handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)


_FILTER = _ToolFilter()


def _quiet_print(*args: Any, **kwargs: Any) -> None:
    if threading.get_ident() in _STATE.threads and kwargs.get("file") in (None, sys.stdout):
        return
    builtins.print(*args, **kwargs)


def _tool_folders() -> tuple[str, ...]:
    folders = []
    for name in TOOL_PACKAGES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            folders.append(os.path.dirname(module.__file__ or "") + os.sep)
    return tuple(folders)


def _install() -> None:
    root = logging.getLogger()
    if not root.handlers:
        # NOTE: before any tool is imported: matmul_nbits_quantizer calls logging.basicConfig(level=INFO) at import,
        # which configures the host's root logger unless it already has a handler
        _STATE.guard = _LastResort()
        root.addHandler(_STATE.guard)
    import onnxruntime.quantization  # noqa: F401  - its folder must be known before its records can be matched
    _STATE.loggers = [root] + [logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict)
                               if n.split(".")[0] in TOOL_PACKAGES]
    for lg in _STATE.loggers:
        lg.addFilter(_FILTER)
    _STATE.printing = []
    for name in PRINTING_MODULES:
        try:
            module = __import__(name, fromlist=["_"])
        except Exception:  # noqa: BLE001 - an optional tool that does not import has nothing to silence
            continue
        module.print = _quiet_print  # type: ignore[attr-defined]
        _STATE.printing.append(module)
    _STATE.folders = _tool_folders()


def _uninstall() -> None:
    for lg in _STATE.loggers:
        lg.removeFilter(_FILTER)
    if _STATE.guard is not None:
        logging.getLogger().removeHandler(_STATE.guard)
        _STATE.guard = None
    for module in _STATE.printing:
        if getattr(module, "print", None) is _quiet_print:
            del module.print  # type: ignore[attr-defined]
    _STATE.loggers, _STATE.printing = [], []


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """Silence the quantisation tools in this thread while the block runs (nestable, and safe across threads)."""
    me = threading.get_ident()
    with _STATE.lock:
        if not _STATE.threads:
            _install()
        _STATE.threads[me] = _STATE.threads.get(me, 0) + 1
    try:
        yield
    finally:
        with _STATE.lock:
            _STATE.threads[me] -= 1
            if not _STATE.threads[me]:
                del _STATE.threads[me]
            if not _STATE.threads:
                _uninstall()
