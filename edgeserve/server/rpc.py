"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), with grpcio.

A thread-pool server: each RPC runs in a worker thread and calls :meth:`DataPlane.infer_sync`, the batcher's
blocking path, where the arriving caller runs the batch itself. Messages come from :mod:`.messages` (our own
descriptor pool). Auth reads the ``authorization`` metadata; ServerLive and ServerReady are public, as the REST
health routes are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from ..errors import ConfigError
from . import messages as pb
from .auth import ANONYMOUS, Tokens, require
from .codec import datatype_of, from_bytes, from_json, to_bytes
from .dataplane import NOT_ECHOED, WARNINGS, DataPlane, InferRequest, class_count
from .errors import BadRequest, ProtocolError
from .shm import SharedMemory, regions

_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


class Servicer:
    """The protocol's RPCs, Triton's ModelConfig, ModelStatistics and ModelStreamInfer, over a :class:`DataPlane`."""

    def __init__(self, plane: DataPlane, tokens: Tokens | None = None) -> None:
        self.plane = plane
        self.tokens = tokens

    def handler(self) -> grpc.GenericRpcHandler:
        rpcs: dict[str, tuple[Callable[..., Any], Any, str | None]] = {  # the token scope each needs (None: public)
            "ServerLive": (self.server_live, pb.ServerLiveRequest, None),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, None),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, "infer"),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, "infer"),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, "infer"),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, "infer"),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest, "infer"),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest, "metrics"),  # as REST's
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest, "admin"),
            "RepositoryModelLoad": (self.repository_load, pb.RepositoryModelLoadRequest, "admin"),
            "RepositoryModelUnload": (self.repository_unload, pb.RepositoryModelUnloadRequest, "admin"),
            "SystemSharedMemoryStatus": (self.shm_status, pb.SystemSharedMemoryStatusRequest, "infer"),  # as REST's
            "SystemSharedMemoryRegister": (self.shm_register, pb.SystemSharedMemoryRegisterRequest, "infer"),
            "SystemSharedMemoryUnregister": (self.shm_unregister, pb.SystemSharedMemoryUnregisterRequest, "infer"),
        }
        handlers = {name: grpc.unary_unary_rpc_method_handler(
            self._guarded(fn, scope), request_deserializer=message.FromString,
            response_serializer=lambda m: m.SerializeToString()) for name, (fn, message, scope) in rpcs.items()}
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=lambda m: m.SerializeToString())
        return grpc.method_handlers_generic_handler(pb.SERVICE, handlers)

    def _caller(self, context: grpc.ServicerContext, scope: str | None) -> str:
        """The token's name after auth (raises ProtocolError); ANONYMOUS's without tokens or for public RPCs."""
        who = ANONYMOUS
        if scope is not None and self.tokens is not None:
            who = self.tokens.caller(dict(context.invocation_metadata()).get("authorization"))
            require(who, scope)
        return who.name

    def _guarded(self, fn: Callable[[Any, str], Any], scope: str | None) -> Callable[[Any, grpc.ServicerContext], Any]:
        """``fn(request, caller)`` after auth; ``caller`` is the token's name, as on REST."""
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return fn(request, self._caller(context, scope))
            except ProtocolError as exc:
                context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
        return call

    # -- RPCs ---------------------------------------------------------------------------------------------------------
    def server_live(self, _: Any, caller: str) -> Any:
        return pb.ServerLiveResponse(live=self.plane.live())

    def server_ready(self, _: Any, caller: str) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    def model_ready(self, request: Any, caller: str) -> Any:
        return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

    def server_metadata(self, _: Any, caller: str) -> Any:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    def model_metadata(self, request: Any, caller: str) -> Any:
        meta = self.plane.model_metadata(request.name, request.version or None)
        out = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
        for key in ("inputs", "outputs"):
            for t in meta[key]:
                getattr(out, key).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return out

    def model_config(self, request: Any, caller: str) -> Any:
        config = self.plane.model_config(request.name, request.version or None)
        out = pb.ModelConfigResponse()
        out.config.name, out.config.platform, out.config.backend = config["name"], config["platform"], config["backend"]
        out.config.max_batch_size = config["max_batch_size"]
        out.config.version_policy.latest.num_versions = 1
        for t in config["input"]:
            tensor = out.config.input.add(name=t["name"], data_type=t["data_type"], format=t["format"], dims=t["dims"])
            if "reshape" in t:
                tensor.reshape.SetInParent()  # NOTE: present with no dims: a tensor of the batch dimension only
        for t in config["output"]:
            tensor = out.config.output.add(name=t["name"], data_type=t["data_type"], dims=t["dims"])
            if "reshape" in t:
                tensor.reshape.SetInParent()
        if "dynamic_batching" in config:
            out.config.dynamic_batching.max_queue_delay_microseconds = \
                config["dynamic_batching"]["max_queue_delay_microseconds"]
        return out

    def model_statistics(self, request: Any, caller: str) -> Any:
        stats = self.plane.model_statistics(request.name or None, request.version or None)
        out = pb.ModelStatisticsResponse()
        for m in stats["model_stats"]:
            entry = out.model_stats.add(name=m["name"], version=m["version"], last_inference=m["last_inference"],
                                        inference_count=m["inference_count"], execution_count=m["execution_count"])
            for key, value in m["inference_stats"].items():
                getattr(entry.inference_stats, key).MergeFrom(pb.StatisticDuration(**value))
        return out

    def model_stream_infer(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """Triton's ModelStreamInfer (tritonclient's ``start_stream`` and ``async_stream_infer``): each request on
        the stream answered in order, with its response or its error; an error does not end the stream. Auth
        once, when the stream opens. The stream holds one of the server's worker threads while it is open."""
        try:
            caller = self._caller(context, "infer")
        except ProtocolError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
        for request in requests:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self.model_infer(request, caller))
            except ProtocolError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message,
                                                  infer_response=pb.ModelInferResponse(id=request.id))

    # -- model control (DataPlane.controlled says whether it is allowed) ----------------------------------------------
    def repository_index(self, request: Any, caller: str) -> Any:
        self.plane.controlled()
        out = pb.RepositoryIndexResponse()
        for entry in self.plane.repository_index():
            if not request.ready or entry["state"] == "READY":
                out.models.add(**entry)
        return out

    def repository_load(self, request: Any, caller: str) -> Any:
        self.plane.controlled(request.parameters)
        self.plane.load(request.model_name, caller)
        return pb.RepositoryModelLoadResponse()

    def repository_unload(self, request: Any, caller: str) -> Any:
        self.plane.controlled(request.parameters)
        self.plane.unload(request.model_name, caller)
        return pb.RepositoryModelUnloadResponse()

    # -- Triton's system shared-memory extension (DataPlane.shm says whether it is on) --------------------------------
    def shm_status(self, request: Any, caller: str) -> Any:
        out = pb.SystemSharedMemoryStatusResponse()
        for region in self.plane.shm().status(request.name or None):
            out.regions[region["name"]].MergeFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return out

    def shm_register(self, request: Any, caller: str) -> Any:
        self.plane.shm().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    def shm_unregister(self, request: Any, caller: str) -> Any:
        self.plane.shm().unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    def model_infer(self, request: Any, caller: str) -> Any:
        decoded = decode(request, self.plane.shm)
        decoded.caller = caller
        response = self.plane.infer_sync(decoded)
        out = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id or "")
        for key, value in request.parameters.items():  # passed back, as REST does
            if key not in NOT_ECHOED:
                out.parameters[key].CopyFrom(value)
        if response.warnings:
            out.parameters[WARNINGS].string_param = ",".join(response.warnings)
        for name, value in response.outputs.items():
            tensor = out.outputs.add(name=name, datatype=datatype_of(value.dtype), shape=list(value.shape))
            blob = to_bytes(value)
            where = decoded.shm_outputs.get(name)
            if where is not None:  # written into the client's region; an empty entry keeps the others' order
                self.plane.shm().write(f"output '{name}'", where, blob)
                tensor.parameters["shared_memory_region"].string_param = where["shared_memory_region"]
                tensor.parameters["shared_memory_byte_size"].int64_param = len(blob)
                blob = b""
            out.raw_output_contents.append(blob)
        return out


