"""Prometheus metrics (prometheus-client), with Triton-like names under ``edgeserve_``.

On the hot path only what must be counted per request: the outcome counter and the end-to-end histogram (a
labelled child is looked up once per model, version and outcome, then cached). Everything the runtime already
counts — batches and their rows, requests that ran at once or direct, cache hits and misses, queue depth, loaded
models — is read from ``Runtime.models()`` when Prometheus scrapes, costing requests nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ..runtime.runtime import Runtime
from .fanin import Siblings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Metrics:
    """The server's registry: per-request counters and histograms, plus the runtime's own counts at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edgeserve_inference_requests", "Inference requests by model, version and outcome",
                                ["model", "version", "outcome"], registry=self.registry)
        self.duration = Histogram("edgeserve_inference_request_duration_seconds",
                                  "End-to-end time of inference requests (decode, queue, run, encode)",
                                  ["model"], buckets=BUCKETS, registry=self.registry)
        self.rejections = Counter("edgeserve_rejections", "Requests refused before inference, by reason",
                                  ["reason"], registry=self.registry)
        self.inflight = Gauge("edgeserve_inflight_requests", "Inference requests being served now",
                              registry=self.registry)
        self.registry.register(_RuntimeCollector(runtime))
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.siblings: Siblings | None = None
        """The other worker processes of this server (``--workers``), whose counts a scrape adds to these."""

    def observe(self, model: str, version: str, outcome: str, seconds: float) -> None:
        key = (model, version, outcome)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 10_000:  # NOTE: names come from requests: unknown ones must not grow this forever
                self._children.clear()
            child = self._children[key] = (self.requests.labels(model, version, outcome), self.duration.labels(model))
        child[0].inc()
        if outcome == "success":
            child[1].observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def own(self) -> bytes:
        """This process's metrics."""
        return generate_latest(self.registry)

    def render(self) -> bytes:
        """What a scrape gets: this process's metrics, with its sibling workers' added when it has any."""
        return generate_latest(self.registry) if self.siblings is None else self.siblings.merged()


class _RuntimeCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        loaded = GaugeMetricFamily("edgeserve_model_loaded", "1 if the model has a serving version",
                                   labels=["model", "version"])
        queued = GaugeMetricFamily("edgeserve_queue_depth", "Requests waiting in the model's batcher", labels=["model"])
        counts = {
            "batches": CounterMetricFamily("edgeserve_engine_runs", "Engine runs (batches)", labels=["model"]),
            "rows": CounterMetricFamily("edgeserve_engine_rows", "Rows the engine answered", labels=["model"]),
            "ran_direct": CounterMetricFamily("edgeserve_ran_direct", "Requests run direct (batching did not pay)",
                                              labels=["model"]),
            "ran_in_turn": CounterMetricFamily("edgeserve_ran_in_turn", "Requests run in the event loop in one batch "
                                               "with the others read in the same turn", labels=["model"]),
            "expired": CounterMetricFamily("edgeserve_expired", "Requests past their deadline", labels=["model"]),
            "rejected": CounterMetricFamily("edgeserve_queue_full", "Requests refused by a full queue",
                                            labels=["model"]),
        }
        timings = {
            "queue_s": HistogramMetricFamily("edgeserve_queue_duration_seconds",
                                             "Time batched requests waited for the engine", labels=["model"]),
            "run_s": HistogramMetricFamily("edgeserve_compute_duration_seconds", "Time per engine run (a batch)",
                                           labels=["model"]),
            "batch_rows": HistogramMetricFamily("edgeserve_batch_size", "Rows per engine run", labels=["model"]),
        }
        cache = {"hits": CounterMetricFamily("edgeserve_cache_hits", "Response cache hits", labels=["model"]),
                 "misses": CounterMetricFamily("edgeserve_cache_misses", "Response cache misses", labels=["model"])}
        drift: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "score": GaugeMetricFamily("edgeserve_drift_score", "Highest drift score over the model's features "
                                       "(1 = alarm threshold)", labels=["model"]),
            "drifting": GaugeMetricFamily("edgeserve_drifting", "1 while a drift episode lasts", labels=["model"]),
            "alarms": CounterMetricFamily("edgeserve_drift_alarms", "Drift episodes started", labels=["model"]),
            "triggered": CounterMetricFamily("edgeserve_retraining_triggered", "Retraining trigger firings",
                                             labels=["model"]),
        }
        envelope = CounterMetricFamily("edgeserve_envelope", "Requests that failed an envelope check, by check and "
                                       "what the policy did", labels=["model", "check", "action"])
        for name, info in self.runtime.models().items():
            version = info.get("version")
            state = info.get("drift")
            if state:
                for key, family in drift.items():
                    family.add_metric([name], float(state.get(key, 0)))
            checks = info.get("envelope")
            if checks:
                for action, key in (("warned", "warnings"), ("rejected", "rejections")):
                    for check, count in checks[key].items():
                        envelope.add_metric([name, check, action], float(count))
            loaded.add_metric([name, str(version or "")], 1.0 if version is not None else 0.0)
            batching = info.get("batching")
            if batching:
                queued.add_metric([name], float(batching.get("queued", 0)))
                for key, family in counts.items():
                    family.add_metric([name], float(batching.get(key, 0)))
                for key, hist in timings.items():
                    snap = batching.get("timings", {}).get(key)
                    if snap:
                        hist.add_metric([name], _buckets(snap), snap["sum"])
            stats = info.get("cache")
            if stats:
                for key, family in cache.items():
                    family.add_metric([name], float(stats.get(key, 0)))
        yield loaded
        yield queued
        yield from drift.values()
        yield envelope
        yield from counts.values()
        yield from timings.values()
        yield from cache.values()


def _buckets(snap: dict[str, Any]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets from a batcher histogram's per-bucket counts."""
    out, total = [], 0
    for bound, count in zip([*snap["bounds"], float("inf")], snap["counts"]):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(total)))
    return out

