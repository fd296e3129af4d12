"""Read the parts of an ONNX file the safety check needs, straight from the protobuf wire format.

Loading a package must not cost an ``import onnx`` (tens of milliseconds, most of a small model's cold start):
the check in :mod:`edgeserve.modelfile` only needs the graph's nodes (operator domains, subgraph nesting), the
opset imports, local functions and which tensors keep their data in external files. This module parses exactly
those fields of the schema in onnx/onnx.proto, lazily (a field is decoded when it is read; tensor payloads are
skipped as slices, never copied), and exposes them with the same attribute names as ``onnx.ModelProto``, so one
check serves both. Anything that is not well-formed protobuf is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not well-formed protobuf."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for every field: an int, or a memoryview for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if number == 0:
            raise WireError("field number 0")
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == FIXED64:
            if pos + 8 > end:
                raise WireError("truncated fixed64")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == LENGTH:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise WireError("a length runs past the end of the message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == FIXED32:
            if pos + 4 > end:
                raise WireError("truncated fixed32")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise WireError(f"wire type {wire} is not used by ONNX")
        yield number, wire, value


class _Message:
    """A lazily decoded message: ``_FIELDS`` maps attribute names to (field number, kind)."""

    _FIELDS: dict[str, tuple[int, str]] = {}
    __slots__ = ("_raw", "_cache")

    def __init__(self, buf: memoryview) -> None:
        raw: dict[int, list[tuple[int, Any]]] = {}
        for number, wire, value in fields(buf):
            raw.setdefault(number, []).append((wire, value))
        self._raw = raw
        self._cache: dict[str, Any] = {}

    def HasField(self, name: str) -> bool:  # noqa: N802 - the protobuf spelling, so one check serves both
        return self._FIELDS[name][0] in self._raw

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._FIELDS:
            raise AttributeError(name)
        cache = self._cache
        if name not in cache:
            number, kind = self._FIELDS[name]
            cache[name] = _decode(self._raw.get(number, []), kind)
        return cache[name]


def _decode(values: list[tuple[int, Any]], kind: str) -> Any:
    if kind == "str":
        return bytes(values[-1][1]).decode("utf-8", "replace") if values else ""
    if kind == "int":
        return values[-1][1] if values else 0
    if kind == "ints":  # repeated int64, packed or not
        out: list[int] = []
        for wire, value in values:
            if wire == LENGTH:
                pos = 0
                while pos < len(value):
                    item, pos = _varint(value, pos)
                    out.append(item - (1 << 64) if item >= 1 << 63 else item)
            else:
                out.append(value - (1 << 64) if value >= 1 << 63 else value)
        return out
    many = kind.endswith("*")
    cls = _KINDS[kind.rstrip("*")]
    decoded = [cls(v) for wire, v in values if wire == LENGTH]
    if len(decoded) != len(values):
        raise WireError(f"a {cls.__name__} field is not length-delimited")
    if many:
        return decoded
    return decoded[-1] if decoded else cls(memoryview(b""))


class Entry(_Message):
    _FIELDS = {"key": (1, "str"), "value": (2, "str")}
    __slots__ = ()


class Tensor(_Message):
    _FIELDS = {"dims": (1, "ints"), "data_type": (2, "int"), "name": (8, "str"), "external_data": (13, "entry*"),
               "data_location": (14, "int")}
    __slots__ = ()


class Attribute(_Message):
    _FIELDS = {"name": (1, "str"), "t": (5, "tensor"), "g": (6, "graph"), "tensors": (10, "tensor*"),
               "graphs": (11, "graph*")}
    __slots__ = ()


class Node(_Message):
    _FIELDS = {"name": (3, "str"), "op_type": (4, "str"), "attribute": (5, "attribute*"), "domain": (7, "str")}
    __slots__ = ()


class Graph(_Message):
    _FIELDS = {"node": (1, "node*"), "initializer": (5, "tensor*"), "output": (12, "any*")}
    __slots__ = ()


class Opset(_Message):
    _FIELDS = {"domain": (1, "str"), "version": (2, "int")}
    __slots__ = ()


class Function(_Message):
    _FIELDS = {"name": (1, "str"), "domain": (10, "str")}
    __slots__ = ()


class _Any(_Message):
    _FIELDS = {}
    __slots__ = ()


class Model(_Message):
    """The fields of ``onnx.ModelProto`` the safety check reads."""

    _FIELDS = {"ir_version": (1, "int"), "graph": (7, "graph"), "opset_import": (8, "opset*"),
               "functions": (25, "function*")}
    __slots__ = ()


_KINDS: dict[str, type[_Message]] = {"entry": Entry, "tensor": Tensor, "attribute": Attribute, "node": Node,
                                     "graph": Graph, "opset": Opset, "function": Function, "any": _Any}


def read_model(data: bytes) -> Model:
    """The model's checked fields; :class:`WireError` when the bytes are not well-formed protobuf."""
    return Model(memoryview(data))
