"""The server as a process: SIGTERM drains (readiness false, in-flight requests answered, exit 0); a full queue is a
fast 503 with Retry-After; a client that goes away while queued gets nothing sent, and nobody else gets its answer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.runtime.repository import Repository
from tests.factories import mlp_model, save
from tests.server.client import call, free_port


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wide MLP: a request of 2048 rows takes long enough to still be running when SIGTERM arrives."""
    tmp = tmp_path_factory.mktemp("slow")
    model = save(mlp_model(n_in=256, hidden=2048, n_out=8, seed=3), tmp / "wide.onnx")
    pkg = edgeserve.convert(model, tmp / "pkg", quantize="none",
                            calibration={"x": np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)})
    repo = Repository(tmp / "repo", create=True)
    repo.publish("wide", pkg.path)
    return repo.root


def _wait_until(predicate, what: str, timeout: float = 60.0, why=lambda: "") -> None:
    end = time.monotonic() + timeout
    while not predicate():  # a state to reach, polled; nothing is ordered by sleeping
        assert time.monotonic() < end, f"{what} {why()}"
        time.sleep(0.02)


def _infer_body(rows: int) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request (decoding it costs the event loop nothing next to the run)."""
    x = np.random.default_rng(rows).standard_normal((rows, 256)).astype(np.float32)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def test_sigterm_drains_in_flight_requests_and_exits_zero(slow_repo: Path, tmp_path: Path) -> None:
    port = free_port()
    hp = f"127.0.0.1:{port}"
    exe = Path(sys.executable).parent / "edgeserve"
    log = tmp_path / "serve.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([str(exe), "serve", str(slow_repo), "--port", str(port), "--no-grpc",
                                 "--no-batching"], stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        def up() -> bool:
            try:
                return call(hp, "GET", "/v2/health/ready").status == 200
            except OSError:
                return False

        _wait_until(up, "the server never became ready")
        body, headers = _infer_body(32768)
        with ThreadPoolExecutor(4) as pool:
            inflight = [pool.submit(call, hp, "POST", "/v2/models/wide/infer", body, headers) for _ in range(4)]
            _wait_until(lambda: _inflight(hp) >= 4, "the requests were never all in flight",
                        why=lambda: [(f.result().status, f.result().body[:200]) for f in inflight if f.done()])
            proc.send_signal(signal.SIGTERM)
            replies = [f.result(60) for f in inflight]
        assert [r.status for r in replies] == [200] * 4  # every request in flight when SIGTERM came was answered
        assert all(r.json()["outputs"][0]["shape"] == [32768, 8] for r in replies)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "draining" in log.read_text()


def _inflight(hp: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = call(hp, "GET", "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        if family.name == "edgeserve_inflight_requests":
            return family.samples[0].value
    return 0.0


def test_readiness_turns_false_while_draining(slow_repo: Path) -> None:
    from edgeserve.server.app import ServeConfig
    from tests.server.conftest import start

    running = start(slow_repo, ServeConfig(port=0, grpc_port=0))
    plane = running.server.plane
    release = threading.Event()
    plane._enter()  # one request in flight, held open by the test
    try:
        threading.Thread(target=lambda: (running.server.stop(), release.set()), daemon=True).start()
        _wait_until(lambda: plane.draining, "the drain never started")
        assert call(running.host_port, "GET", "/v2/health/ready").status == 503
        reply = call(running.host_port, "POST", "/v2/models/wide/infer", *_infer_body(1))
        assert reply.status == 503 and reply.headers.get("retry-after") == "1" and "shutting down" in reply.error
        assert call(running.host_port, "GET", "/v2/health/live").status == 200
    finally:
        plane._leave("wide", "1", "success", 0.0)
    running.thread.join(60)
    assert not running.thread.is_alive()


def test_a_full_queue_is_a_fast_503_with_retry_after(slow_repo: Path) -> None:
    from edgeserve.server.app import ServeConfig
    from tests.server.conftest import start, stop

    running = start(slow_repo, ServeConfig(port=0, grpc_port=0),
                    batching=edgeserve.BatchConfig(max_queue=1, max_batch_size=1, adaptive=False))
    try:
        body, headers = _infer_body(32768)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda _: call(running.host_port, "POST", "/v2/models/wide/infer", body, headers),
                                    range(8)))
        statuses = sorted(r.status for r in replies)
        assert 200 in statuses and 503 in statuses, statuses
        for r in replies:
            if r.status == 503:
                assert r.headers["retry-after"] == "1" and "max_queue" in r.error
        assert call(running.host_port, "GET", "/v2/health/live").status == 200
    finally:
        stop(running)


def test_a_client_that_disconnects_while_queued_has_its_request_withdrawn(slow_repo: Path) -> None:
    from edgeserve.server.app import ServeConfig
    from tests.server.conftest import start, stop

    running = start(slow_repo, ServeConfig(port=0, grpc_port=0),
                    batching=edgeserve.BatchConfig(max_batch_size=1, adaptive=False))
    hp = running.host_port
    try:
        small, small_headers = _infer_body(1)
        for _ in range(10):  # past the async probes: requests now wait in the batcher's queue
            assert call(hp, "POST", "/v2/models/wide/infer", small, small_headers).status == 200
        with running.server.runtime.using("wide") as (model, _):
            batcher = model.batcher
        assert batcher is not None
        big, big_headers = _infer_body(8192)
        with ThreadPoolExecutor(1) as pool:
            busy = pool.submit(call, hp, "POST", "/v2/models/wide/infer", big, big_headers)  # holds the engine
            _wait_until(lambda: _inflight(hp) >= 1, "the first request never started")
            gone = socket.create_connection(("127.0.0.1", int(hp.split(":")[1])))
            head = (f"POST /v2/models/wide/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in big_headers.items()) + "\r\n").encode()
            gone.sendall(head + big)
            _wait_until(lambda: batcher.queued >= 1, "the second request never queued")
            expired = batcher.stats["expired"]
            gone.close()  # the client goes away while its request waits
            _wait_until(lambda: batcher.stats["expired"] > expired, "the queued request was not withdrawn")
            assert busy.result(60).status == 200
        reply = call(hp, "POST", "/v2/models/wide/infer", small, small_headers)
        assert reply.status == 200 and reply.json()["outputs"][0]["shape"] == [1, 8]
        from prometheus_client.parser import text_string_to_metric_families

        text = call(hp, "GET", "/metrics").body.decode()
        rejections = {s.labels.get("reason"): s.value for f in text_string_to_metric_families(text)
                      if f.name == "edgeserve_rejections" for s in f.samples if s.name.endswith("_total")}
        assert rejections.get("client_disconnected", 0) >= 1
        outcomes = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text)
                    if f.name == "edgeserve_inference_requests" for s in f.samples if s.name.endswith("_total")}
        assert outcomes.get("cancelled") == 1 and "error" not in outcomes  # a client going away is no server error
    finally:
        stop(running)


def test_a_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    from edgeserve.server.app import ServeConfig
    from tests.factories import rows
    from tests.server.conftest import TOKENS, start, stop

    pkg = edgeserve.convert(save(mlp_model(), tmp_path / "m.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": rows(16)})
    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("mlp", pkg.path)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops admin {TOKENS['admin']}\n")
    running = start(repo.root, ServeConfig(port=0, grpc_port=0, token_file=tokens, model_control=True),
                    batching=edgeserve.BatchConfig())
    hp, token = running.host_port, TOKENS["admin"]
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                                   "data": rows(1).reshape(-1).tolist()}]}).encode()
    stop_load = threading.Event()
    seen: list[tuple[int, str]] = []

    def load() -> None:
        while not stop_load.is_set():
            reply = call(hp, "POST", "/v2/models/mlp/infer", body, token=token)
            seen.append((reply.status, reply.json().get("model_version", reply.body.decode()[:200])))

    try:
        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(load) for _ in range(4)]
            _wait_until(lambda: len(seen) >= 50, "no load")
            repo.publish("mlp", pkg.path)
            assert call(hp, "POST", "/v2/repository/models/mlp/load", token=token).status == 200
            count = len(seen)
            _wait_until(lambda: len(seen) >= count + 50, "no load after the reload")
            stop_load.set()
            for w in workers:
                w.result(30)
    finally:
        stop_load.set()
        stop(running)
    failed = [s for s in seen if s[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in seen]
    assert "1" in versions and versions[-1] == "2"


def test_workers_share_the_ports_and_drain_together(slow_repo: Path, tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    port, grpc_port = free_port(), free_port()
    hp = f"127.0.0.1:{port}"
    exe = Path(sys.executable).parent / "edgeserve"
    proc = subprocess.Popen([str(exe), "serve", str(slow_repo), "--workers", "2", "--port", str(port), "--grpc-port",
                             str(grpc_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)

        def both_listening() -> bool:
            workers = parent.children()
            if len(workers) != 2:
                return False
            try:
                return all(any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in w.net_connections())
                           for w in workers)
            except psutil.Error:
                return False

        _wait_until(both_listening, "two workers never listened on the shared port")
        _wait_until(lambda: _ready(hp), "never ready")
        from edgeserve.config import available_cores

        share = str(max(1, available_cores() // 2))  # each engine gets its share of the cores, not all of them
        assert all(w.cmdline()[w.cmdline().index("--threads") + 1] == share for w in parent.children())
        body, headers = _infer_body(1)
        assert all(call(hp, "POST", "/v2/models/wide/infer", body, headers).status == 200 for _ in range(24))
        # the kernel spread the 24 connections over both workers (all on one: 2 in 2^24); whichever is scraped
        # answers for both, each counter the sum (it read each worker's own share, and jumped between scrapes)
        _wait_until(lambda: _scraped(hp) == {"requests": 24.0, "timed": 24.0, "rows": 24.0, "loaded": 1.0},
                    "the scrape never summed both workers' requests", timeout=30, why=lambda: str(_scraped(hp)))
        assert all(_scraped(hp)["requests"] == 24.0 for _ in range(6))  # every scrape, whichever worker answers

        def stats() -> tuple[int, int]:  # Triton's statistics extension, summed the same way
            entry = json.loads(call(hp, "GET", "/v2/models/wide/stats").body)["model_stats"][0]
            return entry["inference_count"], entry["inference_stats"]["success"]["count"]

        assert all(stats() == (24, 24) for _ in range(6))
        workers = parent.children()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if proc.poll() is None:
            for worker in parent.children():  # a failed check leaves no worker holding the ports
                worker.kill()
            proc.kill()


def _scraped(hp: str) -> dict[str, float]:
    """The model's counts in one Prometheus scrape, parsed as Prometheus would."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"edgeserve_inference_requests_total": "requests", "edgeserve_inference_request_duration_seconds_count":
              "timed", "edgeserve_engine_rows_total": "rows", "edgeserve_model_loaded": "loaded"}
    got: dict[str, float] = {}
    for family in text_string_to_metric_families(call(hp, "GET", "/metrics").body.decode()):
        for sample in family.samples:
            if sample.name in wanted and sample.labels.get("model") == "wide":
                got[wanted[sample.name]] = got.get(wanted[sample.name], 0.0) + sample.value
    return got


