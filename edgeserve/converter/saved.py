"""Model files a framework saved, rather than ONNX: which kind a file is (read from its bytes, not its name), and how
the CLI may open it.

- ``torch.export.save`` (``.pt2``): an ``ExportedProgram``, with its dynamic shapes and example inputs; it carries
  everything the ONNX exporter needs.
- ``torch.jit.save`` (TorchScript, ``.pt``): a scripted or traced module; it exports given example rows (the
  calibration data's first rows).
- Pickles (``joblib.dump``, ``pickle.dump``, ``torch.save`` of a module or of its ``state_dict``) are refused:
  loading one runs whatever code it holds, and a ``state_dict`` has no architecture to export. The message says
  what to do instead. ``edgeserve convert --trust-pickle`` loads one the user vouches for (:func:`load_pickle`):
  a fitted scikit-learn model, or a whole torch module whose class can be imported.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from ..errors import ConversionError, first_line

EXPORTED = "torch.export"
TORCHSCRIPT = "torchscript"
PICKLE = "pickle"
TORCH_SAVE = "torch.save"
ARRAYS = "npz"
"""numpy's ``.npz``: data (calibration, evaluation rows), given where the model was expected."""


def kind_of(path: Path) -> str | None:
    """``EXPORTED``, ``TORCHSCRIPT``, ``TORCH_SAVE``, ``PICKLE``, ``ARRAYS``, or None (anything else: ONNX, or not a
    model)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return PICKLE
    if head[:2] != b"PK" or not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any(n.endswith("/archive_format") for n in names) or any("/models/" in n and n.endswith(".json") for n in names):
        return EXPORTED
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return TORCHSCRIPT
    if any(n.endswith("data.pkl") for n in names):
        return TORCH_SAVE
    if names and all(n.endswith(".npy") for n in names):
        return ARRAYS
    return None


def refuse(path: Path, kind: str) -> ConversionError:
    """Why a pickle (or data) is not converted from a file, and what to do instead."""
    if kind == ARRAYS:
        return ConversionError(f"{path} is an .npz of arrays (data, not a model): give it as --calibration, --data or "
                               "--reference, and the model file (.onnx, .pt2, TorchScript .pt) as SRC")
    if kind == TORCH_SAVE:
        return ConversionError(
            f"{path} was written by torch.save (a pickle of a module or of its state_dict): loading it runs any code "
            "it holds, and a state_dict has no architecture to export. Save the model with "
            "torch.export.save(torch.export.export(model, example_args), 'model.pt2') or torch.jit.save, and convert "
            "that file; or pass the module itself to edgeserve.convert(model, ..., example_inputs=...) in Python "
            "(a whole module you saved yourself: --trust-pickle)")
    return ConversionError(
        f"{path} is a Python pickle (joblib.dump or pickle.dump): loading it runs any code it holds, so edgeserve "
        "does not unless told to: if you made the file, convert it with --trust-pickle; or load the model yourself "
        "and pass it to edgeserve.convert(model, ...) in Python, or export it to ONNX (skl2onnx's to_onnx)")


def _torch(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise ConversionError(f"{path} is a torch model file; converting it needs the extra: "
                              "pip install 'edgeserve[torch]'") from None
    return torch


def open_exported(path: Path) -> Any:
    """The ``ExportedProgram`` in ``path``."""
    torch = _torch(path)
    try:
        return torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - torch's own error, said in one line
        raise ConversionError(f"torch.export.load cannot read {path}: {first_line(exc)}; save it again with "
                              f"torch.export.save (torch {torch.__version__} here)") from None


def open_torchscript(path: Path) -> Any:
    """The TorchScript module in ``path``, on the CPU."""
    torch = _torch(path)
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(f"torch.jit.load cannot read {path}: {first_line(exc)}") from None


def torchscript_inputs(module: Any) -> list[str]:
    """The names of a TorchScript module's ``forward`` parameters (``self`` left out)."""
    try:
        return [a.name for a in module.forward.schema.arguments][1:]
    except (AttributeError, RuntimeError):
        return []


def _unpickler() -> Any:
    """joblib's load (scikit-learn's dependency: its files may hold numpy arrays stored its own way), else pickle's.
    NOTE: chosen before loading, so that an ImportError the file raises is not taken for joblib missing and the
    file's code run a second time."""
    try:
        import joblib
    except ImportError:
        import pickle

        def load(path: Path) -> Any:
            with path.open("rb") as f:
                return pickle.load(f)  # noqa: S301 - the user vouched for the file (--trust-pickle)

        return load
    return joblib.load


def load_pickle(path: Path, kind: str) -> Any:
    """The model in a pickle the user vouches for (``--trust-pickle``): this runs whatever code the file holds. A
    ``state_dict`` (weights without the module) is refused: there is nothing to export."""
    try:
        if kind == TORCH_SAVE:
            torch = _torch(path)
            loaded = torch.load(str(path), map_location="cpu", weights_only=False)
        else:
            loaded = _unpickler()(path)
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the unpickler's error (a class that cannot be imported here...)
        raise ConversionError(f"cannot load the pickle {path}: {type(exc).__name__}: {first_line(exc)} (a module's "
                              "class must be importable here, from the same code that saved it)") from None
    if isinstance(loaded, dict):
        raise ConversionError(f"{path} holds a dict ({', '.join(map(str, list(loaded)[:3]))}…), a state_dict's weights "
                              "without the module they belong to: there is no architecture to export. Save the "
                              "module itself (torch.export.save, torch.jit.save, or torch.save(model))")
    return loaded
