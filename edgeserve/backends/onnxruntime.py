"""onnxruntime behind the backend seam. Its exceptions never travel past this module."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..config import SessionConfig
from ..errors import InferenceError, ModelFileError
from ..modelfile import sha256_file
from ..priority import lowered
from ..tensors import TensorSpec, assign_batch_axes, dtype_from_ort, guess_batch_axis, normalise_dims
from .base import SESSIONS, check_signature, on_inputs
from .graph_cache import GraphCache

log = logging.getLogger(__name__)

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(config: SessionConfig, optimized_model_path: str | None = None) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = config.threads
    opts.inter_op_num_threads = config.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL if config.inter_op_threads == 1 else ort.ExecutionMode.ORT_PARALLEL
    opts.graph_optimization_level = _LEVELS[config.optimization_level]
    # fatal only: a failed run is raised as InferenceError with the engine's message, so its error log line (one per
    # failed request, coloured, on stderr) would only repeat it; warnings about unused initialisers are noise
    opts.log_severity_level = 4
    if not config.spin_wait:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if optimized_model_path:
        opts.optimized_model_filepath = optimized_model_path
    return opts


class OrtSession:
    """An ``InferenceSession`` with edgeserve's signature and error mapping."""

    engine = "onnxruntime"

    def __init__(self, session: ort.InferenceSession, label: str, *, nice: int = 0) -> None:
        self._session = session
        self._label = label
        self.nice = nice
        """How far below the process its worker threads run: where a batcher leads its batches too."""
        self.inputs, self.outputs = assign_batch_axes([_spec(a) for a in session.get_inputs()],
                                                      [_spec(a) for a in session.get_outputs()])
        check_signature(self.inputs, self.outputs, label)
        self._run = session.run
        # NOTE: the C session's own run, for Model.predict's unbatched fast path: InferenceSession.run adds only
        # input-name validation (the input contract has done it) and a fallback between execution providers
        # (edgeserve runs the CPU provider alone) — about a microsecond a call. Absent in another onnxruntime
        # build: then the public run is used.
        sess = getattr(session, "_sess", None)
        self.engine_run = sess.run if sess is not None and callable(getattr(sess, "run", None)) else None
        """``engine_run(output_names, feed, None)``: the engine's run, errors untranslated (see :meth:`failed`)."""
        self.from_cache = False
        SESSIONS.opened()

    def run(self, feed: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        try:
            return self._run(output_names, feed)
        except Exception as exc:  # NOTE: onnxruntime's pybind exceptions share no public base class
            raise self.failed(exc, feed) from exc

    def failed(self, exc: Exception, feed: Mapping[str, np.ndarray] | None = None) -> InferenceError:
        """The error :meth:`run` raises for an engine exception."""
        text = _message(exc)
        hint = ""
        if "cannot be reshaped to the requested shape" in text:
            # NOTE: the usual cause is an exporter that traced a size as a constant (torch's legacy exporter does
            # this in nn.MultiheadAttention), so the graph declares a dimension variable it cannot take
            hint = (". The model declares these sizes variable but its graph holds one fixed: send inputs of the "
                    "size it was exported with, or export it again with that dimension dynamic")
        return InferenceError(f"onnxruntime failed running {self._label}{on_inputs(feed)}: {text}{hint}")

    def close(self) -> None:
        if self._session is None:
            return
        self._session = None  # type: ignore[assignment]
        self._run = _closed_run
        self.engine_run = None
        SESSIONS.closed()


def _closed_run(*_args, **_kwargs):
    raise InferenceError("the session is closed")


class OrtBackend:
    name = "onnxruntime"

    def open(self, model: str | os.PathLike[str] | bytes, config: SessionConfig, *, label: str = "",
             digest: str | None = None, view: Any = None) -> OrtSession:
        """Load a model. With a graph cache configured, the optimised graph is taken from it when present and
        stored in it otherwise (``digest``, the model file's sha256, saves hashing the file again)."""
        label = label or (str(model) if not isinstance(model, bytes) else "model")
        facts = _Facts(model, view)
        cache = _cache_for(model, config, facts)
        if cache is None:
            return self._open(model, session_options(config), label, config.nice, facts.avoid(config))
        graph_cache, path = cache
        key = graph_cache.key(digest or sha256_file(path), "onnxruntime", ort.__version__,
                              {"level": config.optimization_level})
        hit = graph_cache.lookup(key)
        if hit is not None:
            opts = session_options(config)
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimised
            try:
                session = self._open(hit, opts, label, config.nice)
                session.from_cache = True
                return session
            except ModelFileError as exc:
                log.warning("cached graph for %s does not load (%s); rebuilding it", label, exc)
                graph_cache.discard(key)
        staged = graph_cache.staging_path(key)
        if staged is None:
            return self._open(path, session_options(config), label, config.nice, facts.avoid(config))
        try:
            session = self._open(path, session_options(config, str(staged)), label, config.nice,
                                 facts.avoid(config))
        except ModelFileError:
            staged.unlink(missing_ok=True)
            raise
        graph_cache.commit(staged, key)
        return session

    @staticmethod
    def _open(model: str | os.PathLike[str] | bytes, opts: ort.SessionOptions, label: str, nice: int,
              disabled: Sequence[str] = ()) -> OrtSession:
        try:
            session = lowered(nice, lambda: ort.InferenceSession(  # its worker threads start at that priority
                model if isinstance(model, bytes) else os.fspath(model), sess_options=opts,
                providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled) or None,
            ))
        except Exception as exc:
            raise ModelFileError(f"onnxruntime cannot load {label}: {_message(exc)}") from exc
        return OrtSession(session, label, nice=nice)


