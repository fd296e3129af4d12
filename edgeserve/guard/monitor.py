"""One model's drift monitor: gathers the rows it answers, folds them into the detectors (:mod:`.drift`) a chunk
at a time, and turns alarms into drift *episodes* that fire the retraining trigger once each.

An episode starts when any feature's score reaches 1 (its detector's threshold). The trigger fires when the
score has stayed at or above ``exit_level`` for ``span`` requests since the onset; the episode ends (and the
trigger re-arms) only after ``rearm`` requests in a row under ``exit_level``.

Each request hands over copies of its small tabular and output arrays, or the few numbers per row that summarise an
image, series or sequence (a deque append); whichever caller brings the pending rows to a chunk folds them in — one
set of numpy operations for the chunk — while the others go on (a caller that finds the fold busy does not wait).

An event loop's requests (``defer``) fold in the loop too, in one pass per chunk, as long as each request is small
(up to ``held.NUMPY_HOLDS`` values: a row of features and its scores); a chunk holding a bigger request is folded on
the monitors' own thread, so that the loop never runs a long numpy pass. NOTE: not every chunk there: measured on
the server's loop (digits MLP, one thread), handing chunks to that thread cost 30-55 us of the loop's time per
request, because the two threads then take the interpreter lock from each other at every engine run and numpy
call. Nor in pieces of at most ``held.NUMPY_HOLDS`` values, as this once did so that no numpy call would give the
lock up: the gather at the heart of the scores (``take``) gives it up at any size, so the pieces only multiplied the
calls (the server with the guard, wrk at 32 connections: 9.7-9.9k -> 10.1-10.7k requests/s, p99 6.4 -> 5.9-6.2
ms, one pass). And plain callers fold their own chunks, never that thread: under load it is starved of the lock
(measured: handing every caller's chunks to it at 32 callers of 32 rows, the rows pending outgrew any bound).

The rows pending are bounded (``BACKLOG_BYTES``): a plain caller that finds them over it waits to fold them
itself (the runtime slows to what watching costs, and every row is watched); an event loop's request, which must not
wait, is then answered but not watched, and counted in ``skipped``. On a model so fast that watching every row costs
more than answering it, say so with ``GuardConfig(sample=...)``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import held
from ..config import GuardConfig, TriggerConfig
from ..pools import LazyPool
from ..tensors import TensorSpec
from .drift import Cusum, describe_thresholds
from .episodes import LocalEpisodes, SharedEpisodes
from .reference import SIZE_TOLERANCE, Layout, averaged, row_features
from .trigger import Trigger

SHOWN = 10
RAW = frozenset({"tabular", "value", "confidence"})
"""Layouts whose rows are small and of a fixed width: kept as they are and summarised a chunk at a time."""
log = logging.getLogger(__name__)


_FOLDER = LazyPool(1, "edgeserve-drift")
"""One thread that folds the event loops' chunks that hold a big request, for every monitor in the process."""
BACKLOG_BYTES = 64 << 20
"""Bytes of rows pending at most (a starved fold must not grow memory without bound): past it a plain caller folds
them first, an event loop's request is not watched."""


