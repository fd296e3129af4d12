"""One /metrics for the worker processes of a server: what each worker shares and how a scrape merges them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgeserve.server.fanin import Siblings


def _worker(requests: float, loaded: float, drift: float, inflight: float) -> bytes:
    registry = CollectorRegistry()
    Counter("edgeserve_inference_requests", "Inference requests", ["model"], registry=registry).labels("m").inc(requests)
    Gauge("edgeserve_model_loaded", "Loaded", ["model"], registry=registry).labels("m").set(loaded)
    Gauge("edgeserve_drift_score", "Drift", ["model"], registry=registry).labels("m").set(drift)
    Gauge("edgeserve_inflight_requests", "In flight", registry=registry).set(inflight)
    return generate_latest(registry)


def _values(text: bytes) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(text.decode()) for s in f.samples}


def test_counters_and_loads_add_up_and_states_take_the_largest(tmp_path: Path) -> None:
    """Requests and requests in flight add up over the workers; a model loaded in both is loaded (1, not 2), and
    the drift score is the worst worker's. A sibling whose process died keeps its last counts in the sums (a
    counter that went down would read as a restart), and its gauges are left out."""
    (tmp_path / f"{os.getppid()}.prom").write_bytes(_worker(7, 1, 0.4, 2))  # a live process: this test's parent
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"{gone.stdout.strip()}.prom").write_bytes(_worker(1000, 1, 9.0, 50))  # its process has exited
    siblings = Siblings(tmp_path, lambda: _worker(4, 1, 0.9, 1), interval_s=3600)
    try:
        merged = _values(siblings.merged())
        assert (tmp_path / f"{os.getpid()}.prom").exists()  # this worker's own, for the others
    finally:
        siblings.close()
    assert merged["edgeserve_inference_requests_total"] == 1011
    assert merged["edgeserve_inflight_requests"] == 3
    assert merged["edgeserve_model_loaded"] == 1
    assert merged["edgeserve_drift_score"] == 0.9
    assert merged["edgeserve_inference_requests_created"] <= _values(_worker(0, 0, 0, 0))[
        "edgeserve_inference_requests_created"]
    assert not (tmp_path / f"{os.getpid()}.prom").exists()  # closed: nothing of it left for the others to read


def test_no_count_goes_down_between_scrapes_that_reach_different_workers(tmp_path: Path) -> None:
    """Worker A answers a scrape with its live 5 requests and B's shared 0; the next scrape reaches B: had A not
    shared its 5 when it answered, B would report its own 3 and A's stale 0, and Prometheus reads a counter that
    fell from 5 to 3 as a restart."""
    counts = {"a": 0.0, "b": 0.0}
    a = Siblings(tmp_path, lambda: _worker(counts["a"], 1, 0, 0), interval_s=3600, pid=os.getpid())
    b = Siblings(tmp_path, lambda: _worker(counts["b"], 1, 0, 0), interval_s=3600, pid=os.getppid())
    try:
        counts["a"], counts["b"] = 5, 3  # served since each last shared
        first = _values(a.merged())["edgeserve_inference_requests_total"]
        second = _values(b.merged())["edgeserve_inference_requests_total"]
    finally:
        a.close()
        b.close()
    assert first == 5 and second == 8


def test_triton_statistics_add_up_per_model_and_version(tmp_path: Path) -> None:
    """Counts and times summed per model and version; the latest inference is the later one; a version only one
    worker served is kept as it is; a worker that died still counts."""
    def stats(version: str, ok: int, ns: int, last: int) -> dict:
        return {"name": "m", "version": version, "last_inference": last, "inference_count": ok, "execution_count": ok,
                "inference_stats": {"success": {"count": ok, "ns": ns}}, "batch_stats": []}

    (tmp_path / f"{os.getppid()}.stats").write_text(json.dumps({"model_stats": [stats("1", 3, 300, 50),
                                                                                  stats("2", 1, 10, 70)]}))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"{gone.stdout.strip()}.stats").write_text(json.dumps({"model_stats": [stats("1", 2, 200, 40)]}))
    mine = Siblings(tmp_path, lambda: b"", interval_s=3600, statistics=lambda: {"model_stats": [stats("1", 4, 400, 60)]})
    try:
        merged = {e["version"]: e for e in mine.merged_statistics()}
    finally:
        mine.close()
    assert merged["1"]["inference_count"] == 9 and merged["1"]["inference_stats"]["success"] == {"count": 9, "ns": 900}
    assert merged["1"]["last_inference"] == 60 and merged["1"]["name"] == "m"
    assert merged["2"] == stats("2", 1, 10, 70)


def _drift(version: str, requests: int, drifting: bool, score: float, top: dict[str, float]) -> dict:
    return {"enabled": True, "model": "m", "version": version, "digest": f"d{version}", "requests": requests,
            "skipped": 0, "resized": requests // 10, "alarms": int(drifting), "triggered": 0, "drifting": drifting,
            "score": score,
            "onset_request": 40 if drifting else None, "top": top}


def test_the_drift_route_merges_the_live_workers_of_the_same_version(tmp_path: Path) -> None:
    """Each worker watches its own share of the traffic: the route's report adds up the rows watched, drifts when
    any worker does, takes each feature's worst score, and lists every worker. A worker that died is left out
    (its detectors watched traffic that no longer comes); one serving another version is listed, not merged."""
    from edgeserve.server.fanin import merged_drift

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / f"{gone.stdout.strip()}.drift").write_text(json.dumps({"m": _drift("1", 10_000, True, 9.0, {})}))
    (tmp_path / f"{os.getppid()}.drift").write_text(json.dumps({"m": _drift("1", 300, True, 1.4,
                                                                             {"feature 3": 1.4, "feature 9": 0.2})}))
    own = _drift("1", 200, False, 0.5, {"feature 9": 0.5, "feature 1": 0.3})
    siblings = Siblings(tmp_path, lambda: _worker(0, 1, 0, 0), interval_s=3600, drift=lambda: {"m": own})
    try:
        others = siblings.drift_of_others("m")
        assert json.loads((tmp_path / f"{os.getpid()}.drift").read_text())["m"]["requests"] == 200  # shared
        report = merged_drift(own, others, siblings.pid)
        reloading = merged_drift(own, [{**others[0], "version": "2", "digest": "d2"}], siblings.pid)
    finally:
        siblings.close()
    assert [o["pid"] for o in others] == [os.getppid()]
    assert report["requests"] == 500 and report["alarms"] == 1 and report["drifting"]
    assert report["resized"] == 50
    assert report["score"] == 1.4
    assert report["top"] == {"feature 3": 1.4, "feature 9": 0.5}
    assert [(w["pid"], w["merged"], w["drifting"]) for w in report["workers"]] == [
        (os.getpid(), True, False), (os.getppid(), True, True)]
    assert reloading["requests"] == 200 and not reloading["drifting"]
    assert [(w["version"], w["merged"]) for w in reloading["workers"]] == [("1", True), ("2", False)]
    assert not (tmp_path / f"{os.getpid()}.drift").exists()
