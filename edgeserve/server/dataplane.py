"""The one place protocol requests become ``Runtime`` calls (MLServer's DataPlane is the model).

REST and gRPC decode their wire format into :class:`InferRequest` (arrays already built by :mod:`.codec`), call
:meth:`DataPlane.infer` (or ``infer_sync`` from a thread), and encode the :class:`InferResponse`. Everything a
request can get wrong about the model — unknown model or version, missing, extra or duplicate inputs, a datatype
that is not the model's, unknown outputs — is found here, with the same message for both transports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import BatchConfig
from ..errors import EdgeserveError, first_line
from ..runtime.model import Model
from ..runtime.runtime import Runtime
from ..tensors import TensorSpec
from .codec import datatype_of
from .errors import BadRequest, Forbidden, NotFound, ProtocolError, Unavailable, from_core
from .shm import SharedMemory

if TYPE_CHECKING:
    from ..guard.explain import Explanation
    from .fanin import Siblings

log = logging.getLogger(__name__)
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration", "statistics"]
ATTRIBUTIONS = ".attributions"
"""With the request parameter ``explain: true``, each output ``y`` gets a companion ``y.attributions``."""
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}
"""Triton's platform name for each engine, as model metadata reports it."""


@dataclass
class InferRequest:
    model: str
    version: str | None
    inputs: dict[str, tuple[str, np.ndarray]]
    """name -> (datatype as sent, array)."""
    id: str | None = None
    outputs: list[str] | None = None
    """Requested output names (None: all)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_ms: float | None = None
    caller: str | None = None
    """The token's name (``anonymous`` when auth is off): who asked, for the audit log."""
    classes: dict[str, int] = field(default_factory=dict)
    """Outputs asked for as their top classes (Triton's classification extension): name -> how many."""
    shm_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Outputs to write into shared memory (Triton's extension): name -> their ``shared_memory_*`` parameters."""


@dataclass
class InferResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str | None = None
    warnings: tuple[str, ...] = ()
    """The envelope checks that warned (``("range:age", "category:city")``): sent back to the client as the
    response parameter ``envelope_warnings``, so that an answer given to inputs unlike the reference says so."""


WARNINGS = "envelope_warnings"
"""The response parameter naming the envelope checks that warned (comma-separated ``check:input``)."""
NOT_ECHOED = frozenset({"binary_data_output", "timeout"})
"""Request parameters that shape how the answer is sent or waited for; every other one is passed back with the
answer (REST and gRPC alike)."""


class DataPlane:
    """Health, metadata and inference over a :class:`Runtime`, in protocol terms."""

    def __init__(self, runtime: Runtime, *, observer: Any = None, model_control: bool = False,
                 shared_memory: bool = False) -> None:
        self.runtime = runtime
        self.siblings: Siblings | None = None
        """The other worker processes of this server (``--workers``), whose statistics are added to these."""
        self.model_control = model_control
        """Triton's repository extension on (``--model-control``): see :meth:`controlled`."""
        self.shared_memory = shared_memory
        """Triton's system shared-memory extension on (``--shared-memory``): see :meth:`shm`."""
        self._shm: SharedMemory | None = None
        self.observer = observer
        """Told of every answered request (``observe(model, version, outcome, seconds)``): the metrics."""
        self.draining = False
        """Set on SIGTERM: readiness turns false, new inference requests get 503, in-flight ones finish."""
        self._inflight = 0
        self._lock = threading.Lock()
        """Guards the in-flight count and the statistics (taken as a plain lock on the hot path: a Condition's
        ``with`` is two Python calls)."""
        self._idle = threading.Condition(self._lock)
        """Wakes drain() once nothing is in flight."""
        self._counts: dict[tuple[str, int], list[int]] = {}
        """Per model and version served: successes, their ns, their rows, failures, their ns, the last answer's
        time (ms since the epoch) — Triton's statistics extension; updated under ``_lock``."""

    # -- health and metadata ------------------------------------------------------------------------------------------
    def live(self) -> bool:
        return not self.runtime.closed

    def ready(self) -> bool:
        if self.draining or self.runtime.closed:
            return False
        return all(info["version"] is not None for info in self.runtime.models().values())

    def server_metadata(self) -> dict[str, Any]:
        from .. import __version__

        extensions = EXTENSIONS + ["system_shared_memory"] if self.shared_memory else EXTENSIONS
        return {"name": "edgeserve", "version": __version__, "extensions": extensions}

    def model_ready(self, name: str, version: str | None) -> bool:
        try:
            with self._model(name, version):
                return not self.draining
        except NotFound:
            return False

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        with self._model(name, version) as (model, _):
            return {"name": name, "versions": [str(v) for v in self.runtime.versions(name)],
                    "platform": PLATFORMS.get(model.engine, model.engine),
                    "inputs": [_tensor_metadata(s) for s in model.inputs],
                    "outputs": [_tensor_metadata(s) for s in model.outputs],
                    "parity": model.parity}  # beyond the protocol's fields: clients ignore what they do not know

    def model_config(self, name: str, version: str | None) -> dict[str, Any]:
        """Triton's model configuration, the fields clients read: written for Triton (its image_client reads
        ``max_batch_size`` and the input's dims and format), they run unchanged. ``max_batch_size`` is above 0 only
        when every input and output holds requests' rows on axis 0, and then the dims leave that axis out, as
        Triton's do; otherwise it is 0 and the dims are whole. -1 is a dimension of any size."""
        with self._model(name, version) as (model, _):
            batched = all(s.batch_axis == 0 for s in (*model.inputs, *model.outputs))
            limit = (model.batcher.config if model.batcher is not None else BatchConfig()).max_batch_size
            config: dict[str, Any] = {
                "name": name, "platform": PLATFORMS.get(model.engine, model.engine), "backend": model.engine,
                "version_policy": {"latest": {"num_versions": 1}},
                "max_batch_size": limit if batched else 0,
                "input": [{**_tensor_config(s, batched), "format": _format(s)} for s in model.inputs],
                "output": [_tensor_config(s, batched) for s in model.outputs]}
            if model.batcher is not None:
                config["dynamic_batching"] = {
                    "max_queue_delay_microseconds": int(model.batcher.config.max_delay_ms * 1000)}
            return config

    def model_statistics(self, name: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics extension: per model and version served, successes and failures with their time,
        inferences (rows) and engine runs, and for the serving version the time queued for the batcher and in
        the engine, and the response cache's hits and misses. All models without ``name``."""
        if name is not None:
            with self._model(name, version) as (_, number):  # an unknown model or version is a 404
                pass
        if self.siblings is None:
            return self.own_statistics(name, number if name is not None else None)
        every = self.siblings.merged_statistics()  # the other worker processes' too (``--workers``)
        return {"model_stats": [e for e in every if name is None or (e["name"], e["version"]) == (name, str(number))]}

    def own_statistics(self, name: str | None = None, number: int | None = None) -> dict[str, Any]:
        """:meth:`model_statistics` of this process alone (``name`` and its resolved version ``number``, or all)."""
        loaded = self.runtime.models()
        with self._lock:
            counts = {key: list(value) for key, value in self._counts.items()}
        if name is not None and number is not None:
            wanted = [(name, number)]
        else:
            wanted = sorted({(n, info["version"]) for n, info in loaded.items() if info["version"] is not None}
                            | set(counts))
        return {"model_stats": [_statistics(n, v, counts.get((n, v), [0] * 6), loaded.get(n, {}))
                                for n, v in wanted]}

    def model_drift(self, name: str, version: str | None) -> dict[str, Any]:
        """``Runtime.drift`` of the serving version (a version in the path must be the serving one)."""
        if version is not None:
            with self._model(name, version) as (_, number), self._model(name, None) as (_, serving):
                if number != serving:  # NOTE: by the repository's numbers: a report without a monitor has none
                    raise BadRequest(f"drift is watched on the serving version of '{name}' (version {serving}) "
                                     f"only, not version {number}")
        with self._model(name, None):  # an unknown model is a 404
            report = _plain(self.runtime.drift(name))
        if self.siblings is not None:  # the other worker processes watch their own share (``--workers``)
            from .fanin import merged_drift

            report = merged_drift(report, self.siblings.drift_of_others(name), self.siblings.pid)
        return report

    def own_drift(self) -> dict[str, Any]:
        """This process's drift report of every served model, by name (what a worker shares with the others)."""
        reports = {}
        for name, info in self.runtime.models().items():
            if info.get("version") is None:
                continue
            try:
                reports[name] = _plain(self.runtime.drift(name))
            except EdgeserveError:  # unloaded meanwhile
                continue
        return reports

    def _model(self, name: str, version: str | None) -> _Held:
        """``with self._model(name, version) as (model, number)``: the version held while the block runs, and
        any core error in it raised as its protocol error."""
        return _Held(self.runtime, name, _version(version))

    # -- Triton's system shared-memory extension ----------------------------------------------------------------------
    def shm(self) -> SharedMemory:
        """The registered shared-memory regions; raises unless the extension is on."""
        if not self.shared_memory:
            raise Forbidden("shared memory is off; start the server with --shared-memory (for clients on this "
                            "machine: it reads and writes the segments they name under /dev/shm)")
        if self._shm is None:
            self._shm = SharedMemory.for_server()
        return self._shm

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()

    # -- model control (Triton's repository extension) ----------------------------------------------------------------
    def controlled(self, parameters: Iterable[str] = ()) -> None:
        """Raise unless model control is on, or when a request sends a model of its own (Triton's ``config`` and
        ``file:`` parameters): models load from the repository alone. REST and gRPC ask before anything else;
        the scope (admin) is theirs to check. Other parameters (an unload's ``unload_dependents``) mean nothing
        here, where no model depends on another."""
        if not self.model_control:
            raise Forbidden("model control is off; start the server with --model-control (needs --token-file)")
        if any(k == "config" or k.startswith("file:") for k in parameters):
            raise BadRequest("load parameters (a config or files sent with the request) are not accepted: models "
                             "load only from the repository; publish them with 'edgeserve models publish'")

    def repository_index(self) -> list[dict[str, Any]]:
        loaded = self.runtime.models()
        out = []
        for name in self.runtime.repository.names():
            info = loaded.get(name)
            entry: dict[str, Any] = {"name": name, "state": "UNAVAILABLE"}
            if info is not None and info["version"] is not None:
                entry.update(version=str(info["version"]), state="READY")
            elif info is not None and info.get("error"):
                entry["reason"] = info["error"]
            out.append(entry)
        return out

    def load(self, name: str, caller: str | None = None) -> str:
        """Load (or reload) the repository's serving version of ``name``; never from a path or URL."""
        try:
            if name not in self.runtime.repository.names():
                raise NotFound(f"no model '{name}' in the repository; it has "
                               f"{', '.join(self.runtime.repository.names()) or 'none'}")
            version = str(self.runtime.reload(name, caller=caller, action="load"))
        except EdgeserveError as exc:
            raise from_core(exc) from None
        log.warning("model control: load %s by %s", name, caller)
        return version

    def unload(self, name: str, caller: str | None = None) -> None:
        try:
            self.runtime.unload(name, caller=caller)
        except EdgeserveError as exc:
            raise from_core(exc) from None
        log.warning("model control: unload %s by %s", name, caller)

    def refuses(self, name: str, version: str | None) -> None:
        """Raise 503 now if the model's queue would refuse a request for its wait (``max_wait_ms``): lets REST
        answer before reading the body, so an overloaded server spends little on what it turns away."""
        if version is None:  # NOTE: the serving version, not held: a racy look either way, on every request
            model: Model | None = self.runtime.serving(name)
            why = model.batcher.refuses_now() if model is not None and model.batcher is not None else None
        else:
            try:
                with self.runtime.using(name, _version(version)) as (model, _):
                    why = model.batcher.refuses_now() if model.batcher is not None else None
            except EdgeserveError:
                return  # unknown model or version: the request itself gets the right error
        if why is not None:
            if self.observer is not None:
                self.observer.observe(name, version or "", "rejected", 0.0)
            raise Unavailable(why, retry_after_s=1)

    # -- inference ----------------------------------------------------------------------------------------------------
    async def infer(self, request: InferRequest, *, waiting: Callable[[], Any] | None = None,
                    company: bool = False) -> InferResponse:
        """Run a request on the event loop's terms: in the loop when the model answers faster than a thread
        hand-off (at once, or with ``company`` — more requests read and about to start in this turn of the loop —
        at the end of the turn, together with them), else on the batcher's asyncio path (no thread parked per
        request). ``waiting``: called just before the request waits, returning something to ``cancel()`` when it
        is answered (REST watches for the client going away only then)."""
        with self._accounted(request) as served, self._model(request.model, request.version) as (model, version):
            served.append(version)
            feed, wanted = self._checked(model, request)
            served.append(_batch_rows(model, feed))
            explain = _explanation_options(request)  # NOTE: a bad value is refused before the model runs
            audit = self.runtime.audit
            started = time.perf_counter()
            try:
                if company or model.gathering(asyncio.get_running_loop()):
                    done = await model.answer_in_turn(feed, timeout_ms=request.timeout_ms)
                else:
                    done = model.answer_if_fast(feed, timeout_ms=request.timeout_ms)
                if done is None and self._inflight == 1:
                    done = await self._alone(model, feed, request.timeout_ms)
                if done is None:
                    watch = waiting() if waiting is not None else None
                    try:
                        done = await model.answer_async(feed, timeout_ms=request.timeout_ms)
                    finally:
                        if watch is not None:
                            watch.cancel()
            except EdgeserveError as exc:
                if audit is not None:
                    await audit.wait_async(self._record(model, version, feed, None, started, (), request,
                                                        type(exc).__name__))
                raise
            out, flags = done
            explained = None
            if explain is not None:
                explained = await asyncio.get_running_loop().run_in_executor(None, self._explain, model, feed,
                                                                              explain)
            if audit is not None:  # answered only once its audit record is committed
                await audit.wait_async(self._record(model, version, feed, out, started, flags, request,
                                                    detail=_explanation_detail(explained)))
            return self._response(model, request, version, out, wanted, explained, flags)

    async def _alone(self, model: Model, feed: dict[str, np.ndarray],
                     timeout_ms: float | None) -> tuple[dict[str, np.ndarray], tuple[str, ...]] | None:
        """Run the server's only request in flight now, in the event loop, if its model is quick enough for that
        (``Model.answer_if_fast(alone=True)``): at one connection a thread hand-off and back would cost more than
        the loop is held. One turn of the loop first, so requests read together with this one are counted in and
        go to the batcher together instead of each holding the loop in turn."""
        await asyncio.sleep(0)
        if self._inflight != 1:
            return None
        return model.answer_if_fast(feed, timeout_ms=timeout_ms, alone=True)

    def infer_sync(self, request: InferRequest) -> InferResponse:
        """The same from a worker thread (gRPC): the batcher's blocking path, where callers lead batches."""
        with self._accounted(request) as served, self._model(request.model, request.version) as (model, version):
            served.append(version)
            feed, wanted = self._checked(model, request)
            served.append(_batch_rows(model, feed))
            explain = _explanation_options(request)
            audit = self.runtime.audit
            started = time.perf_counter()
            try:
                out, flags = model.answer(feed, timeout_ms=request.timeout_ms)
            except EdgeserveError as exc:
                if audit is not None:
                    audit.wait(self._record(model, version, feed, None, started, (), request, type(exc).__name__))
                raise
            explained = self._explain(model, feed, explain) if explain is not None else None
            if audit is not None:
                audit.wait(self._record(model, version, feed, out, started, flags, request,
                                        detail=_explanation_detail(explained)))
            return self._response(model, request, version, out, wanted, explained, flags)

    @staticmethod
    def _explain(model: Model, feed: dict[str, np.ndarray], options: dict[str, Any]) -> Explanation:
        try:
            return model.explain(feed, **options)
        except EdgeserveError as exc:
            raise BadRequest(f"cannot explain this request: {first_line(exc)}") from None

    def _record(self, model: Model, version: int, feed: dict[str, np.ndarray], out: dict[str, np.ndarray] | None,
                started: float, flags: tuple[str, ...], request: InferRequest, outcome: str = "ok",
                detail: str | None = None) -> int:
        return self.runtime.record(model, version, feed, None, out, started, flags, request_id=request.id,
                                   caller=request.caller, outcome=outcome, name=request.model, detail=detail)

    def _accounted(self, request: InferRequest) -> _Accounted:
        """``with self._accounted(request) as served``: count the request in (refused while draining) and tell the
        observer how it ended and which version served it (appended to ``served`` once known)."""
        return _Accounted(self, request)

    def _enter(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; send the request to another replica", retry_after_s=1)
        with self._lock:
            self._inflight += 1

    def _leave(self, model: str, version: str, outcome: str, seconds: float, number: int | None = None,
               rows: int = 0) -> None:
        with self._lock:
            self._inflight -= 1
            if not self._inflight and self.draining:  # NOTE: drain() sets draining before it looks, under this lock
                self._idle.notify_all()
            if number is not None:  # NOTE: only a model and version that exist: names from requests never pile up
                counts = self._counts.get((model, number))
                if counts is None:
                    counts = self._counts[(model, number)] = [0, 0, 0, 0, 0, 0]
                ns = int(seconds * 1e9)
                if outcome == "success":
                    counts[0] += 1
                    counts[1] += ns
                    counts[2] += rows
                else:
                    counts[3] += 1
                    counts[4] += ns
                counts[5] = int(time.time() * 1000)
        if self.observer is not None:
            if number is None:
                # NOTE: a name or version from the request that served nothing is counted as "": one series for all
                # such requests, not one per name a client makes up (Prometheus keeps every label set it ever saw)
                version = ""
                if self.runtime.serving(model) is None:
                    model = ""
            self.observer.observe(model, version, outcome, seconds)

    @property
    def inflight(self) -> int:
        return self._inflight

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait (at most ``timeout_s``) for the ones running to finish; True if they did."""
        self.draining = True
        end = time.monotonic() + timeout_s
        with self._idle:
            while self._inflight:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @staticmethod
    def _checked(model: Model, request: InferRequest) -> tuple[dict[str, np.ndarray], list[str]]:
        specs = {s.name: s for s in model.inputs}
        extra = [n for n in request.inputs if n not in specs]
        if extra:
            raise BadRequest(f"model '{request.model}' has no input {', '.join(map(repr, extra))}; its inputs are "
                             f"{', '.join(specs)}")
        missing = [n for n in specs if n not in request.inputs]
        if missing:
            raise BadRequest(f"input {', '.join(map(repr, missing))} missing; model '{request.model}' needs "
                             + ", ".join(f"'{s.name}' {datatype_of(s.np_dtype)} {_dims(s)}" for s in specs.values()))
        feed = {}
        for name, (datatype, array) in request.inputs.items():
            expected = datatype_of(specs[name].np_dtype)
            if datatype != expected:
                raise BadRequest(f"input '{name}': expected datatype {expected} {_dims(specs[name])}, got {datatype}")
            if array.ndim == 2 and array.shape[1] == 1 and _batch_only(specs[name]):
                array = array.reshape(-1)  # NOTE: as the configuration's dims [1] with an empty reshape say
            feed[name] = array
        outputs = [s.name for s in model.outputs]
        if request.outputs is None:
            return feed, outputs
        unknown = [n for n in request.outputs if n not in outputs]
        if unknown:
            raise BadRequest(f"model '{request.model}' has no output {', '.join(map(repr, unknown))}; its outputs "
                             f"are {', '.join(outputs)}")
        return feed, list(dict.fromkeys(request.outputs))

    @staticmethod
    def _response(model: Model, request: InferRequest, version: int, out: dict[str, np.ndarray], wanted: list[str],
                  explained: Explanation | None = None, flags: tuple[str, ...] = ()) -> InferResponse:
        outputs = {n: out[n] for n in wanted}
        if request.classes:
            batched = {s.name for s in model.outputs if s.batch_axis == 0}
            for name, count in request.classes.items():
                outputs[name] = top_classes(name, out[name], count, name in batched)
        if explained is not None:  # one more output per output: [rows, features or patches, *output row shape]
            for name, values in explained.attributions.items():
                outputs[f"{name}{ATTRIBUTIONS}"] = values.astype(np.float32)
        return InferResponse(model=request.model, version=str(version), outputs=outputs, id=request.id,
                             warnings=flags)


def class_count(name: str, value: Any) -> int | None:
    """An output's ``classification`` parameter: how many top classes it is asked for (None: the tensor)."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"output '{name}': parameter 'classification' must be a positive whole number, got "
                         f"{value!r:.40}")
    return value


def top_classes(name: str, value: np.ndarray, count: int, batched: bool) -> np.ndarray:
    """Triton's classification extension: per row, the ``count`` highest values as ``b"<value>:<index>"``
    (BYTES, ``[rows, count]``, or ``[count]`` for an output without a batch axis), highest first, ties by the
    lower index."""
    if value.dtype.kind not in "biuf":
        raise BadRequest(f"output '{name}' is {datatype_of(value.dtype)}: classification needs numbers")
    rows = value.reshape(len(value), -1) if batched and value.ndim else value.reshape(1, -1)
    row_shape = value.shape[1:] if batched and value.ndim else value.shape
    if sum(d != 1 for d in row_shape) > 1:
        raise BadRequest(f"output '{name}' holds {list(row_shape)} per row, not one score per class: "
                         "classification needs one class axis")
    if count > rows.shape[1]:
        raise BadRequest(f"output '{name}' has {rows.shape[1]} classes; the top {count} were asked for")
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :count]
    values = np.take_along_axis(rows, order, axis=1).tolist()
    text = "{:f}:{}" if rows.dtype.kind == "f" else "{}:{}"
    out = np.empty(order.shape, dtype=object)
    for r, (vs, ix) in enumerate(zip(values, order.tolist())):
        out[r] = [text.format(v, i).encode() for v, i in zip(vs, ix)]
    return out if batched and value.ndim else out[0]


def _explanation_options(request: InferRequest) -> dict[str, Any] | None:
    """``Model.explain``'s options from the request parameters (``explain``: true; ``explain_input``: which input;
    ``explain_patch``: an image patch's side, a series window's steps), or None when no explanation is asked for."""
    params = request.parameters
    value = params.get("explain")
    said = value.lower() if isinstance(value, str) else value
    if said not in (None, True, False, 1, 0, "true", "1", "yes", "false", "0", "no"):
        raise BadRequest(f"parameter 'explain' must be true or false, got {value!r}")
    wanted = said in (True, 1, "true", "1", "yes")
    options: dict[str, Any] = {}
    patch = params.get("explain_patch")
    if patch is not None:
        if isinstance(patch, bool) or not isinstance(patch, (int, str)) or not str(patch).isdigit() \
                or not 0 < int(patch) <= 1 << 20:
            raise BadRequest(f"parameter 'explain_patch' must be a positive whole number (pixels per side of an image "
                             f"patch, steps per window of a series), got {patch!r}")
        options["patch"] = int(patch)
    name = params.get("explain_input")
    if name is not None:
        if not isinstance(name, str) or not name:
            raise BadRequest(f"parameter 'explain_input' must name one of the model's inputs, got {name!r}")
        options["input"] = name
    if options and not wanted:
        raise BadRequest(f"parameter{'s' if len(options) > 1 else ''} "
                         f"{', '.join(repr('explain_' + k) for k in options)} only apply with 'explain': true")
    return options if wanted else None


def _explanation_detail(explained: Explanation | None) -> str | None:
    """What the audit record keeps of an explanation: the input, and per row its ten strongest features."""
    if explained is None:
        return None
    return json.dumps({"explanation": {"input": explained.input, "kind": explained.kind,
                                       "reference": explained.reference, "top": explained.top(count=10)}})


def _version(version: str | None) -> int | None:
    if version in (None, ""):
        return None
    try:
        return int(version)  # type: ignore[arg-type]
    except ValueError:
        raise NotFound(f"model version must be a whole number, got {version!r:.40}") from None


def _outcome(exc: ProtocolError) -> str:
    return {400: "bad_request", 404: "not_found", 422: "model_error", 503: "rejected"}.get(exc.status, "error")


def _dims(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in spec.shape]


def _batch_rows(model: Model, feed: dict[str, np.ndarray]) -> int:
    """The rows (inferences, to Triton) of a request: along the first input's batch axis, else one."""
    first = model.inputs[0]
    value = feed.get(first.name)
    if first.batch_axis == 0 and value is not None and value.ndim:  # NOTE: the common case first, cheaply
        return len(value)  # (before the model's contract has looked at the shapes: a 0-d value is its to refuse)
    for spec in model.inputs:
        if spec.batch_axis is not None and spec.name in feed and feed[spec.name].ndim > spec.batch_axis:
            return int(feed[spec.name].shape[spec.batch_axis])
    return 1


def _statistics(name: str, version: int, counts: list[int], info: dict[str, Any]) -> dict[str, Any]:
    ok, ok_ns, rows, failed, failed_ns, last = counts

    def duration(count: float, ns: float) -> dict[str, int]:
        return {"count": int(count), "ns": int(ns)}

    serving = info.get("version") == version
    batching = (info.get("batching") or {}) if serving else {}
    timings = batching.get("timings", {})
    queue, run = timings.get("queue_s"), timings.get("run_s")
    cache = (info.get("cache") or {}) if serving else {}
    return {"name": name, "version": str(version), "last_inference": last, "inference_count": rows,
            "execution_count": batching.get("batches", ok) if batching else ok,
            "inference_stats": {
                "success": duration(ok, ok_ns), "fail": duration(failed, failed_ns),
                "queue": duration(sum(queue["counts"]), queue["sum"] * 1e9) if queue else duration(0, 0),
                "compute_input": duration(0, 0),
                "compute_infer": duration(sum(run["counts"]), run["sum"] * 1e9) if run else duration(0, 0),
                "compute_output": duration(0, 0),
                "cache_hit": duration(cache.get("hits", 0), 0), "cache_miss": duration(cache.get("misses", 0), 0)},
            "batch_stats": []}


def _tensor_config(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    """A tensor as Triton configures it. One value a row (a classifier's label ``[rows]``) with batching: dims
    ``[1]`` and an empty ``reshape``, as Triton's model configuration documents for a tensor of the batch
    dimension only (dims may not be empty there)."""
    datatype = datatype_of(spec.np_dtype)
    dims = _dims(spec)
    out: dict[str, Any] = {"name": spec.name, "data_type": "TYPE_" + ("STRING" if datatype == "BYTES" else datatype),
                           "dims": dims[1:] if batched else dims}
    if batched and _batch_only(spec):
        out["dims"], out["reshape"] = [1], {"shape": []}
    return out


def _batch_only(spec: TensorSpec) -> bool:
    """A tensor of the batch dimension only (``[rows]``): Triton configures it as dims ``[1]`` reshaped to none, and
    its clients send an input so configured as ``[rows, 1]``, which the model takes as ``[rows]``."""
    return len(spec.shape) == 1 and spec.batch_axis == 0


def _format(spec: TensorSpec) -> str:
    """An image input's layout, where its channels (1 or 3) make it plain: what Triton's image clients read."""
    dims = spec.shape
    if len(dims) == 4 and dims[1] in (1, 3) and dims[3] not in (1, 3):
        return "FORMAT_NCHW"
    if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3):
        return "FORMAT_NHWC"
    return "FORMAT_NONE"


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": datatype_of(spec.np_dtype), "shape": _dims(spec)}


class _Held:
    """:meth:`DataPlane._model`'s context manager (a class: one per request; see ``runtime.Holding``)."""

    __slots__ = ("_holding",)

    def __init__(self, runtime: Runtime, name: str, version: int | None) -> None:
        self._holding = runtime.using(name, version)

    def __enter__(self) -> tuple[Model, int]:
        try:
            return self._holding.__enter__()
        except EdgeserveError as exc:
            raise from_core(exc) from None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        self._holding.__exit__(kind, exc, tb)
        if isinstance(exc, EdgeserveError):
            raise from_core(exc) from None


class _Accounted:
    """:meth:`DataPlane._accounted`'s context manager (a class: one per request)."""

    __slots__ = ("_plane", "_request", "_started", "served")

    def __init__(self, plane: DataPlane, request: InferRequest) -> None:
        self._plane, self._request = plane, request
        self.served: list[int] = []

    def __enter__(self) -> list[int]:
        self._started = time.perf_counter()
        self._plane._enter()
        return self.served

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            outcome = "success"
        elif isinstance(exc, ProtocolError):  # NOTE: core errors arrive mapped already (by _model, inside the block)
            outcome = _outcome(exc)
        elif isinstance(exc, asyncio.CancelledError):  # the client went away (REST disconnect, gRPC cancel)
            outcome = "cancelled"
        else:
            outcome = "error"
        request = self._request
        served = self.served
        version = str(served[0]) if served else (request.version or "")
        self._plane._leave(request.model, version, outcome, time.perf_counter() - self._started,
                           served[0] if served else None, served[1] if len(served) > 1 else 0)


def _plain(report: dict[str, Any]) -> dict[str, Any]:
    """A drift report as JSON holds it (numbers and strings only): what the route answers and a worker shares."""
    return json.loads(json.dumps(report, default=str))  # type: ignore[no-any-return]
