"""Bearer tokens with scopes.

A token file holds one token per line, ``NAME SCOPES TOKEN`` (scopes comma-separated from ``infer``, ``metrics``,
``admin``; ``admin`` implies the others), or ``NAME SCOPES sha256:HEX`` to keep only the token's digest on disk.
Blank lines and ``#`` comments are skipped. Presented tokens are hashed and compared with every stored digest in
constant time (``hmac.compare_digest``), so neither timing nor an early exit tells how much of a guess was right;
tokens never appear in logs or errors, only their name (the caller's identity) does.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .errors import Forbidden, Unauthorized

SCOPES = ("infer", "metrics", "admin")
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Caller:
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Caller("anonymous", frozenset(SCOPES))
"""Who calls when auth is off (loopback without a token file): allowed everything."""


class Tokens:
    """The tokens a server accepts."""

    def __init__(self, entries: list[tuple[str, frozenset[str], bytes]]) -> None:
        if not entries:
            raise ConfigError("the token file holds no tokens; add a line 'NAME SCOPES TOKEN'")
        self._entries = entries

    @classmethod
    def read(cls, path: str | Path) -> Tokens:
        entries = []
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from None
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 3:
                raise ConfigError(f"{path}:{number}: expected 'NAME SCOPES TOKEN', got {len(parts)} fields")
            name, scopes, secret = parts
            wanted = frozenset(scopes.split(","))
            unknown = wanted - set(SCOPES)
            if unknown:
                raise ConfigError(f"{path}:{number}: unknown scope {', '.join(sorted(unknown))}; use {', '.join(SCOPES)}")
            entries.append((name, wanted, _digest_of(secret, f"{path}:{number}")))
        return cls(entries)

    def caller(self, authorization: str | None) -> Caller:
        """Who sends this ``Authorization`` header value; raises :class:`Unauthorized`."""
        if not authorization:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        presented = hashlib.sha256(token.strip().encode("utf-8")).digest()
        found = None
        for name, scopes, digest in self._entries:  # NOTE: every entry compared, whatever matched
            if hmac.compare_digest(presented, digest):
                found = Caller(name, scopes)
        if found is None:
            raise Unauthorized("invalid bearer token")
        return found


def require(caller: Caller, scope: str) -> None:
    if not caller.allows(scope):
        raise Forbidden(f"token '{caller.name}' lacks the '{scope}' scope this route needs")


def _digest_of(secret: str, where: str) -> bytes:
    if secret.startswith("sha256:"):
        try:
            digest = bytes.fromhex(secret[7:])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ConfigError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        return digest
    if len(secret) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"{where}: a token must be at least {MIN_TOKEN_LENGTH} characters "
                          "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return hashlib.sha256(secret.encode("utf-8")).digest()
