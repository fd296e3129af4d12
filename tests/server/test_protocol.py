"""The Open Inference Protocol on a real server: every route, real tritonclient (HTTP JSON, HTTP binary, gRPC)
against in-process predict for every datatype, and each bad request with its status and message."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.runtime.repository import Repository
from edgeserve.server.app import ServeConfig
from tests.factories import ECHO_TYPES, echo_inputs, rows
from tests.server.client import call, infer_json
from tests.server.conftest import start, stop

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")


def test_health_and_metadata_routes(served) -> None:
    hp = served.host_port
    assert call(hp, "GET", "/v2/health/live").json() == {"live": True}
    assert call(hp, "GET", "/v2/health/ready").json() == {"ready": True}
    meta = call(hp, "GET", "/v2").json()
    assert meta["name"] == "edgeserve" and "binary_tensor_data" in meta["extensions"]
    model = call(hp, "GET", "/v2/models/mlp").json()
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert call(hp, "GET", "/v2/models/mlp/versions/1").json() == model
    assert call(hp, "GET", "/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
    assert call(hp, "GET", "/v2/models/mlp/versions/7/ready").status == 503
    assert call(hp, "HEAD", "/v2/health/live").body == b""
    doc = call(hp, "GET", "/openapi.json").json()
    assert "/v2/models/{name}/infer" in doc["paths"] and "post" in doc["paths"]["/v2/models/{name}/infer"]


def test_infer_json_nested_or_flat_equals_in_process_predict(served, repo) -> None:
    x = rows(3)
    with edgeserve.load(repo / "mlp" / "1") as model:
        expected = model.predict(x)["logits"]
    for data in (x.reshape(-1).tolist(), x.tolist()):
        reply = infer_json(served.host_port, "mlp", [{"name": "x", "datatype": "FP32", "shape": [3, 16], "data": data}],
                           id="req-7", parameters={"trace": "abc"})
        assert reply.status == 200, reply.body
        doc = reply.json()
        assert doc["id"] == "req-7" and doc["model_version"] == "1" and doc["parameters"] == {"trace": "abc"}
        out = doc["outputs"][0]
        assert out["name"] == "logits" and out["shape"] == [3, 4]
        np.testing.assert_array_equal(np.array(out["data"], np.float32).reshape(3, 4), expected)


def _expected(repo, inputs):
    with edgeserve.load(repo / "echo" / "1") as model:
        return model.predict(inputs)


def _same(got: np.ndarray, want: np.ndarray, datatype: str) -> None:
    if datatype == "BYTES":
        as_bytes = [v if isinstance(v, bytes) else str(v).encode() for v in want.reshape(-1)]
        assert [v.encode() if isinstance(v, str) else bytes(v) for v in got.reshape(-1)] == as_bytes
    else:
        assert got.dtype == want.dtype, datatype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_every_datatype(served, repo, binary: bool) -> None:
    inputs = echo_inputs(2)
    want = _expected(repo, inputs)
    client = tritonhttp.InferenceServerClient(served.host_port)
    sent = []
    for t in ECHO_TYPES:
        if t == "FP16" and not binary:
            continue  # NOTE: tritonclient refuses FP16 in JSON; it travels binary
        i = tritonhttp.InferInput(f"in_{t}", [2, 3], t)
        i.set_data_from_numpy(inputs[f"in_{t}"], binary_data=binary)
        sent.append(i)
    if not binary:  # the model needs every input: FP16 goes binary in an otherwise JSON request
        i = tritonhttp.InferInput("in_FP16", [2, 3], "FP16")
        i.set_data_from_numpy(inputs["in_FP16"], binary_data=True)
        sent.append(i)
    outputs = [tritonhttp.InferRequestedOutput(f"out_{t}", binary_data=binary or t == "FP16") for t in ECHO_TYPES]
    result = client.infer("echo", sent, outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    for t in ECHO_TYPES:
        _same(result.as_numpy(f"out_{t}"), want[f"out_{t}"], t)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_tritonclient_http_compressed_both_ways_equals_in_process_predict(served, repo, binary: bool,
                                                                        coding: str) -> None:
    x = rows(3)
    with edgeserve.load(repo / "mlp" / "1") as model:
        want = model.predict(x)["logits"]
    client = tritonhttp.InferenceServerClient(served.host_port)
    sent = tritonhttp.InferInput("x", [3, 16], "FP32")
    sent.set_data_from_numpy(x, binary_data=binary)
    out = tritonhttp.InferRequestedOutput("logits", binary_data=binary)
    for request, response in [(coding, None), (None, coding), (coding, coding)]:
        result = client.infer("mlp", [sent], outputs=[out], request_compression_algorithm=request,
                              response_compression_algorithm=response)
        np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-6)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 16], "data": x.ravel().tolist()}]})
    reply = call(served.host_port, "POST", "/v2/models/mlp/infer", body.encode(),
                 {"Accept-Encoding": f"br;q=1, {coding}"})
    assert reply.headers.get("content-encoding") == coding  # tritonclient reads either way: look at the bytes
    answer = json.loads(zlib.decompress(reply.body, 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS))
    np.testing.assert_allclose(np.array(answer["outputs"][0]["data"]).reshape(3, 4), want, rtol=1e-6)
    plain = call(served.host_port, "POST", "/v2/models/mlp/infer", body.encode(), {"Accept-Encoding": f"{coding};q=0"})
    assert "content-encoding" not in plain.headers and plain.json()["outputs"][0]["shape"] == [3, 4]


def test_tritonclient_class_count_answers_the_top_classes_as_triton_does(served, repo) -> None:
    """Triton's classification extension: ``InferRequestedOutput(name, class_count=k)`` answers BYTES
    ``[rows, k]`` of ``"<value>:<index>"``, highest first (it was ignored: the raw scores came back)."""
    x = rows(5)
    with edgeserve.load(repo / "mlp" / "1") as model:
        logits = model.predict(x)["logits"]
    order = np.argsort(-logits, axis=1, kind="stable")[:, :3]
    want = [[f"{logits[r, i]:f}:{i}" for i in order[r]] for r in range(5)]
    answers = []
    http = tritonhttp.InferenceServerClient(served.host_port)
    for binary in (False, True):
        sent = tritonhttp.InferInput("x", [5, 16], "FP32")
        sent.set_data_from_numpy(x, binary_data=binary)
        answers.append(http.infer("mlp", [sent], outputs=[
            tritonhttp.InferRequestedOutput("logits", binary_data=binary, class_count=3)]).as_numpy("logits"))
    grpc = tritongrpc.InferenceServerClient(served.grpc)
    sent = tritongrpc.InferInput("x", [5, 16], "FP32")
    sent.set_data_from_numpy(x)
    answers.append(grpc.infer("mlp", [sent], outputs=[tritongrpc.InferRequestedOutput("logits", class_count=3)])
                   .as_numpy("logits"))
    for got in answers:
        assert got.shape == (5, 3)
        assert [[v.decode() if isinstance(v, bytes) else v for v in row] for row in got.tolist()] == want
    assert "classification" in http.get_server_metadata()["extensions"]


def test_tritonclient_grpc_every_datatype(served, repo) -> None:
    inputs = echo_inputs(2)
    want = _expected(repo, inputs)
    client = tritongrpc.InferenceServerClient(served.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("echo")
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["inputs"][0]["name"] == "x" and meta["versions"] == ["1"]
    sent = []
    for t in ECHO_TYPES:
        i = tritongrpc.InferInput(f"in_{t}", [2, 3], t)
        i.set_data_from_numpy(inputs[f"in_{t}"])
        sent.append(i)
    result = client.infer("echo", sent, request_id="g1")
    assert result.get_response().id == "g1" and result.get_response().model_version == "1"
    for t in ECHO_TYPES:
        _same(result.as_numpy(f"out_{t}"), want[f"out_{t}"], t)
    with pytest.raises(Exception, match="NOT_FOUND"):
        client.infer("missing", sent)


def test_requested_outputs_only(served) -> None:
    x = rows(1)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": x.reshape(-1).tolist()}],
            "outputs": [{"name": "logits"}]}
    reply = call(served.host_port, "POST", "/v2/models/mlp/infer", json.dumps(body).encode())
    assert [o["name"] for o in reply.json()["outputs"]] == ["logits"]


X16 = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}


def _binary(header: dict, blob: bytes, length: str | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": length if length is not None else str(len(head)),
                         "Content-Type": "application/octet-stream"}


def _bin_x(size: int) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": size}}]}


BAD = [
    ("malformed JSON", b'{"inputs": [', {}, 400, "not valid JSON"),
    ("JSON nested past the limit", b"[" * 5000 + b"]" * 5000, {}, 400, "not valid JSON"),
    ("not an object", b"[1, 2]", {}, 400, "non-empty 'inputs'"),
    ("no inputs", b'{"inputs": []}', {}, 400, "non-empty 'inputs'"),
    ("wrong datatype", json.dumps({"inputs": [{**X16, "datatype": "FP64"}]}).encode(), {}, 400,
     "expected datatype FP32"),
    ("unknown datatype", json.dumps({"inputs": [{**X16, "datatype": "FLOAT"}]}).encode(), {}, 400, "unknown datatype"),
    ("wrong rank", json.dumps({"inputs": [{**X16, "shape": [16]}]}).encode(), {}, 400, "input 'x'"),
    ("wrong dims", json.dumps({"inputs": [{**X16, "shape": [2, 8]}]}).encode(), {}, 400, "input 'x'"),
    ("a scalar for a batched input", json.dumps({"inputs": [{**X16, "shape": [], "data": [1.0]}]}).encode(), {},
     400, "input 'x'"),
    ("missing input", json.dumps({"inputs": [{**X16, "name": "y"}]}).encode(), {}, 400, "no input 'y'"),
    ("duplicate input", json.dumps({"inputs": [X16, X16]}).encode(), {}, 400, "given twice"),
    ("unknown output", json.dumps({"inputs": [X16], "outputs": [{"name": "nope"}]}).encode(), {}, 400,
     "no output 'nope'"),
    ("data does not match datatype", json.dumps({"inputs": [{**X16, "data": ["a"] * 16}]}).encode(), {}, 400,
     "must be numbers"),
    ("too few values", json.dumps({"inputs": [{**X16, "data": [0.0] * 15}]}).encode(), {}, 400, "needs 16 values"),
    ("ragged nesting", json.dumps({"inputs": [{**X16, "data": [[0.0] * 8, [0.0] * 7]}]}).encode(), {}, 400,
     "ragged"),
    ("element count overflows", json.dumps({"inputs": [{**X16, "shape": [16, 2**60]}]}).encode(), {}, 400,
     "more elements than the limit"),
    ("no rows", json.dumps({"inputs": [{**X16, "shape": [0, 16], "data": []}]}).encode(), {}, 400, "has no rows"),
    ("negative dim", json.dumps({"inputs": [{**X16, "shape": [-1, 16]}]}).encode(), {}, 400, "non-negative"),
    ("non-integer dim", json.dumps({"inputs": [{**X16, "shape": [1.5, 16]}]}).encode(), {}, 400, "non-negative"),
    ("bad timeout", json.dumps({"inputs": [X16], "parameters": {"timeout": "soon"}}).encode(), {}, 400, "timeout"),
    ("wrong content type", json.dumps({"inputs": [X16]}).encode(), {"Content-Type": "text/plain"}, 415,
     "content type"),
    ("classification past the class count", json.dumps({"inputs": [X16], "outputs": [
        {"name": "logits", "parameters": {"classification": 5}}]}).encode(), {}, 400, "has 4 classes"),
    ("classification not a count", json.dumps({"inputs": [X16], "outputs": [
        {"name": "logits", "parameters": {"classification": "three"}}]}).encode(), {}, 400, "positive whole number"),
    ("unknown content encoding", json.dumps({"inputs": [X16]}).encode(), {"Content-Encoding": "br"}, 415,
     "Content-Encoding 'br' is not accepted"),
    ("gzip header on a plain body", json.dumps({"inputs": [X16]}).encode(), {"Content-Encoding": "gzip"}, 400,
     "the gzip body cannot be decoded"),
    ("gzip body cut short", gzip.compress(json.dumps({"inputs": [X16]}).encode())[:-12],
     {"Content-Encoding": "gzip"}, 400, "cut short"),
    ("gzip body inflating past the cap", gzip.compress(b" " * (64 * 2**20 + 1)), {"Content-Encoding": "gzip"}, 413,
     "inflates past the limit"),
]


def _binary_cases() -> list:
    blob = np.zeros(16, np.float32).tobytes()
    ok_body, ok_headers = _binary(_bin_x(64), blob)
    head_len = int(ok_headers["Inference-Header-Content-Length"])
    return [
        ("header length -1", ok_body, {**ok_headers, "Inference-Header-Content-Length": "-1"}, 400, "whole number"
         if False else "Inference-Header-Content-Length"),
        ("header length huge", ok_body, {**ok_headers, "Inference-Header-Content-Length": str(10**12)}, 400,
         "Inference-Header-Content-Length"),
        ("header length not a number", ok_body, {**ok_headers, "Inference-Header-Content-Length": "abc"}, 400,
         "whole number"),
        ("header length off by one", ok_body, {**ok_headers, "Inference-Header-Content-Length": str(head_len - 1)},
         400, "not valid JSON"),
        ("binary sizes too short", *_binary(_bin_x(60), blob), 400, "add up to 60"),
        ("binary sizes too long", *_binary(_bin_x(68), blob), 400, "add up to 68"),
        ("binary size not matching shape", *_binary(_bin_x(60), blob[:60]), 400, "needs 64 bytes"),
        ("binary size without header", json.dumps(_bin_x(64)).encode(), {}, 400, "binary_data_size given"),
        ("BYTES prefix past the end", *_binary(
            {"inputs": [{"name": "in_BYTES", "datatype": "BYTES", "shape": [1, 1],
                         "parameters": {"binary_data_size": 6}}]}, struct.pack("<I", 100) + b"ab"), 400,
         "runs past the end" if False else "only 2 remain"),
    ]


@pytest.mark.parametrize("name,body,headers,status,message", [*BAD, *_binary_cases()], ids=lambda v: v
                         if isinstance(v, str) and len(v) < 40 and " " in v else "")
def test_bad_requests_get_their_status_and_a_message_then_the_server_lives(served, name, body, headers, status,
                                                                           message) -> None:
    model = "echo" if "BYTES" in name else "mlp"
    reply = call(served.host_port, "POST", f"/v2/models/{model}/infer", body, headers)
    assert reply.status == status, (name, reply.body[:300])
    assert message in reply.error, (name, reply.error)
    assert call(served.host_port, "GET", "/v2/health/live").status == 200


def test_unknown_model_version_and_route(served) -> None:
    hp = served.host_port
    assert call(hp, "POST", "/v2/models/nope/infer", json.dumps({"inputs": [X16]}).encode()).status == 404
    assert call(hp, "POST", "/v2/models/mlp/versions/9/infer", json.dumps({"inputs": [X16]}).encode()).status == 404
    assert call(hp, "GET", "/v3/anything").status == 404
    assert call(hp, "GET", "/v2/models/mlp/infer").status == 405


def test_body_over_the_cap_is_refused_before_it_is_read(repo) -> None:
    from edgeserve.server.app import ServeConfig
    from tests.server.conftest import start, stop

    running = start(repo, ServeConfig(port=0, grpc_port=0, max_body=1024))
    try:
        big = json.dumps({"inputs": [{**X16, "shape": [100, 16], "data": [0.0] * 1600}]}).encode()
        reply = call(running.host_port, "POST", "/v2/models/mlp/infer", big)
        assert reply.status == 413 and "over the limit of 1024" in reply.error
    finally:
        stop(running)


def test_metrics_count_requests_by_model_version_and_outcome(served) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    hp = served.host_port
    infer_json(hp, "mlp", [X16])
    infer_json(hp, "mlp", [{**X16, "shape": [2, 8]}])
    for made_up in ("nope-1", "nope-2", "nope-3"):  # names a client makes up never become series of their own
        infer_json(hp, made_up, [X16])
    for made_up in ("9", "10"):
        call(hp, "POST", f"/v2/models/mlp/versions/{made_up}/infer", json.dumps({"inputs": [X16]}).encode(),
             {"Content-Type": "application/json"})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(call(hp, "GET", "/metrics").body.decode())
               for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("edgeserve_inference_requests_total", model="mlp", version="1", outcome="success") >= 1
    assert value("edgeserve_inference_requests_total", model="mlp", version="1", outcome="bad_request") >= 1
    assert value("edgeserve_inference_request_duration_seconds_count", model="mlp") >= 1
    assert value("edgeserve_model_loaded", model="mlp", version="1") == 1
    assert value("edgeserve_engine_rows_total", model="mlp") >= 1
    assert value("edgeserve_compute_duration_seconds_count", model="mlp") >= 1
    assert value("edgeserve_batch_size_bucket", model="mlp", le="+Inf") == value("edgeserve_batch_size_count", model="mlp")
    assert value("edgeserve_inference_requests_total", model="", version="", outcome="not_found") >= 3
    assert not [k for k in samples if any(v.startswith("nope") for _, v in k[1])]
    assert value("edgeserve_inference_requests_total", model="mlp", version="", outcome="not_found") >= 2
    assert not [k for k in samples if ("version", "9") in k[1] or ("version", "10") in k[1]]
    scraped = call(hp, "GET", "/metrics", headers={"Accept-Encoding": "gzip"})  # as Prometheus scrapes
    assert scraped.headers["content-encoding"] == "gzip"
    assert b"edgeserve_inference_requests_total" in gzip.decompress(scraped.body)


def test_text_sent_as_bytes_reaches_a_string_model_as_the_same_text(tmp_path: Path) -> None:
    """BYTES travel as bytes; a string tensor takes text. A category pipeline answers over every client exactly
    as in-process predict on the same words (the engine read b'oslo' as another value than 'oslo'), and bytes
    that are no UTF-8 text are a 400 naming the input."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    cities = np.random.default_rng(0).choice(["oslo", "lima", "pune"], (200, 1))
    pipe = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression())
    pipe.fit(cities, (cities[:, 0] == "lima").astype(int))
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", example_inputs=cities[:4], quantize="none", calibration=cities)
    name = pkg.manifest.inputs[0].name
    repository = Repository(tmp_path / "repo", create=True)
    repository.publish("cities", pkg.path)
    words = np.array([["lima"], ["oslo"], ["lima"]], dtype=object)
    with edgeserve.load(pkg.path) as model:
        want = model.predict(words.astype(str))["probabilities"]
    assert want[0, 1] > 0.5 > want[1, 1]  # the words matter: a request read wrongly would not answer this
    running = start(repository.root, ServeConfig(port=0, grpc_port=0))
    try:
        for binary in (False, True):
            client = tritonhttp.InferenceServerClient(running.host_port)
            request = tritonhttp.InferInput(name, [3, 1], "BYTES")
            request.set_data_from_numpy(words, binary_data=binary)
            got = client.infer("cities", [request]).as_numpy("probabilities")
            np.testing.assert_allclose(got, want, rtol=1e-6)
        client = tritongrpc.InferenceServerClient(running.grpc)
        request = tritongrpc.InferInput(name, [3, 1], "BYTES")
        request.set_data_from_numpy(words)
        np.testing.assert_allclose(client.infer("cities", [request]).as_numpy("probabilities"), want, rtol=1e-6)
        raw = struct.pack("<I", 2) + b"\xff\xfe"
        header = json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [1, 1],
                                         "parameters": {"binary_data_size": len(raw)}}]}).encode()
        answer = call(running.host_port, "POST", "/v2/models/cities/infer", header + raw,
                      {"Inference-Header-Content-Length": str(len(header))})
        assert answer.status == 400 and "not UTF-8 text" in answer.error, answer.error
    finally:
        stop(running)


