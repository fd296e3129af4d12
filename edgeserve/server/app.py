"""Both servers in one process over one Runtime, and how the process ends.

SIGTERM (or SIGINT) starts a drain: readiness turns false and new inference requests get 503 (a load balancer
moves on), requests already in flight or queued finish — for at most ``drain_s`` — then uvicorn and the gRPC server
stop and the runtime closes its models; the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import BatchConfig, CacheConfig, GuardConfig, SessionConfig
from ..errors import ConfigError
from ..guard.audit import AuditLog
from ..runtime.runtime import DEFAULT_GUARD, Runtime
from .auth import Tokens
from .dataplane import DataPlane
from .fanin import FOLDER_ENV, Siblings
from .metrics import Metrics
from .rest import MAX_BODY, RestApp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = 8001
    """None: no gRPC server."""
    token_file: Path | None = None
    insecure: bool = False
    """Serve off loopback without tokens (never the default)."""
    drain_s: float = 30.0
    max_body: int = MAX_BODY
    grpc_workers: int = 16
    model_control: bool = False
    """Triton's repository extension (load, unload, index over HTTP), for admin tokens only."""
    shared_memory: bool = False
    """Triton's system shared-memory extension: tensors through /dev/shm segments that local clients name."""
    poll_s: float = 2.0
    """Seconds between looks at the repository (:meth:`Runtime.refresh`): what ``edgeserve models`` publishes, rolls
    back or pins serves without a restart. 0: never."""
    reuse_port: bool = False
    """Share the ports with sibling worker processes (``--workers``): the kernel spreads connections over them."""

    def __post_init__(self) -> None:
        if self.token_file is None and not self.insecure and not is_loopback(self.host):
            raise ConfigError(f"binding {self.host} exposes the models beyond this machine: give --token-file (bearer "
                              "tokens), or --insecure if something in front of edgeserve does the auth")
        if self.model_control and self.token_file is None:
            raise ConfigError("--model-control needs --token-file: only an 'admin' token may load and unload models")
        if not (self.poll_s == 0 or 0.05 <= self.poll_s <= 86400):
            raise ConfigError(f"the repository poll interval must be 0 (off) or 0.05-86400 s, got {self.poll_s}")
        if not 0 < self.drain_s <= 3600:
            raise ConfigError(f"the drain timeout must be between 0 and 3600 s, got {self.drain_s}")


ENGINE_NICE = 10
"""How far below the event loop the engine's worker threads run in a server (:attr:`SessionConfig.nice`)."""


