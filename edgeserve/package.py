"""The package: a folder holding ``model.onnx``, the ``edgeserve.json`` manifest and ``golden.npz``.

The manifest is the contract between converter, runtime, server and bench. Reading a package checks the
manifest's form and schema version and the sha256 of every file; a package that fails either is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import write_npz
from .errors import IntegrityError, PackageError, first_line
from .modelfile import sha256_file
from .names import check_name
from .tensors import NUMPY_DTYPES, TensorSpec

SCHEMA_VERSION = 1
MANIFEST = "edgeserve.json"
MODEL_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
"""A manifest larger than this is refused before it is parsed (real ones are tens of KiB)."""


@dataclass(frozen=True)
class Manifest:
    """What ``edgeserve.json`` records. Free-form sections stay plain dicts so later recipes can add keys."""

    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model_file: str = MODEL_FILE
    backend: str = "onnxruntime"
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION
    source: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    envelope: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    golden: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line (the dataclass's own would print every section, the reference statistics' knots included)."""
        return f"<Manifest {self.summary}>"

    @property
    def summary(self) -> str:
        """``digits@1: x: float32 [batch, 64] -> probs: float32 [batch, 10]; static on onnxruntime``."""
        inputs = ", ".join(f"{s.name}: {s.describe()}" for s in self.inputs)
        outputs = ", ".join(f"{s.name}: {s.describe()}" for s in self.outputs)
        return f"{self.name}@{self.version}: {inputs} -> {outputs}; {self.recipe_name} on {self.backend}"

    @property
    def recipe_name(self) -> str:
        """What the model is: ``fp32``, ``static``, ``dynamic``…; ``auto: int8-static-entropy`` for auto's choice."""
        mode = self.recipe.get("mode") or "fp32"
        chosen = (self.recipe.get("auto") or {}).get("chosen")
        return f"{mode}: {chosen}" if chosen else "fp32" if mode == "none" else str(mode)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "version": self.version,
            "created_at": self.created_at,
            "model_file": self.model_file,
            "backend": self.backend,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "source": self.source,
            "recipe": self.recipe,
            "fidelity": self.fidelity,
            "envelope": self.envelope,
            "environment": self.environment,
            "golden": self.golden,
            "digests": self.digests,
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = MANIFEST) -> Manifest:
        if not isinstance(data, dict):
            raise PackageError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise PackageError(
                f"{where}: schema_version {version!r} is not one this edgeserve reads (it reads {SCHEMA_VERSION}); "
                "re-convert the model or upgrade edgeserve"
            )
        for key, kind in (("name", str), ("version", str), ("inputs", list), ("outputs", list), ("digests", dict)):
            if not isinstance(data.get(key), kind):
                raise PackageError(f"{where}: field '{key}' must be a {kind.__name__}, got {data.get(key)!r:.80}")
        for key in ("source", "recipe", "fidelity", "envelope", "environment", "golden"):
            if not isinstance(data.get(key, {}), dict):
                raise PackageError(f"{where}: field '{key}' must be an object")
        # every field that can become a path follows the repository's rules (edgeserve.names)
        check_name(data["name"], what=f"model name in {where}", error=PackageError)
        check_name(data["version"], what=f"version in {where}", error=PackageError)
        model_file = data.get("model_file", MODEL_FILE)
        _check_member_name(model_file, where)
        golden = data.get("golden", {})
        if "file" in golden:
            _check_member_name(golden["file"], where)
        return cls(
            name=data["name"],
            version=data["version"],
            inputs=_specs(data["inputs"], "inputs", where),
            outputs=_specs(data["outputs"], "outputs", where),
            model_file=model_file,
            backend=str(data.get("backend", "onnxruntime")),
            created_at=str(data.get("created_at", "")),
            source=data.get("source", {}),
            recipe=data.get("recipe", {}),
            fidelity=data.get("fidelity", {}),
            envelope=data.get("envelope", {}),
            environment=data.get("environment", {}),
            golden=data.get("golden", {}),
            digests=data["digests"],
        )


