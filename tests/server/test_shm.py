"""Triton's system shared-memory extension (``--shared-memory``), with tritonclient's own segments and calls."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.server.errors import BadRequest, NotFound
from edgeserve.server.shm import SHM_ROOT, SharedMemory
from tests.factories import ECHO_TYPES, echo_inputs
from tests.server.client import call

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
pytestmark = pytest.mark.skipif(not SHM_ROOT.is_dir(), reason="no /dev/shm here")


@pytest.fixture
def segments() -> Iterator[Callable[[int], tuple[object, str]]]:
    """Make segments with tritonclient (unique keys); destroyed after the test."""
    made = []

    def make(size: int) -> tuple[object, str]:
        key = f"/edgeserve-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(key.strip("/"), key, size)
        made.append(handle)
        return handle, key

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _texts(value: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)]


def _bytes_of(value: np.ndarray) -> bytes:
    from edgeserve.server.codec import to_bytes

    return to_bytes(value)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_datatype_in_and_out_of_shared_memory_equals_in_process_predict(shared, repo, segments,
                                                                               protocol: str) -> None:
    """Every input read from one region at its own offset; every other output written into a region, the rest
    answered in the message (gRPC keeps raw_output_contents in the outputs' order)."""
    mod = tritonhttp if protocol == "http" else tritongrpc
    client = mod.InferenceServerClient(shared.host_port if protocol == "http" else shared.grpc)
    inputs = echo_inputs(2)
    with edgeserve.load(repo / "echo" / "1") as model:
        want = model.predict(inputs)
    blobs = {t: _bytes_of(inputs[f"in_{t}"]) for t in ECHO_TYPES}
    handle, key = segments(sum(len(b) for b in blobs.values()) + 64)
    out_handle, out_key = segments(4096)
    region, out_region = f"in-{protocol}", f"out-{protocol}"
    client.register_system_shared_memory(region, key, sum(len(b) for b in blobs.values()), offset=64)
    client.register_system_shared_memory(out_region, out_key, 4096)
    try:
        sent, offset = [], 0
        for t in ECHO_TYPES:
            shm.set_shared_memory_region(handle, [np.frombuffer(blobs[t], np.uint8)], offset=64 + offset)
            i = mod.InferInput(f"in_{t}", [2, 3], t)
            i.set_shared_memory(region, len(blobs[t]), offset=offset)
            sent.append(i)
            offset += len(blobs[t])
        outputs, where, at = [], {}, 0
        for n, t in enumerate(ECHO_TYPES):
            o = mod.InferRequestedOutput(f"out_{t}")
            if n % 2 == 0:
                size = len(_bytes_of(want[f"out_{t}"]))
                o.set_shared_memory(out_region, size, offset=at)
                where[t] = at
                at += size
            outputs.append(o)
        result = client.infer("echo", sent, outputs=outputs)
        for t in ECHO_TYPES:
            expected = want[f"out_{t}"]
            if t in where:
                if t == "BYTES":
                    got = shm.get_contents_as_numpy(out_handle, np.object_, [2, 3], offset=where[t])
                    assert [bytes(v) for v in got.reshape(-1)] == _texts(expected)
                else:
                    got = shm.get_contents_as_numpy(out_handle, expected.dtype, [2, 3], offset=where[t])
                    np.testing.assert_array_equal(got, expected)
            else:
                got = result.as_numpy(f"out_{t}")
                if t == "BYTES":
                    assert [bytes(v) for v in got.reshape(-1)] == _texts(expected)
                else:
                    np.testing.assert_array_equal(got, expected)
        status = client.get_system_shared_memory_status(region)
        listed = status if protocol == "http" else [
            {"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
            for r in status.regions.values()]
        assert [(r["name"], r["key"], int(r["offset"])) for r in listed] == [(region, key, 64)]
    finally:
        client.unregister_system_shared_memory(region)
        client.unregister_system_shared_memory(out_region)


def test_a_window_past_the_region_or_the_segment_is_refused_before_anything_is_read(shared, segments) -> None:
    handle, key = segments(256)
    client = tritonhttp.InferenceServerClient(shared.host_port)
    with pytest.raises(Exception, match=r"\[400\] the region \[128, 384\) does not fit in the segment"):
        client.register_system_shared_memory("big", key, 256, offset=128)
    client.register_system_shared_memory("small", key, 64, offset=128)
    try:
        x = tritonhttp.InferInput("x", [1, 16], "FP32")
        x.set_shared_memory("small", 64, offset=8)  # 8 + 64 > 64
        with pytest.raises(Exception, match=r"\[400\] input 'x': \[8, 72\) is outside the region 'small' \(64 bytes\)"):
            client.infer("mlp", [x])
        os.truncate(SHM_ROOT / key.strip("/"), 100)  # the client shrank its segment since registering
        x = tritonhttp.InferInput("x", [1, 16], "FP32")
        x.set_shared_memory("small", 64)
        with pytest.raises(Exception, match=r"\[400\] the shared-memory segment .* holds 100 bytes now, fewer than "
                                            r"the region 'small' needs \(192\)"):
            client.infer("mlp", [x])
        assert call(shared.host_port, "GET", "/v2/health/live").status == 200
    finally:
        client.unregister_system_shared_memory("small")


@pytest.mark.parametrize("key, said", [
    ("/../etc/passwd", "names one segment under /dev/shm"),
    ("/a/b", "names one segment under /dev/shm"),
    ("/..", "names one segment under /dev/shm"),
    ("/edgeserve-test-no-such-segment", "no shared-memory segment '/edgeserve-test-no-such-segment' exists"),
])
def test_a_key_outside_dev_shm_or_of_no_segment_is_refused(shared, key: str, said: str) -> None:
    client = tritonhttp.InferenceServerClient(shared.host_port)
    with pytest.raises(Exception, match=r"\[400\] .*" + said):
        client.register_system_shared_memory("r", key, 8)
    assert client.get_system_shared_memory_status() == []


def test_a_link_in_dev_shm_is_not_followed(shared, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 64)
    link = SHM_ROOT / f"edgeserve-test-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(secret)
    try:
        client = tritonhttp.InferenceServerClient(shared.host_port)
        with pytest.raises(Exception, match=r"\[400\] cannot open the shared-memory segment"):
            client.register_system_shared_memory("r", f"/{link.name}", 8)
    finally:
        link.unlink()


def test_off_unless_asked_for(served, segments) -> None:
    """Without --shared-memory: refused (403), for registration and for a tensor that names a region alike, and
    not listed among the extensions."""
    _, key = segments(64)
    http = tritonhttp.InferenceServerClient(served.host_port)
    assert "system_shared_memory" not in http.get_server_metadata()["extensions"]
    with pytest.raises(Exception, match=r"\[403\] shared memory is off; start the server with --shared-memory"):
        http.register_system_shared_memory("r", key, 64)
    x = tritonhttp.InferInput("x", [1, 16], "FP32")
    x.set_shared_memory("r", 64)
    with pytest.raises(Exception, match=r"\[403\] shared memory is off"):
        http.infer("mlp", [x])
    grpc = tritongrpc.InferenceServerClient(served.grpc)
    with pytest.raises(Exception, match=r"PERMISSION_DENIED.*shared memory is off"):
        grpc.get_system_shared_memory_status()


def test_names_registered_once_and_unregistering_all(tmp_path: Path, segments) -> None:
    _, key = segments(64)
    one, other = SharedMemory(tmp_path), SharedMemory(tmp_path)  # two worker processes' views of one registry
    one.register("a", key, 0, 32)
    with pytest.raises(BadRequest, match="named 'a' is registered already"):
        other.register("a", key, 32, 32)
    other.register("b", key, 32, 32)
    assert [r["name"] for r in one.status()] == ["a", "b"]
    assert other.region("a").byte_size == 32  # registered through the other process
    one.unregister(None)
    assert other.status() == []
    with pytest.raises(NotFound, match="no shared-memory region named 'a'"):
        other.status("a")


def test_other_triton_extensions_say_what_is_missing(served) -> None:
    reply = call(served.host_port, "GET", "/v2/cudasharedmemory/status")
    assert reply.status == 404 and b"CUDA shared-memory extension: it runs on the CPU" in reply.body