class DriftMonitor:
    """Drift detection for one loaded model version; ``None`` from :meth:`build` when its package has no
    reference statistics to compare with."""

    def __init__(self, tensors: Sequence[tuple[str, str, Layout, int, int]], knots: list[list[float]], rows: int,
                 config: GuardConfig, identity: Mapping[str, Any], trigger: Trigger | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.identity = dict(identity)
        self._tensors = list(tensors)  # (side, name, layout, features, the rows' axis: 1 for a time-major input)
        self.labels = [f"{side}:{name}: {label}" for side, name, layout, n, _ in tensors for label in layout.labels(n)]
        self.detector = Cusum(knots, shift=config.shift, budget=config.false_alarm_requests, rows=rows)
        self.trigger = trigger
        self.episodes: LocalEpisodes | SharedEpisodes = LocalEpisodes()
        """Where the episodes are kept: here, or shared with the other processes serving this version (see
        :mod:`.episodes`), so that the trigger fires once per episode across them."""
        self._episode = config.trigger or TriggerConfig()
        """Exit level and re-arm span of an episode: the trigger's, or its defaults when nothing fires."""
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Called with every episode event (onset, firing, end) on the folding thread."""
        self._clock = clock
        self._starts = np.cumsum([0] + [t[3] for t in self._tensors])
        """Where each tensor's features start in a row of :attr:`labels`."""
        self._pending: deque[tuple[list[np.ndarray], tuple[int, ...]]] = deque()
        """Each request's summaries, and which of its tensors are of another size than the reference's."""
        self._pending_rows = 0
        self._pending_bytes = 0
        self._pending_big = False
        """A pending request holds more than ``held.NUMPY_HOLDS`` values: an event loop's chunk is folded elsewhere."""
        self._sample = config.sample
        self.skipped = 0
        """Requests not watched: features unlike the reference's (another sequence length), or a failed fold."""
        self.resized = 0
        """Rows of requests with an image, series or summarised output of another size than the reference's (beyond
        ``SIZE_TOLERANCE``): such inputs are watched for a change of location only, such outputs not (see
        :meth:`_fold_items`)."""
        self._warned = False
        self._draw = random.Random().random
        self._lock = threading.Lock()
        self._scheduled = False
        self.rows = 0
        """Rows folded in so far."""
        self.alarms = 0
        self.fired = 0
        self.drifting = False
        self._onset = 0
        self._below = 0
        self._has_fired = False
        self._score = np.zeros(len(self.labels))

    @classmethod
    def build(cls, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], reference: Mapping[str, Any],
              config: GuardConfig, identity: Mapping[str, Any], trigger: Trigger | None = None) -> DriftMonitor | None:
        tensors, knots = [], []
        for side, specs, stats in (("input", inputs, reference.get("inputs", {})),
                                   ("output", outputs, reference.get("outputs", {}))):
            for spec in specs:
                ref = stats.get(spec.name) or {}
                if "drift" not in ref or "layout" not in ref or not (spec.rows_on_axis0 or spec.batch_axis):
                    continue
                layout = Layout.from_dict(ref["layout"])
                tensors.append((side, spec.name, layout, len(ref["drift"]["knots"]), spec.batch_axis or 0))
                knots.extend(ref["drift"]["knots"])
        if any(t[2].kind == "confidence" for t in tensors):  # a label next to its scores says nothing new
            keep = [i for i, t in enumerate(tensors) if not (t[0] == "output" and t[2].kind == "value")]
            offsets = np.cumsum([0] + [t[3] for t in tensors])
            knots = [k for i in keep for k in knots[offsets[i]:offsets[i + 1]]]
            tensors = [tensors[i] for i in keep]
        if not tensors:
            return None
        fewest = min(len(k) for k in knots)  # a wide input's features have fewer knots each (knots_for)
        knots = [k if len(k) == fewest else np.interp(np.linspace(0, 1, fewest), np.linspace(0, 1, len(k)), k).tolist()
                 for k in knots]
        rows = int(reference.get("drift_rows", reference.get("rows", 0)))
        return cls(tensors, knots, rows, config, identity, trigger)

    # -- the hot path ---------------------------------------------------------------------------------------------
    def observe(self, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], rows: int, *,
                defer: bool = False) -> None:
        """Take one answered request (``rows`` rows; what is kept is a copy, so the caller may reuse its arrays);
        once a chunk is pending, fold it in — here, or with ``defer`` (an event loop's caller) on the monitors'
        thread when a request pending is too big to fold in the loop. A
        request whose tensors do not have the reference's number of features (a sequence of another length), or a
        deferred one that finds ``BACKLOG_BYTES`` pending, is not watched, and counted in :attr:`skipped`; a plain
        caller that finds them pending folds them first."""
        if self._sample < 1.0 and self._draw() >= self._sample:
            return
        if self._pending_bytes >= BACKLOG_BYTES:
            if defer:
                self.skipped += 1
                return
            with self._lock:  # NOTE: backpressure: a caller that outruns its monitor waits for it
                self._fold()
        kept = []
        resized: tuple[int, ...] = ()
        size = nbytes = 0  # NOTE: summed here, not by two generator expressions after (2.2-2.3 -> 2.0 us a call)
        for i, (side, name, layout, n, axis) in enumerate(self._tensors):
            value = (feed if side == "input" else outputs)[name]
            if axis:
                value = np.moveaxis(value, axis, 0)  # rows first, as the reference was built
            if layout.kind in RAW:  # stacked as they are and summarised a chunk at a time
                if value.ndim != (1 if layout.kind == "value" else 2) or (layout.kind == "tabular"
                                                                          and value.shape[1] != n):
                    self.skipped += 1
                    return
                value = held.copy(value)
            else:  # images, series, sequences: summarised now (a few numbers per row, of a fixed width)
                if layout.averaged:
                    count = averaged(layout, value)
                    if not layout.averaged <= count * SIZE_TOLERANCE or not count <= layout.averaged * SIZE_TOLERANCE:
                        resized += (i,)
                value = row_features(layout, value)
                if value.shape[1] != n:
                    self.skipped += 1
                    return
            kept.append(value)
            size += value.size
            nbytes += value.nbytes
        self._pending.append((kept, resized))
        self._pending_rows += rows  # NOTE: racy counters only decide when and where to fold; the fold counts exactly
        self._pending_bytes += nbytes
        if defer and size > held.NUMPY_HOLDS:
            self._pending_big = True
        if self._pending_rows < self.config.chunk:
            return
        if defer and self._pending_big:
            self._fold_later()
        elif self._lock.acquire(blocking=False):
            try:
                self._fold()
            finally:
                self._lock.release()

    def _fold_later(self) -> None:
        """Have the monitors' thread fold what is pending (once, however many callers ask before it runs)."""
        if self._scheduled:
            return
        self._scheduled = True
        _FOLDER.submit(self._fold_scheduled)

    def _fold_scheduled(self) -> None:
        self._scheduled = False
        with self._lock:
            self._fold()

    def flush(self) -> None:
        """Fold in whatever is pending (reports call this)."""
        with self._lock:
            self._fold()

    def _fold(self) -> None:
        """Fold what is pending as one step of the detectors."""
        items = []
        pending = self._pending
        while pending:
            items.append(pending.popleft())
        self._pending_rows = self._pending_bytes = 0
        self._pending_big = False
        if not items:
            return
        try:
            self._fold_items(items)
        except Exception:  # noqa: BLE001 - watching must never fail the requests it watches
            self.skipped += len(items)
            if not self._warned:
                self._warned = True
                log.exception("drift monitor of %s: could not fold requests in; they are skipped", self.identity)

    def _fold_items(self, items: list[tuple[list[np.ndarray], tuple[int, ...]]]) -> None:
        """One step of the detectors for the requests ``items``. Tensors of another size than the reference's rows
        count for less: an input's features for location only (their scale scores taken as 0, what the reference
        expects), an output's not at all. Over i.i.d. pixels a 128x160 image's channel means spread a third as much as
        a 64x96 one's (a drift alarm on the scale of every channel within 150 requests, on nothing but the size); a
        detector's maps at a third of the reference's size hold twice the share of border cells (an alarm on their
        RMS within 400 requests of smooth images like the reference's). The mean of an input's channels or steps
        does not move with the size; what is derived from a map's cells may."""
        if not any(resized for _, resized in items):  # the common case: every request at the reference's size
            self.update(self._features([kept for kept, _ in items]))
            return
        groups: dict[tuple[int, ...], list[list[np.ndarray]]] = {}
        for kept, resized in items:
            groups.setdefault(resized, []).append(kept)
        ms, vs = np.zeros(len(self.labels)), np.zeros(len(self.labels))
        rows = 0
        for resized, group in groups.items():
            x = self._features(group)
            m, v = self.detector.ranks.sums(x)
            if resized:
                self.resized += len(x)  # NOTE: counted here, under the fold's lock: exact
                m, v = m.copy(), v.copy()
                for i in resized:
                    v[self._starts[i]:self._starts[i + 1]] = 0.0
                    if self._tensors[i][0] == "output":
                        m[self._starts[i]:self._starts[i + 1]] = 0.0
            ms += m
            vs += v
            rows += len(x)
        self._advance(ms, vs, rows)

    def _features(self, items: list[list[np.ndarray]]) -> np.ndarray:
        """``[rows, features]`` float32 of the requests ``items`` (in :attr:`labels` order), written into one array.

        NOTE: float32, as the detectors' bucket arithmetic is (see ``FeatureRanks``): the float64 features the
        reference was built from cost a cast of every value and double-width passes after it (digits MLP, 32 rows a
        request: 467k -> 411k instructions a guarded answer, 101k unguarded; callgrind)."""
        out: np.ndarray | None = None
        start = 0
        for (_, _, layout, n, _), arrays in zip(self._tensors, zip(*items)):
            values = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            if layout.kind in RAW:
                values = _raw_features(layout, values)
            if out is None:
                if n == len(self.labels):  # one tensor watched: its features are the whole row
                    return values if values.dtype == np.float32 else values.astype(np.float32)
                out = np.empty((len(values), len(self.labels)), np.float32)
            out[:, start:start + n] = values
            start += n
        assert out is not None
        return out

    def update(self, x: np.ndarray) -> None:
        """Fold ``[rows, features]`` values (in :attr:`labels` order) in and move the episode along."""
        self._advance(*self.detector.ranks.sums(x), len(x))

    def _advance(self, ms: np.ndarray, vs: np.ndarray, n: int) -> None:
        """One step of the detectors (the rows' score sums per feature) and of the episode."""
        self.detector.add(ms, vs, n)
        self.rows += n
        self._score = score = self.detector.score()
        top = float(score.max())
        episode = self._episode
        if not self.drifting:
            if top >= 1.0:
                self.drifting, self._onset, self._below, self._has_fired = True, self.rows, 0, False
                self.alarms += 1
                self._shared(self.episodes.join)
                self._emit("drift", score)
            return
        if top >= episode.exit_level:
            self._below = 0
            if self.config.trigger is not None and not self._has_fired and self.rows - self._onset >= episode.span:
                self._has_fired = True
                if not self._shared(self.episodes.claim, True):
                    log.info("drift monitor of %s: the episode's trigger already fired in another process",
                             self.identity)
                    return
                self.fired += 1
                event = self._emit("retrain", score)
                if self.trigger is not None:
                    self.trigger.fire(event)
        else:
            self._below += n
            if self._below >= episode.rearm:
                self.drifting = False
                self._shared(self.episodes.leave)
                self._emit("recovered", score)

    def _shared(self, step: Callable[[], Any], otherwise: Any = None) -> Any:
        """One step of the shared episode; a folder that cannot be read or written is logged, and the episode goes
        on as this process's own (``otherwise``: what the step answers then)."""
        try:
            return step()
        except OSError as exc:
            log.warning("drift monitor of %s: shared episodes in %s: %s; this process keeps its own", self.identity,
                        getattr(self.episodes, "path", "?"), exc)
            return otherwise

    def share(self, folder: str | os.PathLike[str], key: str) -> None:
        """Keep this version's episodes in ``folder``, shared with the other processes that serve it as ``key``."""
        self.episodes = SharedEpisodes(folder, key)
        if self.drifting:
            self._shared(self.episodes.join)

    def close(self) -> None:
        """Leave the shared episode (this version serves no more here) and end the trigger's thread."""
        if self.drifting:
            self._shared(self.episodes.leave)
        if self.trigger is not None:
            self.trigger.close()  # its thread finishes the event in hand, then ends

    def _emit(self, kind: str, score: np.ndarray) -> dict[str, Any]:
        event = {"event": kind, **self.identity, "time": self._clock(),
                 "window": {"onset_request": self._onset, "request": self.rows},
                 "scores": self._top(score, SHOWN)}
        for listener in self.listeners:
            listener(event)
        return event

    def _top(self, score: np.ndarray, count: int) -> dict[str, float]:
        order = np.argsort(-score, kind="stable")[:count]
        return {self.labels[i]: round(float(score[i]), 4) for i in order}

    # -- reports --------------------------------------------------------------------------------------------------
    def report(self, features: int = SHOWN) -> dict[str, Any]:
        self.flush()
        score = self._score
        return {
            **self.identity,
            "drifting": self.drifting,
            "score": round(self.score, 4),
            "requests": self.rows,
            "skipped": self.skipped,
            "resized": self.resized,
            "alarms": self.alarms,
            "triggered": self.fired,
            "onset_request": self._onset if self.drifting else None,
            "features": len(self.labels),
            "top": self._top(score, features),
            "detector": {**describe_thresholds(self.detector), "shift_sd": self.config.shift,
                         "false_alarm_budget": f"1 per {self.config.false_alarm_requests:g} requests",
                         "sample": self.config.sample,
                         "detectors": 4 * len(self.labels)},
            "trigger": None if self.trigger is None else {
                "last": list(self.trigger.history)[-3:], "dropped": self.trigger.dropped},
            **({"shared_episode": self._shared_episode(self.episodes)} if isinstance(self.episodes, SharedEpisodes)
               else {}),
        }

    def _shared_episode(self, episodes: SharedEpisodes) -> dict[str, Any] | None:
        """The episode across the processes serving this version: its number, whether it fired, how many drift."""
        state = self._shared(episodes.state)
        return None if state is None else {"episode": state["episode"], "fired": state["fired"],
                                           "processes_drifting": len(state["members"])}

    @property
    def score(self) -> float:
        """The highest feature score after the last fold (1.0 = alarm threshold); no fold happens here."""
        return float(self._score.max()) if len(self._score) else 0.0


def _raw_features(layout: Layout, x: np.ndarray) -> np.ndarray:
    """:func:`row_features` of a kind kept raw (``RAW``), in float32 where the values are not float64 already:
    a table's rows as they are, a label as a column, a classifier's top probability (a float32 softmax:
    numpy's exp is vectorised there, not in float64)."""
    kind = layout.kind
    if kind == "tabular":
        return x
    if kind == "value":
        return x.reshape(-1, 1)
    a = x if x.dtype.kind == "f" else x.astype(np.float32)
    top = a.max(axis=1, keepdims=True)
    if layout.probabilities:
        return top
    return 1.0 / np.exp(a - top).sum(axis=1, keepdims=True)  # type: ignore[no-any-return]
