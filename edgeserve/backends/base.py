"""The interface every inference engine implements: load, describe, run, close."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from ..config import SessionConfig
from ..errors import ConfigError
from ..tensors import TensorSpec


class Session(Protocol):
    """One loaded model in one engine."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Run once; ``feed`` already satisfies the input contract. Engine errors become InferenceError."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def open(self, model: str | os.PathLike[str] | bytes, config: SessionConfig, *, label: str = "",
             digest: str | None = None, external_data: bool | None = None) -> Session:
        """Load a model file (already checked by :mod:`edgeserve.modelfile`). Load errors become ModelFileError.
        ``digest`` (the file's sha256) and ``external_data`` (whether it refers to external data files) save the
        backend reading the file again when the caller already knows them."""
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
