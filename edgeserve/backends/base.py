"""The interface every inference engine implements: load, describe, run, close."""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from ..config import SessionConfig
from ..errors import ConfigError, InferenceError, ModelFileError
from ..tensors import NUMPY_DTYPES, TensorSpec


class Session(Protocol):
    """One loaded model in one engine."""

    engine: str
    """The engine's name: ``onnxruntime`` or ``openvino``."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run once; ``feed`` already satisfies the input contract. Engine errors become InferenceError."""
        ...

    def failed(self, exc: Exception, feed: Mapping[str, np.ndarray] | None = None) -> InferenceError:
        """The InferenceError :meth:`run` raises for this engine exception (for callers of ``engine_run``), naming
        the inputs it ran on (see :func:`on_inputs`)."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def open(self, model: str | os.PathLike[str] | bytes, config: SessionConfig, *, label: str = "",
             digest: str | None = None, view: Any = None) -> Session:
        """Load a model file (already checked by :mod:`edgeserve.modelfile`). Load errors become ModelFileError.
        ``digest`` (the file's sha256) and ``view`` (what :func:`~edgeserve.modelfile.check_model_file` returned
        for it) save the backend reading the file again when the caller already has them."""
        ...


_BACKENDS = {"onnxruntime": "edgeserve.backends.onnxruntime", "openvino": "edgeserve.backends.openvino"}
_EXTRAS = {"openvino": "openvino"}


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; available: {', '.join(sorted(_BACKENDS))}")
    try:
        module = importlib.import_module(_BACKENDS[name])
    except ImportError as exc:
        raise ConfigError(
            f"the {name} backend is not installed ({exc}); install it with: pip install 'edgeserve[{_EXTRAS[name]}]'"
        ) from None
    return module.BACKEND


def available_backends() -> list[str]:
    """Backends whose engine imports on this machine, onnxruntime first."""
    out = []
    for name in _BACKENDS:
        try:
            get_backend(name)
        except ConfigError:
            continue
        out.append(name)
    return out


def check_signature(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], label: str) -> None:
    """Refuse a model whose inputs or outputs numpy cannot hold (bfloat16, float8, int4, sequences, maps), before
    anything above the seam builds on them."""
    for kind, specs in (("input", inputs), ("output", outputs)):
        for s in specs:
            if s.dtype.startswith("seq(map("):
                raise ModelFileError(
                    f"{label}: output '{s.name}' is {s.dtype}, a ZipMap of class probabilities (skl2onnx's default "
                    "for classifiers): run `edgeserve convert` on the file, which answers the [rows, classes] "
                    "probabilities instead, or export with options={'zipmap': False}"
                )
            if s.dtype not in NUMPY_DTYPES:
                raise ModelFileError(
                    f"{label}: {kind} '{s.name}' is {s.dtype}, which edgeserve cannot exchange as a numpy array "
                    f"(it handles {', '.join(sorted(NUMPY_DTYPES))}); re-export the model with such inputs and "
                    "outputs, casting inside the graph"
                )


class SessionCount:
    """How many backend sessions are open in this process: every session counts itself in at open and out at
    close (once), so a session that an error path forgot to close shows up here instead of leaking silently."""

    def __init__(self) -> None:
        self._live = 0
        self._lock = threading.Lock()

    def opened(self) -> None:
        with self._lock:
            self._live += 1

    def closed(self) -> None:
        with self._lock:
            self._live -= 1

    def live(self) -> int:
        return self._live


SESSIONS = SessionCount()
"""The process's open backend sessions; ``SESSIONS.live()`` is how tests prove no error path leaks one."""


def on_inputs(feed: Mapping[str, np.ndarray] | None) -> str:
    """`` (on input_ids int64 [1, 100], …)``: what an engine failed on, since its own message often names only an
    internal node (a position table 64 long given 100 tokens reads "64 by 100")."""
    if not feed:
        return ""
    parts = [f"{name} {value.dtype} {list(value.shape)}" for name, value in list(feed.items())[:8]]
    return f" (on {', '.join(parts)}{', …' if len(feed) > 8 else ''})"
