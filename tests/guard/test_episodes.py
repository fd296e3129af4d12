"""Drift episodes shared by the processes that serve one model version: the retraining trigger fires once per
episode across them (``serve --workers``), not once in each process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeserve import GuardConfig, Runtime, TriggerConfig
from edgeserve.guard.episodes import SharedEpisodes
from edgeserve.runtime.repository import Repository
from tests.factories import wait_for


def test_the_first_claim_of_an_episode_fires_and_the_episode_ends_when_the_last_drifting_process_leaves(
        tmp_path: Path) -> None:
    a, b = SharedEpisodes(tmp_path, "digits@1"), SharedEpisodes(tmp_path, "digits@1")
    a.join()
    b.join()
    assert a.state()["episode"] == 1 and len(a.state()["members"]) == 2
    assert a.claim() is True
    assert b.claim() is False  # the same episode: the other process fired it
    a.leave()  # a's traffic is back in distribution; b's is still drifting
    a.join()
    assert a.claim() is False and a.state()["episode"] == 1
    a.leave()
    b.leave()  # nobody drifting: the episode is over
    b.join()
    assert b.state()["episode"] == 2 and b.claim() is True
    other = SharedEpisodes(tmp_path, "digits@2")  # another version keeps its own episodes
    other.join()
    assert other.claim() is True and other.path != b.path


def test_a_process_that_died_drifting_does_not_hold_the_episode_open(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    episodes = SharedEpisodes(tmp_path, "digits@1")
    episodes.path.write_text(json.dumps({"episode": 4, "fired": True, "members": {"dead": int(gone.stdout)}}))
    episodes.join()
    assert episodes.state()["episode"] == 5 and list(episodes.state()["members"]) == [episodes.me]
    assert episodes.claim() is True
    episodes.path.write_text('{"episode": 7, "fired": tr')  # a write cut short: a fresh state, not a traceback
    assert episodes.claim() is True


def _repo(tmp_path: Path, package: Path) -> Path:
    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("digits", package)
    return repo.root


def _drifted(stream: np.ndarray) -> np.ndarray:
    shifted = stream.copy()
    shifted[:, 20] += 6.0
    return shifted


def test_two_runtimes_sharing_a_folder_fire_once_per_episode(digits_package: Path, digits, tmp_path: Path) -> None:
    _, stream, _ = digits
    shifted = _drifted(stream)
    events: list[dict] = []
    guard = GuardConfig(trigger=TriggerConfig(callback=events.append, span=64, rearm=256))
    root = _repo(tmp_path, digits_package)
    rng = np.random.default_rng(1)
    with Runtime(root, guard=guard, episodes=tmp_path / "shared") as one, \
            Runtime(root, guard=guard, episodes=tmp_path / "shared") as two:
        monitors = [rt.model("digits").monitor for rt in (one, two)]

        def send(data: np.ndarray, requests: int) -> None:
            for _ in range(requests):
                for rt in (one, two):  # each process sees its share of the same traffic
                    rt.predict("digits", data[rng.integers(0, len(data), 8)])

        send(shifted, 150)  # 1200 drifted rows each: both find drift, both pass the span
        assert all(m.drifting and m._has_fired for m in monitors)
        for m in monitors:
            m.trigger.wait(10)
        assert [e["event"] for e in events] == ["retrain"]  # once for both processes, not once in each
        assert sum(m.fired for m in monitors) == 1
        assert one.drift("digits")["shared_episode"] == {"episode": 1, "fired": True, "processes_drifting": 2}
        send(stream, 200)  # both back in distribution: the episode ends
        assert not any(m.drifting for m in monitors)
        send(shifted, 150)  # a new episode fires once more
        for m in monitors:
            m.trigger.wait(10)
        assert [e["event"] for e in events] == ["retrain", "retrain"]


def test_serve_workers_run_the_trigger_once_per_episode(digits_package: Path, digits, tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    from edgeserve.server.fanin import FOLDER_ENV
    from tests.server.client import call, free_port

    _, stream, _ = digits
    shifted = _drifted(stream)
    root = _repo(tmp_path, digits_package)
    fired = tmp_path / "fired.jsonl"
    script = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().replace(chr(10), ' ') + chr(10))"
    (root / "digits" / "serving.json").write_text(json.dumps(
        {"guard": {"trigger": {"span": 64, "rearm": 100000, "command": [sys.executable, "-c", script, str(fired)]}}}))
    port = free_port()
    hp = f"127.0.0.1:{port}"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "edgeserve"), "serve", str(root), "--workers", "2",
                             "--port", str(port), "--grpc-port", str(free_port())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    try:
        wait_for(lambda: len(parent.children()) == 2 and _ready(hp, call), timeout=120)
        folder = Path(parent.children()[0].environ()[FOLDER_ENV]) / "episodes"
        rng = np.random.default_rng(2)
        sent = [0]

        def both_drifting() -> bool:
            for _ in range(8):  # a new connection each: the kernel spreads them over the workers
                rows = shifted[rng.integers(0, len(shifted), 16)]
                body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": list(rows.shape),
                                               "data": rows.ravel().tolist()}]}).encode()
                assert call(hp, "POST", "/v2/models/digits/infer", body).status == 200
                sent[0] += len(rows)
            states = [json.loads(p.read_text()) for p in folder.glob("*.episode")]
            return bool(states) and len(states[0]["members"]) == 2 and states[0]["fired"]

        wait_for(both_drifting, timeout=120)
        for _ in range(10):  # both far past the span: the second worker has made its claim too
            both_drifting()

        def drift_report() -> dict:
            return json.loads(call(hp, "GET", "/v2/models/digits/drift").body)

        # the drift route answers for every worker, whichever the connection reaches: their rows add up (each
        # shares its report every second), and each worker is listed with its own
        reports: list[dict] = []

        def merged() -> bool:  # NOTE: a sibling's part is up to a second old: until then it reads 0 rows
            reports.append(drift_report())
            return reports[-1]["requests"] == sent[0] and all(w["requests"] > 0 for w in reports[-1]["workers"])

        wait_for(merged, timeout=30)
        report = reports[-1]
        assert report["drifting"] and len(report["workers"]) == 2
        assert all(w["merged"] and w["drifting"] for w in report["workers"]), json.dumps(report["workers"])
        assert report["score"] == max(w["score"] for w in report["workers"])
        from click.testing import CliRunner

        from edgeserve.cli import main

        shown = CliRunner().invoke(main, ["drift", f"http://{hp}", "digits"])
        assert shown.exit_code == 0, shown.output
        assert shown.output.count("\nworker ") == 2 and "DRIFTING" in shown.output
        proc.send_signal(15)
        assert proc.wait(60) == 0  # each worker's trigger finishes what it has queued before it exits
    finally:
        if proc.poll() is None:
            for worker in parent.children():
                worker.kill()
            proc.kill()
    lines = fired.read_text().splitlines()
    assert len(lines) == 1, lines
    assert json.loads(lines[0])["event"] == "retrain"


def _ready(hp: str, call) -> bool:
    try:
        return call(hp, "GET", "/v2/health/ready").status == 200
    except OSError:
        return False
