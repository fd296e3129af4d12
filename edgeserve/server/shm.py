"""Triton's system shared-memory extension: tensors passed through a POSIX shared-memory segment, not the message.

A client on this machine makes a segment (``tritonclient.utils.shared_memory.create_shared_memory_region``),
registers a window of it under a name (``register_system_shared_memory(name, key, byte_size, offset)``), and then
gives an input, or asks for an output, as (region, byte_size, offset) inside that window; the server reads the input
from the segment and writes the output into it. For large tensors (images, audio) this skips the copies through
HTTP or gRPC.

What a client can reach is bounded:
- a key names one segment under ``/dev/shm`` (``/name``: one path component; no link is followed; a regular file
  the client made — the server never creates one);
- every use checks offset + byte_size against the registered window and against the segment's size at that moment
  (a segment shrunk since registration is an error, never a fault);
- an input is copied out of the segment before the engine sees it (a client writing meanwhile cannot change a
  running request); each use opens the segment afresh and reads or writes it with ``pread``/``pwrite``, never a
  mapping: a client may destroy or shrink its segment whenever it likes, and a mapping read past a shrunk end kills
  the process (SIGBUS), where ``pread`` returns short.

Registrations are small JSON files in a folder every worker process of one server shares (``REGISTRY_ENV``, set by
``--workers``): a region registered through one worker is used by any of them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

from .errors import BadRequest, NotFound

SHM_ROOT = Path("/dev/shm")
REGISTRY_ENV = "EDGESERVE_SHM_REGISTRY"
"""The folder of registrations the worker processes of one server share (made by the parent)."""
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}\Z")
_KEY = re.compile(r"/?[A-Za-z0-9_.\-]{1,200}\Z")
MAX_REGIONS = 1024


@dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int


class SharedMemory:
    """The registered regions of one server (``folder``: its registry; a private temporary one when None)."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self._owned = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="edgeserve-shm-")) if folder is None else Path(folder)

    @classmethod
    def for_server(cls) -> SharedMemory:
        """The registry the worker processes share (``REGISTRY_ENV``), or one of this process's own."""
        shared = os.environ.get(REGISTRY_ENV)
        return cls(shared) if shared and Path(shared).is_dir() else cls()

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)

    # -- the control routes ------------------------------------------------------------------------------------------
    def register(self, name: Any, key: Any, offset: Any, byte_size: Any) -> None:
        name, key = _checked_name(name), _checked_key(key)
        offset, byte_size = _whole("offset", offset), _whole("byte_size", byte_size)
        if byte_size == 0:
            raise BadRequest("byte_size must be above 0")
        size = _segment_size(key)
        if offset + byte_size > size:
            raise BadRequest(f"the region [{offset}, {offset + byte_size}) does not fit in the segment '{key}' "
                             f"({size} bytes); register a window inside it")
        path = self.folder / f"{name}.json"
        if path.exists():
            raise BadRequest(f"a shared-memory region named '{name}' is registered already; unregister it first")
        if sum(1 for _ in self.folder.glob("*.json")) >= MAX_REGIONS:
            raise BadRequest(f"{MAX_REGIONS} shared-memory regions are registered; unregister some first")
        staging = self.folder / f".{name}.{os.getpid()}.tmp"
        staging.write_text(json.dumps(asdict(Region(name, key, offset, byte_size))))
        try:
            os.link(staging, path)  # NOTE: fails if another worker registered the name meanwhile
        except FileExistsError:
            raise BadRequest(f"a shared-memory region named '{name}' is registered already; unregister it "
                             "first") from None
        finally:
            staging.unlink(missing_ok=True)

    def unregister(self, name: str | None) -> None:
        """Forget ``name`` (every region when None or empty); a name not registered is not an error, as on
        Triton."""
        if not name:
            for path in self.folder.glob("*.json"):
                path.unlink(missing_ok=True)
            return
        if _NAME.match(name):
            (self.folder / f"{name}.json").unlink(missing_ok=True)

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        """The regions registered (``name``'s alone when given; 404 if it is not)."""
        if name:
            return [asdict(self.region(name))]
        regions = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                regions.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue  # unregistered meanwhile
        return regions

    def region(self, name: str) -> Region:
        if not isinstance(name, str) or not _NAME.match(name):
            raise NotFound(f"no shared-memory region named {str(name)[:130]!r} is registered")
        try:
            return Region(**json.loads((self.folder / f"{name}.json").read_text()))
        except (OSError, ValueError, TypeError):
            raise NotFound(f"no shared-memory region named '{name}' is registered (register it with "
                           "POST /v2/systemsharedmemory/region/NAME/register)") from None

    # -- inference ---------------------------------------------------------------------------------------------------
    def read(self, where: str, parameters: dict[str, Any]) -> bytes:
        """The bytes an input's ``shared_memory_*`` parameters point at, copied out of the segment."""
        region, offset, size = self.window(where, parameters)
        return _pread(region, region.offset + offset, size)

    def write(self, where: str, parameters: dict[str, Any], data: bytes) -> None:
        """Write an output's bytes where its ``shared_memory_*`` parameters point."""
        region, offset, size = self.window(where, parameters)
        if len(data) > size:
            raise BadRequest(f"{where} needs {len(data)} bytes, but its shared_memory_byte_size is {size}; give a "
                             "window that holds the whole output")
        _pwrite(region, region.offset + offset, data)

    def window(self, where: str, parameters: dict[str, Any]) -> tuple[Region, int, int]:
        """The region, offset and size a tensor's ``shared_memory_*`` parameters name, checked against the
        registered window."""
        region = self.region(parameters["shared_memory_region"])
        if "shared_memory_byte_size" not in parameters:
            raise BadRequest(f"{where}: shared_memory_region given without shared_memory_byte_size")
        size = _whole(f"{where}: shared_memory_byte_size", parameters["shared_memory_byte_size"])
        offset = _whole(f"{where}: shared_memory_offset", parameters.get("shared_memory_offset", 0))
        if offset + size > region.byte_size:
            raise BadRequest(f"{where}: [{offset}, {offset + size}) is outside the region '{region.name}' "
                             f"({region.byte_size} bytes)")
        return region, offset, size


