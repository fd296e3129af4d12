"""Content codings of inference bodies: what is compressed comes back whole, within the body limit."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeserve.server.encoding import accepted, check_coding, compress, inflate
from edgeserve.server.errors import BadRequest, TooLarge, UnsupportedMediaType


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=4096), coding=st.sampled_from(["gzip", "deflate"]))
def test_what_is_compressed_inflates_back_whole(body: bytes, coding: str) -> None:
    assert inflate(compress(body, coding), coding, limit=4096) == body


def test_raw_deflate_is_taken_as_deflate_too() -> None:
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = packer.compress(b'{"inputs": []}') + packer.flush()
    assert inflate(raw, "deflate", limit=100) == b'{"inputs": []}'


def test_the_limit_holds_on_the_inflated_size() -> None:
    body = compress(b"0" * 1001, "gzip")
    assert len(body) < 100
    assert inflate(body, "gzip", limit=1001) == b"0" * 1001
    with pytest.raises(TooLarge):
        inflate(body, "gzip", limit=1000)
    with pytest.raises(BadRequest, match="cut short"):
        inflate(body[:-10], "gzip", limit=2000)


@pytest.mark.parametrize("header, coding", [(None, None), ("identity", None), ("", None), (" GZIP ", "gzip"),
                                            ("x-gzip", "x-gzip"), ("deflate", "deflate")])
def test_the_request_codings_taken(header: str | None, coding: str | None) -> None:
    assert check_coding(header) == coding


def test_a_coding_not_taken_is_refused() -> None:
    with pytest.raises(UnsupportedMediaType, match="'zstd' is not accepted"):
        check_coding("zstd")


@pytest.mark.parametrize("header, coding", [(None, None), ("", None), ("br", None), ("gzip", "gzip"),
                                            ("deflate, gzip;q=0.5", "gzip"), ("gzip;q=0, deflate", "deflate"),
                                            ("gzip;q=0", None), ("GZIP;Q=1", "gzip"), ("gzip;q=junk", None)])
def test_the_response_coding_follows_accept_encoding(header: str | None, coding: str | None) -> None:
    assert accepted(header) == coding