def test_json_with_nan_and_infinity_as_tritonclient_writes_them_is_read(served) -> None:
    """tritonclient's JSON mode writes a missing value as ``NaN`` (Python's json does): the request is read, not
    refused as invalid JSON, and what the model's guard says about NaN decides (here: the reference held none)."""
    from edgeserve.server.rest import decode_infer

    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [NaN, Infinity, -Infinity]}]}'
    request, _ = decode_infer({"name": "m"}, body, None)
    value = request.inputs["x"][1]
    assert np.isnan(value[0, 0]) and value[0, 1] == np.inf and value[0, 2] == -np.inf
    client = tritonhttp.InferenceServerClient(served.host_port)
    x = rows(1)
    x[0, 3] = np.nan
    sent = tritonhttp.InferInput("x", [1, 16], "FP32")
    sent.set_data_from_numpy(x, binary_data=False)
    with pytest.raises(Exception, match=r"\[422\].*'non_finite'.*\[0, 3\] = nan"):
        client.infer("mlp", [sent])
    assert call(served.host_port, "GET", "/v2/health/live").status == 200


def test_nan_and_infinity_in_an_answer_reach_tritonclient_as_they_are(tmp_path: Path) -> None:
    """JSON has no NaN or infinity; Triton writes the literals NaN, Infinity and -Infinity, which tritonclient and
    Python's json read back exactly (orjson's null came back as NaN: an infinite answer was lost)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Log", ["x"], ["log"]), helper.make_node("Reciprocal", ["x"], ["inv"])],
                              "nonfinite", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3]) for n in ("log", "inv")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    from tests.factories import save

    pkg = edgeserve.convert(save(model, tmp_path / "m.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": np.linspace(0.5, 2, 24, dtype=np.float32).reshape(8, 3)})
    repository = Repository(tmp_path / "repo", create=True)
    repository.publish("m", pkg.path)
    x = np.array([[0.0, -1.0, 2.0]], np.float32)
    want = {"log": np.array([[-np.inf, np.nan, np.log(2.0)]], np.float32),
            "inv": np.array([[np.inf, -1.0, 0.5]], np.float32)}
    running = start(repository.root, ServeConfig(port=0, grpc_port=0), guard=None)
    try:
        client = tritonhttp.InferenceServerClient(running.host_port)
        sent = tritonhttp.InferInput("x", [1, 3], "FP32")
        sent.set_data_from_numpy(x, binary_data=False)
        asked = [tritonhttp.InferRequestedOutput(n, binary_data=False) for n in want]
        got = client.infer("m", [sent], outputs=asked)
        for name, value in want.items():
            np.testing.assert_array_equal(got.as_numpy(name), value)  # NaN equals NaN here, inf must stay inf
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": x.ravel().tolist()}]})
        answer = call(running.host_port, "POST", "/v2/models/m/infer", body.encode())
        assert answer.status == 200 and b"-Infinity" in answer.body and b"NaN" in answer.body
        finite = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 4.0]}]}
        plain = call(running.host_port, "POST", "/v2/models/m/infer", json.dumps(finite).encode())
        assert json.loads(plain.body)["outputs"][1]["data"] == [1.0, 0.5, 0.25]
    finally:
        stop(running)


def test_model_metadata_names_the_engine_that_answers(tmp_path) -> None:
    """A package that auto verified on OpenVINO is served by OpenVINO: its metadata says so (it said
    onnxruntime_onnx for every model)."""
    pytest.importorskip("openvino")
    from edgeserve.runtime.runtime import Runtime
    from edgeserve.server.dataplane import DataPlane
    from tests.factories import mlp_model, save

    src = save(mlp_model(), tmp_path / "mlp.onnx")
    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("ov", edgeserve.convert(src, tmp_path / "ov", quantize="none", calibration={"x": rows(32)},
                                         backend="openvino", precision="f32").path)
    repo.publish("ort", edgeserve.convert(src, tmp_path / "ort", quantize="none", calibration={"x": rows(32)}).path)
    with Runtime(repo.root) as runtime:
        plane = DataPlane(runtime)
        assert plane.model_metadata("ov", None)["platform"] == "openvino"
        assert plane.model_metadata("ort", None)["platform"] == "onnxruntime_onnx"


def _labelled_classifier():
    """x [rows, 4] -> scores [rows, 3] and their argmax, label [rows]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"]),
         helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)], "clf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["n"])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _halver():
    """v [rows] -> w [rows], each value halved: tensors of the batch dimension only."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["v", "half"], ["w"])], "half",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_model_config_tells_a_triton_client_how_to_batch_and_it_works(tmp_path: Path) -> None:
    """Triton's image_client reads the model configuration first: ``max_batch_size`` (above 0: the client adds the
    batch dimension itself, and the dims leave it out) and the input's dims and format. A model whose rows are not
    on axis 0 everywhere (a VAD's state batches on axis 1, its sample rate on none) says 0 and gives whole dims."""
    from tests.factories import cnn_opset11, save, vad_like_data, vad_like_model

    images = np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32)
    cnn = edgeserve.convert(save(cnn_opset11(), tmp_path / "cnn.onnx"), tmp_path / "cnn-pkg", quantize="none",
                            calibration={"x": images})
    vad = edgeserve.convert(save(vad_like_model(), tmp_path / "vad.onnx"), tmp_path / "vad-pkg", quantize="none",
                            calibration=vad_like_data())
    repository = Repository(tmp_path / "repo", create=True)
    repository.publish("cnn", cnn.path)
    repository.publish("vad", vad.path)
    clf = edgeserve.convert(save(_labelled_classifier(), tmp_path / "clf.onnx"), tmp_path / "clf-pkg", quantize="none",
                            calibration={"x": images.reshape(24, -1)[:, :4].copy()})
    repository.publish("clf", clf.path)
    half = edgeserve.convert(save(_halver(), tmp_path / "half.onnx"), tmp_path / "half-pkg", quantize="none",
                             calibration={"v": np.arange(40, dtype=np.float32)})
    repository.publish("half", half.path)
    with edgeserve.load(cnn.path) as model:
        want = model.predict(images[:2])["logits"]
    running = start(repository.root, ServeConfig(port=0, grpc_port=0), batching=edgeserve.BatchConfig(max_batch_size=8))
    try:
        http = tritonhttp.InferenceServerClient(running.host_port)
        grpc = tritongrpc.InferenceServerClient(running.grpc)
        for config in (http.get_model_config("cnn"), grpc.get_model_config("cnn", as_json=True)["config"]):
            assert config["max_batch_size"] == 8 and config["platform"] == "onnxruntime_onnx"
            (image,) = config["input"]
            assert [int(d) for d in image["dims"]] == [3, 16, 16] and image.get("format") == "FORMAT_NCHW"
            assert image["data_type"] == "TYPE_FP32" and [int(d) for d in config["output"][0]["dims"]] == [5]
            # as image_client does: the batch dimension in front of the configured dims
            sent = tritonhttp.InferInput(image["name"], [2, *map(int, image["dims"])], "FP32")
            sent.set_data_from_numpy(images[:2])
            np.testing.assert_allclose(http.infer("cnn", [sent]).as_numpy("logits"), want, rtol=1e-5, atol=1e-6)
        for config in (http.get_model_config("vad"), grpc.get_model_config("vad", as_json=True)["config"]):
            assert config.get("max_batch_size", 0) == 0
            dims = {t["name"]: [int(d) for d in t.get("dims", [])] for t in config["input"]}
            assert dims == {"input": [-1, 64], "state": [2, -1, 16], "sr": []}
        for config in (http.get_model_config("clf"), grpc.get_model_config("clf", as_json=True)["config"]):
            # one label a row: dims [1] with an empty reshape, as Triton configures a tensor of the batch only
            label = next(t for t in config["output"] if t["name"] == "label")
            assert [int(d) for d in label["dims"]] == [1] and label["reshape"] in ({}, {"shape": []})
            scores = next(t for t in config["output"] if t["name"] == "scores")
            assert [int(d) for d in scores["dims"]] == [3] and "reshape" not in scores
        for config in (http.get_model_config("half"), grpc.get_model_config("half", as_json=True)["config"]):
            (value,) = config["input"]
            assert [int(d) for d in value["dims"]] == [1] and value["reshape"] in ({}, {"shape": []})
            # a client of that configuration sends [rows, 1]; the model takes [rows]
            sent = tritonhttp.InferInput("v", [3, *map(int, value["dims"])], "FP32")
            sent.set_data_from_numpy(np.array([[1.0], [2.0], [4.0]], np.float32))
            np.testing.assert_array_equal(http.infer("half", [sent]).as_numpy("w"), [0.5, 1.0, 2.0])
        with pytest.raises(tritonhttp.InferenceServerException, match="404"):
            http.get_model_config("nothing")
        assert "model_configuration" in http.get_server_metadata()["extensions"]
        http.close()
        grpc.close()
    finally:
        stop(running)


