"""Tensors on the wire: the protocol's datatypes, and arrays to and from JSON, the binary extension and raw bytes.

Every size is checked before anything is allocated: a declared shape's element count against a cap and against
the bytes or elements that actually arrived, so ``[16, 2**60]`` or a short buffer is a 400, never a MemoryError.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import BadRequest

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}
MAX_ELEMENTS = 1 << 28
"""Elements in one tensor at most (the body cap usually bites first)."""


def datatype_of(dtype: np.dtype[Any] | str) -> str:
    """The protocol's name for a numpy dtype (strings and bytes are BYTES)."""
    name = _NAMES.get(dtype) if isinstance(dtype, np.dtype) else None  # NOTE: a dict lookup, once per output
    if name is not None:
        return name
    dt = np.dtype(dtype)
    if dt.kind in "OSU":
        return "BYTES"
    try:
        return _NAMES[dt]
    except KeyError:
        raise BadRequest(f"dtype {dt} has no Open Inference Protocol datatype") from None


def dtype_of(datatype: Any, where: str) -> np.dtype[Any]:
    try:
        return DATATYPES[datatype]
    except (KeyError, TypeError):
        raise BadRequest(f"{where}: unknown datatype {datatype!r}; use one of {', '.join(DATATYPES)}") from None


def element_count(shape: Any, where: str) -> tuple[tuple[int, ...], int]:
    """A declared shape, checked (a list of non-negative integers), and its element count (capped)."""
    if not isinstance(shape, (list, tuple)) or len(shape) > 32:
        raise BadRequest(f"{where}: 'shape' must be a list of at most 32 non-negative integers, got {shape!r:.80}")
    dims = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise BadRequest(f"{where}: 'shape' must hold non-negative integers, got {d!r:.40} in {list(shape)!r:.80}")
        dims.append(d)
    # NOTE: the non-zero dims too: [0, 9142, 10**18] holds no element, but numpy cannot even describe it
    if math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise BadRequest(f"{where}: shape {dims} has more elements than the limit of {MAX_ELEMENTS}")
    return tuple(dims), math.prod(dims)


# -- JSON ------------------------------------------------------------------------------------------------------------
def from_json(where: str, datatype: Any, shape: Any, data: Any) -> np.ndarray:
    """A tensor from the protocol's JSON form: ``data`` flattened row-major or nested to the shape."""
    dtype = dtype_of(datatype, where)
    dims, count = element_count(shape, where)
    if not isinstance(data, list):
        if count != 1:
            raise BadRequest(f"{where}: 'data' must be a list of {count} values")
        data = [data]
    if dtype.kind == "f":  # the common case, in one pass
        direct = _floats(data, dtype)
        if direct is not None and direct.size == count:
            return direct.reshape(dims)
    try:
        got = np.array(data, dtype=object if dtype.kind == "O" else None)  # NOTE: numpy walks nested lists in C
    except (ValueError, TypeError):
        raise BadRequest(f"{where}: 'data' is ragged or nested too deep; give {count} values, flat or nested to "
                         f"the shape {list(dims)}") from None
    if got.size != count:
        raise BadRequest(f"{where}: shape {list(dims)} needs {count} values, got {got.size}")
    return _cast(where, datatype, dtype, got, data).reshape(dims)


_NUMBERS = frozenset((float, int))


def _floats(data: list[Any], dtype: np.dtype[Any]) -> np.ndarray | None:
    """Numbers straight into the float dtype, or None to take the checked path (strings, bools, ragged...).

    NOTE: not ``np.array(data).astype(dtype)``: numpy releases the GIL for a cast of more than 500 elements, and
    the event loop then waits for it behind the batch leader's thread (~200 us a request on the wide MLP)."""
    if not data or not _NUMBERS.issuperset(map(type, data)):  # NOTE: in C; bool is not int here
        return None  # nested, or not all numbers (null, strings, booleans): the checked path says what is wrong
    try:
        with np.errstate(over="ignore"):  # NOTE: 1e300 as FP32 is inf, as onnxruntime would make it; the guard decides
            out = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        return None
    return out if out.ndim == 1 else None


