"""One ``/metrics`` for the worker processes of one server (``--workers``).

The workers share their ports, so a Prometheus scrape reaches whichever the kernel picks, and each counted only
its own requests: counters read 7 at one scrape and 4 at the next, which Prometheus takes for a restart. So each
worker writes its own exposition to a folder the parent made (``FOLDER_ENV``) every ``INTERVAL_S``, and the worker
that is scraped answers with its own live values and its siblings' latest, summed: counters, histograms and most
gauges add up; the gauges that say whether something holds (a model loaded, drift under way) take the largest.
A sibling's part is at most ``INTERVAL_S`` old; one whose process has gone is left out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FOLDER_ENV = "EDGESERVE_METRICS_FOLDER"
"""The folder the worker processes of one server write their metrics to (made by the parent)."""
INTERVAL_S = 1.0
HIGHEST = frozenset({"edgeserve_model_loaded", "edgeserve_drift_score", "edgeserve_drifting"})
"""Gauges a scrape reports the largest of over the workers, not the sum."""


class Siblings:
    """Writes this worker's metrics for the others, and merges theirs into its own when it is scraped."""

    def __init__(self, folder: str | Path, own: Callable[[], bytes], *, interval_s: float = INTERVAL_S,
                 pid: int | None = None) -> None:
        """``own``: this worker's exposition; ``pid``: the process it is shared as (default: this one)."""
        self.folder = Path(folder)
        self._own = own
        self._interval = interval_s
        self._file = self.folder / f"{os.getpid() if pid is None else pid}.prom"
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

        own = self._share()
        texts = [own.decode()] + list(self._theirs())
        families = (family for text in texts for family in text_string_to_metric_families(text))
        return _render(_merge(families))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._file.unlink(missing_ok=True)

    def _share_until_stopped(self) -> None:
        while not self._stop.wait(self._interval):
            self._share()

    def _share(self) -> bytes:
        """Write this worker's exposition for the others; returns it."""
        with self._writing:  # NOTE: taken and written in one go: the file only ever moves to a later snapshot
            own = self._own()
            part = self._file.with_suffix(".part")
            try:
                part.write_bytes(own)
                os.replace(part, self._file)  # a reader sees the old file or the new one, never half of one
            except OSError as exc:  # NOTE: a full disk must not end the sharing for good, nor the worker
                log.warning("edgeserve: cannot share this worker's metrics in %s: %s", self.folder, exc)
        return own

    def _theirs(self) -> Iterator[str]:
        for path in self.folder.glob("*.prom"):
            if path == self._file or not _alive(path.stem):
                continue
            try:
                yield path.read_text()
            except OSError:  # gone between the listing and the read: that worker stopped
                continue


def _alive(stem: str) -> bool:
    try:
        os.kill(int(stem), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process of that number: not one of ours
        return False
    return True


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