def test_statistics_count_what_each_model_answered_as_triton_reports_them(tmp_path: Path) -> None:
    """Triton's statistics extension (tritonclient's get_inference_statistics, over REST and gRPC): successes and
    failures with their time, inferences counted by rows, engine runs, and time queued and in the engine."""
    from tests.factories import mlp_model, save

    pkg = edgeserve.convert(save(mlp_model(), tmp_path / "m.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": rows(32)})
    repository = Repository(tmp_path / "repo", create=True)
    repository.publish("mlp", pkg.path)
    repository.publish("other", pkg.path)
    running = start(repository.root, ServeConfig(port=0, grpc_port=0), batching=edgeserve.BatchConfig())
    try:
        http = tritonhttp.InferenceServerClient(running.host_port)
        grpc = tritongrpc.InferenceServerClient(running.grpc)
        for n in (1, 3, 2):
            sent = tritonhttp.InferInput("x", [n, 16], "FP32")
            sent.set_data_from_numpy(rows(n))
            http.infer("mlp", [sent])
        wrong = tritonhttp.InferInput("x", [1, 15], "FP32")
        wrong.set_data_from_numpy(rows(1)[:, :15])
        with pytest.raises(tritonhttp.InferenceServerException):
            http.infer("mlp", [wrong])
        with pytest.raises(tritonhttp.InferenceServerException):
            http.infer("nothing", [wrong])  # an unknown model is counted nowhere
        for stats in (http.get_inference_statistics("mlp")["model_stats"],
                      [json.loads(call(running.host_port, "GET", "/v2/models/mlp/versions/1/stats").body)][0]
                      ["model_stats"]):
            (mlp,) = stats
            assert mlp["name"] == "mlp" and mlp["version"] == "1" and mlp["inference_count"] == 6
            assert mlp["execution_count"] == 3 and mlp["last_inference"] > 0
            infer = mlp["inference_stats"]
            assert infer["success"]["count"] == 3 and infer["success"]["ns"] > 0
            assert infer["fail"]["count"] == 1
            assert infer["compute_infer"]["count"] == 3 and infer["compute_infer"]["ns"] > 0
        every = {m["name"]: m for m in http.get_inference_statistics()["model_stats"]}
        assert set(every) == {"mlp", "other"} and every["other"]["inference_count"] == 0
        got = grpc.get_inference_statistics("mlp")
        assert got.model_stats[0].inference_count == 6 and got.model_stats[0].inference_stats.success.count == 3
        with pytest.raises(tritonhttp.InferenceServerException, match="404"):
            http.get_inference_statistics("nothing")
        http.close()
        grpc.close()
    finally:
        stop(running)


def test_a_grpc_stream_answers_each_request_in_order_and_an_error_does_not_end_it(served, repo) -> None:
    """Triton's ModelStreamInfer, as tritonclient's start_stream / async_stream_infer use it: every request on the
    stream gets its own response (its id echoed) or its own error, in order, and the stream goes on."""
    import queue

    client = tritongrpc.InferenceServerClient(served.grpc)
    got: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        sent = []
        for i, n in enumerate((1, 2, 0, 3)):
            x = rows(max(n, 1))
            tensor = tritongrpc.InferInput("x", [len(x), 16 if n else 15], "FP32")
            tensor.set_data_from_numpy(x if n else x[:, :15])  # the third: the wrong width, refused
            client.async_stream_infer("mlp", [tensor], request_id=f"r{i}")
            sent.append(x if n else None)
        with edgeserve.load(repo / "mlp" / "1") as model:
            for i, x in enumerate(sent):
                result, error = got.get(timeout=10)
                if x is None:
                    assert result is None and "16" in str(error)
                    continue
                assert error is None and result.get_response().id == f"r{i}"
                np.testing.assert_allclose(result.as_numpy("logits"), model.predict(x)["logits"], rtol=1e-5)
    finally:
        client.stop_stream()
        client.close()
