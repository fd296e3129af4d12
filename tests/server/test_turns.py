"""Requests the server reads in one pass over its connections run in the event loop as one batch at the end of the
turn (``Batcher.call_in_turn``); a lone request still runs at once."""

from __future__ import annotations

import gc
import http.client
import json

import numpy as np

import edgeserve
from edgeserve.runtime import model as model_module
from tests.factories import rows
from tests.server.conftest import Running


def _body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def _in_turn(served: Running) -> int:
    with served.server.runtime.using("mlp") as (model, _):
        return int(model.batcher.stats["ran_in_turn"])


def _expected(served: Running, x: np.ndarray) -> np.ndarray:
    with served.server.runtime.using("mlp") as (model, _):
        return model.predict(x)["logits"]


def _post(conn: http.client.HTTPConnection, x: np.ndarray) -> None:
    conn.request("POST", "/v2/models/mlp/infer", _body(x), {"Content-Type": "application/json"})


def _logits(conn: http.client.HTTPConnection) -> np.ndarray:
    reply = conn.getresponse()
    doc = json.loads(reply.read())
    assert reply.status == 200, doc
    out = next(o for o in doc["outputs"] if o["name"] == "logits")
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def test_requests_read_together_run_as_one_batch_and_each_gets_its_own_answer(served: Running, monkeypatch) -> None:
    # NOTE: the model's probes decide whether the loop runs it; on a slow or busy machine the MLP's took over the
    # batched bound (100 us) and no turn ever ran: raised here, since this test is about turns, not timing
    monkeypatch.setattr(model_module, "INLINE_BATCHED_S", 1.0)
    host, port = served.host_port.split(":")
    lone = http.client.HTTPConnection(host, int(port), timeout=30)
    for i in range(12):  # the model's probes, then requests one at a time
        _post(lone, rows(1, seed=i))
        _logits(lone)
    before = _in_turn(served)
    for i in range(5):
        _post(lone, rows(1, seed=100 + i))
        np.testing.assert_allclose(_logits(lone), _expected(served, rows(1, seed=100 + i)), rtol=1e-5, atol=1e-6)
    assert _in_turn(served) == before  # nobody else was in flight: each ran at once, without waiting for a turn
    conns = [http.client.HTTPConnection(host, int(port), timeout=30) for _ in range(8)]
    try:
        for attempt in range(10):  # NOTE: sent together, the requests are read in one pass (bounded retries)
            inputs = [rows(1 + i % 3, seed=1000 * attempt + i) for i in range(len(conns))]
            for conn, x in zip(conns, inputs):
                _post(conn, x)  # every request is written before any answer is read
            for conn, x in zip(conns, inputs):
                np.testing.assert_allclose(_logits(conn), _expected(served, x), rtol=1e-5, atol=1e-6)
            if _in_turn(served) - before >= 2:
                break
        assert _in_turn(served) - before >= 2, "requests sent together never ran together in a turn"
        from edgeserve.config import available_cores

        with served.server.runtime.using("mlp") as (model, _):  # the server's turns run on one thread
            assert available_cores() == 1 or model.batcher.turn_run is not None
    finally:
        for conn in (lone, *conns):
            conn.close()


def test_the_server_freezes_what_it_loaded_before_serving(repo, tmp_path) -> None:
    """Models and libraries loaded before serving stay out of the collector's full passes (each stalled the
    event loop ~10 ms under load)."""
    from edgeserve.server.app import ServeConfig
    from tests.server.conftest import start, stop

    gc.unfreeze()
    running = start(repo, ServeConfig(port=0, grpc_port=0), batching=edgeserve.BatchConfig())
    try:
        assert gc.get_freeze_count() > 0
    finally:
        stop(running)
        gc.unfreeze()
