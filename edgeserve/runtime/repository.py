"""The model repository on disk: ``<root>/<name>/<version>/`` holding packages, plus ``<root>/<name>/state.json``.

Versions are positive integers. The state file says which version serves (``current``) and whether it is
pinned (a pinned model does not move to newly published versions). Publishing copies the package into a
staging folder inside the repository, verifies digests and golden samples there, then renames it into
place; state changes are written to a temporary file and renamed. Management actions hold a file lock
(``.edgeserve.lock``), so concurrent publishers, in threads or processes, never race for a version number or
lose a state change. Names and versions are validated before any path is built from them
(:mod:`edgeserve.names`), and every path is checked to stay inside the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import GoldenPolicy
from ..errors import ModelNotFound, RepositoryError
from ..names import check_name, check_version, is_name, is_version

__all__ = ["ModelState", "Repository"]

STATE_FILE = "state.json"
LOCK_FILE = ".edgeserve.lock"


@dataclass(frozen=True)
class ModelState:
    name: str
    versions: tuple[int, ...]
    current: int | None
    pinned: bool


class Repository:
    """A folder of models and their versions."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise RepositoryError(f"{self.root} is not a model repository folder; publish a package into it first "
                                  "(edgeserve models publish REPO NAME PACKAGE, or Repository(root, create=True))")
        self._real_root = self.root.resolve()

    # -- paths ---------------------------------------------------------------------------------------------------------
    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if resolved != self._real_root and self._real_root not in resolved.parents:
            raise RepositoryError(f"{path} resolves outside the repository {self.root}; refused")
        return path

    def model_dir(self, name: str) -> Path:
        return self._inside(self.root / check_name(name))

    def version_dir(self, name: str, version: int | str) -> Path:
        return self._inside(self.model_dir(name) / str(check_version(version)))

    # -- reading -------------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        out = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and is_name(entry.name):
                out.append(entry.name)
        return out

    def versions(self, name: str) -> list[int]:
        folder = self.model_dir(name)
        if not folder.is_dir():
            raise ModelNotFound(f"no model named '{name}' in {self.root}")
        return sorted(int(e.name) for e in folder.iterdir()
                      if e.is_dir() and not e.is_symlink() and is_version(e.name))

    def state(self, name: str) -> ModelState:
        versions = self.versions(name)
        raw = self._read_state(name)
        current = raw.get("current")
        if current not in versions:  # no state yet, or its version was removed by hand: the newest serves
            current = versions[-1] if versions else None
        return ModelState(name, tuple(versions), current, bool(raw.get("pinned", False)) and current is not None)

    def current(self, name: str) -> int:
        state = self.state(name)
        if state.current is None:
            raise ModelNotFound(f"model '{name}' has no versions in {self.root}")
        return state.current

    def __iter__(self) -> Iterator[ModelState]:
        for name in self.names():
            yield self.state(name)

    def _read_state(self, name: str) -> dict[str, Any]:
        path = self.model_dir(name) / STATE_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RepositoryError(f"{path} is unreadable ({exc}); fix or delete it (the newest version then serves)") from None
        if not isinstance(data, dict):
            raise RepositoryError(f"{path} must hold a JSON object")
        return data

    def _write_state(self, name: str, **changes: Any) -> None:
        """Merge ``changes`` into the state file (call with :meth:`locked` held: this reads, then writes)."""
        folder = self.model_dir(name)
        data = {**self._read_state(name), **changes}
        tmp = folder / f".{STATE_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, folder / STATE_FILE)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RepositoryError(f"cannot write the state of '{name}' in {self.root}: {exc}") from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's lock: one management action at a time, across threads and processes.

        See :mod:`edgeserve.filelock`."""
        from ..filelock import locked

        with ExitStack() as held:
            try:
                held.enter_context(locked(self.root / LOCK_FILE))
            except OSError as exc:
                raise RepositoryError(f"cannot lock the repository {self.root} ({exc}); is it writable?") from None
            yield

    # -- changing ------------------------------------------------------------------------------------------------------
    def publish(self, name: str, package: str | os.PathLike[str], *, golden: GoldenPolicy = "error") -> int:
        """Copy a package in as the next version (atomically, verified first); it serves unless the model is pinned.

        The copy is verified (digests, model file, golden answers) in a staging folder before the lock is taken,
        so concurrent publishes verify in parallel and only number and rename one at a time. A failed publish
        leaves nothing behind, not even an empty model folder."""
        from ..package import Package
        from .model import load

        check_name(name)
        source = Path(package)
        Package.open(source)  # a clear error before anything is copied
        staging = self._inside(self.root / f".staging-{name}-{uuid.uuid4().hex[:8]}")
        try:
            try:
                shutil.copytree(source, staging, symlinks=False)
            except (OSError, shutil.Error) as exc:
                raise RepositoryError(f"cannot copy {source} into {self.root}: {exc}") from None
            load(staging, golden=golden, config=_no_cache()).close()  # digests, model file and golden answers
            with self.locked():
                folder = self.model_dir(name)
                folder.mkdir(exist_ok=True)
                existing = self.versions(name)
                version = (existing[-1] + 1) if existing else 1
                try:
                    os.rename(staging, self.version_dir(name, version))
                except OSError as exc:
                    raise RepositoryError(f"cannot move the new version of '{name}' into place: {exc}") from None
                if not self.state(name).pinned:
                    self._write_state(name, current=version, pinned=False)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version

    def rollback(self, name: str) -> int:
        """Serve the newest version older than the current one; returns it. The next publish serves again."""
        with self.locked():
            state = self.state(name)
            older = [v for v in state.versions if state.current is not None and v < state.current]
            if not older:
                raise RepositoryError(f"model '{name}' has no version older than {state.current} to roll back to")
            self._write_state(name, current=older[-1], pinned=False)
            return older[-1]

    def point(self, name: str, version: int | None, *, pinned: bool = False) -> None:
        """Set the serving version directly (used to undo a rollback whose target failed to load)."""
        with self.locked():
            if version is not None and version not in self.versions(name):
                raise ModelNotFound(f"model '{name}' has no version {version}")
            self._write_state(name, current=version, pinned=pinned)

    def pin(self, name: str, version: int | str) -> int:
        """Serve ``version`` and stay on it when newer versions are published."""
        v = check_version(version)
        with self.locked():
            if v not in self.versions(name):
                raise ModelNotFound(f"model '{name}' has no version {v}; it has {self.versions(name)}")
            self._write_state(name, current=v, pinned=True)
        return v

    def unpin(self, name: str) -> int:
        """Follow the newest version again; returns it."""
        with self.locked():
            versions = self.versions(name)
            if not versions:
                raise ModelNotFound(f"model '{name}' has no versions")
            self._write_state(name, current=versions[-1], pinned=False)
            return versions[-1]

    def remove(self, name: str, version: int | str, *, force: bool = False) -> None:
        """Delete a version; the serving one only with ``force`` (the newest remaining one then serves)."""
        v = check_version(version)
        with self.locked():
            target = self.version_dir(name, v)
            if not target.is_dir():
                raise ModelNotFound(f"model '{name}' has no version {v}")
            if self.state(name).current == v and not force:
                raise RepositoryError(f"version {v} of '{name}' is serving; roll back or pin another first, or remove "
                                      "it anyway with force=True (--force)")
            trash = self._inside(target.with_name(f".trash-{v}-{uuid.uuid4().hex[:8]}"))
            os.rename(target, trash)  # one atomic step out of sight, then the slow delete
        shutil.rmtree(trash, ignore_errors=True)


def _no_cache():
    from ..config import SessionConfig

    return SessionConfig(cache_dir=None, intra_op_threads=1)

