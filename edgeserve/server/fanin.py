"""One ``/metrics`` for the worker processes of one server (``--workers``).

The workers share their ports, so a Prometheus scrape reaches whichever the kernel picks, and each counted only
its own requests: counters read 7 at one scrape and 4 at the next, which Prometheus takes for a restart. So each
worker writes its own exposition to a folder the parent made (``FOLDER_ENV``) every ``INTERVAL_S``, and the worker
that is scraped answers with its own live values and its siblings' latest, summed: counters, histograms and most
gauges add up; the gauges that say whether something holds (a model loaded, drift under way) take the largest.
A sibling's part is at most ``INTERVAL_S`` old; of one whose process died, the counts it last shared stay in the sums
(its gauges are left out), so no counter goes down. Triton's statistics
(``/v2/models/stats``, gRPC's ModelStatistics) are shared and summed the same way. Each worker watches drift on its own
share of the traffic: the drift route (``GET /v2/models/{name}/drift``, ``edgeserve drift URL NAME``) answers with
every live worker's report merged (see :func:`merged_drift`), each worker's own under ``workers``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..guard.episodes import process_alive

log = logging.getLogger(__name__)

FOLDER_ENV = "EDGESERVE_METRICS_FOLDER"
"""The folder the worker processes of one server write their metrics to (made by the parent)."""
INTERVAL_S = 1.0
CUMULATIVE = frozenset({"counter", "histogram", "summary"})
"""Families a worker that died still counts in (its last shared counts): leaving them out would lower the sums,
which Prometheus reads as a restart. Its gauges (in flight, queued, loaded) are left out: they describe a live
process."""
HIGHEST = frozenset({"edgeserve_model_loaded", "edgeserve_drift_score", "edgeserve_drifting"})
"""Gauges a scrape reports the largest of over the workers, not the sum."""


class Siblings:
    """Writes this worker's metrics, statistics and drift reports for the others, and adds theirs to its own when
    asked."""

    def __init__(self, folder: str | Path, own: Callable[[], bytes], *, interval_s: float = INTERVAL_S,
                 pid: int | None = None, statistics: Callable[[], dict[str, Any]] | None = None,
                 drift: Callable[[], dict[str, Any]] | None = None) -> None:
        """``own``: this worker's exposition; ``pid``: the process it is shared as (default: this one);
        ``statistics``: its Triton statistics of every model (shared beside the exposition); ``drift``: its drift
        reports, by model name (shared likewise)."""
        self.folder = Path(folder)
        self._own = own
        self._statistics = statistics
        self._drift = drift
        self._interval = interval_s
        self._file = self.folder / f"{os.getpid() if pid is None else pid}.prom"
        self._stats_file = self._file.with_suffix(".stats")
        self._drift_file = self._file.with_suffix(".drift")
        self.pid = int(self._file.stem)
        self._stop = threading.Event()
        self._writing = threading.Lock()
        self._share()  # at once: a scrape of a sibling counts this worker from its start
        self._thread = threading.Thread(target=self._share_until_stopped, name="edgeserve-metrics-share", daemon=True)
        self._thread.start()

    def merged(self) -> bytes:
        """This worker's exposition, live, summed with the latest of every other live worker. Its own is shared
        first: a sibling scraped next reads it at least this new, so no count a scrape reported goes down at the
        next (Prometheus would read that as a restart)."""
        from prometheus_client.parser import text_string_to_metric_families

        own, _ = self._share()
        families = list(text_string_to_metric_families(own.decode()))
        for text, alive in self._theirs(".prom"):
            families += (f for f in text_string_to_metric_families(text) if alive or f.type in CUMULATIVE)
        return _render(_merge(families))

    def merged_statistics(self) -> list[dict[str, Any]]:
        """Triton's per-model statistics of every worker, summed per model and version (the latest inference: the
        last of any); this worker's shared first, as :meth:`merged` does."""
        _, own = self._share()
        entries = list((own or {}).get("model_stats", []))
        for text, _ in self._theirs(".stats"):  # counts only: a gone worker's stay in the sums, as in merged()
            try:
                entries += json.loads(text).get("model_stats", [])
            except ValueError:  # NOTE: written whole (see _write); a file not JSON is no sibling's
                continue
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in entries:
            key = (entry["name"], entry["version"])
            merged[key] = _add(merged[key], entry) if key in merged else json.loads(json.dumps(entry))
        return list(merged.values())

    def drift_of_others(self, name: str) -> list[dict[str, Any]]:
        """The latest drift report of ``name`` of every other live worker (at most ``INTERVAL_S`` old), each with
        its ``pid``. A worker that died is left out: its detectors watched traffic that no longer comes."""
        reports = []
        for text, alive, pid in self._theirs(".drift", with_pid=True):
            if not alive:
                continue
            try:
                report = json.loads(text).get(name)
            except ValueError:
                continue
            if isinstance(report, dict):
                reports.append({**report, "pid": pid})
        return reports

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._file.unlink(missing_ok=True)
        self._stats_file.unlink(missing_ok=True)
        self._drift_file.unlink(missing_ok=True)

    def _share_until_stopped(self) -> None:
        while not self._stop.wait(self._interval):
            self._share()

    def _share(self) -> tuple[bytes, dict[str, Any] | None]:
        """Write this worker's exposition (and statistics) for the others; returns them."""
        with self._writing:  # NOTE: taken and written in one go: the files only ever move to later snapshots
            own = self._own()
            stats = self._statistics() if self._statistics is not None else None
            drift = self._drift() if self._drift is not None else None
            try:
                _write(self._file, own)
                if stats is not None:
                    _write(self._stats_file, json.dumps(stats).encode())
                if drift is not None:
                    _write(self._drift_file, json.dumps(drift, default=str).encode())
            except OSError as exc:  # NOTE: a full disk must not end the sharing for good, nor the worker
                log.warning("edgeserve: cannot share this worker's metrics in %s: %s", self.folder, exc)
        return own, stats

    def _theirs(self, suffix: str, *, with_pid: bool = False) -> Iterator[Any]:
        """The other workers' shared files, and whether each one's process still runs (a worker that stopped
        cleanly removed its own); ``with_pid``: and its pid."""
        mine = self._file.with_suffix(suffix)
        for path in self.folder.glob("*" + suffix):
            if path == mine:
                continue
            try:
                text = path.read_text()
            except OSError:  # gone between the listing and the read: that worker stopped
                continue
            alive = process_alive(path.stem)
            yield (text, alive, int(path.stem)) if with_pid else (text, alive)


