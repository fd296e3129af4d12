"""Reading ONNX files as the untrusted input they are.

A model file can point at "external data" anywhere on disk (CVE-2022-25882, CVE-2024-27318), name custom
operators whose kernels live in native libraries, or nest subgraphs deep enough to exhaust a parser. Everything
here is checked before onnxruntime sees the file: a refused file never reaches an inference engine.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ModelFileError, first_line

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"})
"""Operator domains every model may use; anything else must be allow-listed by the caller."""
MAX_MODEL_BYTES = 2 * 1024**3
"""Protobuf cannot hold more than 2 GiB; larger weights must be in external data."""
MAX_SUBGRAPH_DEPTH = 16
"""Deeper If/Loop/Scan nesting than this is refused (real exporters stay below 5)."""

_ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2}


def load_model(
    path: str | os.PathLike[str],
    *,
    allowed_domains: Iterable[str] = (),
    load_external_data: bool = True,
    max_bytes: int = MAX_MODEL_BYTES,
):  # -> onnx.ModelProto (onnx is imported lazily)
    """Parse and check an ONNX file; external data is checked, then loaded, only from beside the model."""
    import onnx
    from google.protobuf.message import DecodeError

    path = _checked_file(path, max_bytes)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelFileError(f"{path} is not a readable ONNX model ({first_line(exc)}){_saved_hint(path)}") from exc
    check_model(model, base_dir=path.parent, allowed_domains=allowed_domains)
    if load_external_data and uses_external_data(model):
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def check_model_file(path: str | os.PathLike[str], *, allowed_domains: Iterable[str] = (),
                     max_bytes: int = MAX_MODEL_BYTES) -> Any:
    """:func:`load_model`'s checks without importing onnx: the file is read from the protobuf wire format
    (:mod:`edgeserve.onnxwire`). Returns a read-only view with the fields the check reads; for loading a model
    into an engine, which parses the file itself."""
    from .onnxwire import WireError, read_model

    path = _checked_file(path, max_bytes)
    try:
        model = read_model(path.read_bytes())
        check_model(model, base_dir=path.parent, allowed_domains=allowed_domains)
    except WireError as exc:
        raise ModelFileError(f"{path} is not a readable ONNX model ({exc}){_saved_hint(path)}") from None
    return model


def _checked_file(path: str | os.PathLike[str], max_bytes: int) -> Path:
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{path} is not a regular file")
    if st.st_size == 0:
        raise ModelFileError(f"{path} is empty")
    if st.st_size > max_bytes:
        raise ModelFileError(
            f"{path} is {st.st_size} bytes, over the {max_bytes}-byte cap; store large weights as external data"
        )
    return path


def check_model(model, *, base_dir: str | os.PathLike[str] | None, allowed_domains: Iterable[str] = ()) -> None:
    """Refuse a parsed model that is empty, nests too deep, uses unknown operator domains or unsafe external data."""
    if not model.HasField("graph") or not model.graph.node and not model.graph.output:
        raise ModelFileError("the file parsed, but holds no graph: it is not an ONNX model")
    if not model.opset_import:
        raise ModelFileError("the model declares no opset (opset_import is empty): it is not a valid ONNX model")
    allowed = STANDARD_DOMAINS | set(allowed_domains)
    local_functions = {(f.domain, f.name) for f in model.functions}
    for node, depth in _walk_nodes(model.graph, 0):
        if depth > MAX_SUBGRAPH_DEPTH:
            raise ModelFileError(f"subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH} levels (If/Loop/Scan): refused")
        if node.domain not in allowed and (node.domain, node.op_type) not in local_functions:
            raise ModelFileError(
                f"node '{node.name or node.op_type}' uses operator {node.op_type} from custom domain "
                f"'{node.domain}'; custom operators are refused unless allow-listed (allowed_domains=['{node.domain}'])"
            )
    external = list(_external_tensors(model))
    if external:
        if base_dir is None:
            raise ModelFileError("the model refers to external data files, which a model given as bytes cannot use")
        for tensor in external:
            check_external_data(tensor, Path(base_dir))


def uses_external_data(model) -> bool:
    return any(True for _ in _external_tensors(model))


HALF_TYPES = (10, 16)  # TensorProto.FLOAT16, BFLOAT16


def computes_in_half(model) -> bool:
    """Whether the graph holds 16-bit float weights or constants (an fp16 conversion, or a model exported in half)."""
    return any(tensor.data_type in HALF_TYPES for tensor in _all_initializers(model.graph))


def check_external_data(tensor, base_dir: Path) -> None:
    """One external-data reference: a plain file beside the model, with a sane offset and length."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"tensor '{tensor.name}': external data location {location!r}"
    if not location:
        raise ModelFileError(f"{where} is empty")
    rel = Path(location)
    if rel.is_absolute() or location.startswith(("/", "\\")) or ":" in location or ".." in rel.parts:
        raise ModelFileError(f"{where} points outside the model's folder; only plain relative names are allowed")
    base = base_dir.resolve()
    current = base
    for part in rel.parts:  # no component may be a symlink, so the file cannot be redirected after the check
        current = current / part
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError:
            raise ModelFileError(f"{where}: file not found in {base}") from None
        if stat.S_ISLNK(mode):
            raise ModelFileError(f"{where} goes through a symbolic link ({current.name}); refused")
    st = current.lstat()
    if not stat.S_ISREG(st.st_mode):
        raise ModelFileError(f"{where} is not a regular file")
    if st.st_nlink > 1:
        raise ModelFileError(f"{where} is a hard link to another file; refused")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise ModelFileError(f"{where}: offset and length must be integers") from None
    if offset < 0 or length < 0:
        raise ModelFileError(f"{where}: negative offset ({offset}) or length ({length})")
    if offset + length > st.st_size:
        raise ModelFileError(
            f"{where}: offset {offset} + length {length} runs past the end of the {st.st_size}-byte file"
        )
    expected = tensor_nbytes(tensor)
    if expected is not None and expected != length:
        raise ModelFileError(
            f"{where}: holds {length} bytes but dims {list(tensor.dims)} of its element type need {expected}"
        )


