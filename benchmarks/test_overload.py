"""Overload on 127.0.0.1: an open-loop load at 3x the server's measured capacity, for a bounded time.

    python -m pytest benchmarks/test_overload.py -s -p no:randomly      # ~1 minute

The model is a compute-bound MLP 2048->8192->4096->10 (capacity here 1-1.7 thousand requests/s, low enough for a
Python open-loop generator on the same 2 cores to hold 3x of it; with batching, a 1024->4096->4096->10 MLP reached
3.2k, and the generator could not keep up with 3x). Steps: measure capacity and the
nominal p99 with 32 closed-loop connections; start ``edgeserve serve --max-wait-ms`` at that p99; send requests
on a fixed schedule at 3x capacity for OVERLOAD_S seconds (latency counted from each request's scheduled time, so
a generator that falls behind shows it: how late it wrote its requests is printed too); then a closed-loop check
that the server recovered. Reported: accepted p99 against 2x nominal, how fast the 503s come back, resident memory
against its baseline, the answers per second under overload against the capacity.

Targets (issue 12): accepted p99 <= 2x nominal p99; the excess gets fast 503s; RSS back within 10% of the
baseline; the server answers normally afterwards. Nothing here asserts on time; the numbers are printed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.runtime.repository import Repository

pytestmark = pytest.mark.slow
OVERLOAD_S = 5.0
MAX_CONNECTIONS = 1024
"""The open-loop generator's connections at most (a request due when all are busy waits for one, and that wait
counts in its latency): without a bound, a server that falls behind had the generator open connections until the
process ran out of file descriptors."""
WARM_CONNECTIONS = 64
_lines: list[str] = []


def _heavy_mlp(path: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_serving import _big_mlp  # type: ignore[import-not-found]

    return _big_mlp(path, (2048, 8192, 4096, 10))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Client:
    """Raw HTTP/1.1 keep-alive connections; one request in flight on each."""

    def __init__(self, port: int, body: bytes, headers: dict[str, str]) -> None:
        self.port = port
        self.request = (f"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                        + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def send(self) -> int:
        conn = self.idle.pop() if self.idle else await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = conn
        writer.write(self.request)
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        self.idle.append(conn)
        return status

    async def open(self, n: int) -> None:
        """Open n connections ahead of the load (a new one costs a handshake on both sides)."""
        self.idle += [await asyncio.open_connection("127.0.0.1", self.port) for _ in range(n - len(self.idle))]

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
            await writer.wait_closed()
        self.idle.clear()


def _run(client: Client, coro: object) -> object:
    async def go() -> object:
        try:
            return await coro  # type: ignore[misc]
        finally:
            await client.close()

    return asyncio.run(go())


async def _closed_loop(client: Client, connections: int, seconds: float) -> tuple[float, list[float], int]:
    """(answered per second, their latencies, how many were refused with 503)."""
    latencies: list[float] = []
    refused = 0
    end = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal refused
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            status = await client.send()
            assert status in (200, 503), status
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                refused += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    return len(latencies) / (time.perf_counter() - t0), latencies, refused


@dataclass
class OpenLoop:
    """What an open-loop run saw, in seconds."""

    accepted: list[float] = field(default_factory=list)
    """Each answered request's latency from its scheduled time (so a generator that falls behind shows it)."""
    accepted_from_write: list[float] = field(default_factory=list)
    """The same from the moment its request was written: the server's part, without the generator's lateness."""
    refused: list[float] = field(default_factory=list)
    """Each 503's latency from its scheduled time."""
    late: list[float] = field(default_factory=list)
    """How long after its scheduled time each request was written."""
    other: int = 0
    cpu: float = 0.0
    """The generator's own CPU over the run, in cores."""


