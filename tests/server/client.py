"""A raw HTTP client for tests (http.client: paths go out exactly as written, bodies as given)."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return str(self.json()["error"])


def call(host_port: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         token: str | None = None) -> Reply:
    conn = http.client.HTTPConnection(host_port, timeout=30)
    try:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def infer_json(host_port: str, model: str, inputs: list[dict[str, Any]], token: str | None = None,
               **extra: Any) -> Reply:
    return call(host_port, "POST", f"/v2/models/{model}/infer", json.dumps({"inputs": inputs, **extra}).encode(),
                {"Content-Type": "application/json"}, token)


def free_port() -> int:
    """A port nothing listens on now (bound and released; the server binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
