"""A real server (uvicorn + grpcio) on 127.0.0.1 in a thread of the test process, over a repository built here."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import edgeserve
from edgeserve.runtime.repository import Repository
from edgeserve.server.app import ServeConfig, Server
from tests.factories import echo_inputs, echo_model, save

TOKENS = {"infer": "infer-token-0123456789abcdef", "admin": "admin-token-0123456789abcdef",
          "metrics": "metrics-token-0123456789abcd"}


@dataclass
class Running:
    server: Server
    url: str
    grpc: str
    thread: threading.Thread

    @property
    def host_port(self) -> str:
        return self.url.removeprefix("http://")


@pytest.fixture(scope="package")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.factories import mlp_model, rows

    tmp = tmp_path_factory.mktemp("server-repo")
    mlp = edgeserve.convert(save(mlp_model(), tmp / "mlp.onnx"), tmp / "mlp-pkg", quantize="none",
                            calibration={"x": rows(32)})
    echo = edgeserve.convert(save(echo_model(), tmp / "echo.onnx"), tmp / "echo-pkg", quantize="none",
                             calibration=echo_inputs(8))
    repository = Repository(tmp / "repo", create=True)
    repository.publish("mlp", mlp.path)
    repository.publish("echo", echo.path)
    return repository.root


def start(repo: Path, config: ServeConfig, **kwargs) -> Running:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = Server(repo, config, **kwargs)
    thread = threading.Thread(target=server.run, args=(sock,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.grpc_port):  # a state to reach, not an ordering by sleeping
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    return Running(server, f"http://127.0.0.1:{sock.getsockname()[1]}", f"127.0.0.1:{server.grpc_port}", thread)


def stop(running: Running) -> None:
    running.server.stop()
    running.thread.join(30)
    assert not running.thread.is_alive()


@pytest.fixture(scope="package")
def served(repo: Path) -> Iterator[Running]:
    running = start(repo, ServeConfig(port=0, grpc_port=0), batching=edgeserve.BatchConfig())
    yield running
    stop(running)


@pytest.fixture(scope="package")
def shared(repo: Path) -> Iterator[Running]:
    """Triton's system shared-memory extension on."""
    running = start(repo, ServeConfig(port=0, grpc_port=0, shared_memory=True), batching=edgeserve.BatchConfig())
    yield running
    stop(running)


@pytest.fixture(scope="package")
def secured(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text("\n".join(f"{scope}-client {scope} {token}" for scope, token in TOKENS.items()) + "\n")
    running = start(repo, ServeConfig(port=0, grpc_port=0, token_file=tokens, model_control=True))
    yield running
    stop(running)
