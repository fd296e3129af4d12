"""Auth on every route but health, generated from the app's route table (a new route cannot escape it), with the
path variants that have let requests past other servers' checks."""

from __future__ import annotations

import json
import re

import pytest

from edgeserve.server.rest import PUBLIC, ROUTES
from tests.server.client import call
from tests.server.conftest import TOKENS

X16 = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}
BODY = json.dumps({"inputs": [X16]}).encode()


def _path(pattern: str) -> str:
    path = re.sub(r"\(\?:/versions/\(\?P<version>\[\^/\]\+\)\)\?", "/versions/1", pattern)
    return re.sub(r"\(\?P<name>\[\^/\]\+\)", "mlp", path)


def _variants(path: str) -> list[str]:
    head, _, last = path.rpartition("/")
    return [path, "/" + path, path + "/", path.replace("/v2/", "/v2/x/%2e%2e/", 1), path.replace("/v2/", "/v2%2F", 1),
            f"{head}/%{ord(last[0]):02x}{last[1:]}" if last else path]


CASES = [(r, method, variant) for r in ROUTES for variant in _variants(_path(r.pattern))
         for method in (r.method, "HEAD", "OPTIONS")]


def test_the_route_table_is_what_the_app_serves() -> None:
    assert {r.handler for r in ROUTES} >= {"live", "ready", "server_metadata", "model_metadata", "model_ready",
                                            "infer", "metrics", "openapi"}
    assert all(r.scope is None for r in ROUTES if r.pattern in PUBLIC)
    assert all(r.scope is not None for r in ROUTES if r.pattern not in PUBLIC)


@pytest.mark.parametrize("route,method,path", CASES, ids=[f"{m} {p}" for _, m, p in CASES])
def test_no_token_no_answer(secured, route, method, path) -> None:
    reply = call(secured.host_port, method, path, BODY if method == "POST" else None)
    public = route.scope is None and path in PUBLIC and method in ("GET", "HEAD")
    if public:
        assert reply.status == 200
    else:
        assert reply.status == 401, (method, path, reply.status, reply.body[:200])
        assert TOKENS["infer"] not in reply.body.decode()


def test_a_wrong_token_is_refused_and_never_echoed(secured) -> None:
    reply = call(secured.host_port, "POST", "/v2/models/mlp/infer", BODY, token="x" * 32)
    assert reply.status == 401 and "x" * 32 not in reply.body.decode()
    reply = call(secured.host_port, "POST", "/v2/models/mlp/infer", BODY, headers={"Authorization": "Basic abc"})
    assert reply.status == 401


def test_scopes(secured) -> None:
    hp = secured.host_port
    assert call(hp, "POST", "/v2/models/mlp/infer", BODY, token=TOKENS["infer"]).status == 200
    assert call(hp, "GET", "/metrics", token=TOKENS["infer"]).status == 403
    assert call(hp, "GET", "/metrics", token=TOKENS["metrics"]).status == 200
    assert call(hp, "POST", "/v2/models/mlp/infer", BODY, token=TOKENS["metrics"]).status == 403
    assert call(hp, "POST", "/v2/models/mlp/infer", BODY, token=TOKENS["admin"]).status == 200
    assert call(hp, "GET", "/metrics", token=TOKENS["admin"]).status == 200


def test_grpc_needs_a_token_except_for_health(secured) -> None:
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    import numpy as np

    client = tritongrpc.InferenceServerClient(secured.grpc)
    assert client.is_server_live() and client.is_server_ready()
    x = tritongrpc.InferInput("x", [1, 16], "FP32")
    x.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        client.infer("mlp", [x])
    with pytest.raises(Exception, match="UNAUTHENTICATED"):
        client.infer("mlp", [x], headers={"authorization": "Bearer " + "y" * 32})
    result = client.infer("mlp", [x], headers={"authorization": f"Bearer {TOKENS['infer']}"})
    assert result.as_numpy("logits").shape == (1, 4)
    # statistics are monitoring, as /metrics: the 'metrics' scope, on gRPC as on REST
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        client.get_inference_statistics("mlp", headers={"authorization": f"Bearer {TOKENS['infer']}"})
    stats = client.get_inference_statistics("mlp", headers={"authorization": f"Bearer {TOKENS['metrics']}"})
    assert stats.model_stats[0].name == "mlp"
    assert call(secured.host_port, "GET", "/v2/models/mlp/stats", token=TOKENS["infer"]).status == 403


def test_a_public_bind_without_tokens_refuses_to_start(tmp_path) -> None:
    from edgeserve import ConfigError
    from edgeserve.server.app import ServeConfig

    with pytest.raises(ConfigError, match="--token-file"):
        ServeConfig(host="0.0.0.0")
    ServeConfig(host="0.0.0.0", insecure=True)
    ServeConfig(host="::1")