SUMMED = ("requests", "skipped", "resized", "alarms", "triggered")
"""Drift report counts that add up over the workers."""


def merged_drift(own: dict[str, Any], others: list[dict[str, Any]], pid: int) -> dict[str, Any]:
    """One drift report of a model version from each worker's: requests watched, alarms and firings summed,
    drifting when any worker's detectors are, the score and each feature's the highest of any worker's; every
    worker's own (``pid``, whether it drifts, its score, requests, onset and top features) under ``workers``
    (``onset_request`` at the top stays this worker's: each counts its own requests). Workers
    serving another version (a reload under way) are listed, not merged."""
    if not own.get("enabled"):
        return own
    same = [r for r in others if r.get("enabled") and (r.get("version"), r.get("digest")) == (own.get("version"),
                                                                                                own.get("digest"))]
    merged = dict(own)
    for key in SUMMED:
        merged[key] = sum(int(r.get(key) or 0) for r in (own, *same))
    merged["drifting"] = any(bool(r.get("drifting")) for r in (own, *same))
    merged["score"] = max(float(r.get("score") or 0.0) for r in (own, *same))
    top: dict[str, float] = {}
    for r in (own, *same):
        for feature, score in (r.get("top") or {}).items():
            top[feature] = max(top.get(feature, float("-inf")), float(score))
    shown = len(own.get("top") or {})
    merged["top"] = dict(sorted(top.items(), key=lambda kv: -kv[1])[:shown])
    merged["workers"] = [
        {"pid": r.get("pid", pid), "version": r.get("version"), "merged": r is own or any(r is x for x in same),
         "drifting": bool(r.get("drifting")), "score": r.get("score"), "requests": r.get("requests"),
         "alarms": r.get("alarms"),
         "onset_request": r.get("onset_request"), "top": dict(list((r.get("top") or {}).items())[:3])}
        for r in (own, *(x for x in others if x.get("enabled")))]
    return merged


def _write(path: Path, data: bytes) -> None:
    part = path.with_suffix(path.suffix + ".part")
    part.write_bytes(data)
    os.replace(part, path)  # a reader sees the old file or the new one, never half of one


def _add(total: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """Two workers' statistics of one model version: numbers summed (the latest inference: the later), nested
    durations likewise; lists (Triton's per-batch-size stats, which edgeserve leaves empty) kept."""
    for key, value in more.items():
        if key == "last_inference":
            total[key] = max(total.get(key, 0), value)
        elif isinstance(value, dict):
            total[key] = _add(total.get(key, {}), value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
    return total


def _merge(families: Iterable[Any]) -> list[Any]:
    """Families of the same name merged: each sample (name and labels) summed, or the largest taken for the gauges
    in ``HIGHEST`` and for a counter's ``_created`` (the earliest start would be the smallest: kept as the first)."""
    merged: dict[str, tuple[Any, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for family in families:
        entry = merged.setdefault(family.name, (family, {}))
        highest = family.name in HIGHEST
        values = entry[1]
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            if key not in values:
                values[key] = sample.value
            elif sample.name.endswith("_created"):
                values[key] = min(values[key], sample.value)
            elif highest:
                values[key] = max(values[key], sample.value)
            else:
                values[key] += sample.value
    from prometheus_client.metrics_core import Metric

    out = []
    for first, values in merged.values():
        metric = Metric(first.name, first.documentation, first.type, first.unit)
        for (name, labels), value in values.items():
            metric.add_sample(name, dict(labels), value)
        out.append(metric)
    return out


def _render(families: list[Any]) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    class _Merged:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)
