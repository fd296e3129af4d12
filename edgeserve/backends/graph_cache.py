"""The on-disk cache of optimised graphs, so that a restart skips the engine's graph optimisation.

Entries are keyed by everything that changes the optimised graph: the model's sha256, the engine and its
version, the optimisation settings and the CPU (architecture and instruction-set flags). Each entry is written
whole to a temporary name and renamed, with a sidecar recording its own sha256; an entry that is missing its
sidecar, does not match it, or fails to load is deleted and rebuilt — never an error for the caller.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from ..environment import cpu_info
from ..modelfile import sha256_file

log = logging.getLogger(__name__)


class GraphCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def key(self, model_digest: str, engine: str, engine_version: str, options: dict[str, Any]) -> str:
        cpu = cpu_info()
        material = json.dumps({
            "model": model_digest, "engine": engine, "version": engine_version, "options": options,
            "arch": cpu["arch"], "cpu": cpu["model"], "flags": cpu["flags"], "format": 1,
        }, sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.onnx", self.root / f"{key}.json"

    def lookup(self, key: str) -> Path | None:
        """The cached graph for ``key`` when present and intact; a damaged entry is removed."""
        graph, meta = self._paths(key)
        if not graph.exists():
            return None
        try:
            recorded = json.loads(meta.read_text())["sha256"]
            if sha256_file(graph) == recorded:
                return graph
            log.warning("graph cache entry %s is corrupt; rebuilding it", graph.name)
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("graph cache entry %s has no valid record; rebuilding it", graph.name)
        self.discard(key)
        return None

    def staging_path(self, key: str) -> Path | None:
        """Where the engine should write a new entry (None when the folder cannot be used)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            log.info("graph cache disabled: cannot create %s (%s)", self.root, exc)
            return None
        return self.root / f".{key}.{uuid.uuid4().hex[:8]}.tmp.onnx"

    def commit(self, staged: Path, key: str) -> None:
        graph, meta = self._paths(key)
        try:
            if not staged.exists():
                return
            digest = sha256_file(staged)
            meta_tmp = meta.with_name(meta.name + f".{uuid.uuid4().hex[:8]}.tmp")
            meta_tmp.write_text(json.dumps({"sha256": digest}))
            os.replace(staged, graph)
            os.replace(meta_tmp, meta)
        except OSError as exc:
            log.info("graph cache entry not stored (%s)", exc)
            staged.unlink(missing_ok=True)

    def discard(self, key: str) -> None:
        for path in self._paths(key):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
