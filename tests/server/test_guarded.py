"""The guard and the audit log through the server: envelope rejections as 422 naming what broke, drift gauges in
/metrics, and one audit record per answer with the token's name, over REST and gRPC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_digits

import edgeserve
from edgeserve.guard.audit import query, verify
from edgeserve.runtime.repository import Repository
from edgeserve.server.app import ServeConfig
from tests.factories import mlp_model, save
from tests.server.client import call, infer_json
from tests.server.conftest import Running, start, stop

TOKEN = "guard-infer-token-0123456789"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("guarded")
    x = load_digits().data.astype(np.float32)
    # NOTE: shuffled before the split: the dataset's first rows come from other writers than its last ones, which is
    # drift (the drift test would find it)
    x = x[np.random.default_rng(0).permutation(len(x))]
    pkg = edgeserve.convert(save(mlp_model(n_in=64, hidden=16, n_out=10), tmp / "d.onnx"), tmp / "pkg",
                            quantize="none", calibration={"x": x[:800]})
    repo = Repository(tmp / "repo", create=True)
    repo.publish("digits", pkg.path)
    tokens = tmp / "tokens"
    tokens.write_text(f"alice infer,metrics {TOKEN}\n")
    audit = tmp / "audit.sqlite3"
    running = start(repo.root, ServeConfig(port=0, grpc_port=0, token_file=tokens), audit=audit)
    yield running, audit, x[800:]
    stop(running)


def _tensor(x: np.ndarray) -> list[dict]:
    return [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]


def _send_inf(running: Running, x: np.ndarray, request_id: str):
    bad = x[:2].copy()
    bad[1, 3] = np.inf  # JSON has no inf: the binary extension carries it
    head = json.dumps({"id": request_id, "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 64],
                                                     "parameters": {"binary_data_size": bad.nbytes}}]}).encode()
    return call(running.host_port, "POST", "/v2/models/digits/infer", head + bad.tobytes(),
                {"Inference-Header-Content-Length": str(len(head))}, TOKEN)


def test_envelope_rejection_is_a_422_naming_input_position_and_value(guarded) -> None:
    running, _, x = guarded
    reply = _send_inf(running, x, "bad-1")
    assert reply.status == 422
    assert "input 'x'" in reply.json()["error"] and "[1, 3] = inf" in reply.json()["error"]
    assert call(running.host_port, "GET", "/v2/health/live").status == 200


def test_every_answer_is_audited_with_the_callers_token_name(guarded) -> None:
    running, audit, x = guarded
    reply = infer_json(running.host_port, "digits", _tensor(x[:3]), token=TOKEN, id="rest-1")
    assert reply.status == 200
    client = grpcclient.InferenceServerClient(running.grpc)
    tensor = grpcclient.InferInput("x", [2, 64], "FP32")
    tensor.set_data_from_numpy(x[3:5])
    client.infer("digits", [tensor], request_id="grpc-1", headers={"authorization": f"Bearer {TOKEN}"})
    client.close()
    rest = next(query(audit, request_id="rest-1"))
    grpc = next(query(audit, request_id="grpc-1"))
    assert (rest["caller"], rest["outcome"], rest["model"]) == ("alice", "ok", "digits")
    assert (grpc["caller"], grpc["outcome"]) == ("alice", "ok")
    assert _send_inf(running, x, "bad-2").status == 422
    assert next(query(audit, request_id="bad-2"))["outcome"] == "EnvelopeError"
    assert verify(audit).ok


def test_drift_and_envelope_counters_are_scraped(guarded) -> None:
    running, _, x = guarded
    assert _send_inf(running, x, "bad-3").status == 422
    for i in range(0, 256, 32):
        assert infer_json(running.host_port, "digits", _tensor(x[i:i + 32]), token=TOKEN).status == 200
    text = call(running.host_port, "GET", "/metrics", token=TOKEN).body.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["edgeserve_drift_score"].samples[0].labels == {"model": "digits"}
    assert 0 <= families["edgeserve_drift_score"].samples[0].value < 1
    rejected = [s for s in families["edgeserve_envelope"].samples
                if s.labels.get("check") == "non_finite" and s.labels.get("action") == "rejected"]
    assert rejected and rejected[0].value >= 1


def test_an_answer_the_envelope_warned_about_says_so_to_the_client(guarded) -> None:
    """A value past the reference's range (policy ``warn``) was answered, counted and audited, but the client
    could not tell that answer from any other."""
    running, _, x = guarded
    far = x[:2].copy()
    far[1, 5] = 100.0  # digits' pixels run 0-16
    reply = infer_json(running.host_port, "digits", _tensor(far), token=TOKEN, parameters={"trace": "t-1"})
    assert reply.status == 200
    assert reply.json()["parameters"] == {"trace": "t-1", "envelope_warnings": "range:x"}
    clean = infer_json(running.host_port, "digits", _tensor(x[:2]), token=TOKEN)
    assert clean.status == 200 and "parameters" not in clean.json()
    client = grpcclient.InferenceServerClient(running.grpc)
    tensor = grpcclient.InferInput("x", [2, 64], "FP32")
    headers = {"authorization": f"Bearer {TOKEN}"}
    tensor.set_data_from_numpy(far)
    warned = client.infer("digits", [tensor], headers=headers, parameters={"trace": "t-2"}).get_response()
    tensor.set_data_from_numpy(x[:2])
    quiet = client.infer("digits", [tensor], headers=headers).get_response()
    client.close()
    assert warned.parameters["envelope_warnings"].string_param == "range:x"
    assert warned.parameters["trace"].string_param == "t-2"  # the request's own parameters, passed back as REST does
    assert "envelope_warnings" not in quiet.parameters


def test_explain_parameter_adds_attributions_and_keeps_them_in_the_audit_record(guarded) -> None:
    running, audit, x = guarded
    reply = infer_json(running.host_port, "digits", _tensor(x[:2]), token=TOKEN, id="why-1",
                       parameters={"explain": True})
    assert reply.status == 200, reply.body
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    att = outputs["logits.attributions"]
    assert att["shape"] == [2, 64, 10] and att["datatype"] == "FP32"
    detail = json.loads(next(query(audit, request_id="why-1"))["detail"])["explanation"]
    assert detail["input"] == "x" and len(detail["top"]) == 2 and len(detail["top"][0]) == 10
    client = grpcclient.InferenceServerClient(running.grpc)
    tensor = grpcclient.InferInput("x", [1, 64], "FP32")
    tensor.set_data_from_numpy(x[:1])
    result = client.infer("digits", [tensor], parameters={"explain": True},
                          headers={"authorization": f"Bearer {TOKEN}"})
    assert result.as_numpy("logits.attributions").shape == (1, 64, 10)
    client.close()
    bad = infer_json(running.host_port, "digits", _tensor(x[:1]), token=TOKEN, parameters={"explain": "maybe"})
    assert bad.status == 400 and "explain" in bad.json()["error"]


def test_drift_state_over_http_and_from_the_cli(guarded) -> None:
    from click.testing import CliRunner

    from edgeserve.cli import main

    running, _, x = guarded
    for i in range(0, 128, 32):
        assert infer_json(running.host_port, "digits", _tensor(x[i:i + 32]), token=TOKEN).status == 200
    assert call(running.host_port, "GET", "/v2/models/digits/drift").status == 401
    reply = call(running.host_port, "GET", "/v2/models/digits/drift", token=TOKEN)
    report = reply.json()
    assert reply.status == 200 and report["enabled"] and report["model"] == "digits" and report["version"] == 1
    assert report["requests"] >= 128 and not report["drifting"]
    result = CliRunner().invoke(main, ["drift", running.url, "digits", "--json"], env={"EDGESERVE_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["requests"] >= 128
    missing = CliRunner().invoke(main, ["drift", running.url, "nope"], env={"EDGESERVE_TOKEN": TOKEN})
    assert missing.exit_code == 1 and "404" in missing.output


def test_the_drift_route_takes_only_the_serving_version(tmp_path: Path) -> None:
    """A version in the path must be the serving one (400 otherwise, 404 if there is no such version), with the
    guard on or off."""
    from edgeserve import GuardConfig, Runtime
    from edgeserve.server.dataplane import DataPlane
    from edgeserve.server.errors import BadRequest, NotFound

    x = load_digits().data.astype(np.float32)
    repo = Repository(tmp_path / "repo", create=True)
    for seed in (1, 2):
        pkg = edgeserve.convert(save(mlp_model(n_in=64, hidden=16, n_out=10, seed=seed), tmp_path / f"{seed}.onnx"),
                                tmp_path / f"pkg{seed}", quantize="none", calibration={"x": x[:200]})
        repo.publish("digits", pkg.path)
    for guard in (GuardConfig(), None):
        with Runtime(repo.root, guard=guard) as runtime:
            plane = DataPlane(runtime)
            assert plane.model_drift("digits", "2")["enabled"] is (guard is not None)
            assert plane.model_drift("digits", None)["enabled"] is (guard is not None)
            with pytest.raises(BadRequest, match=r"serving version of 'digits' \(version 2\) only, not version 1"):
                plane.model_drift("digits", "1")
            with pytest.raises(NotFound):
                plane.model_drift("digits", "7")
