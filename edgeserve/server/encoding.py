"""HTTP content codings of inference bodies, as Triton takes and gives them: a request body sent with
``Content-Encoding: gzip`` or ``deflate`` (tritonclient's ``request_compression_algorithm``) is inflated, within the
body limit; a response is compressed when ``Accept-Encoding`` asks for one of them (``response_compression_algorithm``).

"deflate" is the zlib format (RFC 9110; what tritonclient and browsers send), with raw deflate accepted too, as
servers commonly do."""

from __future__ import annotations

import zlib

from .errors import BadRequest, TooLarge, UnsupportedMediaType

CODINGS = ("gzip", "deflate")
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
LEVEL = 1
"""zlib's fastest level: an inference answer is compressed on the event loop, on the request's path."""


def check_coding(header: str | None) -> str | None:
    """The request's content coding (None: none), refused before the body is read when it is not one taken."""
    if header is None:
        return None
    coding = header.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in _WBITS:
        raise UnsupportedMediaType(f"Content-Encoding {header.strip()[:40]!r} is not accepted; send the body "
                                   "uncompressed, or with gzip or deflate")
    return coding


def inflate(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` decoded, never past ``limit`` bytes (a small body may inflate a thousandfold)."""
    attempts = (_WBITS[coding], -zlib.MAX_WBITS) if coding == "deflate" else (_WBITS[coding],)
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            if wbits != attempts[-1]:
                continue  # NOTE: not zlib-wrapped: try raw deflate
            raise BadRequest(f"the {coding} body cannot be decoded ({exc})") from None
        if len(out) > limit:
            raise TooLarge(f"the body inflates past the limit of {limit} bytes")
        if not inflater.eof:
            raise BadRequest(f"the {coding} body is cut short")
        return out
    raise AssertionError("unreachable")  # pragma: no cover


def accepted(header: str | None) -> str | None:
    """The coding to answer in: the first of gzip and deflate that ``Accept-Encoding`` takes (``q=0`` refuses)."""
    if not header:
        return None
    taken = set()
    for part in header.lower().split(","):
        name, _, params = part.partition(";")
        q = params.strip()
        if q.startswith("q="):
            try:
                if float(q[2:]) == 0:
                    continue
            except ValueError:
                continue
        taken.add(name.strip())
    return next((c for c in CODINGS if c in taken), None)


def compress(body: bytes, coding: str) -> bytes:
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, _WBITS[coding])
    return packer.compress(body) + packer.flush()