def _cast(where: str, datatype: str, dtype: np.dtype[Any], got: np.ndarray, data: list[Any]) -> np.ndarray:
    kind = got.dtype.kind
    if got.size == 0:
        return np.zeros(got.shape, dtype=dtype)
    if dtype.kind == "O":
        flat = got.reshape(-1)
        out = np.empty(flat.size, dtype=object)
        out[:] = [_as_bytes(v, where) for v in flat]
        return out
    if dtype.kind == "b":
        if kind != "b":
            raise BadRequest(f"{where}: BOOL data must be true or false")
        return got
    if kind not in "iuf":
        raise BadRequest(f"{where}: {datatype} data must be numbers, got {_what(got)}")
    if _holds_bool(data):  # NOTE: numpy reads [1.5, true] as [1.5, 1.0]; Triton refuses it, and so do we
        raise BadRequest(f"{where}: {datatype} data must be numbers, got true/false among them (send BOOL data "
                         "as its own input)")
    if dtype.kind == "f":
        with np.errstate(over="ignore"):  # NOTE: 1e300 as FP32 is inf, as onnxruntime would make it; the guard decides
            return got.astype(dtype)
    info = np.iinfo(dtype)
    if kind == "f":  # numpy read the numbers as floats (a uint64 past int64, or a "1.0"): back to exact integers
        if not np.all(np.isfinite(got)) or not np.all(np.floor(got) == got):
            raise BadRequest(f"{where}: {datatype} data must be whole numbers")
        try:
            return np.array(_python_ints(data), dtype=dtype)
        except OverflowError:
            raise BadRequest(f"{where}: a value is outside the {datatype} range [{info.min}, {info.max}]") from None
    if got.size and (got.min() < info.min or got.max() > info.max):
        raise BadRequest(f"{where}: a value is outside the {datatype} range [{info.min}, {info.max}]")
    return got.astype(dtype)


def _holds_bool(data: Any) -> bool:
    """Whether the (nested) list ``data`` holds a true or false anywhere: only asked on the checked path, which
    nested lists and anything but plain numbers take."""
    lists = [data]
    while lists:
        items = lists.pop()
        types = set(map(type, items))
        if bool in types:
            return True
        if list in types:
            lists.extend(v for v in items if type(v) is list)
    return False


def _python_ints(data: Any) -> Any:
    return [_python_ints(v) for v in data] if isinstance(data, list) else int(data)


def _what(got: np.ndarray) -> str:
    return {"b": "true/false", "U": "strings", "O": "mixed values"}.get(got.dtype.kind, str(got.dtype))


def _as_bytes(v: Any, where: str) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, bytes):
        return v
    raise BadRequest(f"{where}: BYTES data must be strings, got {type(v).__name__}")


def to_json(name: str, value: np.ndarray) -> dict[str, Any]:
    """An output in the protocol's JSON form (flattened row-major)."""
    datatype = datatype_of(value.dtype)
    if datatype == "BYTES":
        data: Any = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value.reshape(-1)]
    else:
        data = value.reshape(-1)  # NOTE: orjson writes numpy arrays itself, far faster than tolist()
    return {"name": name, "datatype": datatype, "shape": list(value.shape), "data": data}


# -- raw bytes (the binary extension, gRPC raw contents) -------------------------------------------------------------
def from_bytes(where: str, datatype: Any, shape: Any, raw: bytes | memoryview) -> np.ndarray:
    """A tensor from row-major bytes (BYTES: each element a 4-byte little-endian length, then its bytes)."""
    dtype = dtype_of(datatype, where)
    dims, count = element_count(shape, where)
    if dtype.kind == "O":
        return _bytes_elements(where, raw, count).reshape(dims)
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"{where}: shape {list(dims)} of {datatype} needs {count * dtype.itemsize} bytes, "
                         f"got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(dims)


def _bytes_elements(where: str, raw: bytes | memoryview, count: int) -> np.ndarray:
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    at = 0
    for i in range(count):
        if at + 4 > len(view):
            raise BadRequest(f"{where}: BYTES element {i} of {count}: its length prefix runs past the end of the data")
        (n,) = struct.unpack_from("<I", view, at)
        at += 4
        if at + n > len(view):
            raise BadRequest(f"{where}: BYTES element {i} says {n} bytes, only {len(view) - at} remain")
        out[i] = bytes(view[at:at + n])
        at += n
    if at != len(view):
        raise BadRequest(f"{where}: {len(view) - at} bytes left over after {count} BYTES elements")
    return out


def to_bytes(value: np.ndarray) -> bytes:
    """An array's row-major bytes (little-endian), BYTES elements length-prefixed."""
    if value.dtype.kind in "OSU":
        parts = []
        for v in value.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode("utf-8")
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def split_binary(body: bytes, header_length: Any, sizes: Sequence[int | None]) -> tuple[bytes, list[memoryview | None]]:
    """The JSON header and each binary input's bytes from a binary-extension body. ``sizes``: each input's
    ``binary_data_size`` (None for inputs given in JSON)."""
    total = sum(s for s in sizes if s is not None)
    rest = len(body) - header_length
    if total != rest:
        raise BadRequest(f"the binary_data_size of the inputs add up to {total} bytes, but {rest} bytes follow the "
                         f"{header_length}-byte JSON header")
    view = memoryview(body)
    at = header_length
    out: list[memoryview | None] = []
    for s in sizes:
        if s is None:
            out.append(None)
        else:
            out.append(view[at:at + s])
            at += s
    return bytes(view[:header_length]), out


def header_length(value: str | None, body_length: int) -> int | None:
    """``Inference-Header-Content-Length``, checked against the body."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be a whole number, got {value!r:.40}") from None
    if not 0 < n <= body_length:
        raise BadRequest(f"Inference-Header-Content-Length is {n}, but the body has {body_length} bytes; it must be "
                         "the length of the JSON header at the start of the body")
    return n
