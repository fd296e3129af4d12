"""deploy/: the container recipe and the KServe manifests hold what they must, and their command lines really start
the server here (with this repository and free ports swapped in)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server.client import call, free_port

yaml = pytest.importorskip("yaml")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _dockerfile() -> list[tuple[str, str]]:
    lines = []
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        if raw.strip() and not raw.lstrip().startswith("#"):
            word, _, rest = raw.strip().partition(" ")
            lines.append((word.upper(), rest))
    return lines


def test_the_image_is_multi_stage_non_root_and_holds_no_model() -> None:
    lines = _dockerfile()
    assert sum(1 for w, _ in lines if w == "FROM") >= 2
    users = [rest for w, rest in lines if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = json.loads(next(rest for w, rest in lines if w == "CMD"))
    assert cmd[:2] == ["serve", "/models"]
    assert "[server]" in " ".join(rest for w, rest in lines if w == "RUN")
    last = max(i for i, (w, _) in enumerate(lines) if w == "FROM")
    copied = [rest for w, rest in lines[last:] if w in ("COPY", "ADD")]
    assert copied and all(rest.startswith("--from=build /wheels") for rest in copied)  # a wheel, never a model


def test_the_kserve_manifests_have_their_required_fields() -> None:
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["kind"] == "ServingRuntime"
    spec = runtime["spec"]
    assert "v2" in spec["protocolVersions"] and "grpc-v2" in spec["protocolVersions"]
    container = spec["containers"][0]
    assert container["name"] == "kserve-container" and container["command"] == ["edgeserve"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    formats = {f["name"] for f in spec["supportedModelFormats"]}
    service = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] == "v2" and model["storageUri"]


def _serve(argv: list[str], port: int) -> None:
    """Run a deploy file's command line; it must become ready on ``port`` and exit 0 on SIGTERM."""
    exe = Path(sys.executable).parent / argv[0]
    proc = subprocess.Popen([str(exe), *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        end = time.monotonic() + 60
        while True:  # a state to reach, polled
            try:
                if call(f"127.0.0.1:{port}", "GET", "/v2/health/ready").status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"{shlex.join(argv)} exited with {proc.returncode}"
            assert time.monotonic() < end, "never ready"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _swap(args: list[str], repo: Path, old_repo: str) -> tuple[list[str], int]:
    port, grpc_port = free_port(), free_port()
    out = []
    for i, a in enumerate(args):
        if a == old_repo:
            a = str(repo)
        elif i and args[i - 1] == "--port":
            a = str(port)
        elif i and args[i - 1] == "--grpc-port":
            a = str(grpc_port)
        out.append(a)
    return out, port


def test_the_kserve_command_line_starts_the_server(repo: Path) -> None:
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    container = runtime["spec"]["containers"][0]
    args, port = _swap(container["args"], repo, "/mnt/models")
    _serve([*container["command"], *args], port)


def test_the_image_command_line_starts_the_server(repo: Path) -> None:
    lines = _dockerfile()
    entry = json.loads(next(rest for w, rest in lines if w == "ENTRYPOINT"))
    args, port = _swap(json.loads(next(rest for w, rest in lines if w == "CMD")), repo, "/models")
    _serve([*entry, *args], port)
