"""The Open Inference Protocol over HTTP: a plain ASGI app with a small route table, no framework.

Chosen by measurement (``benchmarks/test_server.py``): on the digits MLP a framework's routing, validation and
response classes cost more than the model. The route table drives dispatch, auth, the OpenAPI document and the
tests that try every route without a token, so a new route cannot escape auth.

Order of checks on every request: auth (before routing, so probing paths without a token learns nothing), then
the route and method, then the body cap (``Content-Length`` first, then while reading), then decoding.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .auth import ANONYMOUS, Caller, Tokens, require
from .codec import from_bytes, from_json, header_length, split_binary, to_bytes, to_json
from .dataplane import NOT_ECHOED, WARNINGS, DataPlane, InferRequest, InferResponse, class_count
from .encoding import accepted, check_coding, compress, inflate
from .errors import BadRequest, MethodNotAllowed, NotFound, ProtocolError, TooLarge, UnsupportedMediaType
from .metrics import CONTENT_TYPE, Metrics
from .shm import SharedMemory, regions, uses_shm

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
MAX_BODY = 64 * 1024 * 1024
_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_SHM = r"/v2/systemsharedmemory(?:/region/(?P<name>[^/]+))?"
_SHM_REGION = r"/v2/systemsharedmemory/region/(?P<name>[^/]+)"
ACCEPTED = ("", "application/json", "application/octet-stream", "application/x-www-form-urlencoded")
"""Request body types taken (the last is what ``curl -d`` sends; the body is read as JSON all the same)."""
PUBLIC = ("/v2/health/live", "/v2/health/ready")
"""The only paths answered without a token, and only to GET or HEAD at exactly these raw paths."""


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    handler: str
    scope: str | None
    """The token scope it needs (None: public health)."""
    summary: str

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern + r"\Z")


ROUTES = (
    Route("GET", "/v2/health/live", "live", None, "Server liveness"),
    Route("GET", "/v2/health/ready", "ready", None, "Server readiness (false while draining)"),
    Route("GET", "/v2", "server_metadata", "infer", "Server metadata"),
    Route("GET", "/v2/models/stats", "model_statistics", "metrics",
          "Statistics of every model (Triton's extension: a model named 'stats' has no metadata route)"),
    Route("GET", _MODEL + "/stats", "model_statistics", "metrics", "Statistics of a model (Triton's extension)"),
    Route("GET", _MODEL, "model_metadata", "infer", "Model metadata"),
    Route("GET", _MODEL + "/ready", "model_ready", "infer", "Model readiness"),
    Route("GET", _MODEL + "/config", "model_config", "infer",
          "Model configuration, as Triton's extension gives it (max_batch_size, the tensors' dims)"),
    Route("POST", _MODEL + "/infer", "infer", "infer", "Inference (JSON or the binary tensor extension)"),
    Route("GET", _MODEL + "/drift", "model_drift", "metrics",
          "Drift state of the model's serving version (an edgeserve extension)"),
    Route("GET", "/metrics", "metrics", "metrics", "Prometheus metrics"),
    Route("GET", "/openapi.json", "openapi", "infer", "This document"),
    Route("POST", "/v2/repository/index", "repository_index", "admin", "Models in the repository and their state"),
    Route("POST", "/v2/repository/models/(?P<name>[^/]+)/load", "repository_load", "admin",
          "Load or reload a model's serving version (from the repository only)"),
    Route("POST", "/v2/repository/models/(?P<name>[^/]+)/unload", "repository_unload", "admin", "Unload a model"),
    Route("GET", _SHM + "/status", "shm_status", "infer",
          "Registered shared-memory regions (Triton's system shared-memory extension; --shared-memory)"),
    Route("POST", _SHM_REGION + "/register", "shm_register", "infer",
          "Register a window of a /dev/shm segment: {\"key\", \"offset\", \"byte_size\"}"),
    Route("POST", _SHM + "/unregister", "shm_unregister", "infer", "Unregister one region, or all"),
)
_COMPILED = sorted(((r, r.regex) for r in ROUTES), key=lambda rr: rr[0].handler != "infer")
"""Infer first: the one route on the hot path. Otherwise the table's order: only ``/v2/models/stats`` matches two
patterns (a model named "stats"), and the statistics route comes first, as on Triton."""


class RestApp:
    """The ASGI callable."""

    def __init__(self, plane: DataPlane, metrics: Metrics | None = None, *, tokens: Tokens | None = None,
                 max_body: int = MAX_BODY) -> None:
        self.plane = plane
        self.metrics = metrics
        self.tokens = tokens
        self.max_body = max_body
        self.read_ahead = 0
        """Requests read whose tasks have not started yet: more requests about to run in this turn of the event
        loop (the server's protocol counts them in, :class:`edgeserve.server.onewrite.Protocol`)."""

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if self.read_ahead:
            self.read_ahead -= 1
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            status, body, extra = await self._handle(scope, headers, receive, send)
        except ProtocolError as exc:
            if self.metrics is not None and exc.status in (401, 403, 413, 415, 503):
                self.metrics.reject(str(exc.status))
            status, body, extra = exc.status, orjson.dumps({"error": exc.message}), {}
            if exc.retry_after_s is not None:
                extra["retry-after"] = str(exc.retry_after_s)
        if status == 0:  # the client went away: nothing to send
            return
        await _respond(send, status, b"" if scope["method"] == "HEAD" else body, extra)

    async def _handle(self, scope: dict[str, Any], headers: dict[str, str], receive: Receive,
                      send: Send) -> tuple[int, bytes, dict[str, str]]:
        method = scope["method"]
        raw_path = scope.get("raw_path") or scope["path"].encode()
        public = method in ("GET", "HEAD") and raw_path.decode("latin-1") in PUBLIC
        caller = ANONYMOUS if public or self.tokens is None else self.tokens.caller(headers.get("authorization"))
        route, params = _route(scope["path"], method)
        if route.scope is not None:
            require(caller, route.scope)
        if route.handler == "infer":
            return await self._infer(params, headers, receive, caller.name)
        if route.handler.startswith("repository_"):
            return await self._control(route.handler, params, headers, receive, caller)
        if route.handler.startswith("shm_"):
            return await self._shm(route.handler, params, headers, receive)
        if route.handler == "metrics":
            if self.metrics is None:
                raise NotFound("metrics are off")
            text, extra = self.metrics.render(), {"content-type": CONTENT_TYPE}
            coding = accepted(headers.get("accept-encoding"))  # NOTE: Prometheus asks for gzip on every scrape
            if coding is not None:
                text, extra["content-encoding"] = compress(text, coding), coding
            return 200, text, extra
        return 200, orjson.dumps(getattr(self, "_" + route.handler)(params)), {}

    # -- routes -------------------------------------------------------------------------------------------------------
    def _live(self, _: dict[str, str]) -> dict[str, Any]:
        return {"live": self.plane.live()}

    def _ready(self, _: dict[str, str]) -> dict[str, Any]:
        ready = self.plane.ready()
        if not ready:
            raise _NotReady("the server is not ready (draining, or a model has no serving version)")
        return {"ready": True}

    def _server_metadata(self, _: dict[str, str]) -> dict[str, Any]:
        return self.plane.server_metadata()

    def _model_metadata(self, p: dict[str, str]) -> dict[str, Any]:
        return self.plane.model_metadata(p["name"], p.get("version"))

    def _model_statistics(self, p: dict[str, str]) -> dict[str, Any]:
        return self.plane.model_statistics(p.get("name"), p.get("version"))

    def _model_config(self, p: dict[str, str]) -> dict[str, Any]:
        return self.plane.model_config(p["name"], p.get("version"))

    def _model_ready(self, p: dict[str, str]) -> dict[str, Any]:
        if not self.plane.model_ready(p["name"], p.get("version")):
            raise _NotReady(f"model '{p['name']}' is not ready")
        return {"name": p["name"], "ready": True}

    def _model_drift(self, p: dict[str, str]) -> dict[str, Any]:
        return self.plane.model_drift(p["name"], p.get("version"))

    def _openapi(self, _: dict[str, str]) -> dict[str, Any]:
        return openapi()

    async def _infer(self, params: dict[str, str], headers: dict[str, str],
                     receive: Receive, caller: str | None) -> tuple[int, bytes, dict[str, str]]:
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ACCEPTED:
            raise UnsupportedMediaType(f"content type {media!r} is not accepted; send application/json, or "
                                       "application/octet-stream with Inference-Header-Content-Length")
        coding = check_coding(headers.get("content-encoding"))
        self.plane.refuses(params["name"], params.get("version"))  # NOTE: before the body is read (overload)
        body = await self._body(headers, receive)
        if coding is not None:
            body = inflate(body, coding, self.max_body)
        request, binary_out = decode_infer(params, body, headers.get("inference-header-content-length"),
                                           self.plane.shm)
        request.caller = caller
        watchers: list[asyncio.Task[None]] = []

        def waiting() -> asyncio.Task[None]:  # the request is about to wait: watch for its client going away
            task = asyncio.current_task()
            assert task is not None
            watchers.append(asyncio.get_running_loop().create_task(_cancel_on_disconnect(receive, task)))
            return watchers[0]

        try:
            response = await self.plane.infer(request, waiting=waiting, company=self.read_ahead > 0)
        except asyncio.CancelledError:
            if watchers and watchers[0].done() and not watchers[0].cancelled():  # its answer goes nowhere
                if self.metrics is not None:
                    self.metrics.reject("client_disconnected")
                return 0, b"", {}
            raise
        status, out, extra = encode_infer(response, binary_out, request, self.plane.shm)
        answer_in = accepted(headers.get("accept-encoding"))
        if answer_in is not None:
            out = compress(out, answer_in)
            extra["content-encoding"] = answer_in
        return status, out, extra

    async def _control(self, handler: str, params: dict[str, str], headers: dict[str, str], receive: Receive,
                       caller: Caller) -> tuple[int, bytes, dict[str, str]]:
        self.plane.controlled()  # NOTE: before the body is read
        body = await self._body(headers, receive)
        if body.strip():
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BadRequest("the request body must be JSON (or empty)") from None
            parameters = doc.get("parameters") if isinstance(doc, dict) else None
            self.plane.controlled(parameters if isinstance(parameters, dict) else ())
        if handler == "repository_index":
            return 200, orjson.dumps(self.plane.repository_index()), {}
        loop = asyncio.get_running_loop()
        if handler == "repository_load":  # NOTE: loading verifies digests and golden samples: off the event loop
            await loop.run_in_executor(None, self.plane.load, params["name"], caller.name)
        else:
            await loop.run_in_executor(None, self.plane.unload, params["name"], caller.name)
        return 200, b"", {}

    async def _shm(self, handler: str, params: dict[str, str], headers: dict[str, str],
                   receive: Receive) -> tuple[int, bytes, dict[str, str]]:
        shm = self.plane.shm()  # NOTE: before the body is read
        name = params.get("name")
        if handler == "shm_status":
            return 200, orjson.dumps(shm.status(name)), {}
        body = await self._body(headers, receive)
        if handler == "shm_unregister":
            shm.unregister(name)
            return 200, b"", {}
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BadRequest('register takes a JSON body: {"key": "/name", "offset": 0, "byte_size": N}') from None
        if not isinstance(doc, dict):
            raise BadRequest('register takes a JSON object: {"key": "/name", "offset": 0, "byte_size": N}')
        shm.register(name, doc.get("key"), doc.get("offset", 0), doc.get("byte_size"))
        return 200, b"", {}

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise BadRequest(f"Content-Length must be a whole number, got {declared!r:.40}")
            if int(declared) > self.max_body:
                raise TooLarge(f"the body is {declared} bytes, over the limit of {self.max_body}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge(f"the body is over the limit of {self.max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _NotReady(ProtocolError):
    status, code = 503, "UNAVAILABLE"


def _route(path: str, method: str) -> tuple[Route, dict[str, str]]:
    allowed = []
    for route, regex in _COMPILED:
        m = regex.match(path)
        if m is None:
            continue
        if route.method == method or (method == "HEAD" and route.method == "GET"):
            return route, {k: v for k, v in m.groupdict().items() if v is not None}
        allowed.append(route.method)
    if allowed:
        raise MethodNotAllowed(f"{method} is not allowed on {path[:200]}; use {', '.join(sorted(set(allowed)))}")
    for prefix, what in UNSUPPORTED:
        if path.startswith(prefix):
            raise NotFound(f"this server does not implement Triton's {what} (GET /v2 lists the extensions it has)")
    raise NotFound(f"no route {path[:200]}; the protocol's routes start with /v2 (see /openapi.json)")


UNSUPPORTED = (("/v2/cudasharedmemory", "CUDA shared-memory extension: it runs on the CPU"),
               ("/v2/trace", "trace extension"), ("/v2/logging", "logging extension"))
"""Triton routes clients know that have no meaning here, answered with what is missing, not just 'no route'."""


async def _cancel_on_disconnect(receive: Receive, task: asyncio.Task[Any]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def _respond(send: Send, status: int, body: bytes, extra: dict[str, str],
                   content_type: str = "application/json") -> None:
    content_type = extra.pop("content-type", content_type)
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# -- the infer body ---------------------------------------------------------------------------------------------------
def decode_infer(params: dict[str, str], body: bytes, header: str | None,
                 shm: Callable[[], SharedMemory] | None = None) -> tuple[InferRequest, bool | frozenset[str]]:
    """An :class:`InferRequest` from a JSON or binary-extension body; also which outputs go back binary (True or
    False for all, or the names that asked for it). ``shm``: the shared-memory regions, for tensors that name one
    (raises when the extension is off)."""
    length = header_length(header, len(body))
    text = body if length is None else body[:length]
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        doc = _with_non_finite(text)
        if doc is None:
            raise BadRequest(f"the request is not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest("the request must be a JSON object with a non-empty 'inputs' list")
    entries = []
    for i, item in enumerate(doc["inputs"]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"inputs[{i}] must be an object with a 'name' string")
        p = item.get("parameters") or {}
        size = p.get("binary_data_size") if isinstance(p, dict) else None
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise BadRequest(f"input '{item['name']}': binary_data_size must be a non-negative whole number")
        entries.append((item, size))
    sizes = [s for _, s in entries]
    if length is None and any(s is not None for s in sizes):
        raise BadRequest("binary_data_size given without the Inference-Header-Content-Length header")
    raws = split_binary(body, length, sizes)[1] if length is not None else [None] * len(entries)
    inputs: dict[str, tuple[str, Any]] = {}
    for (item, _), raw in zip(entries, raws):
        name = item["name"]
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        where = f"input '{name}'"
        datatype = item.get("datatype")
        p = item.get("parameters")
        if uses_shm(p):
            if raw is not None or "data" in item:
                raise BadRequest(f"{where} gives both a shared-memory region and data; give one")
            array = from_bytes(where, datatype, item.get("shape"), regions(shm).read(where, p))
        elif raw is not None:
            array = from_bytes(where, datatype, item.get("shape"), raw)
        elif "data" in item:
            array = from_json(where, datatype, item.get("shape"), item["data"])
        else:
            raise BadRequest(f"{where} has neither 'data' nor a binary_data_size")
        inputs[name] = (str(datatype), array)
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    default_binary = bool(parameters.get("binary_data_output"))
    outputs = _requested_outputs(doc.get("outputs"), default_binary)
    request_id = doc.get("id")
    request = InferRequest(model=params["name"], version=params.get("version"), inputs=inputs,
                           id=str(request_id) if request_id is not None else None,
                           outputs=[n for n, _, _ in outputs] if outputs is not None else None,
                           parameters=parameters, timeout_ms=_timeout_ms(parameters),
                           classes={n: k for n, _, k in outputs or () if k is not None},
                           shm_outputs=_shm_outputs(doc.get("outputs"), shm))
    binary = default_binary if outputs is None else frozenset(n for n, b, _ in outputs if b)
    return request, binary


_NON_FINITE = re.compile(rb"\bNaN\b|\bInfinity\b")


def _with_non_finite(text: bytes) -> Any:
    """The document, for JSON that holds ``NaN`` / ``Infinity`` / ``-Infinity`` as numbers — what Python's json
    (tritonclient's JSON mode) writes for a missing value — or None (not JSON either way)."""
    if not _NON_FINITE.search(text):
        return None
    import json

    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _requested_outputs(raw: Any, default_binary: bool) -> list[tuple[str, bool, int | None]] | None:
    """(name, binary, top classes asked for) of each requested output, or None for all."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw):
        raise BadRequest("'outputs' must be a list of objects with a 'name' string")
    out = []
    for o in raw:
        p = o.get("parameters") or {}
        if not isinstance(p, dict):
            p = {}
        out.append((o["name"], bool(p.get("binary_data", default_binary)), class_count(o["name"], p.get("classification"))))
    return out


def _shm_outputs(raw: Any, shm: Callable[[], SharedMemory] | None) -> dict[str, dict[str, Any]]:
    """The requested outputs to write into shared memory, their windows checked now (before the model runs)."""
    out: dict[str, dict[str, Any]] = {}
    for o in raw or ():
        p = o.get("parameters")
        if uses_shm(p):
            regions(shm).window(f"output '{o['name']}'", p)
            out[o["name"]] = p
    return out


def _timeout_ms(parameters: dict[str, Any]) -> float | None:
    timeout = parameters.get("timeout")  # NOTE: Triton's request parameter, in microseconds
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise BadRequest(f"parameter 'timeout' must be a positive number of microseconds, got {timeout!r:.40}")
    return float(timeout) / 1000.0


def encode_infer(response: InferResponse, binary: bool | frozenset[str], request: InferRequest,
                 shm: Callable[[], SharedMemory] | None = None) -> tuple[int, bytes, dict[str, str]]:
    """The response body: JSON, or the JSON header followed by the binary outputs; outputs asked for in shared
    memory are written there, and only described here."""
    outputs = []
    blobs = []
    for name, value in response.outputs.items():
        if name in request.shm_outputs:
            outputs.append(_in_shm(name, value, request.shm_outputs[name], regions(shm)))
        elif binary is True or (not isinstance(binary, bool) and name in binary):
            blob = to_bytes(value)
            entry = to_json(name, value)
            del entry["data"]
            entry["parameters"] = {"binary_data_size": len(blob)}
            outputs.append(entry)
            blobs.append(blob)
        else:
            outputs.append(to_json(name, value))
    doc: dict[str, Any] = {"model_name": response.model, "model_version": response.version, "outputs": outputs}
    if response.id is not None:
        doc["id"] = response.id
    passed = {k: v for k, v in request.parameters.items() if k not in NOT_ECHOED}
    if response.warnings:
        passed[WARNINGS] = ",".join(response.warnings)
    if passed:
        doc["parameters"] = passed
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if b"null" in header and any(_non_finite(entry.get("data")) for entry in outputs):
        # NOTE: JSON has no NaN or infinity and orjson writes them as null, which a client reads back as NaN (an
        # inf lost). Triton writes the literals NaN, Infinity and -Infinity, as Python's json does, and
        # tritonclient and json.loads read them back exactly; the rare answer holding one is written again so
        # (looked for only where orjson wrote a null: a search of the bytes, not a pass over every output)
        header = json.dumps(_as_lists(doc), separators=(",", ":"), ensure_ascii=False).encode()
    if not blobs:
        return 200, header, {}
    return 200, header + b"".join(blobs), {"inference-header-content-length": str(len(header)),
                                           "content-type": "application/octet-stream"}


def _in_shm(name: str, value: np.ndarray, parameters: dict[str, Any], shm: SharedMemory) -> dict[str, Any]:
    """Write an output into its shared-memory window; its entry in the response, without data."""
    blob = to_bytes(value)
    shm.write(f"output '{name}'", parameters, blob)
    entry = to_json(name, value)
    del entry["data"]
    entry["parameters"] = {"shared_memory_region": parameters["shared_memory_region"],
                           "shared_memory_byte_size": len(blob)}
    return entry


def _non_finite(data: Any) -> bool:
    return isinstance(data, np.ndarray) and data.dtype.kind == "f" and not np.isfinite(data).all()


def _as_lists(doc: dict[str, Any]) -> dict[str, Any]:
    """The response document with its arrays as lists, for the standard json module."""
    outputs = [{**o, "data": o["data"].tolist()} if isinstance(o.get("data"), np.ndarray) else o
               for o in doc["outputs"]]
    return {**doc, "outputs": outputs}


def _paths(pattern: str) -> list[tuple[str, str]]:
    """A route's regex as OpenAPI paths, each with an operationId suffix: ``(?P<name>[^/]+)`` becomes ``{name}``, and
    an optional part ``(?:...)?`` gives the path without it and with it (``/versions/{version}``: suffix ``_v``)."""
    optional = re.search(r"\(\?:(.*?\))\)\?", pattern)
    if optional is None:
        return [(re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", pattern), "")]
    without = pattern[:optional.start()] + pattern[optional.end():]
    inside = pattern[:optional.start()] + optional.group(1) + pattern[optional.end():]
    tag = "_v" if "version" in optional.group(1) else "_" + re.findall(r"\w+", optional.group(1))[0]
    return [*_paths(without), *((p, tag + s) for p, s in _paths(inside))]


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 document of the routes (built from the route table)."""
    paths: dict[str, Any] = {}
    seen: set[str] = set()
    for route in ROUTES:
        for path, suffix in _paths(route.pattern):
            op_id = route.handler + suffix
            op_id = op_id if op_id not in seen else f"{op_id}_{len(seen)}"  # operationIds are unique
            seen.add(op_id)
            parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                          for n in re.findall(r"{(\w+)}", path)]
            op: dict[str, Any] = {"summary": route.summary, "operationId": op_id,
                                  "parameters": parameters,
                                  "responses": {"200": {"description": "OK"}, "400": {"$ref": "#/components/responses/Error"},
                                                "401": {"$ref": "#/components/responses/Error"},
                                                "404": {"$ref": "#/components/responses/Error"},
                                                "503": {"$ref": "#/components/responses/Error"}}}
            if route.scope is not None:
                op["security"] = [{"bearer": []}]
            if route.method == "POST":
                schema = {"infer": {"$ref": "#/components/schemas/InferRequest"},
                          "shm_register": {"$ref": "#/components/schemas/ShmRegister"}}.get(route.handler,
                                                                                           {"type": "object"})
                op["requestBody"] = {"required": route.handler in ("infer", "shm_register"),
                                     "content": {"application/json": {"schema": schema}}}
            paths.setdefault(path, {})[route.method.lower()] = op
    tensor = {"type": "object", "required": ["name", "datatype", "shape"],
              "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                             "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                             "data": {"type": "array"}, "parameters": {"type": "object"}}}
    return {"openapi": "3.0.3", "info": {"title": "edgeserve — Open Inference Protocol (KServe v2)", "version": "2"},
            "paths": paths,
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                           "schemas": {"ShmRegister": {"type": "object", "required": ["key", "byte_size"],
                                                       "properties": {"key": {"type": "string"},
                                                                      "offset": {"type": "integer", "minimum": 0},
                                                                      "byte_size": {"type": "integer", "minimum": 1}}},
                                       "InferRequest": {"type": "object", "required": ["inputs"],
                                                        "properties": {"id": {"type": "string"},
                                                                       "parameters": {"type": "object"},
                                                                       "inputs": {"type": "array", "items": tensor, "minItems": 1},
                                                                       "outputs": {"type": "array", "items": {"type": "object"}}}}},
                           "responses": {"Error": {"description": "An error",
                                                   "content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}}}}