def server_session(threads: int | None = None, *, nice: int = ENGINE_NICE) -> SessionConfig:
    """The engine settings a server runs its models with: every core (``threads`` None), the engine's worker
    threads ``nice`` steps below the event loop's priority. The loop then gets a core whenever it has work,
    and the workers keep every core, spinning between operators, when it does not. Measured on 2 cores, wide MLP:
    at 1 connection p50 255-291 us (bare onnxruntime in the loop: 190-230; the engine on one core: 482), at 32
    connections 5.6-5.9k requests/s; under 3x overload the accepted p99 was 1.5-1.9x nominal, 2.5x with the workers
    at the loop's priority. The batches the event loop gathers in a turn run on one thread (``turn_threads``)."""
    return SessionConfig(intra_op_threads=threads, nice=nice, turn_threads=1)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """The runtime, its data plane, the REST app and the gRPC server, started and stopped together.
    ``session`` defaults to :func:`server_session`."""

    def __init__(self, repository: str | Path, config: ServeConfig, *, batching: BatchConfig | None = None,
                 cache: CacheConfig | None = None, session: SessionConfig | None = None,
                 guard: GuardConfig | None = DEFAULT_GUARD, audit: str | Path | None = None,
                 audit_mode: str = "ack") -> None:
        self.config = config
        self.tokens = Tokens.read(config.token_file) if config.token_file else None
        log_ = AuditLog(audit, durability=audit_mode) if audit is not None else None
        folder = os.environ.get(FOLDER_ENV)
        shared = folder if config.reuse_port and folder and Path(folder).is_dir() else None
        """A worker of several: one /metrics for all, one trigger firing per drift episode for all."""
        try:
            self.runtime = Runtime(repository, batching=batching, cache=cache, config=session or server_session(),
                                   guard=guard, audit=log_,
                                   episodes=None if shared is None else Path(shared) / "episodes")
        except BaseException:
            if log_ is not None:
                log_.close()
            raise
        self._audit = log_
        self.metrics = Metrics(self.runtime)
        self.plane = DataPlane(self.runtime, observer=self.metrics, model_control=config.model_control,
                               shared_memory=config.shared_memory)
        self.metrics.inflight.set_function(lambda: self.plane.inflight)
        if shared is not None:
            self.metrics.siblings = self.plane.siblings = Siblings(shared, self.metrics.own,
                                                                   statistics=self.plane.own_statistics,
                                                                   drift=self.plane.own_drift)
        self.app = RestApp(self.plane, self.metrics, tokens=self.tokens, max_body=config.max_body)
        self._grpc: Any = None
        self.grpc_port: int | None = None
        self._uvicorn: Any = None
        self._stopping = threading.Event()

    def start_grpc(self) -> None:
        if self.config.grpc_port is None:
            return
        from . import rpc

        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        self._grpc, self.grpc_port = rpc.start(self.plane, f"{host}:{self.config.grpc_port}", tokens=self.tokens,
                                               workers=self.config.grpc_workers, max_message=self.config.max_body,
                                               reuse_port=self.config.reuse_port)

    def run(self, sock: socket.socket | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or :meth:`stop`), then drain and return. ``sock``: an already bound
        listening socket for REST (tests bind port 0 and read the port back)."""
        import uvicorn

        if sock is None:  # NOTE: bound here, not by uvicorn, so a port in use is one clear error
            sock = listening_socket(self.config.host, self.config.port, reuse_port=self.config.reuse_port)
        try:
            self.start_grpc()
        except BaseException:
            sock.close()
            self.close()
            raise
        if self.config.poll_s:
            self.runtime.watch(self.config.poll_s, caller="repository poll")
        from .onewrite import Protocol

        # NOTE: proxy_headers off: nothing here reads the client's address, and uvicorn's middleware that rewrites
        # it from X-Forwarded-For wraps every request (digits MLP, wrk at 32 connections: +3-5% requests/s)
        config = uvicorn.Config(self.app, host=self.config.host, port=self.config.port, http=Protocol,
                                loop="uvloop", lifespan="off", access_log=False, log_level="warning",
                                proxy_headers=False, timeout_graceful_shutdown=int(self.config.drain_s) + 1)
        server = uvicorn.Server(config)
        self._uvicorn = server
        server.handle_exit = self._on_signal  # type: ignore[method-assign]
        # NOTE: what is loaded by now (libraries, models) lives as long as the server: out of the collector's
        # sight, a full collection no longer walks it. Each one stalled the event loop for ~10 ms: digits MLP,
        # wrk at 32 connections, p99 10-12 -> 3.5-4.8 ms with requests gathered by turns (5.9 -> 5.9 without)
        gc.freeze()
        try:
            server.run(sockets=[sock])
        finally:
            self.close()

    @property
    def started(self) -> bool:
        return bool(self._uvicorn is not None and self._uvicorn.started)

    def stop(self) -> None:
        """What SIGTERM does: drain, then stop (returns at once; :meth:`run` returns when it is done)."""
        self._on_signal(signal.SIGTERM, None)

    def _on_signal(self, sig: int, frame: Any) -> None:
        if self._stopping.is_set():  # a second signal: stop now
            if self._uvicorn is not None:
                self._uvicorn.force_exit = True
            return
        self._stopping.set()
        log.warning("edgeserve: %s received; draining (at most %.0f s)", signal.Signals(sig).name, self.config.drain_s)
        threading.Thread(target=self._drain, name="edgeserve-drain", daemon=True).start()

    def _drain(self) -> None:
        self.runtime.unwatch(wait=False)  # draining: no more loads
        finished = self.plane.drain(self.config.drain_s)
        if not finished:
            log.warning("edgeserve: %d requests still running after the drain timeout", self.plane.inflight)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    def close(self) -> None:
        self.runtime.unwatch()  # a load the poller has begun ends before the runtime closes
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()
            self._grpc = None
        self.runtime.close(timeout=self.config.drain_s)
        self.plane.close()
        if self.metrics.siblings is not None:
            self.metrics.siblings.close()
        if self._audit is not None:
            self._audit.close()  # after the runtime: the drained requests' records are written first


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound TCP socket for uvicorn; with ``reuse_port``, one several worker processes bind together."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); is the port in use?") from None
    return sock


def run_workers(args: list[str], workers: int) -> int:
    """``--workers N``: N copies of this ``edgeserve serve`` command sharing the ports. SIGTERM and SIGINT go to
    every worker (each drains); returns 0 when every worker exited 0.

    NOTE: each worker loads the models itself (N times the memory); /metrics sums them all (see :mod:`.fanin`)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from .shm import REGISTRY_ENV

    registry = tempfile.mkdtemp(prefix="edgeserve-shm-")  # shared-memory regions, registered with any worker
    shared_metrics = tempfile.mkdtemp(prefix="edgeserve-metrics-")  # each worker's metrics, for the scraped one
    env = {**os.environ, REGISTRY_ENV: registry, FOLDER_ENV: shared_metrics}
    children = [subprocess.Popen([sys.executable, "-m", "edgeserve", "serve", *args, "--reuse-port"], env=env)
                for _ in range(workers)]

    def forward(sig: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        codes = [child.wait() for child in children]
    finally:
        shutil.rmtree(registry, ignore_errors=True)
        shutil.rmtree(shared_metrics, ignore_errors=True)
    return 0 if all(c == 0 for c in codes) else 1

