"""Each response leaves in one write (head and body together), through uvicorn's real httptools protocol."""

from __future__ import annotations

import asyncio

import pytest
import uvicorn
from uvicorn.server import ServerState

from edgeserve.server.onewrite import Protocol


class _Transport(asyncio.Transport):
    """Records what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):  # type: ignore[override]
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope, receive, send) -> None:
    message = await receive()
    body = b"" if scope["path"] == "/empty" else b"answer:" + message.get("body", b"")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _exchange(*pieces: bytes, app=_app) -> _Transport:
    """Feed the request in ``pieces``, letting the app run after each; ``transport.after`` holds what had been
    written after each piece (the last: when the response completed, before the connection closed)."""
    config = uvicorn.Config(app, http=Protocol, lifespan="off", log_level="warning")
    config.load()
    protocol = Protocol(config=config, server_state=ServerState(), app_state={})
    transport = _Transport()
    transport.after = []  # type: ignore[attr-defined]
    protocol.connection_made(transport)
    for piece in pieces:
        protocol.data_received(piece)
        for _ in range(20):  # the app's task runs on this loop: let it go as far as it can
            await asyncio.sleep(0)
        transport.after.append(list(transport.writes))  # type: ignore[attr-defined]
    protocol.connection_lost(None)
    return transport


def test_a_response_is_one_write() -> None:
    t = asyncio.run(_exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"))
    assert len(t.writes) == 1
    assert t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and t.writes[0].endswith(b"\r\n\r\nanswer:hi")


def test_a_response_without_a_body_still_sends_its_head() -> None:
    for request in (b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n"):
        t = asyncio.run(_exchange(request))
        sent = b"".join(t.after[-1])  # type: ignore[attr-defined]  # when the response completed, not at close
        assert sent.startswith(b"HTTP/1.1 200 OK\r\n") and sent.endswith(b"\r\n\r\n")


def test_two_requests_on_one_connection_get_two_whole_responses() -> None:
    t = asyncio.run(_exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\na"
                              b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nb"))
    assert len(t.writes) == 2
    assert t.writes[0].endswith(b"answer:a") and t.writes[1].endswith(b"answer:b")


@pytest.mark.parametrize("expect", [True, False])
def test_an_interim_response_is_not_held(expect: bool) -> None:
    head = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n" + (b"Expect: 100-continue\r\n" if expect else b"")
    t = asyncio.run(_exchange(head + b"\r\n", b"hi"))
    assert t.after[0] == ([b"HTTP/1.1 100 Continue\r\n\r\n"] if expect else [])  # type: ignore[attr-defined]
    assert t.writes[-1].endswith(b"answer:hi")


def test_a_connection_closed_with_a_head_held_sends_it_first() -> None:
    async def crash(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        raise RuntimeError("the app died before its body")

    t = asyncio.run(_exchange(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", app=crash))
    assert t.closed and t.writes and t.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