def regions(shm: Callable[[], SharedMemory] | None) -> SharedMemory:
    """The server's regions, for a tensor that names one (``shm``: the data plane's getter, which refuses when the
    extension is off; None where shared memory is not taken at all)."""
    if shm is None:
        raise BadRequest("shared-memory tensors are not taken here")
    return shm()


def uses_shm(parameters: Any) -> TypeGuard[dict[str, Any]]:
    return isinstance(parameters, dict) and "shared_memory_region" in parameters


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(f"a region name is 1-128 letters, digits, '_', '.' or '-', got {str(name)[:130]!r}")
    return name


def _checked_key(key: Any) -> str:
    if not isinstance(key, str) or not _KEY.match(key) or key.strip("/") in (".", ".."):
        raise BadRequest(f"a shared-memory key names one segment under {SHM_ROOT} ('/name'), got {str(key)[:200]!r}")
    return key


def _whole(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"{what} must be a non-negative whole number, got {str(value)[:40]!r}")
    return value


def _open(key: str) -> int:
    path = SHM_ROOT / key.lstrip("/")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BadRequest(f"no shared-memory segment '{key}' exists on this machine ({path}); create it first "
                         "(tritonclient.utils.shared_memory.create_shared_memory_region)") from None
    except OSError as exc:
        raise BadRequest(f"cannot open the shared-memory segment '{key}': {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadRequest(f"'{key}' is not a shared-memory segment")
    return fd


def _segment_size(key: str) -> int:
    fd = _open(key)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _pread(region: Region, at: int, size: int) -> bytes:
    fd = _open(region.key)
    try:
        data = os.pread(fd, size, at) if size else b""
        if len(data) < size:
            raise BadRequest(f"the shared-memory segment '{region.key}' holds {os.fstat(fd).st_size} bytes now, "
                             f"fewer than the region '{region.name}' needs ({at + size}); register it again")
    finally:
        os.close(fd)
    return data


def _pwrite(region: Region, at: int, data: bytes) -> None:
    fd = _open(region.key)
    try:
        size = os.fstat(fd).st_size
        if at + len(data) > size:
            raise BadRequest(f"the shared-memory segment '{region.key}' holds {size} bytes now, fewer than the "
                             f"region '{region.name}' needs ({at + len(data)}); register it again")
        os.pwrite(fd, data, at)
    finally:
        os.close(fd)