class _Facts:
    """What the backend needs to know about a model file, read from its wire view only when asked."""

    def __init__(self, model: str | os.PathLike[str] | bytes, view: Any) -> None:
        self._model = model
        self._view = view

    @property
    def view(self) -> Any:
        if self._view is None:
            from ..onnxwire import read_model

            model = self._model
            self._view = read_model(model if isinstance(model, bytes) else Path(model).read_bytes())
        return self._view

    def external_data(self) -> bool:
        from ..modelfile import uses_external_data

        return uses_external_data(self.view)

    def avoid(self, config: SessionConfig) -> tuple[str, ...]:
        """Optimisers to turn off for this graph.

        NOTE: onnxruntime (1.32 here) crashes the whole process with a segmentation fault in its NCHWc layout
        transformer — part of the "all" level only — on graphs that compute in float16 (seen on fp16 conversions
        of a transformer encoder and of a convolutional-recurrent OCR model; the smallest case is Cast ->
        Transpose -> MatMul on float16 weights). Its NCHWc kernels are float32-only, so turning the transformer
        off costs such a graph nothing."""
        if config.optimization_level != "all":
            return ()
        from ..modelfile import computes_in_half

        return ("NchwcTransformer",) if computes_in_half(self.view) else ()


def _cache_for(model: str | os.PathLike[str] | bytes, config: SessionConfig,
               facts: _Facts) -> tuple[GraphCache, Path] | None:
    """The cache to use for this load, or None: no folder configured, bytes, optimisation off, or external data
    (an optimised graph with weights over 2 GiB cannot be written as one file)."""
    root = config.cache_path
    if root is None or isinstance(model, bytes) or config.optimization_level == "disable":
        return None
    path = Path(model)
    if path.stat().st_size > 1_500_000_000 or facts.external_data():
        return None
    return GraphCache(root), path


def optimize_offline(src: str | os.PathLike[str], dst: str | os.PathLike[str], level: str = "basic") -> None:
    """Write the graph onnxruntime produces at ``level``. ``basic`` stays portable across CPUs and engines."""
    config = SessionConfig(optimization_level=level, intra_op_threads=1)  # type: ignore[arg-type]
    try:
        ort.InferenceSession(os.fspath(src), sess_options=session_options(config, os.fspath(dst)), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFileError(f"onnxruntime cannot optimise {src}: {_message(exc)}") from exc


def _spec(arg) -> TensorSpec:
    shape = normalise_dims(arg.shape)
    return TensorSpec(arg.name, dtype_from_ort(arg.type), shape, guess_batch_axis(shape))


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    # onnxruntime prefixes messages with "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "; keep the part a user can act on
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text.splitlines()[0][:500] if text else type(exc).__name__


BACKEND = OrtBackend()