def decode(request: Any, shm: Callable[[], SharedMemory] | None = None) -> InferRequest:
    """An :class:`InferRequest` from a ``ModelInferRequest`` (raw contents, typed contents, or shared memory:
    raw_input_contents then holds one entry per input not in shared memory, in order, as tritonclient sends)."""
    raw = list(request.raw_input_contents)
    in_shm = [{k: _parameter(v) for k, v in t.parameters.items()} if "shared_memory_region" in t.parameters else None
              for t in request.inputs]
    inline = sum(1 for p in in_shm if p is None)
    if raw and len(raw) != inline:
        raise BadRequest(f"raw_input_contents has {len(raw)} entries for {inline} inputs not in shared memory; give "
                         "one per such input, in order")
    inputs: dict[str, tuple[str, np.ndarray]] = {}
    next_raw = iter(raw)
    for tensor, p in zip(request.inputs, in_shm):
        where = f"input '{tensor.name}'"
        if tensor.name in inputs:
            raise BadRequest(f"{where} is given twice")
        shape = list(tensor.shape)
        if p is not None:
            array = from_bytes(where, tensor.datatype, shape, regions(shm).read(where, p))
        elif raw:
            array = from_bytes(where, tensor.datatype, shape, next(next_raw))
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise BadRequest(f"{where}: {tensor.datatype or 'no datatype'} travels only in raw_input_contents")
            array = from_json(where, tensor.datatype, shape, list(getattr(tensor.contents, field)))
        inputs[tensor.name] = (tensor.datatype, array)
    parameters = {k: _parameter(v) for k, v in request.parameters.items()}
    timeout = parameters.get("timeout")
    classes = {o.name: class_count(o.name, _parameter(o.parameters["classification"]))
               for o in request.outputs if "classification" in o.parameters}
    shm_outputs = {}
    for o in request.outputs:
        if "shared_memory_region" in o.parameters:
            shm_outputs[o.name] = {k: _parameter(v) for k, v in o.parameters.items()}
            regions(shm).window(f"output '{o.name}'", shm_outputs[o.name])  # checked before the model runs
    return InferRequest(model=request.model_name, version=request.model_version or None, inputs=inputs,
                        id=request.id or None, outputs=[o.name for o in request.outputs] or None,
                        parameters=parameters, classes={k: v for k, v in classes.items() if v is not None},
                        shm_outputs=shm_outputs,
                        timeout_ms=float(timeout) / 1000.0 if isinstance(timeout, (int, float)) and timeout > 0 else None)


def _parameter(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def start(plane: DataPlane, address: str, *, tokens: Tokens | None = None, workers: int = 16,
          max_message: int = 64 * 1024 * 1024, reuse_port: bool = False) -> tuple[grpc.Server, int]:
    """Start the gRPC server on ``address`` (``host:port``; port 0 picks a free one); returns it and its port.
    ``reuse_port``: share the port with sibling worker processes (else a port in use is an error, not shared)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgeserve-grpc"),
                         options=[("grpc.max_receive_message_length", max_message),
                                  ("grpc.max_send_message_length", max_message),
                                  # NOTE: grpcio sets SO_REUSEPORT by default: a second server would share the port
                                  ("grpc.so_reuseport", 1 if reuse_port else 0)])
    server.add_generic_rpc_handlers((Servicer(plane, tokens).handler(),))
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen for gRPC on {address} ({exc}); is the port in use?") from None
    server.start()
    return server, port
