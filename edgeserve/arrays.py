"""Arrays by name on disk: reading ``.npz`` files or folders of ``NAME.npy`` (never with pickles), writing ``.npz``."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError, first_line

DataSource = str | os.PathLike[str] | Mapping[str, Any] | np.ndarray
"""An ``.npz`` path, a folder of ``NAME.npy`` files, a mapping of name to array, or (for a model with one input)
the array itself."""


def is_frame(value: Any) -> bool:
    """A pandas DataFrame (duck-typed: pandas is never imported here)."""
    return hasattr(value, "columns") and hasattr(value, "dtypes") and hasattr(value, "to_numpy")


def frame_columns(frame: Any) -> dict[str, np.ndarray]:
    """A DataFrame's columns as a scikit-learn model converted from one takes them (see :func:`column`)."""
    return {str(name): column(str(name), frame[name].to_numpy()) for name in frame.columns}


def column(name: str, values: Any) -> np.ndarray:
    """One column as a ``[rows, 1]`` input: float32 for floats, int64 for integers, strings for text and
    categories (what skl2onnx makes of a DataFrame's columns)."""
    a = np.asarray(values)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise DataError(f"column '{name}': expected one value per row, got shape {list(a.shape)}")
    kind = a.dtype.kind
    a = a.astype(np.float32) if kind == "f" else a.astype(np.int64) if kind in "iu" else a if kind == "b" \
        else a.astype(str)
    return a.reshape(-1, 1)


def by_input(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """``arrays``, except that the one array given for a model of one input is that input whatever its name
    (``np.savez("x.npz", x=X)`` for a model whose input is ``X``, or ``input`` as TorchScript names it)."""
    if len(names) == 1 and len(arrays) == 1 and names[0] not in arrays:
        return {names[0]: next(iter(arrays.values()))}
    return dict(arrays)


def read_arrays(source: DataSource, *, what: str, single: str | None = None) -> dict[str, np.ndarray]:
    """Arrays by name from a ``.npz`` file, a folder of ``NAME.npy`` files, a mapping, or a DataFrame (one
    ``[rows, 1]`` array per column); a bare array is named ``single`` (the model's one input). No pickles are
    loaded."""
    if is_frame(source):
        return frame_columns(source)
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
        with path.open("rb") as f:  # NOTE: opened here: np.load leaves its own file open when the zip is broken
            if f.read(2) != b"PK":  # and would take any file but a zip for a pickle, and say so
                raise DataError(f"{what} {path} is not an .npz archive (np.savez writes one: one array per input, "
                                "named after it)")
            f.seek(0)
            with np.load(f, allow_pickle=False) as npz:
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
    plain = {k: _storable(k, np.asarray(v)) for k, v in arrays.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **plain)  # type: ignore[arg-type]  # numpy's stub confuses **kwargs with allow_pickle
    os.replace(tmp, path)


def as_text(value: Any) -> str:
    """A text value as the checks and files keep it: bytes decoded as UTF-8 (undecodable bytes replaced)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _storable(name: str, a: np.ndarray) -> np.ndarray:
    """Text held as Python objects (what a string model takes and answers) as fixed-width unicode: an object array
    would be pickled, and edgeserve reads no pickles back."""
    if a.dtype != object:
        return a
    flat = a.reshape(-1).tolist()
    if not all(isinstance(v, (str, bytes)) for v in flat):
        raise DataError(f"array '{name}' holds Python objects other than text; it cannot be written without pickles")
    return np.array([as_text(v) for v in flat], dtype=str).reshape(a.shape)
