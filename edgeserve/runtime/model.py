"""One loaded model: its signature, its input contract, and a backend session behind them."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Session, get_backend
from ..config import GoldenPolicy, SessionConfig
from ..errors import ClosedError, ConfigError, EdgeserveError, GoldenMismatchError, PackageError
from ..golden import mismatches, tolerance_for
from ..guard.contract import InputContract
from ..modelfile import load_model
from ..package import Manifest, is_package, read_golden, read_manifest, verify_files
from ..tensors import TensorSpec

log = logging.getLogger(__name__)


class Model:
    """A model ready to answer: ``predict`` checks the input contract, then runs the backend session.

    Use it as a context manager, or call :meth:`close`; a closed model raises :class:`ClosedError`.
    """

    def __init__(self, session: Session, *, name: str, version: str | None = None,
                 manifest: Manifest | None = None, path: Path | None = None) -> None:
        self.name = name
        self.version = version
        self.manifest = manifest
        self.path = path
        self._session = session
        self.inputs: tuple[TensorSpec, ...] = manifest.inputs if manifest else session.inputs
        self.outputs: tuple[TensorSpec, ...] = manifest.outputs if manifest else session.outputs
        self._contract = InputContract(self.inputs)
        self._output_names = [o.name for o in self.outputs]
        self._run = session.run
        self.from_cache: bool = bool(getattr(session, "from_cache", False))
        """True when the backend took the optimised graph from the on-disk cache instead of optimising again."""
        self._closed = False
        self._lock = threading.Lock()

    def predict(self, inputs: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Run the model. ``inputs`` is one array (single-input models) or a dict of name to array; returns
        every output by name. Raises :class:`InputError` for data that breaks the contract."""
        if self._closed:
            raise ClosedError(f"model '{self.name}' is closed; load it again to use it")
        feed = self._contract.feed(inputs, named)
        return dict(zip(self._output_names, self._run(feed, self._output_names)))

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        sig = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        state = " closed" if self._closed else ""
        return f"<Model {self.name}{'@' + self.version if self.version else ''} ({sig}){state}>"


def load(path: str | os.PathLike[str], *, config: SessionConfig | None = None, golden: GoldenPolicy = "error",
         allowed_domains: Sequence[str] = ()) -> Model:
    """Load a package folder (verifying digests and golden samples) or a bare ``.onnx`` file.

    ``golden``: what to do when this machine's answers differ from those recorded at conversion
    (``"error"`` refuses the load, ``"warn"`` logs a warning, ``"off"`` skips the check).
    """
    config = config or SessionConfig()
    if golden not in ("error", "warn", "off"):
        raise ConfigError(f"golden must be 'error', 'warn' or 'off', got {golden!r}")
    path = Path(path)
    if path.is_dir():
        return _load_package(path, config, golden, allowed_domains)
    if not path.exists():
        raise PackageError(f"nothing to load at {path}: give a package folder or an .onnx file")
    load_model(path, allowed_domains=allowed_domains, load_external_data=False)  # checks before the engine sees it
    backend = get_backend(config.backend)
    session = backend.open(path, config, label=path.name)
    return Model(session, name=path.stem, path=path)


def _load_package(folder: Path, config: SessionConfig, golden: GoldenPolicy, allowed_domains: Sequence[str]) -> Model:
    if not is_package(folder):
        raise PackageError(f"{folder} is not an edgeserve package (no edgeserve.json); convert a model first")
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    model_path = folder / manifest.model_file
    load_model(model_path, allowed_domains=allowed_domains, load_external_data=False)
    backend_name = config.backend if config.backend != "onnxruntime" else manifest.backend
    session = get_backend(backend_name).open(model_path, config, label=f"{manifest.name}@{manifest.version}",
                                             digest=manifest.digests.get(manifest.model_file))
    try:
        _check_signature(manifest, session)
        model = Model(session, name=manifest.name, version=manifest.version, manifest=manifest, path=folder)
        if golden != "off" and manifest.golden.get("count", 0):
            _check_golden(model, folder, manifest, golden)
    except EdgeserveError:
        session.close()
        raise
    return model


def _check_signature(manifest: Manifest, session: Session) -> None:
    recorded = [(s.name, s.dtype) for s in manifest.inputs], [(s.name, s.dtype) for s in manifest.outputs]
    actual = [(s.name, s.dtype) for s in session.inputs], [(s.name, s.dtype) for s in session.outputs]
    if recorded != actual:
        raise PackageError(
            f"package {manifest.name}: the model's inputs/outputs {actual} differ from the manifest's {recorded}"
        )


def _check_golden(model: Model, folder: Path, manifest: Manifest, policy: GoldenPolicy) -> None:
    inputs, expected = read_golden(folder, manifest)
    actual = model.predict(inputs)
    tol = float(manifest.golden.get("rel_tolerance", tolerance_for(manifest.recipe.get("mode", "none"))))
    problems = mismatches(actual, expected, tol)
    if not problems:
        return
    recorded_cpu = manifest.environment.get("cpu", {}).get("model", "another machine")
    message = (
        f"package {manifest.name}@{manifest.version}: this machine's answers differ from those recorded at "
        f"conversion on {recorded_cpu}: {'; '.join(problems)}. Re-convert on this machine, or load with "
        "golden='warn' to accept"
    )
    if policy == "error":
        raise GoldenMismatchError(message)
    log.warning("%s", message)
