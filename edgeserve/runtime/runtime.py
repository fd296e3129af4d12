"""The Runtime: the models of a repository, loaded and served, with hot reload and rollback.

A reload loads and verifies the new version completely before it becomes visible; requests already holding
the old version finish on it, and the old version is closed (its queue drained) only when the last of them
has let go. A failed load leaves the old version serving and raises the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arrays import frame_columns, is_frame
from ..config import BatchConfig, CacheConfig, GoldenPolicy, GuardConfig, SessionConfig, TriggerConfig
from ..errors import ClosedError, ConfigError, EdgeserveError, ModelNotFound, PackageError, RepositoryError, first_line
from ..names import check_name, check_version
from .cache import ResponseCache
from .model import Model, load
from .repository import Repository

if TYPE_CHECKING:
    from ..guard.audit import AuditLog

log = logging.getLogger(__name__)
SERVING_FILE = "serving.json"
"""Optional per-model settings in ``<repo>/<name>/serving.json``: {"batching": {...}, "cache": {...},
"guard": {..., "trigger": {...}}, "session": {"intra_op_threads": 2, ...}} (each the fields of its config class;
null turns batching, cache or guard off; session fields go over the runtime's, see ``SESSION_FIELDS``)."""
SESSION_FIELDS = {"intra_op_threads": (int, type(None)), "inter_op_threads": (int,), "optimization_level": (str,),
                  "backend": (str, type(None)), "precision": (str, type(None)), "spin_wait": (bool,), "nice": (int,)}
"""The engine settings a repository's serving.json may set per model. Not ``cache_dir``: a file inside the
repository must not choose where the runtime writes."""
DEFAULT_GUARD = GuardConfig()
AUDIT_FILE = ".edgeserve/audit.sqlite3"
"""Where a repository's audit log lives unless told otherwise (a dot-folder is never a model)."""


def default_audit_path(root: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(root), AUDIT_FILE)


@dataclass
class _Loaded:
    """One loaded version and the requests currently using it.

    ``users`` is a deque used as a counter: ``append`` and ``pop`` are atomic, so taking and letting go of the
    serving version costs no lock that every caller of every model would queue on. A version is retired before
    its users are looked at, and a caller re-checks ``retired`` after it counted itself in: whichever of the
    two sees the count reach zero closes the model (``Model.close`` is idempotent)."""

    model: Model
    version: int
    settings: tuple[int, int] | None = None
    """The model's serving.json as it was when this version loaded (its mtime and size; None: there was none)."""
    users: deque[None] = field(default_factory=deque)
    retired: bool = False


class Holding:
    """:meth:`Runtime.using`'s context manager: ``(model, repository version)`` held until the block ends.

    NOTE: a class, not ``@contextmanager``: a server enters one per request, and a generator's enter and exit
    cost ~2 us where these cost a few hundred ns."""

    __slots__ = ("_runtime", "_name", "_version", "_loaded")

    def __init__(self, runtime: Runtime, name: str, version: int | str | None) -> None:
        self._runtime, self._name, self._version = runtime, name, version

    def __enter__(self) -> tuple[Model, int]:
        self._loaded = loaded = self._runtime._acquire(self._name, self._version)
        return loaded.model, loaded.version

    def __exit__(self, *exc: object) -> None:
        self._runtime._release(self._loaded)


@dataclass
class _Slot:
    """One model name: the serving version, versions loaded on demand (least recently used first), the response
    cache its versions share, and why it has no version when loading failed."""

    current: _Loaded | None = None
    on_demand: OrderedDict[int, _Loaded] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one load at a time per model
    cache: ResponseCache | None = None
    error: str | None = None

    def loaded(self) -> list[_Loaded]:
        return [x for x in (self.current, *self.on_demand.values()) if x is not None]


class Runtime:
    """Serve the models of a repository in-process.

    ``batching`` and ``cache`` are defaults for every model (a model's ``serving.json`` overrides them);
    ``guard`` (on by default; None turns it off) the envelope checks and drift monitoring for every model;
    ``audit`` an :class:`AuditLog` (or the path of one to open) that every answer and management action is
    written to. ``models`` limits which models load (default: all). A model whose serving version does not load is reported
    (``models()[name]["error"]``, and a warning) and skipped; the others serve. Versions asked for explicitly are
    loaded on demand and kept, at most ``max_on_demand`` per model, least recently used closed first. The runtime
    is a context manager; ``close()`` drains. ``episodes``: a folder that the processes serving this repository
    share (an app run as several processes; ``edgeserve serve --workers`` sets it), so that each drift episode
    fires the retraining trigger once across them, not once in each (see :mod:`edgeserve.guard.episodes`).
    """

    def __init__(self, repository: str | os.PathLike[str] | Repository, *, models: Sequence[str] | None = None,
                 config: SessionConfig | None = None, batching: BatchConfig | None = None,
                 cache: CacheConfig | None = None, golden: GoldenPolicy = "error", max_on_demand: int = 2,
                 guard: GuardConfig | None = DEFAULT_GUARD, audit: AuditLog | str | os.PathLike[str] | None = None,
                 episodes: str | os.PathLike[str] | None = None) -> None:
        if max_on_demand < 0:
            raise ConfigError(f"max_on_demand must be 0 or more, got {max_on_demand}")
        self.repository = repository if isinstance(repository, Repository) else Repository(repository)
        self.config = config or SessionConfig()
        self._batching = batching
        self._cache_config = cache
        self._golden = golden
        self._max_on_demand = max_on_demand
        self._guard = guard
        self._episodes = episodes
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._owns_audit = isinstance(audit, (str, os.PathLike))  # opened here, so closed here
        if isinstance(audit, (str, os.PathLike)):
            from ..guard.audit import AuditLog  # NOTE: here: a runtime without an audit log never imports sqlite3

            audit = AuditLog(audit)
        self.audit: AuditLog | None = audit
        """The audit log every answer and management action is written to (None: no audit)."""
        self._every_model = models is None
        """Serving the whole repository: :meth:`refresh` also loads models published after the start."""
        self._unloaded: set[str] = set()
        """Models unloaded on purpose (:meth:`unload`): :meth:`refresh` leaves them alone until reloaded."""
        self._watcher: tuple[threading.Thread, threading.Event] | None = None
        """The thread of :meth:`watch`, and the event that stops it."""
        self._failed: dict[str, tuple[int, tuple[int, int] | None]] = {}
        """Per model, the version and serving.json (its stamp) that last failed to load: :meth:`refresh` tries again
        once either changes."""
        available = self.repository.names()
        if models is not None:
            unknown = [n for n in models if check_name(n) not in available]
            if unknown:
                raise ModelNotFound(f"no model named {', '.join(map(repr, unknown))} in {self.repository.root}; "
                                    f"it has {', '.join(available) or 'none'}")
        try:
            for name in (models if models is not None else available):
                self._slots[name] = _Slot()
                try:
                    self.reload(name)
                except EdgeserveError as exc:
                    self._slots[name].error = first_line(exc, 500)
                    log.warning("model %s is not served: %s", name, self._slots[name].error)
        except BaseException:
            self.close()
            raise

    # -- serving -----------------------------------------------------------------------------------------------------
    def predict(self, name: str, inputs: Any = None, /, *, version: int | str | None = None,
                timeout_ms: float | None = None, request_id: str | None = None, caller: str | None = None,
                **named: Any) -> dict[str, np.ndarray]:
        """Run ``name`` (its serving version, or ``version``). With an audit log, the answer returns once its
        record (``request_id``, ``caller``: who asked) is committed."""
        # NOTE: no context manager here, and _acquire's common case inline: this is every request's path
        slot = self._slots.get(name)
        loaded = slot.current if slot is not None and version is None and not self._closed else None
        if loaded is None:
            loaded = self._acquire(name, version)
        else:
            loaded.users.append(None)
            if loaded.retired:  # swapped out meanwhile (see _acquire)
                self._release(loaded)
                loaded = self._acquire(name, version)
        if self.audit is None:
            model = loaded.model
            try:
                engine = model._engine
                if model._fast and engine is not None and not named and not model._closed:
                    # NOTE: Model.predict's fast path written out: under 32 threads a small model's requests are bound
                    # by the time each holds the interpreter lock, and a second Python call per request is ~5% of it
                    feed = model._contract.feed(inputs, None)
                    try:
                        return dict(zip(model._output_names, engine(model._output_names, feed, None)))
                    except Exception as exc:
                        raise model._session.failed(exc, feed) from exc
                if named or timeout_ms is not None:
                    return model.predict(inputs, timeout_ms=timeout_ms, **named)
                return model.predict(inputs)
            finally:
                users = loaded.users
                users.pop()
                if loaded.retired and not users:
                    model.close()
        try:
            started = time.perf_counter()
            try:
                out, flags = loaded.model.answer(inputs, named, timeout_ms=timeout_ms)
            except EdgeserveError as exc:
                self.audit.wait(self.record(loaded.model, loaded.version, inputs, named, None, started,
                                            request_id=request_id, caller=caller, outcome=type(exc).__name__,
                                            name=name))
                raise
            self.audit.wait(self.record(loaded.model, loaded.version, inputs, named, out, started, flags,
                                        request_id=request_id, caller=caller, name=name))
            return out
        finally:
            self._release(loaded)

    async def predict_async(self, name: str, inputs: Any = None, /, *, version: int | str | None = None,
                            timeout_ms: float | None = None, request_id: str | None = None,
                            caller: str | None = None, **named: Any) -> dict[str, np.ndarray]:
        with self.using(name, version) as (model, number):
            if self.audit is None:
                return await model.predict_async(inputs, timeout_ms=timeout_ms, **named)
            started = time.perf_counter()
            try:
                out, flags = await model.answer_async(inputs, named, timeout_ms=timeout_ms)
            except EdgeserveError as exc:
                await self.audit.wait_async(self.record(model, number, inputs, named, None, started,
                                                        request_id=request_id, caller=caller,
                                                        outcome=type(exc).__name__, name=name))
                raise
            await self.audit.wait_async(self.record(model, number, inputs, named, out, started, flags,
                                                    request_id=request_id, caller=caller, name=name))
            return out

    def record(self, model: Model, version: int, inputs: Any, named: Mapping[str, Any] | None,
               outputs: Mapping[str, np.ndarray] | None, started: float, flags: tuple[str, ...] = (), *,
               request_id: str | None = None, caller: str | None = None, outcome: str = "ok",
               name: str | None = None, detail: str | None = None) -> int:
        """Queue the audit record of one answered (or refused) request to ``name`` (default: the package's name);
        the ticket to wait on (0 without a log)."""
        audit = self.audit
        if audit is None:
            return 0
        input_digest, output_summary = _audit_summaries()

        if type(inputs) is np.ndarray and not named and model.inputs:  # NOTE: the common case, without _as_feed's
            feed: dict[str, np.ndarray] = {model.inputs[0].name: inputs}  # duck-typed DataFrame test (~1 us)
        else:
            feed = _as_feed(model, inputs, named)
        if model.monitor is not None and model.monitor.drifting:
            flags = (*flags, "drift")
        return audit.record(
            request_id=request_id or audit.new_request_id(), model=name or model.name, version=version,
            digest=model.digest, input_digest=input_digest(feed) if feed else None,
            output=output_summary(outputs) if outputs is not None else None,
            latency_s=time.perf_counter() - started, caller=caller, outcome=outcome,
            flags=",".join(flags) if flags else "", detail=detail)

    def _action(self, action: str, name: str | None, version: Any = None, *, outcome: str = "ok",
                caller: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
        if self.audit is None:
            return
        digest = None
        if name is not None and version is not None:
            slot = self._slots.get(name)
            found = next((x for x in slot.loaded() if x.version == version), None) if slot else None
            if found is not None and found.model.manifest is not None:
                digest = found.model.manifest.digests.get(found.model.manifest.model_file)
        self.audit.action(action=action, model=name, version=version, digest=digest, caller=caller,
                          outcome=outcome, detail=detail)

    def drift(self, name: str) -> dict[str, Any]:
        """The drift state of ``name``'s serving version: score (1.0 = alarm), the features furthest off, the
        episode and the trigger's last firings; ``{"enabled": False, "why": ...}`` where there is no monitor."""
        with self._use(name, None) as model:
            if model.monitor is None:
                from ..guard.envelope import MIN_DRIFT_ROWS

                rows = (model.manifest.envelope if model.manifest else {}).get("rows") or 0
                held = (f"its reference holds {rows} rows, too few" if rows else "the package has no reference "
                        "statistics")
                why = ("the guard is off" if model.guard is None or not model.guard.drift
                       else f"{held} (convert it with --reference or calibration data of at least {MIN_DRIFT_ROWS} "
                            "rows, 1000 or more for a steady false-alarm rate)")
                return {"model": name, "enabled": False, "why": why}
            return {"enabled": True, **model.monitor.report()}

    def using(self, name: str, version: int | str | None = None) -> Holding:
        """Hold one version of ``name`` while the block runs: ``with runtime.using(name) as (model, version)``.
        A reload meanwhile swaps the serving version for new callers; this one finishes on what it holds (a server
        uses this to answer with the version that really ran)."""
        return Holding(self, name, version)

    def serving(self, name: str) -> Model | None:
        """The serving version's model, not held: for a racy look (is its queue full?) that must cost nothing;
        None for an unknown model or one without a loaded version. To run it, use :meth:`using`."""
        slot = self._slots.get(name)
        loaded = slot.current if slot is not None else None
        return loaded.model if loaded is not None else None

    def versions(self, name: str) -> list[int]:
        """The versions of ``name`` in the repository (not necessarily loaded)."""
        self._slot(name)
        return self.repository.versions(name)

    def model(self, name: str) -> Model:
        """The serving version of ``name`` (for its signature and manifest; use :meth:`predict` to run it)."""
        with self._use(name, None) as model:
            return model

    def models(self) -> dict[str, dict[str, Any]]:
        """What is loaded: per model, the serving version (None with the ``error`` that stopped it), the versions
        loaded on demand, and the batching and cache stats."""
        out = {}
        with self._lock:
            slots = list(self._slots.items())
        for name, slot in slots:
            loaded = slot.current
            info: dict[str, Any] = {"version": loaded.version if loaded else None,
                                    "on_demand": sorted(slot.on_demand), "error": slot.error}
            if loaded:
                m = loaded.model
                info["batching"] = (dict(m.batcher.stats, queued=m.batcher.queued, alive=m.batcher.alive,
                                         timings=m.batcher.timings()) if m.batcher else None)
                info["cache"] = m.cache.stats() if m.cache is not None else None
                info["envelope"] = m.envelope.stats() if m.envelope is not None else None
                info["drift"] = ({"drifting": m.monitor.drifting, "alarms": m.monitor.alarms,
                                  "triggered": m.monitor.fired, "requests": m.monitor.rows,
                                  "score": m.monitor.score}
                                 if m.monitor is not None else None)
            out[name] = info
        return out

    @contextmanager
    def _use(self, name: str, version: int | str | None) -> Iterator[Model]:
        loaded = self._acquire(name, version)
        try:
            yield loaded.model
        finally:
            self._release(loaded)

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None or self._closed:
            if self._closed:
                raise ClosedError("the runtime is closed")
            raise ModelNotFound(f"model '{name}' is not loaded; loaded: {', '.join(sorted(self._slots)) or 'none'}")
        return slot

    def _acquire(self, name: str, version: int | str | None) -> _Loaded:
        slot = self._slot(name)
        if version is not None:
            return self._acquire_version(name, slot, check_version(version))
        while True:  # NOTE: no lock on the hot path (see _Loaded)
            loaded = slot.current
            if loaded is None:
                why = f": {slot.error}" if slot.error else ""
                raise ModelNotFound(f"model '{name}' has no loaded version{why}")
            loaded.users.append(None)
            if not loaded.retired:
                return loaded
            self._release(loaded)  # swapped out meanwhile: take the new serving version

    def _find(self, slot: _Slot, version: int) -> _Loaded | None:
        """A live loaded ``version`` with one more user (call with ``self._lock`` held), or None."""
        for loaded in slot.loaded():
            if loaded.version == version and not loaded.retired:
                loaded.users.append(None)
                if version in slot.on_demand:
                    slot.on_demand.move_to_end(version)
                return loaded
        return None

    def _acquire_version(self, name: str, slot: _Slot, version: int) -> _Loaded:
        with self._lock:
            found = self._find(slot, version)
        if found is not None:
            return found
        with slot.lock:  # load it on demand, once
            with self._lock:
                found = self._find(slot, version)
            if found is not None:
                return found
            if version not in self.repository.versions(name):
                raise ModelNotFound(f"model '{name}' has no version {version}; it has {self.repository.versions(name)}")
            fresh = self._load(name, slot, version)
            fresh.users.append(None)
            with self._lock:
                if self._closed or self._slots.get(name) is not slot:  # closed or unloaded while it loaded
                    gone = True
                else:
                    gone = False
                    slot.on_demand[version] = fresh
                    evicted = self._evict(slot)
            if gone:
                fresh.model.close()
                raise ModelNotFound(f"model '{name}' was unloaded while version {version} loaded")
        for old in evicted:
            self._retire(slot, old)
        return fresh

    def _evict(self, slot: _Slot) -> list[_Loaded]:
        """Versions loaded on demand beyond the cap, least recently used first (call with ``self._lock`` held)."""
        evicted = []
        while len(slot.on_demand) > self._max_on_demand:
            evicted.append(slot.on_demand.popitem(last=False)[1])
        return evicted

    def _release(self, loaded: _Loaded) -> None:
        loaded.users.pop()
        if loaded.retired and not loaded.users:
            loaded.model.close()

    # -- management --------------------------------------------------------------------------------------------------
    def reload(self, name: str, *, caller: str | None = None, action: str = "reload") -> int:
        """Load the repository's current version of ``name`` and swap it in; returns the serving version.

        The new version is loaded and verified (digests, golden samples) before anyone sees it; a version already
        loaded on demand is promoted instead of loaded again. If loading fails, the old version keeps serving
        and the error is raised. Requests holding the old version finish on it; what waits in its queue runs
        at once. ``caller`` and ``action`` name who asked and why, in the audit log. With ``action="settings"`` or
        ``"load"`` the serving version loads again when its ``serving.json`` changed since it loaded (batching,
        cache, guard and engine settings take effect; see :meth:`refresh`)."""
        if self._closed:
            raise ClosedError("the runtime is closed")
        check_name(name)
        with self._lock:
            slot = self._slots.setdefault(name, _Slot())
        with slot.lock:
            version = self.repository.current(name)
            stamp = self._settings_stamp(name)
            resettle = action in ("settings", "load")  # model control's load takes new settings too, as Triton's
            if slot.current is not None and slot.current.version == version and not (
                    resettle and slot.current.settings != stamp):
                if action != "reload":
                    self._action(action, name, version, caller=caller, detail={"already_serving": True})
                return version
            with self._lock:  # a version loaded on demand is promoted, unless with settings changed since
                promoted = slot.on_demand.get(version)
                if promoted is not None and promoted.settings == stamp:
                    del slot.on_demand[version]
                else:
                    promoted = None
            try:
                fresh = promoted or self._load(name, slot, version)
            except Exception as exc:
                error = exc if isinstance(exc, EdgeserveError) else PackageError(
                    f"model '{name}' version {version} did not load: {type(exc).__name__}: {exc} (a bug in edgeserve: "
                    "please report it with the package)")
                self._failed[name] = (version, stamp)
                self._action(action, name, version, outcome=f"failed: {first_line(error, 300)}", caller=caller,
                             detail={"serving": slot.current.version if slot.current else None})
                if error is exc:
                    raise
                raise error from exc
            with self._lock:
                old, slot.current = slot.current, fresh
                slot.error = None
                self._unloaded.discard(name)
                self._failed.pop(name, None)
            if old is not None:
                self._retire(slot, old)
            log.info("model %s: serving version %s%s", name, version, f" (was {old.version})" if old else "")
            self._action(action, name, version, caller=caller, detail={"was": old.version if old else None,
                                                                       "parity": fresh.model.parity})
            return version

    def rollback(self, name: str) -> int:
        """Serve the previous version in one step: the repository's pointer moves back, then the runtime reloads."""
        state = self.repository.state(name)
        target = self.repository.rollback(name)
        try:
            version = self.reload(name)
        except BaseException as exc:
            # the older version does not load: point the repository back at what still serves
            self.repository.point(name, state.current, pinned=state.pinned)
            self._action("rollback", name, target, outcome=f"failed: {first_line(exc, 300)}")
            raise
        log.info("model %s: rolled back from %s to %s", name, state.current, target)
        self._action("rollback", name, version, detail={"from": state.current})
        return version

    def refresh(self, *, caller: str | None = "repository") -> dict[str, str]:
        """Catch up with the repository: serve each model's current version (after a publish, rollback or pin from
        another process: ``edgeserve models ...``), load models published since the start (when serving the whole
        repository), unload those whose folder is gone, and load a model again when its ``serving.json`` changed.
        What changed, by model (``"version 2"``, ``"loaded"``, ``"unloaded"``, ``"new settings"``, ``"failed:
        ..."``). A version that failed to load is not tried again until the repository points elsewhere or its
        ``serving.json`` changes; a model unloaded on purpose (:meth:`unload`) stays unloaded. Cheap when nothing
        changed: a directory listing, each model's ``state.json`` and a stat of its ``serving.json``; ``edgeserve
        serve`` calls it every ``--poll`` seconds."""
        if self._closed:
            return {}
        changed: dict[str, str] = {}
        present = set(self.repository.names())
        with self._lock:
            slots = dict(self._slots)
            skip = set(self._unloaded)
        for name in slots:
            if name not in present:
                try:
                    self.unload(name, caller=caller)
                    changed[name] = "unloaded"
                except ModelNotFound:
                    pass
                with self._lock:
                    self._unloaded.discard(name)  # gone from the repository, not unloaded on purpose: if it is
                    self._failed.pop(name, None)  # published again, it serves
        names = [n for n in slots if n in present]
        if self._every_model:
            names += sorted(present - set(slots) - skip)
        for name in names:
            held = slots.get(name)
            try:
                version = self.repository.current(name)
            except EdgeserveError:
                continue  # no versions yet, or a state file being written: the next pass sees it
            serving = held.current.version if held is not None and held.current is not None else None
            if version == serving and held is not None and held.current is not None:
                self._follow_settings(name, held.current, caller, changed)
                continue
            if self._failed.get(name) == (version, self._settings_stamp(name)):
                continue
            try:
                self.reload(name, caller=caller)
            except EdgeserveError as exc:
                changed[name] = f"failed: {first_line(exc, 300)}"
                with self._lock:
                    fresh = self._slots.get(name)
                    if fresh is not None and fresh.current is None:
                        fresh.error = first_line(exc, 500)
                log.warning("model %s: version %s does not load (%s); %s", name, version, first_line(exc, 300),
                            f"version {serving} keeps serving" if serving is not None else "it is not served")
            else:
                changed[name] = "loaded" if serving is None else f"version {version}"
        return changed

    def _follow_settings(self, name: str, current: _Loaded, caller: str | None, changed: dict[str, str]) -> None:
        """Load the serving version again when its serving.json changed since it loaded; settings that do not
        load (bad JSON, an unknown key) leave it serving as it was, and are not tried again until the file
        changes."""
        stamp = self._settings_stamp(name)
        if stamp == current.settings or self._failed.get(name) == (current.version, stamp):
            return
        try:
            self.reload(name, caller=caller, action="settings")
        except EdgeserveError as exc:
            changed[name] = f"failed: {first_line(exc, 300)}"
            log.warning("model %s: its new serving settings do not load (%s); it keeps serving as it was", name,
                        first_line(exc, 300))
        else:
            changed[name] = "new settings"

    def watch(self, interval_s: float = 2.0, *, caller: str | None = "repository poll") -> None:
        """Call :meth:`refresh` every ``interval_s`` seconds on a thread of its own until :meth:`unwatch` or
        :meth:`close`: the runtime follows what ``edgeserve models`` does to the repository from anywhere. Each
        change is logged (and audited, as :meth:`reload` is); a pass that fails is logged and the next one tries
        again. Calling it again changes the interval."""
        if not 0.01 <= interval_s <= 86400:
            raise ConfigError(f"the watch interval must be 0.01-86400 s, got {interval_s}")
        self.unwatch()
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(interval_s) and not self._closed:
                try:
                    changed = self.refresh(caller=caller)
                except Exception:  # noqa: BLE001 - a bad pass must not end the watching; the next one tries again
                    log.exception("looking at the repository %s failed", self.repository.root)
                    continue
                for name, what in changed.items():
                    log.warning("model %s: %s (from the repository)", name, what)

        thread = threading.Thread(target=poll, name="edgeserve-watch", daemon=True)
        self._watcher = (thread, stop)
        thread.start()

    def unwatch(self, *, wait: bool = True) -> None:
        """Stop :meth:`watch`; ``wait``: until a load the watcher has begun ends."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        thread, stop = watcher
        stop.set()
        if wait and thread is not threading.current_thread():
            thread.join()

    def unload(self, name: str, *, caller: str | None = None) -> None:
        with self._lock:
            slot = self._slots.pop(name, None)
            if slot is not None:
                self._unloaded.add(name)
        if slot is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        for loaded in slot.loaded():
            self._retire(slot, loaded)
        self._action("unload", name, caller=caller, detail={"versions": [x.version for x in slot.loaded()]})

    def _retire(self, slot: _Slot, loaded: _Loaded) -> None:
        """Stop handing ``loaded`` out; close it once its last user lets go; drop its cached answers unless a
        version still loaded computes the same ones."""
        with self._lock:
            loaded.retired = True
            idle = not loaded.users
            shared = any(x.model.identity == loaded.model.identity for x in slot.loaded() if x is not loaded)
        if slot.cache is not None and not shared:
            slot.cache.invalidate(loaded.model.identity)
        if idle:
            loaded.model.close()
        elif loaded.model.batcher is not None:
            loaded.model.batcher.hurry()  # no more company is coming: run what waits now

    def _load(self, name: str, slot: _Slot, version: int) -> _Loaded:
        stamp = self._settings_stamp(name)
        batching, cache_config, guard, session = self._settings(name)
        if cache_config is None:
            slot.cache = None
        elif slot.cache is None or slot.cache.config != cache_config:
            slot.cache = ResponseCache(cache_config)  # one cache for every version of the model
        model = load(self.repository.version_dir(name, version), config=session, golden=self._golden,
                     batching=batching, cache=slot.cache, guard=guard)
        if model.manifest is not None:
            from ..guard.doctor import environment_differences

            model.parity = {"golden": model.golden_check, "differences": environment_differences(model.manifest)}
            for d in model.parity["differences"]:
                log.warning("model %s@%s: %s verified with %s, here %s%s", name, version, d["what"], d["recorded"],
                            d["here"], f" ({d['note']})" if d["note"] else "")
        if model.monitor is not None:  # events name the model as the repository does, not as its package does
            model.monitor.identity.update(model=name, version=version)
            if self._episodes is not None:
                model.monitor.share(self._episodes, f"{name}@{version}:{model.identity}")
        if self.audit is not None and model.monitor is not None:
            audit, number = self.audit, version

            def drift_event(event: dict[str, Any]) -> None:  # drift onsets, firings and ends are audit records
                audit.record(request_id=None, model=name, version=number, digest=event.get("digest"),
                             input_digest=None, output=None, latency_s=0.0, caller="edgeserve", kind="action",
                             outcome="ok", flags=event["event"], detail=json.dumps(event, default=str))

            def trigger_done(event: dict[str, Any], outcome: dict[str, str]) -> None:
                audit.action(action="trigger", model=name, version=number, digest=event.get("digest"),
                             caller="edgeserve", outcome="; ".join(f"{k}: {v}" for k, v in outcome.items()) or "none",
                             detail={"window": event.get("window"), "scores": event.get("scores")})

            model.monitor.listeners.append(drift_event)
            if model.monitor.trigger is not None:
                model.monitor.trigger.listeners.append(trigger_done)
        return _Loaded(model, version, stamp)

    def _settings_stamp(self, name: str) -> tuple[int, int] | None:
        """The model's serving.json as it is now (mtime and size), or None when there is none."""
        try:
            st = (self.repository.model_dir(name) / SERVING_FILE).stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _settings(self, name: str) -> tuple[BatchConfig | None, CacheConfig | None, GuardConfig | None,
                                             SessionConfig]:
        batching, cache, guard, session = self._batching, self._cache_config, self._guard, self.config
        path = self.repository.model_dir(name) / SERVING_FILE
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
                if "batching" in data:
                    batching = BatchConfig(**_known(data["batching"], BatchConfig, "batching")) \
                        if data["batching"] is not None else None
                if "cache" in data:
                    cache = CacheConfig(**_known(data["cache"], CacheConfig, "cache")) \
                        if data["cache"] is not None else None
                if "guard" in data:
                    guard = _guard_config(data["guard"], guard) if data["guard"] is not None else None
                if "session" in data:
                    session = _session_config(data["session"], session)
            except (OSError, ValueError, TypeError) as exc:
                if isinstance(exc, ConfigError):
                    raise RepositoryError(f"{path}: {exc}") from None
                raise RepositoryError(f"{path}: invalid serving settings ({exc})") from None
        return batching, cache, guard, session

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests and drain every model's queue (each within ``timeout`` seconds)."""
        self.unwatch()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loaded = [x for slot in self._slots.values() for x in slot.loaded()]
        for item in loaded:
            item.model.close(timeout)
        if self.audit is not None and self._owns_audit:
            self.audit.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        served = ", ".join(f"{n}@{s.current.version}" for n, s in self._slots.items() if s.current)
        return f"<Runtime {self.repository.root} [{served}]{' closed' if self._closed else ''}>"


def _guard_config(data: Any, base: GuardConfig | None) -> GuardConfig:
    """A model's guard settings from serving.json, over the runtime's (a trigger's callback cannot come from JSON)."""
    fields = dict(_known(data, GuardConfig, "guard"))
    trigger = fields.pop("trigger", None)
    if trigger is not None:
        if not isinstance(trigger, dict) or "callback" in trigger:
            raise ValueError("guard.trigger: expected an object with span, rearm, exit_level, command, webhook, "
                             "timeout_s, retries")
        fields["trigger"] = TriggerConfig(**_known(trigger, TriggerConfig, "guard.trigger"))
    return replace(base or GuardConfig(), **fields)


def _known(data: Any, config: type, where: str) -> dict[str, Any]:
    """``data``, a JSON object whose every key is a field of the dataclass ``config``; else a ValueError that names
    the unknown keys and the fields there are."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {json.dumps(data)[:80]}")
    names = [f.name for f in dataclasses.fields(config) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(it takes {', '.join(names)})")
    return data


def _session_config(data: Any, base: SessionConfig) -> SessionConfig:
    """A model's engine settings from serving.json, over the runtime's."""
    if not isinstance(data, dict):
        raise ValueError("session: expected a JSON object")
    unknown = sorted(set(data) - set(SESSION_FIELDS))
    if unknown:
        raise ValueError(f"session: {', '.join(unknown)} cannot be set here (it can: {', '.join(SESSION_FIELDS)})")
    for key, value in data.items():
        kinds = SESSION_FIELDS[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise ValueError(f"session.{key}: expected {expected}, got {json.dumps(value)}")
    return replace(base, **data)


def _as_feed(model: Model, inputs: Any, named: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """What a caller passed, by input name (for the audit record's input digest)."""
    feed: dict[str, Any] = {}
    if is_frame(inputs):  # a DataFrame: its columns, as the model takes them
        inputs = frame_columns(inputs)
    if isinstance(inputs, Mapping):
        feed.update(inputs)
    elif inputs is not None and model.inputs:
        feed[model.inputs[0].name] = inputs
    if named:
        feed.update(named)
    return {k: v if isinstance(v, np.ndarray) else np.asarray(v) for k, v in feed.items()}


@functools.cache
def _audit_summaries() -> tuple[Callable[[Mapping[str, np.ndarray]], str], Callable[[Mapping[str, np.ndarray]], str]]:
    """The audit record's input digest and output summary functions, imported once.

    NOTE: not a ``from ..guard.audit import`` in :meth:`Runtime.record`: a relative import inside a function
    resolves its package on every call (1.6 us a request measured, more than the digest of a 64-float row)."""
    from ..guard.audit import input_digest, output_summary

    return input_digest, output_summary