async def _open_loop(client: Client, rate: float, seconds: float) -> OpenLoop:
    """Requests at fixed times, each started when it is due (not all created up front: making 20k tasks at once
    made the first few hundred milliseconds of requests late), on connections opened beforehand."""
    out = OpenLoop()
    connections = asyncio.Semaphore(MAX_CONNECTIONS)
    await client.open(WARM_CONNECTIONS)

    async def one(at: float) -> None:
        async with connections:
            sent = time.perf_counter()
            out.late.append(sent - at)
            status = await client.send()
        done = time.perf_counter()
        if status == 200:
            out.accepted.append(done - at)
            out.accepted_from_write.append(done - sent)
        elif status == 503:
            out.refused.append(done - at)
        else:
            out.other += 1

    running: set[asyncio.Task[None]] = set()
    cpu0, start = time.process_time(), time.perf_counter()
    for i in range(int(rate * seconds)):
        at = start + i / rate
        if (ahead := at - time.perf_counter()) > 0:
            await asyncio.sleep(ahead)
        task = asyncio.create_task(one(at))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)
    out.cpu = (time.process_time() - cpu0) / (time.perf_counter() - start)
    return out


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def test_open_loop_at_three_times_capacity(tmp_path: Path) -> None:
    pkg = edgeserve.convert(_heavy_mlp(tmp_path / "heavy.onnx"), tmp_path / "pkg", quantize="none")
    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("m", pkg.path)
    x = np.random.default_rng(1).standard_normal((1, 2048)).astype(np.float32)
    head = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2048],
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    body, headers = head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}
    exe = str(Path(sys.executable).parent / "edgeserve")

    def serve(port: int, *extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([exe, "serve", str(repo.root), "--port", str(port), "--no-grpc", *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return proc
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, "the server did not start"
                time.sleep(0.05)

    port = _free_port()
    proc = serve(port)
    try:
        client = Client(port, body, headers)
        _run(client, _closed_loop(client, 32, 1.0))  # warm-up
        client = Client(port, body, headers)
        capacity, nominal, _ = _run(client, _closed_loop(client, 32, 3.0))  # type: ignore[misc]
    finally:
        proc.terminate()
        proc.wait(30)
    nominal_p99 = _p(nominal, 99)
    port = _free_port()
    proc = serve(port, "--max-wait-ms", f"{nominal_p99:.1f}")
    try:
        client = Client(port, body, headers)
        _run(client, _closed_loop(client, 32, 1.0))  # warm-up, and the engine's time per row is measured
        baseline = _rss(proc.pid)
        client = Client(port, body, headers)
        run: OpenLoop = _run(client, _open_loop(client, 3 * capacity, OVERLOAD_S))  # type: ignore[assignment]
        peak = _rss(proc.pid)
        client = Client(port, body, headers)
        after_rate, after, after_refused = _run(client, _closed_loop(client, 32, 2.0))  # type: ignore[misc]
        after_rss = _rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    ok, refused = run.accepted, run.refused
    sent = len(ok) + len(refused) + run.other
    _lines.extend([
        f"capacity (32 closed-loop connections): {capacity:.0f} req/s, nominal p50 {_p(nominal, 50):.1f} ms, "
        f"p99 {nominal_p99:.1f} ms; server started with --max-wait-ms {nominal_p99:.1f}",
        f"open loop at 3x = {3 * capacity:.0f} req/s for {OVERLOAD_S:g} s: {sent} sent, {len(ok)} answered "
        f"({len(ok) / OVERLOAD_S:.0f}/s), {len(refused)} refused with 503, {run.other} other",
        f"accepted: p50 {_p(ok, 50):.1f} ms, p99 {_p(ok, 99):.1f} ms = {_p(ok, 99) / nominal_p99:.2f}x nominal "
        f"(target <= 2x); 503s: p50 {_p(refused, 50):.1f} ms, p99 {_p(refused, 99):.1f} ms",
        f"accepted, from the request's write: p50 {_p(run.accepted_from_write, 50):.1f} ms, "
        f"p99 {_p(run.accepted_from_write, 99):.1f} ms",
        f"the generator: written p50 {_p(run.late, 50):.1f} ms, p99 {_p(run.late, 99):.1f} ms after the scheduled "
        f"time; its CPU {run.cpu:.2f} cores",
        f"RSS: baseline {baseline / 2**20:.0f} MiB, at the end of the overload {peak / 2**20:.0f} MiB, after "
        f"recovery {after_rss / 2**20:.0f} MiB ({after_rss / baseline:.2f}x; target within 10%)",
        f"after the load: {after_rate:.0f} req/s answered closed loop (32 connections), p99 {_p(after, 99):.1f} ms, "
        f"{after_refused} refused",
    ])


def teardown_module() -> None:
    print("\n\n" + "\n".join(_lines))
