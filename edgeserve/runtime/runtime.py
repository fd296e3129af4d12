"""The Runtime: the models of a repository, loaded and served, with hot reload and rollback.

A reload loads and verifies the new version completely before it becomes visible; requests already holding
the old version finish on it, and the old version is closed (its queue drained) only when the last of them
has let go. A failed load leaves the old version serving and raises the reason.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import BatchConfig, CacheConfig, GoldenPolicy, SessionConfig
from ..errors import ClosedError, ConfigError, ModelNotFound, RepositoryError
from .cache import ResponseCache
from .model import Model, load
from .repository import Repository, check_name, check_version

log = logging.getLogger(__name__)
SERVING_FILE = "serving.json"
"""Optional per-model settings in ``<repo>/<name>/serving.json``: {"batching": {...}, "cache": {...}}."""


@dataclass
class _Loaded:
    """One loaded version and the requests currently using it."""

    model: Model
    version: int
    users: int = 0
    retired: bool = False


@dataclass
class _Slot:
    current: _Loaded | None = None
    on_demand: dict[int, _Loaded] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one reload at a time per model


class Runtime:
    """Serve the models of a repository in-process.

    ``batching`` and ``cache`` are defaults for every model (a model's ``serving.json`` overrides them);
    ``models`` limits which models load (default: all). The runtime is a context manager; ``close()`` drains.
    """

    def __init__(self, repository: str | os.PathLike[str] | Repository, *, models: Sequence[str] | None = None,
                 config: SessionConfig | None = None, batching: BatchConfig | None = None,
                 cache: CacheConfig | None = None, golden: GoldenPolicy = "error") -> None:
        self.repository = repository if isinstance(repository, Repository) else Repository(repository)
        self.config = config or SessionConfig()
        self._batching = batching
        self._cache_config = cache
        self._golden = golden
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._closed = False
        names = list(models) if models is not None else self.repository.names()
        try:
            for name in names:
                self._slots[check_name(name)] = _Slot()
                self.reload(name)
        except BaseException:
            self.close()
            raise

    # -- serving -----------------------------------------------------------------------------------------------------
    def predict(self, name: str, inputs: Any = None, /, *, version: int | str | None = None,
                timeout_ms: float | None = None, **named: Any) -> dict[str, np.ndarray]:
        with self._use(name, version) as model:
            return model.predict(inputs, timeout_ms=timeout_ms, **named)

    async def predict_async(self, name: str, inputs: Any = None, /, *, version: int | str | None = None,
                            timeout_ms: float | None = None, **named: Any) -> dict[str, np.ndarray]:
        with self._use(name, version) as model:
            return await model.predict_async(inputs, timeout_ms=timeout_ms, **named)

    def model(self, name: str) -> Model:
        """The serving version of ``name`` (for its signature and manifest; use :meth:`predict` to run it)."""
        with self._use(name, None) as model:
            return model

    def models(self) -> dict[str, dict[str, Any]]:
        """What is loaded: per model, the serving version, the repository's versions and the batching/cache stats."""
        out = {}
        for name, slot in list(self._slots.items()):
            loaded = slot.current
            info: dict[str, Any] = {"version": loaded.version if loaded else None}
            if loaded:
                m = loaded.model
                info["batching"] = dict(m.batcher.stats, queued=m.batcher.queued) if m.batcher else None
                info["cache"] = m.cache.stats() if m.cache else None
            out[name] = info
        return out

    @contextmanager
    def _use(self, name: str, version: int | str | None) -> Iterator[Model]:
        loaded = self._acquire(name, version)
        try:
            yield loaded.model
        finally:
            self._release(loaded)

    def _acquire(self, name: str, version: int | str | None) -> _Loaded:
        if self._closed:
            raise ClosedError("the runtime is closed")
        slot = self._slots.get(name)
        if slot is None:
            raise ModelNotFound(f"model '{name}' is not loaded; loaded: {', '.join(sorted(self._slots)) or 'none'}")
        if version is not None:
            return self._acquire_version(name, slot, check_version(version))
        with self._lock:
            loaded = slot.current
            if loaded is None:
                raise ModelNotFound(f"model '{name}' has no loaded version")
            loaded.users += 1
            return loaded

    def _acquire_version(self, name: str, slot: _Slot, version: int) -> _Loaded:
        with self._lock:
            for loaded in (slot.current, slot.on_demand.get(version)):
                if loaded is not None and loaded.version == version and not loaded.retired:
                    loaded.users += 1
                    return loaded
        with slot.lock:  # load an older or newer version on demand, once
            with self._lock:
                existing = slot.on_demand.get(version)
            if existing is None:
                if version not in self.repository.versions(name):
                    raise ModelNotFound(f"model '{name}' has no version {version}; it has {self.repository.versions(name)}")
                existing = _Loaded(self._load(name, version), version)
                with self._lock:
                    slot.on_demand[version] = existing
            with self._lock:
                existing.users += 1
            return existing

    def _release(self, loaded: _Loaded) -> None:
        with self._lock:
            loaded.users -= 1
            done = loaded.retired and loaded.users == 0
        if done:
            loaded.model.close()

    # -- management --------------------------------------------------------------------------------------------------
    def reload(self, name: str) -> int:
        """Load the repository's current version of ``name`` and swap it in; returns the serving version.

        The new version is loaded and verified (digests, golden samples) before anyone sees it. If that fails, the
        old version keeps serving and the error is raised."""
        if self._closed:
            raise ClosedError("the runtime is closed")
        slot = self._slots.setdefault(check_name(name), _Slot())
        with slot.lock:
            version = self.repository.current(name)
            if slot.current is not None and slot.current.version == version:
                return version
            fresh = _Loaded(self._load(name, version), version)
            with self._lock:
                old, slot.current = slot.current, fresh
            if old is not None:
                self._retire(old)
                if fresh.model.cache is not None:
                    fresh.model.cache.invalidate(name)
            log.info("model %s: serving version %s%s", name, version, f" (was {old.version})" if old else "")
            return version

    def rollback(self, name: str) -> int:
        """Serve the previous version in one step: the repository's pointer moves back, then the runtime reloads."""
        state = self.repository.state(name)
        target = self.repository.rollback(name)
        try:
            version = self.reload(name)
        except BaseException:
            # the older version does not load: point the repository back at what still serves
            self.repository.point(name, state.current, pinned=state.pinned)
            raise
        log.info("model %s: rolled back from %s to %s", name, state.current, target)
        return version

    def unload(self, name: str) -> None:
        slot = self._slots.pop(name, None)
        if slot is None:
            raise ModelNotFound(f"model '{name}' is not loaded")
        for loaded in [slot.current, *slot.on_demand.values()]:
            if loaded is not None:
                self._retire(loaded)

    def _retire(self, loaded: _Loaded) -> None:
        with self._lock:
            loaded.retired = True
            idle = loaded.users == 0
        if idle:
            loaded.model.close()

    def _load(self, name: str, version: int) -> Model:
        batching, cache = self._settings(name)
        return load(self.repository.version_dir(name, version), config=self.config, golden=self._golden,
                    batching=batching, cache=cache)

    def _settings(self, name: str) -> tuple[BatchConfig | None, ResponseCache | CacheConfig | None]:
        batching, cache = self._batching, self._cache_config
        path = self.repository.model_dir(name) / SERVING_FILE
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if "batching" in data:
                    batching = BatchConfig(**data["batching"]) if data["batching"] is not None else None
                if "cache" in data:
                    cache = CacheConfig(**data["cache"]) if data["cache"] is not None else None
            except (OSError, ValueError, TypeError) as exc:
                raise RepositoryError(f"{path}: invalid serving settings ({exc})") from None
            except ConfigError as exc:
                raise RepositoryError(f"{path}: {exc}") from None
        return batching, cache

    # -- lifecycle ---------------------------------------------------------------------------------------------------
    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests and drain every model's queue (each within ``timeout`` seconds)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loaded = [x for slot in self._slots.values() for x in (slot.current, *slot.on_demand.values()) if x]
        for item in loaded:
            item.model.close(timeout)

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

