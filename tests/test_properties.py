"""Property-based tests (hypothesis): the classes of defect the review found, searched for rather than listed.

- any interleaving of good and bad requests, deadlines, cancellations and a close, from many threads, through
  the batcher and the response cache: every caller gets exactly its own rows or its own error, nothing hangs;
- cache keys over (model identity, inputs) collide only when both are equal;
- names, versions and manifest fields from arbitrary strings never yield a path outside their root.

Example counts are bounded (see each ``settings``) so the suite stays fast; raise them locally with
``HYPOTHESIS_PROFILE=deep``.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgeserve
from edgeserve import BatchConfig, CacheConfig, EdgeserveError
from edgeserve.names import check_name, check_version, safe_name
from edgeserve.package import Manifest
from edgeserve.runtime.cache import cache_key
from tests.factories import gather_model, save

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("deep", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

VOCAB = 10

# one request: (kind, rows, seq, token value, timeout_ms)
REQUEST = st.tuples(
    st.sampled_from(["good", "good", "good", "poison", "wrong_rank", "wrong_dtype", "tiny_deadline", "cancel"]),
    st.integers(1, 3), st.integers(1, 2), st.integers(0, VOCAB - 1),
)


@pytest.fixture(scope="module")
def gather_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(gather_model(vocab=VOCAB), tmp_path_factory.mktemp("gather") / "gather.onnx")


@settings(max_examples=30)
@given(requests=st.lists(REQUEST, min_size=1, max_size=40), batch=st.integers(1, 8), delay=st.sampled_from([0.0, 2.0, 10.0]),
       use_cache=st.booleans(), close_midway=st.booleans())
def test_every_caller_gets_its_own_rows_or_its_own_error(gather_path: Path, requests, batch: int, delay: float,
                                                        use_cache: bool, close_midway: bool) -> None:
    model = edgeserve.load(gather_path, batching=BatchConfig(max_batch_size=batch, max_delay_ms=delay),
                           cache=CacheConfig() if use_cache else None)
    half = threading.Barrier(2) if close_midway else None

    def call(i: int):
        kind, rows, seq, value = requests[i]
        ids = np.full((rows, seq), value, np.int64)
        if half is not None and i == len(requests) // 2:
            half.wait(10)  # the closer waits for this caller to start, then closes while others are in flight
        try:
            if kind == "poison":
                ids[0, 0] = VOCAB + 5
            if kind == "wrong_rank":
                return kind, ids, model.predict({"ids": ids[:, :, None]})
            if kind == "wrong_dtype":
                return kind, ids, model.predict({"ids": ids.astype(np.int32)})
            if kind == "tiny_deadline":
                return kind, ids, model.predict({"ids": ids}, timeout_ms=0.001)
            if kind == "cancel":
                future = model.batcher.submit({"ids": ids})
                future.cancel()
                return kind, ids, future
            return kind, ids, model.predict({"ids": ids})
        except EdgeserveError as exc:
            return kind, ids, exc

    def closer() -> None:
        half.wait(10)
        model.close(timeout=10)

    with ThreadPoolExecutor(8) as pool:
        if half is not None:
            pool.submit(closer)
        results = list(pool.map(call, range(len(requests))))
    model.close()
    for kind, ids, result in results:
        if kind == "cancel":
            if isinstance(result, EdgeserveError):
                assert close_midway and isinstance(result, edgeserve.ClosedError), result
            else:
                assert result.done()  # a cancelled future never hangs: cancelled, or it had already run
            continue
        if isinstance(result, EdgeserveError):
            closed = (edgeserve.ClosedError,) if close_midway else ()
            allowed = {"good": closed, "poison": (edgeserve.InferenceError, *closed),
                       "wrong_rank": (edgeserve.InputError, *closed), "wrong_dtype": (edgeserve.InputError, *closed),
                       "tiny_deadline": (edgeserve.Timeout, *closed)}[kind]
            assert isinstance(result, allowed), (kind, result)  # its own error, never another caller's
            continue
        assert kind in ("good", "tiny_deadline"), (kind, "a bad request was answered")
        out = result["out"]
        assert out.shape == (*ids.shape, 4) and np.all(out == ids[..., None]), "another caller's rows"
        out[...] = -1  # the caller's own array: changing it changes nothing for anyone else


ARRAYS = st.tuples(st.sampled_from(["x", "y", "ids"]), st.sampled_from([np.float32, np.int64, np.uint8, np.float16]),
                   st.lists(st.integers(0, 3), min_size=0, max_size=3), st.integers(0, 2**31))


def _array(spec) -> tuple[str, np.ndarray]:
    name, dtype, shape, seed = spec
    data = np.random.default_rng(seed).integers(0, 3, size=shape).astype(dtype)
    return name, data


@settings(max_examples=300)
@given(a=st.tuples(st.sampled_from(["m1", "m2", "m1:openvino"]), st.lists(ARRAYS, min_size=1, max_size=2)),
       b=st.tuples(st.sampled_from(["m1", "m2", "m1:openvino"]), st.lists(ARRAYS, min_size=1, max_size=2)))
def test_cache_keys_collide_only_for_equal_model_and_inputs(a, b) -> None:
    (id_a, arrays_a), (id_b, arrays_b) = a, b
    feed_a, feed_b = dict(map(_array, arrays_a)), dict(map(_array, arrays_b))

    def same(x: dict, y: dict) -> bool:
        return x.keys() == y.keys() and all(
            x[k].dtype == y[k].dtype and x[k].shape == y[k].shape and x[k].tobytes() == y[k].tobytes() for k in x)

    assert (cache_key(id_a, feed_a) == cache_key(id_b, feed_b)) == (id_a == id_b and same(feed_a, feed_b))


def _inside(root: Path, path: Path) -> bool:
    resolved = path.resolve()
    return resolved == root.resolve() or root.resolve() in resolved.parents


@settings(max_examples=500)
@given(text=st.one_of(st.text(max_size=140), st.sampled_from(["..", ".", "/", "a/../b", "/etc", "a\\b", "~", "01",
                                                             "-1", "9" * 40, "\x00", "a\x00b", "%2e%2e"])))
def test_names_and_versions_never_leave_their_root(text: str) -> None:
    root = Path("/srv/repo")
    try:
        name = check_name(text)
    except edgeserve.RepositoryError:
        pass
    else:
        assert _inside(root, root / name) and root / name != root and "/" not in name and "\x00" not in name
    try:
        version = check_version(text)
    except edgeserve.RepositoryError:
        pass
    else:
        assert 1 <= version < 10**9 and _inside(root, root / str(version))
    made = safe_name(text)
    assert check_name(made) == made  # what bench makes of a file stem is always a valid name


@settings(max_examples=300)
@given(name=st.text(max_size=40), version=st.text(max_size=12), model_file=st.text(max_size=40),
       golden_file=st.text(max_size=40))
def test_manifest_fields_never_point_outside_the_package(name: str, version: str, model_file: str,
                                                         golden_file: str) -> None:
    data = {"schema_version": 1, "name": name, "version": version, "model_file": model_file,
            "golden": {"file": golden_file}, "digests": {},
            "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4], "batch_axis": 0}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4], "batch_axis": 0}]}
    root = Path("/srv/pkg")
    try:
        manifest = Manifest.from_dict(data)
    except edgeserve.PackageError:
        return
    for part in (manifest.name, manifest.version, manifest.model_file, manifest.golden["file"]):
        assert _inside(root, root / part) and root / part != root and (root / part).parent == root


_DIMS = st.one_of(st.integers(0, 4), st.sampled_from(["batch", "n", None]))


@settings(max_examples=400, deadline=None)
@given(declared=st.lists(_DIMS, min_size=0, max_size=4), shape=st.lists(st.integers(0, 4), min_size=0, max_size=5),
       dtype=st.sampled_from(["float32", "float64", "int64", ">f4"]), batch_one=st.booleans())
def test_the_contract_s_quick_check_agrees_with_its_long_one(declared, shape, dtype, batch_one: bool) -> None:
    """A single input's common case is checked inline (dtype by identity, the dimensions past the rows as one
    tuple); whatever it lets through, the full check must let through too, and everything else must still be
    refused by the full check."""
    from edgeserve.errors import InputError
    from edgeserve.guard.contract import InputContract
    from edgeserve.tensors import TensorSpec

    spec = TensorSpec("x", "float32", tuple(declared), batch_axis=0 if declared else None)
    contract = InputContract([spec], rows_on_batch_one=batch_one)
    value = np.zeros(shape, dtype=np.dtype(dtype))
    fits = (value.dtype == np.float32 and value.ndim == len(declared) and value.size > 0
            and all(not isinstance(d, int) or value.shape[i] == d or (batch_one and i == 0)
                    for i, d in enumerate(declared)))
    try:
        feed = contract.feed(value)
    except InputError:
        assert not fits, (declared, shape, dtype)
    else:
        assert fits, (declared, shape, dtype)
        assert feed["x"] is value
