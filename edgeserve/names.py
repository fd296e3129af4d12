"""The rules for every string that can become part of a path: model names, versions, file names in a package.

One set of rules, used by the repository (names and versions it builds folders from), the package reader
(manifest fields) and the benchmark (its output folders). Anything that fails them is refused before a path
is built from it, so no name, version or manifest field can point outside the folder it belongs in.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import EdgeserveError, RepositoryError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")

NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, without '..' or slashes"


def is_name(name: Any) -> bool:
    """True for a safe path component: see :data:`NAME_RULE`."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def check_name(name: Any, *, what: str = "model name", error: type[EdgeserveError] = RepositoryError) -> str:
    """``name`` when it follows :data:`NAME_RULE`, else ``error`` saying so."""
    if not is_name(name):
        raise error(f"invalid {what} {name!r}: use {NAME_RULE}")
    return name


def is_version(text: Any) -> bool:
    return isinstance(text, str) and _VERSION.fullmatch(text) is not None


def check_version(version: Any) -> int:
    """A repository version: a positive integer below 10^9, written without sign, spaces or leading zeros."""
    if isinstance(version, bool) or not isinstance(version, (int, str)):
        raise RepositoryError(f"invalid version {version!r}: versions are positive integers such as 1, 2, 3")
    text = str(version) if isinstance(version, int) else version
    if not is_version(text):
        raise RepositoryError(f"invalid version {version!r}: versions are positive integers such as 1, 2, 3 "
                              "(no sign, leading zeros or spaces; below 1000000000)")
    return int(text)


def safe_name(text: str, *, fallback: str = "model") -> str:
    """A name that follows :data:`NAME_RULE`, made from ``text`` (a file stem, say) by replacing what does not."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).replace("..", "_").lstrip("._-")[:128]
    return cleaned if is_name(cleaned) else fallback
