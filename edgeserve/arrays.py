"""Arrays by name on disk: reading ``.npz`` files or folders of ``NAME.npy`` (never with pickles), writing ``.npz``."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, first_line

DataSource = str | os.PathLike[str] | Mapping[str, Any] | np.ndarray
"""An ``.npz`` path, a folder of ``NAME.npy`` files, a mapping of name to array, or (for a model with one input)
the array itself."""


def read_arrays(source: DataSource, *, what: str, single: str | None = None) -> dict[str, np.ndarray]:
    """Arrays by name from a ``.npz`` file, a folder of ``NAME.npy`` files, or a mapping; a bare array is named
    ``single`` (the model's one input). No pickles are loaded."""
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v) for k, v in source.items()}
    if not isinstance(source, (str, os.PathLike)):
        if not hasattr(source, "__array__") and not isinstance(source, (list, tuple)):
            raise DataError(f"{what}: expected an .npz path, a folder of NAME.npy files or a mapping of input name "
                            f"to array, got {type(source).__name__}")
        if single is None:
            raise DataError(f"{what}: a bare array fits a model with one input; give a mapping of input name to "
                            "array (or an .npz file) instead")
        return {single: np.asarray(source)}
    path = Path(source)
    try:
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise DataError(f"{what} folder {path} holds no .npy files (one per input, named after the input)")
            return {f.stem: np.load(f, allow_pickle=False) for f in files}
        if not path.exists():
            raise DataError(f"{what} file not found: {path}")
        if path.suffix == ".npy":
            raise DataError(f"{what} {path}: give an .npz with one array per input, or a folder of NAME.npy files")
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise DataError(f"{what} {path} is not an .npz archive")
            return {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # numpy refuses object arrays without pickles, which we never allow
        hint = ("; save text as a fixed-width string array instead (np.array(texts, dtype=str)): edgeserve never "
                "unpickles a file") if "allow_pickle" in str(exc) else ""
        raise DataError(f"{what} {path} cannot be read as numpy arrays ({first_line(exc)}){hint}") from None


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to ``path`` whole: a temporary file renamed into place, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **dict(arrays))  # type: ignore[arg-type]  # numpy's stub confuses **kwargs with allow_pickle
    os.replace(tmp, path)
