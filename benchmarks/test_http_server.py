"""``edgeserve serve`` against the servers people write, on 127.0.0.1, in one run.

    python -m pytest benchmarks/test_http_server.py -s -p no:randomly      # ~4 minutes (10 s per point)
    EDGESERVE_SERVER_BENCH_S=3 python -m pytest benchmarks/test_http_server.py -s -p no:randomly   # quicker

Servers, each its own process: edgeserve (REST, batching on by default; with the guard, without it, and with the
guard and an audit log in ack mode: everything on, issue 13), (a) a hand-written FastAPI + uvicorn
endpoint calling onnxruntime (skipped when fastapi is not installed), (b) a bare ASGI callable on uvicorn with
httptools and orjson, parsing the same JSON and calling onnxruntime in the event loop — the practical limit of a
Python server here. Models: the bundled digits MLP and a compute-bound MLP 512→2048→2048→10, one row per request.
The load generator is ``wrk`` (apt install wrk) with a warm-up before each point; without it a Python asyncio
generator (which saturates well below the servers, so read its numbers as a floor). gRPC is driven by
tritonclient.grpc from threads (a Python client: also a floor). Reported: requests/s, p50, p99, the server's CPU
(user+system of its process over the point, in cores), and the ratio to the bare ASGI server at the same point.

Targets (issue 12): digits MLP at 32 connections >= 60% of bare ASGI with p99 <= 3 ms; wide MLP with batching >=
3x bare ASGI with p99 <= 15 ms; at 1 connection, p50 within 50 us of bare ASGI. Nothing here asserts on time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.examples import get_example
from edgeserve.runtime.repository import Repository

pytestmark = pytest.mark.slow
SECONDS = float(os.environ.get("EDGESERVE_SERVER_BENCH_S", "10"))
WARMUP = min(2.0, SECONDS / 2)
_rows: list[str] = []

BARE = """\
import sys
import numpy as np, onnxruntime as ort, orjson, uvicorn
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
outs = [o.name for o in sess.get_outputs()]
TYPES = {"float32": "FP32", "int64": "INT64"}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        m = await receive()
        body += m.get("body", b"")
        if not m.get("more_body"):
            break
    t = orjson.loads(body)["inputs"][0]
    x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
    res = sess.run(outs, {name: x})
    out = orjson.dumps({"model_name": "m", "outputs": [
        {"name": n, "datatype": TYPES[str(v.dtype)], "shape": list(v.shape), "data": v.ravel()}
        for n, v in zip(outs, res)]}, option=orjson.OPT_SERIALIZE_NUMPY)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), http="httptools", loop="uvloop", log_level="warning",
            access_log=False)
"""

FASTAPI = """\
import sys
import numpy as np, onnxruntime as ort, uvicorn
from fastapi import FastAPI, Request
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = sess.get_inputs()[0].name
outs = [o.name for o in sess.get_outputs()]
app = FastAPI()

@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    t = (await request.json())["inputs"][0]
    x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
    res = sess.run(outs, {name: x})
    return {"model_name": model, "outputs": [{"name": n, "shape": list(v.shape), "data": v.ravel().tolist()}
                                             for n, v in zip(outs, res)]}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""


