"""OpenVINO behind the backend seam (the optional ``openvino`` extra). Its exceptions never travel past here.

OpenVINO compiles the same ONNX file for the CPU. Precision ``f32`` keeps fp32 arithmetic; ``bf16`` (OpenVINO's
default on CPUs with native bf16) runs most ops in bfloat16 with fp32 inputs and outputs. Compiled models are
cached by OpenVINO itself in ``CACHE_DIR`` (the session config's cache folder), keyed by the model and settings.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ..config import SessionConfig
from ..environment import cpu_info
from ..errors import ConfigError, InferenceError, ModelFileError
from ..tensors import TensorSpec, assign_batch_axes
from .base import SESSIONS, check_signature, on_inputs

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16")


def has_native_bf16() -> bool:
    """bf16 pays only where the CPU computes it natively (AVX-512 BF16 or AMX); elsewhere it is emulated."""
    return bool(set(cpu_info()["flags"]) & {"avx512_bf16", "amx_bf16"})


def default_precision() -> str:
    return "bf16" if has_native_bf16() else "f32"


class OvSession:
    """A compiled OpenVINO model with one infer request per calling thread (requests are not thread-safe)."""

    engine = "openvino"

    def __init__(self, compiled: ov.CompiledModel, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 label: str, precision: str) -> None:
        self._compiled = compiled
        self.inputs = inputs
        self.outputs = outputs
        self.precision = precision
        self.from_cache = False
        self._label = label
        self._local = threading.local()
        self._ports = {o.name: i for i, o in enumerate(outputs)}
        SESSIONS.opened()

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            if self._compiled is None:
                raise InferenceError("the session is closed")
            request = self._compiled.create_infer_request()
            self._local.request = request
        return request

    def run(self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        try:
            result = self._request().infer(dict(feed))
            values = list(result.values())
        except InferenceError:
            raise
        except Exception as exc:  # NOTE: OpenVINO raises RuntimeError subclasses from C++ with long messages
            raise self.failed(exc, feed) from exc
        if output_names is None:
            return [np.asarray(v) for v in values]
        return [np.asarray(values[self._ports[n]]) for n in output_names]

    def failed(self, exc: Exception, feed: Mapping[str, np.ndarray] | None = None) -> InferenceError:
        """The error :meth:`run` raises for an engine exception."""
        return InferenceError(f"openvino failed running {self._label}{on_inputs(feed)}: {_message(exc)}")

    def close(self) -> None:
        if self._compiled is None:
            return
        self._compiled = None  # type: ignore[assignment]
        self._local = threading.local()
        SESSIONS.closed()


class OvBackend:
    name = "openvino"

    def __init__(self) -> None:
        self._core = ov.Core()
        self._lock = threading.Lock()

    def open(self, model: str | os.PathLike[str] | bytes, config: SessionConfig, *, label: str = "",
             digest: str | None = None, view: Any = None) -> OvSession:
        if isinstance(model, bytes):
            raise ModelFileError("the OpenVINO backend loads model files, not bytes")
        path = Path(model)
        label = label or path.name
        precision = config.precision or default_precision()
        if precision not in PRECISIONS:
            raise ConfigError(f"openvino precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "bf16" and not has_native_bf16():
            raise ConfigError(f"bf16 needs a CPU with native bf16 (AVX-512 BF16 or AMX); this one has "
                              f"{', '.join(cpu_info()['flags']) or 'neither'}: use precision 'f32'")
        properties = {
            "INFERENCE_NUM_THREADS": config.threads,
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
        }
        cache = config.cache_path
        if cache is not None:
            try:
                (cache / "openvino").mkdir(parents=True, exist_ok=True, mode=0o700)
                properties["CACHE_DIR"] = str(cache / "openvino")
            except OSError as exc:
                log.info("openvino model cache disabled: %s", exc)
        try:
            with self._lock:  # Core is shared; compile calls are serialised to keep its caches consistent
                compiled = self._core.compile_model(str(path), "CPU", properties)
        except Exception as exc:
            raise ModelFileError(f"openvino cannot load {label}: {_message(exc)}") from exc
        inputs, outputs = signature(path)
        check_signature(inputs, outputs, label)
        names = [o.get_names() for o in compiled.outputs]  # NOTE: a fused node's output carries several names
        if len(names) != len(outputs) or any(o.name not in n for o, n in zip(outputs, names)):
            shown = [sorted(n) for n in names]
            raise ModelFileError(f"openvino reorders or renames the outputs of {label} ({shown}); use onnxruntime")
        return OvSession(compiled, inputs, outputs, label, precision)


def signature(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as the ONNX file declares them (OpenVINO drops the dimension names batch axes come from)."""
    import onnx

    from ..tensors import ONNX_TO_NUMPY

    model = onnx.load(str(path), load_external_data=False)
    initialisers = {t.name for t in model.graph.initializer}

    def spec(value) -> TensorSpec:
        t = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)
        dtype = ONNX_TO_NUMPY.get(t.elem_type) or onnx.TensorProto.DataType.Name(t.elem_type).lower()
        return TensorSpec(value.name, dtype, dims, None)

    inputs = [spec(v) for v in model.graph.input if v.name not in initialisers]
    outputs = [spec(v) for v in model.graph.output]
    if any(s.dtype == "str" for s in (*inputs, *outputs)):
        raise ModelFileError("openvino cannot run models with string tensors; use onnxruntime")
    return assign_batch_axes(inputs, outputs)


def _message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    # OpenVINO's messages open with a C++ source location; the useful sentence is usually the last line
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '", "[ GENERAL_ERROR ]"))]
    text = (useful or lines or [type(exc).__name__])[-1]
    return text[:400]


BACKEND = OvBackend()