def _specs(items: list[Any], key: str, where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for i, item in enumerate(items):
        try:
            spec = TensorSpec.from_dict(item)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise PackageError(f"{where}: {key}[{i}] is malformed (needs name, dtype, shape): {exc}") from None
        if spec.dtype not in NUMPY_DTYPES:
            raise PackageError(
                f"{where}: {key}[{i}] '{spec.name}' has dtype {spec.dtype!r}, which edgeserve cannot exchange as a "
                f"numpy array (it handles {', '.join(sorted(NUMPY_DTYPES))}); re-export the model with one of those"
            )
        if not all(d is None or isinstance(d, (int, str)) for d in spec.shape):
            raise PackageError(f"{where}: {key}[{i}] '{spec.name}' has a dimension that is not an int, name or null")
        if spec.batch_axis is not None and not (isinstance(spec.batch_axis, int) and 0 <= spec.batch_axis < len(spec.shape)):
            raise PackageError(f"{where}: {key}[{i}] '{spec.name}' has batch_axis {spec.batch_axis} outside its shape")
        if not all(0 <= axis < len(spec.shape) and length >= 1 for axis, length in spec.shortest):
            raise PackageError(f"{where}: {key}[{i}] '{spec.name}' has a shortest length outside its shape or under 1")
        specs.append(spec)
    if not specs:
        raise PackageError(f"{where}: '{key}' is empty")
    return tuple(specs)


def _check_member_name(name: Any, where: str) -> None:
    """Names inside a package are plain file names: no folders, no links out."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        raise PackageError(f"{where}: {name!r} is not a plain file name inside the package")


def is_package(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and check a package's manifest (form and schema only; see :func:`verify_files` for digests)."""
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if manifest_path.is_symlink() or not manifest_path.is_file():
        raise PackageError(f"{folder} is not an edgeserve package: {MANIFEST} is missing or not a regular file")
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise PackageError(f"{manifest_path} is {size} bytes; manifests are at most {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise PackageError(f"{manifest_path} is not valid JSON: {first_line(exc)}") from None
    except OSError as exc:
        raise PackageError(f"{manifest_path} is unreadable: {exc}") from None
    return Manifest.from_dict(data, where=str(manifest_path))


def compute_digests(folder: Path) -> dict[str, str]:
    """sha256 of every regular file in the package folder except the manifest itself."""
    digests = {}
    for entry in sorted(folder.iterdir()):
        if entry.name == MANIFEST:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise PackageError(f"{entry} is not a regular file; packages hold plain files only")
        digests[entry.name] = sha256_file(entry)
    return digests


def verify_files(folder: str | os.PathLike[str], manifest: Manifest) -> None:
    """Every file the manifest lists exists with its digest, and no file is there that it does not list."""
    folder = Path(folder)
    for name in manifest.digests:
        _check_member_name(name, str(folder / MANIFEST))
    present = {e.name for e in folder.iterdir() if e.name != MANIFEST}
    missing = sorted(set(manifest.digests) - present)
    extra = sorted(present - set(manifest.digests))
    if missing:
        raise IntegrityError(f"package {folder} is missing {', '.join(missing)} listed in its manifest")
    if extra:
        raise IntegrityError(f"package {folder} holds files its manifest does not list: {', '.join(extra)}")
    if manifest.model_file not in manifest.digests:
        raise IntegrityError(f"package {folder}: the model file {manifest.model_file} has no digest in the manifest")
    for name, expected in manifest.digests.items():
        entry = folder / name
        if entry.is_symlink() or not entry.is_file():
            raise IntegrityError(f"package {folder}: {name} is not a regular file")
        actual = sha256_file(entry)
        if actual != expected:
            raise IntegrityError(
                f"package {folder}: {name} does not match its manifest digest (expected sha256 {expected[:12]}…, "
                f"got {actual[:12]}…); the file was changed or corrupted after conversion"
            )


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Manifest:
    """Write the manifest with digests of every other file in the folder; returns the manifest as written."""
    folder = Path(folder)
    final = Manifest(**{**manifest.__dict__, "digests": compute_digests(folder)})
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(final.to_dict(), indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return final


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# Golden samples are stored by position ("input_0", "output_1") so that tensor names never become zip member names.
def write_golden(path: Path, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], manifest_specs: tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]) -> None:
    in_specs, out_specs = manifest_specs
    arrays = {f"input_{i}": _storable(inputs[s.name]) for i, s in enumerate(in_specs)}
    arrays.update({f"output_{i}": _storable(outputs[s.name]) for i, s in enumerate(out_specs)})
    write_npz(path, arrays)


def _storable(value: Any) -> np.ndarray:
    """An array an .npz holds without pickles: text as fixed-width unicode (read back as str objects)."""
    a = np.asarray(value)
    if a.dtype.kind != "O":
        return a
    if not all(isinstance(v, str) for v in a.flat):
        raise PackageError("golden samples: only text can be stored from an object array (no pickles)")
    return a.astype(str)


def _as_spec(a: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return a.astype(object) if spec.dtype == "str" and a.dtype.kind == "U" else a


def read_golden(folder: Path, manifest: Manifest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    path = folder / manifest.golden.get("file", GOLDEN_FILE)
    try:
        with np.load(path, allow_pickle=False) as data:
            inputs = {s.name: _as_spec(data[f"input_{i}"], s) for i, s in enumerate(manifest.inputs)}
            outputs = {s.name: _as_spec(data[f"output_{i}"], s) for i, s in enumerate(manifest.outputs)}
    except (OSError, KeyError, ValueError) as exc:
        raise PackageError(f"{path}: golden samples unreadable ({exc})") from None
    return inputs, outputs


@dataclass(frozen=True)
class Package:
    """A package on disk and its manifest."""

    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Package:
        """Read a package's manifest and (by default) check every file's digest."""
        folder = Path(path)
        manifest = read_manifest(folder)
        if verify:
            verify_files(folder, manifest)
        return cls(folder, manifest)

    def __repr__(self) -> str:
        return f"<Package {str(self.path)!r}: {self.manifest.summary}>"

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file