def _wide(path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_serving import _big_mlp  # type: ignore[import-not-found]

    return _big_mlp(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray, Path]]:
    """name -> (package, one input row, repository holding it as 'm')."""
    tmp = tmp_path_factory.mktemp("http")
    ex = get_example("digits-mlp")
    x = np.load(ex.evaluation)["X"][:1]
    out = {}
    for name, source, row in (("digits-mlp", ex.model, x),
                              ("wide-mlp", _wide(tmp / "wide.onnx"),
                               np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32))):
        pkg = edgeserve.convert(source, tmp / name, quantize="none", **({"calibration": ex.calibration}
                                                                        if name == "digits-mlp" else {}))
        repo = Repository(tmp / f"repo-{name}", create=True)
        repo.publish("m", pkg.path)
        out[name] = (pkg.path, row, repo.root)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(cmd: list[str], port: int) -> Iterator[int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while True:  # up when it answers
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert proc.poll() is None, f"{cmd[:3]} died"
                assert time.monotonic() < end, f"{cmd[:3]} never listened"
                time.sleep(0.05)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bodies(row: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    tensor = {"name": "X" if row.shape[1] == 64 else "x", "datatype": "FP32", "shape": list(row.shape)}
    doc = {"inputs": [{**tensor, "data": row.reshape(-1).tolist()}]}
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": row.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return {"json": (json.dumps(doc).encode(), {"Content-Type": "application/json"}),
            "binary": (head + row.astype(np.float32).tobytes(),
                       {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})}


def _load(port: int, body: bytes, headers: dict[str, str], connections: int, seconds: float,
          tmp: Path) -> dict[str, float]:
    if shutil.which("wrk"):
        return _wrk(port, body, headers, connections, seconds, tmp)
    return asyncio.run(_python_load(port, body, headers, connections, seconds))


def _wrk(port: int, body: bytes, headers: dict[str, str], connections: int, seconds: float,
         tmp: Path) -> dict[str, float]:
    (tmp / "body.bin").write_bytes(body)
    lines = ['wrk.method = "POST"', f'local f = io.open("{tmp / "body.bin"}", "rb")', "wrk.body = f:read('*a')",
             "f:close()"] + [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    (tmp / "post.lua").write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t", "1" if connections == 1 else "2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                          "--latency", "-s", str(tmp / "post.lua"), f"http://127.0.0.1:{port}/v2/models/m/infer"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    assert non2xx is None, f"the server answered errors under load:\n{out}"

    def pct(p: str) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {"rps": rps, "p50": pct("50"), "p99": pct("99")}


async def _python_load(port: int, body: bytes, headers: dict[str, str], connections: int,
                       seconds: float) -> dict[str, float]:
    head = (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            writer.write(head + body)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            assert b" 200 " in status, status
            latencies.append(time.perf_counter() - t0)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50": latencies[len(latencies) // 2] * 1e3,
            "p99": latencies[int(len(latencies) * 0.99)] * 1e3}


def _measure(pid: int, port: int, body: bytes, headers: dict[str, str], connections: int,
             tmp: Path) -> dict[str, float]:
    _load(port, body, headers, connections, WARMUP, tmp)
    cpu0, t0 = _cpu_s(pid), time.perf_counter()
    result = _load(port, body, headers, connections, SECONDS, tmp)
    result["cpu"] = (_cpu_s(pid) - cpu0) / (time.perf_counter() - t0)
    return result


def _servers(models, name: str, tmp: Path) -> dict[str, list[str]]:
    pkg, _, repo = models[name]
    (tmp / "bare.py").write_text(BARE)
    servers = {"bare ASGI": [sys.executable, str(tmp / "bare.py"), str(pkg / "model.onnx")],
               "edgeserve": [str(Path(sys.executable).parent / "edgeserve"), "serve", str(repo), "--no-grpc",
                             "--port"],
               "edgeserve --no-guard": [str(Path(sys.executable).parent / "edgeserve"), "serve", str(repo),
                                        "--no-grpc", "--no-guard", "--port"],
               # everything on (issue 13): the guard, and every answer's audit record committed before it is sent
               "edgeserve + audit": [str(Path(sys.executable).parent / "edgeserve"), "serve", str(repo),
                                     "--no-grpc", "--audit", str(tmp / f"{name}-audit.sqlite3"), "--port"]}
    try:
        import fastapi  # noqa: F401

        (tmp / "fastapi_app.py").write_text(FASTAPI)
        servers["FastAPI (by hand)"] = [sys.executable, str(tmp / "fastapi_app.py"), str(pkg / "model.onnx")]
    except ImportError:
        _rows.append(f"| {name} | FastAPI (by hand) | - | - | not installed (pip install fastapi) | | | | |")
    return servers


POINTS = {"digits-mlp": [("json", 1), ("json", 32), ("binary", 32)], "wide-mlp": [("json", 1), ("json", 32)]}


@pytest.mark.parametrize("name", list(POINTS))
def test_rest_servers_side_by_side(models, name: str, tmp_path: Path) -> None:
    _, row, _ = models[name]
    bodies = _bodies(row)
    results: dict[tuple[str, str, int], dict[str, float]] = {}
    for server, cmd in _servers(models, name, tmp_path).items():
        port = _free_port()
        with _server([*cmd, str(port)], port) as pid:
            for encoding, connections in POINTS[name]:
                if encoding == "binary" and not server.startswith("edgeserve"):
                    continue
                results[(server, encoding, connections)] = _measure(pid, port, *bodies[encoding], connections,
                                                                     tmp_path)
    for (server, encoding, connections), r in results.items():
        base = results.get(("bare ASGI", "json", connections))
        ratio = f"{r['rps'] / base['rps']:.2f}" if base else "-"
        dp50 = f"{(r['p50'] - base['p50']) * 1e3:+.0f}" if base else "-"
        _rows.append(f"| {name} | {server} | {encoding} | {connections} | {r['rps']:.0f} | {r['p50']:.2f} | "
                     f"{r['p99']:.2f} | {r['cpu']:.2f} | {ratio} | {dp50} |")


def test_grpc_with_a_python_client(models, tmp_path: Path) -> None:
    tritongrpc = pytest.importorskip("tritonclient.grpc")
    _, row, repo = models["digits-mlp"]
    port, gport = _free_port(), _free_port()
    cmd = [str(Path(sys.executable).parent / "edgeserve"), "serve", str(repo), "--port", str(port), "--grpc-port",
           str(gport)]
    with _server(cmd, gport) as pid:
        for threads in (1, 32):
            latencies: list[float] = []
            stop = threading.Event()

            def worker(stop: threading.Event = stop, latencies: list[float] = latencies) -> None:
                client = tritongrpc.InferenceServerClient(f"127.0.0.1:{gport}")
                x = tritongrpc.InferInput("X", list(row.shape), "FP32")
                x.set_data_from_numpy(row.astype(np.float32))
                while not stop.is_set():
                    t0 = time.perf_counter()
                    client.infer("m", [x])
                    latencies.append(time.perf_counter() - t0)

            pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
            for t in pool:
                t.start()
            time.sleep(WARMUP)  # warm-up under load, then count
            latencies.clear()
            cpu0, t0 = _cpu_s(pid), time.perf_counter()
            time.sleep(SECONDS)  # NOTE: measuring for a duration, not ordering events
            n, elapsed = len(latencies), time.perf_counter() - t0
            cpu = (_cpu_s(pid) - cpu0) / elapsed
            stop.set()
            for t in pool:
                t.join()
            lat = sorted(latencies[:n])
            _rows.append(f"| digits-mlp | edgeserve gRPC (Python client) | raw | {threads} | {n / elapsed:.0f} | "
                         f"{statistics.median(lat) * 1e3:.2f} | {lat[int(len(lat) * 0.99)] * 1e3:.2f} | {cpu:.2f} | - | - |")


def teardown_module() -> None:
    print(f"\n\nload generator: {'wrk' if shutil.which('wrk') else 'Python asyncio (a floor, not a limit)'}, "
          f"{SECONDS:g} s per point after {WARMUP:g} s of warm-up\n")
    print("| model | server | encoding | connections | req/s | p50 ms | p99 ms | server CPU (cores) | "
          "vs bare ASGI | p50 - bare (us) |\n|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(_rows))