def test_token_files_are_checked(tmp_path) -> None:
    from edgeserve import ConfigError
    from edgeserve.server.auth import Tokens

    bad = tmp_path / "t"
    for text, message in (("a infer short", "at least 16"), ("a root " + "z" * 20, "unknown scope"),
                          ("a infer", "got 2 fields"), ("# nothing\n", "no tokens"), ("a infer sha256:12", "64 hex")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            Tokens.read(bad)


def test_model_control_is_for_admin_tokens_and_loads_only_from_the_repository(secured) -> None:
    hp = secured.host_port
    admin, infer = TOKENS["admin"], TOKENS["infer"]
    assert call(hp, "POST", "/v2/repository/models/mlp/unload", token=infer).status == 403
    index = {m["name"]: m for m in call(hp, "POST", "/v2/repository/index", token=admin).json()}
    assert index["mlp"] == {"name": "mlp", "version": "1", "state": "READY"}
    try:
        assert call(hp, "POST", "/v2/repository/models/mlp/unload", token=admin).status == 200
        assert call(hp, "POST", "/v2/models/mlp/infer", BODY, token=infer).status == 404
        assert call(hp, "POST", "/v2/repository/index", token=admin).json()[1]["state"] == "UNAVAILABLE"
    finally:
        assert call(hp, "POST", "/v2/repository/models/mlp/load", token=admin).status == 200
    assert call(hp, "POST", "/v2/models/mlp/infer", BODY, token=infer).status == 200
    for name in ("nope", "%2e%2e", "..%2Fetc"):
        assert call(hp, "POST", f"/v2/repository/models/{name}/load", token=admin).status == 404
    files = json.dumps({"parameters": {"config": "{}", "file:1/model.onnx": "AAAA"}}).encode()
    reply = call(hp, "POST", "/v2/repository/models/mlp/load", files, token=admin)
    assert reply.status == 400 and "only from the repository" in reply.error


def test_model_control_is_off_by_default(served) -> None:
    reply = call(served.host_port, "POST", "/v2/repository/models/mlp/unload")
    assert reply.status == 403 and "--model-control" in reply.error


def test_tritonclient_http_model_control_works_as_triton_clients_call_it(secured) -> None:
    """tritonclient.http's unload_model always sends {"parameters": {"unload_dependents": false}}: that is no
    model of its own and is accepted; a config sent with load_model is refused."""
    tritonhttp = pytest.importorskip("tritonclient.http")
    client = tritonhttp.InferenceServerClient(secured.host_port)
    admin = {"Authorization": f"Bearer {TOKENS['admin']}"}
    try:
        client.unload_model("mlp", headers=admin)
        assert not client.is_model_ready("mlp", headers=admin)
        client.load_model("mlp", headers=admin)
        assert client.is_model_ready("mlp", headers=admin)
        with pytest.raises(tritonhttp.InferenceServerException, match="only from the repository"):
            client.load_model("mlp", headers=admin, config="{}")
    finally:
        client.load_model("mlp", headers=admin)
        client.close()


def test_grpc_model_control_is_for_admin_tokens_and_loads_only_from_the_repository(secured) -> None:
    """tritonclient.grpc's load_model / unload_model / get_model_repository_index, under REST's rules."""
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    client = tritongrpc.InferenceServerClient(secured.grpc)
    admin = {"authorization": f"Bearer {TOKENS['admin']}"}
    infer = {"authorization": f"Bearer {TOKENS['infer']}"}
    try:
        with pytest.raises(Exception, match="PERMISSION_DENIED"):
            client.unload_model("mlp", headers=infer)
        index = {m.name: m for m in client.get_model_repository_index(headers=admin).models}
        assert index["mlp"].state == "READY" and index["mlp"].version == "1"
        try:
            client.unload_model("mlp", headers=admin)
            assert not client.is_model_ready("mlp", headers=infer)
            ready = {m.name for m in client.get_model_repository_index(headers=admin).models if m.state == "READY"}
            assert "mlp" not in ready
        finally:
            client.load_model("mlp", headers=admin)
        assert client.is_model_ready("mlp", headers=infer)
        for name in ("nope", "..", "../mlp"):
            with pytest.raises(Exception, match="NOT_FOUND"):
                client.load_model(name, headers=admin)
        with pytest.raises(Exception, match="only from the repository"):
            client.load_model("mlp", headers=admin, config="{}")
    finally:
        client.close()


def test_grpc_model_control_is_off_by_default(served) -> None:
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    client = tritongrpc.InferenceServerClient(served.grpc)
    with pytest.raises(Exception, match="PERMISSION_DENIED.*--model-control"):
        client.unload_model("mlp")
    assert client.is_model_ready("mlp")
    client.close()
