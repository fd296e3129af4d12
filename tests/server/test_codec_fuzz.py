"""Property-based fuzzing of the wire codecs (hypothesis): whatever arrives, decoding either returns an array that
matches the declared shape and datatype or raises BadRequest — never another exception, never a huge allocation.
Case counts are stated on each test (300 or 200 generated cases per run)."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeserve.server.codec import DATATYPES, from_bytes, from_json, split_binary, to_bytes, to_json
from edgeserve.server.errors import BadRequest
from edgeserve.server.rest import decode_infer

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=40,
)
datatypes = st.sampled_from([*DATATYPES, "BF16", "FLOAT", "", 7])
shapes = st.lists(st.integers(min_value=-3, max_value=2**62) | st.floats() | st.text(max_size=2), max_size=5) \
    | json_values


@settings(max_examples=300, deadline=None)
@given(datatype=datatypes, shape=shapes, data=json_values)
def test_json_tensors_decode_or_fail_cleanly(datatype, shape, data) -> None:
    try:
        array = from_json("input 'x'", datatype, shape, data)
    except BadRequest:
        return
    assert list(array.shape) == list(shape)
    assert array.dtype == DATATYPES[datatype]


@settings(max_examples=300, deadline=None)
@given(datatype=datatypes, shape=shapes, raw=st.binary(max_size=64))
def test_raw_tensors_decode_or_fail_cleanly(datatype, shape, raw) -> None:
    try:
        array = from_bytes("input 'x'", datatype, shape, raw)
    except BadRequest:
        return
    assert list(array.shape) == list(shape)


@st.composite
def arrays(draw):
    datatype = draw(st.sampled_from(list(DATATYPES)))
    shape = draw(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=3))
    count = int(np.prod(shape))
    dtype = DATATYPES[datatype]
    if datatype == "BYTES":
        values = np.array(draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count)) or [], dtype=object)
    elif dtype.kind == "b":
        values = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), dtype=dtype)
    elif dtype.kind == "f":
        values = np.array(draw(st.lists(st.floats(width=16 if datatype == "FP16" else 32, allow_nan=False),
                                        min_size=count, max_size=count)), dtype=dtype)
    else:
        info = np.iinfo(dtype)
        values = np.array(draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=count, max_size=count)),
                          dtype=dtype)
    return datatype, values.reshape(shape)


@settings(max_examples=300, deadline=None)
@given(case=arrays())
def test_every_datatype_round_trips_through_bytes_and_json(case) -> None:
    datatype, value = case
    back = from_bytes("x", datatype, list(value.shape), to_bytes(value))
    assert back.dtype == value.dtype and back.shape == value.shape
    assert back.tolist() == value.tolist()
    doc = json.loads(json.dumps({**to_json("x", value), "data": to_json("x", value)["data"].tolist()
                                 if datatype != "BYTES" else to_json("x", value)["data"]}))
    if datatype != "BYTES":
        again = from_json("x", doc["datatype"], doc["shape"], doc["data"])
        assert again.dtype == value.dtype and again.tolist() == value.tolist()


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=256), header=st.one_of(st.none(), st.text(max_size=6),
                                                      st.integers(-5, 300).map(str)))
def test_whole_infer_bodies_decode_or_fail_cleanly(body, header) -> None:
    try:
        decode_infer({"name": "m"}, body, header)
    except BadRequest:
        pass


@settings(max_examples=200, deadline=None)
@given(doc=json_values, tail=st.binary(max_size=32))
def test_json_documents_with_binary_tails_decode_or_fail_cleanly(doc, tail) -> None:
    head = json.dumps(doc).encode()
    for header in (None, str(len(head))):
        try:
            decode_infer({"name": "m"}, head + tail if header else head, header)
        except BadRequest:
            pass


def test_split_binary_refuses_sizes_that_do_not_add_up() -> None:
    import pytest

    with pytest.raises(BadRequest, match="add up to 5"):
        split_binary(b"{}" + b"abcd", 2, [5])


def test_null_and_strings_are_not_numbers() -> None:
    import pytest

    for datatype in ("FP32", "INT64"):
        for data in ([None, 1.0], [1.0, None], ["1.0", 2.0], [[None, 1.0]], [True, False], [1.5, True], [2, False],
                     [[1.0, 2.0], [True, 3.0]], [[[1.0], [True]]]):
            shape = list(np.shape(data))
            with pytest.raises(BadRequest, match="must be numbers"):
                from_json("input 'x'", datatype, shape, data)
    assert from_json("input 'x'", "FP32", [2, 2], [[1.0, 2], [3, 4.5]]).tolist() == [[1.0, 2.0], [3.0, 4.5]]