def tensor_nbytes(tensor) -> int | None:
    """Bytes a tensor's dims and element type imply, computed without allocating; None for variable-size types."""
    size = _ELEMENT_BYTES.get(tensor.data_type)
    if size is None:
        return None
    count = 1
    for d in tensor.dims:
        if d < 0:
            raise ModelFileError(f"tensor '{tensor.name}' has a negative dimension {d}")
        count *= int(d)
    return count * size


def _external_tensors(model) -> Iterator:
    for tensor in _all_initializers(model.graph):
        if tensor.data_location == 1:  # TensorProto.EXTERNAL
            yield tensor


def _all_initializers(graph) -> Iterator:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_initializers(attr.g)
            for g in attr.graphs:
                yield from _all_initializers(g)


def _walk_nodes(graph, depth: int) -> Iterator:
    # NOTE: iterative, so a maliciously deep model cannot exhaust Python's recursion limit.
    stack = [(graph, depth)]
    while stack:
        g, d = stack.pop()
        for node in g.node:
            yield node, d
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append((attr.g, d + 1))
                stack.extend((sub, d + 1) for sub in attr.graphs)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _saved_hint(path: Path) -> str:
    """What to do with a file torch or pickle wrote, where an ONNX model was expected."""
    from .converter import saved  # NOTE: only on this error's path

    kind = saved.kind_of(path)
    if kind is None:
        return ""
    if kind in (saved.EXPORTED, saved.TORCHSCRIPT):
        return f"; it is a {kind} file: convert it first (edgeserve convert {path} -o PACKAGE)"
    if kind == saved.ARRAYS:
        return "; it is an .npz of arrays (data, not a model): give a model file or a package here"
    what = "a torch.save file (a pickle)" if kind == saved.TORCH_SAVE else "a Python pickle"
    return f"; it is {what}, which edgeserve does not load: see edgeserve convert --help"


def model_in_folder(folder: Path) -> Path:
    """The model of an exporter's output folder that is not a package (optimum's ``model.onnx`` beside its config
    and tokenizer): its ``model.onnx``, else its only ``.onnx`` file."""
    found = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    named = folder / "model.onnx"
    if named in found:
        chosen = named
    elif len(found) == 1:
        chosen = found[0]
    elif not found:
        raise ModelFileError(f"{folder} is a folder without an .onnx file and not an edgeserve package; give the "
                             "model file or a package folder")
    else:
        raise ModelFileError(f"{folder} holds {len(found)} models ({', '.join(p.name for p in found[:6])}); give the "
                             "one to use (each part of an encoder-decoder export converts on its own)")
    return chosen