def _ready(hp: str) -> bool:
    try:
        return call(hp, "GET", "/v2/health/ready").status == 200
    except OSError:
        return False


def test_a_port_in_use_is_a_clear_error(slow_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exe = Path(sys.executable).parent / "edgeserve"
        out = subprocess.run([str(exe), "serve", str(slow_repo), "--port", str(free_port()), "--grpc-port",
                              str(port)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "port in use" in out.stderr and "Traceback" not in out.stderr


def test_a_rest_port_in_use_is_a_clear_error(slow_repo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        exe = Path(sys.executable).parent / "edgeserve"
        out = subprocess.run([str(exe), "serve", str(slow_repo), "--port", str(taken.getsockname()[1]),
                              "--grpc-port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "port in use" in out.stderr and "Traceback" not in out.stderr


def test_a_second_grpc_server_cannot_share_a_port_in_use(slow_repo: Path) -> None:
    """grpcio sets SO_REUSEPORT unless told not to: two servers would then silently split one port's traffic."""
    from edgeserve import ConfigError, Runtime
    from edgeserve.server import rpc
    from edgeserve.server.dataplane import DataPlane

    with Runtime(slow_repo) as runtime:
        plane = DataPlane(runtime)
        first, port = rpc.start(plane, "127.0.0.1:0")
        try:
            with pytest.raises(ConfigError, match="port in use"):
                rpc.start(plane, f"127.0.0.1:{port}")
        finally:
            first.stop(None)


def test_a_request_the_queue_would_refuse_gets_its_503_before_its_body_is_read(served, monkeypatch) -> None:
    from edgeserve.runtime.batcher import Batcher

    monkeypatch.setattr(Batcher, "refuses_now", lambda self: "model 'mlp': ~80 ms, more than max_wait_ms=10")
    host, port = served.host_port.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n{\"inputs\": [")  # the body never comes
        reply = conn.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 503") and "retry-after: 1" in reply.lower() and "max_wait_ms=10" in reply


def _engine(model: edgeserve.Model) -> tuple[int, str]:
    """(intra-op threads, whether they spin) of a model's onnxruntime session."""
    options = model._session._session.get_session_options()  # type: ignore[attr-defined]
    try:
        spins = str(options.get_session_config_entry("session.intra_op.allow_spinning"))
    except RuntimeError:  # not set: onnxruntime's default, which spins
        spins = "1"
    return options.intra_op_num_threads, spins


def test_the_servers_engine_threads_run_below_its_event_loop(served, repo: Path) -> None:
    from edgeserve.server.app import ENGINE_NICE

    config = served.server.runtime.config
    assert config.nice == ENGINE_NICE > 0 and config.intra_op_threads is None  # every core, at a lower priority
    assert _engine(served.server.runtime.model("mlp"))[1] == "1"  # and spinning between operators, as usual
    with edgeserve.Runtime(repo) as runtime:  # in-process: the caller's priority
        assert runtime.config.nice == 0


@pytest.mark.parametrize("nice", [7, 0])
def test_serve_runs_the_engine_threads_at_engine_nice_below_the_event_loop(slow_repo: Path, nice: int) -> None:
    from edgeserve.priority import supported

    if not supported():
        pytest.skip("thread priorities are per process here")
    port = free_port()
    exe = Path(sys.executable).parent / "edgeserve"
    proc = subprocess.Popen([str(exe), "serve", str(slow_repo), "--port", str(port), "--no-grpc", "--threads", "2",
                             "--engine-nice", str(nice)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until(lambda: _ready(f"127.0.0.1:{port}"), "the server never became ready")

        def nice_of(task: Path) -> int:
            return int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])

        tasks = {int(t.name): nice_of(t) for t in Path(f"/proc/{proc.pid}/task").iterdir()}
        loop = tasks.pop(proc.pid)  # the event loop: the process's own priority (pytest's, whatever that is)
        lowered = min(19, loop + nice)
        assert lowered in tasks.values()  # onnxruntime's worker for the second intra-op thread
        assert set(tasks.values()) <= {loop, lowered}
    finally:
        proc.terminate()
        proc.wait(30)
