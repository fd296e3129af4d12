"""uvicorn's httptools protocol, sending each response's head together with its body: one write, not two.

uvicorn writes a response's status line and headers as soon as the app sends ``http.response.start``, and the body
in a second write. A client waiting for the answer then wakes up twice: for the head, only to find the body
missing and sleep again, and for the body. On 127.0.0.1 (wrk beside the server, 2 cores) the head's write was a
fifth to a half of the event loop's time: the woken client took the core while the loop still held the interpreter
lock. Held until the body, the head goes out with it. Measured in alternating rounds against uvicorn's own: with
another process busy on one of the two cores, digits MLP at one connection p50 110-115 -> 102-103 us (+7-12%
requests/s); on an idle machine the digits MLP reads the same, the wide MLP +5-8% requests/s at 32 connections
and p50 311-319 -> 266-303 us at one.

The head waits for the connection's next write (the body, or its first chunk); a response that writes no body
(a HEAD request's) sends its head when it completes, and closing the connection sends whatever is held first.
Interim responses (``100 Continue``) are never held: the client waits for them before it sends the body.

The protocol also tells the app how many requests it has read whose tasks have not started
(:attr:`RestApp.read_ahead`): requests read in one pass over the ready connections start one after another in the
next turn of the loop, and a model that runs in the loop then runs them as one batch at the end of that turn
(``Batcher.call_in_turn``) instead of one engine run each.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .rest import RestApp


class HeadWithBody:
    """A connection's transport that holds a response head until the next write (see the module docstring)."""

    __slots__ = ("_transport", "_head")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + data)
        elif data[:9] == b"HTTP/1.1 " and data[9:10] != b"1" and data[-4:] == b"\r\n\r\n":
            self._head = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a head still held (the response is complete without a body)."""
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)


class Protocol(HttpToolsProtocol):
    """``uvicorn.Config(http=Protocol)``: httptools, each response in one write."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadWithBody(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        super()._start_asgi_task(cycle, app)
        if isinstance(app, RestApp):  # NOTE: uvicorn's own method: with a uvicorn without it, nothing is counted
            app.read_ahead += 1
