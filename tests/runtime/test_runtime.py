"""The Runtime facade: serving a repository, hot reload under load, corrupt versions, rollback, drain."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve import BatchConfig, CacheConfig, ClosedError, IntegrityError, ModelNotFound, Runtime
from edgeserve.runtime.repository import Repository
from tests.factories import mlp_model, rows, save


def _package(tmp_path: Path, seed: int) -> Path:
    src = save(mlp_model(seed=seed), tmp_path / f"mlp{seed}.onnx")
    return edgeserve.convert(src, tmp_path / f"pkg{seed}", name="mlp").path


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("mlp", _package(tmp_path, 0))
    return repo


def _expected(pkg_seed: int, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(mlp_model(seed=pkg_seed).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_serves_the_repository(repo: Repository) -> None:
    with Runtime(repo, batching=BatchConfig(max_delay_ms=1)) as rt:
        out = rt.predict("mlp", rows(3))
        np.testing.assert_allclose(out["logits"], _expected(0, rows(3)), rtol=1e-5, atol=1e-5)
        assert rt.models()["mlp"]["version"] == 1 and rt.models()["mlp"]["batching"]["requests"] == 1
        with pytest.raises(ModelNotFound, match="'nope' is not loaded"):
            rt.predict("nope", rows(1))
        assert "mlp@1" in repr(rt)


def test_reload_under_load_fails_nothing_and_mixes_nothing(repo: Repository, tmp_path: Path) -> None:
    x = rows(2)
    v1, v2 = _expected(0, x), _expected(1, x)
    with Runtime(repo, batching=BatchConfig(max_batch_size=8, max_delay_ms=1)) as rt:
        stop = threading.Event()
        seen: list[str] = []
        errors: list[BaseException] = []

        def client() -> None:
            while not stop.is_set():
                try:
                    out = rt.predict("mlp", x)["logits"]
                except BaseException as exc:  # noqa: BLE001 - every failure is a test failure
                    errors.append(exc)
                    return
                if np.allclose(out, v1, atol=1e-5):
                    seen.append("v1")
                elif np.allclose(out, v2, atol=1e-5):
                    seen.append("v2")
                else:
                    seen.append("mixed")

        with ThreadPoolExecutor(6) as pool:
            for _ in range(6):
                pool.submit(client)
            time.sleep(0.2)
            repo.publish("mlp", _package(tmp_path, 1))
            assert rt.reload("mlp") == 2
            time.sleep(0.2)
            stop.set()
    assert not errors and "mixed" not in seen
    assert seen.count("v1") > 0 and seen[-1] == "v2" and seen.count("v2") > 0


def test_requests_in_flight_finish_on_their_version(repo: Repository, tmp_path: Path) -> None:
    x = rows(1)
    with Runtime(repo, batching=BatchConfig(max_batch_size=64, max_delay_ms=300)) as rt:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(rt.predict, "mlp", x)  # sits in version 1's queue for 300 ms
            time.sleep(0.05)
            repo.publish("mlp", _package(tmp_path, 1))
            rt.reload("mlp")
            np.testing.assert_allclose(waiting.result(5)["logits"], _expected(0, x), atol=1e-5)
        np.testing.assert_allclose(rt.predict("mlp", x)["logits"], _expected(1, x), atol=1e-5)


def test_corrupt_new_version_keeps_the_old_one_serving(repo: Repository, tmp_path: Path) -> None:
    with Runtime(repo) as rt:
        repo.publish("mlp", _package(tmp_path, 1))
        (repo.root / "mlp" / "2" / "model.onnx").write_bytes(b"corrupted on disk")
        with pytest.raises(IntegrityError):
            rt.reload("mlp")
        assert rt.models()["mlp"]["version"] == 1
        np.testing.assert_allclose(rt.predict("mlp", rows(2))["logits"], _expected(0, rows(2)), atol=1e-5)


def test_rollback_in_one_call(repo: Repository, tmp_path: Path) -> None:
    repo.publish("mlp", _package(tmp_path, 1))
    with Runtime(repo) as rt:
        assert rt.models()["mlp"]["version"] == 2
        assert rt.rollback("mlp") == 1
        assert repo.current("mlp") == 1
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(0, rows(1)), atol=1e-5)


def test_rollback_to_a_broken_version_changes_nothing(repo: Repository, tmp_path: Path) -> None:
    repo.publish("mlp", _package(tmp_path, 1))
    with Runtime(repo) as rt:
        (repo.root / "mlp" / "1" / "golden.npz").write_bytes(b"broken")
        with pytest.raises(IntegrityError):
            rt.rollback("mlp")
        assert repo.current("mlp") == 2 and rt.models()["mlp"]["version"] == 2


def test_explicit_versions_and_cache_invalidation(repo: Repository, tmp_path: Path) -> None:
    with Runtime(repo, cache=CacheConfig()) as rt:
        first = rt.predict("mlp", rows(1))["logits"]
        assert rt.models()["mlp"]["cache"]["misses"] == 1
        rt.predict("mlp", rows(1))
        assert rt.models()["mlp"]["cache"]["hits"] == 1
        repo.publish("mlp", _package(tmp_path, 1))
        rt.reload("mlp")
        after = rt.predict("mlp", rows(1))["logits"]  # never the cached answer of version 1
        np.testing.assert_allclose(after, _expected(1, rows(1)), atol=1e-5)
        np.testing.assert_allclose(rt.predict("mlp", rows(1), version=1)["logits"], first, atol=1e-6)
        with pytest.raises(ModelNotFound):
            rt.predict("mlp", rows(1), version=7)


def test_serving_settings_per_model(repo: Repository) -> None:
    (repo.root / "mlp" / "serving.json").write_text(json.dumps({"batching": {"max_batch_size": 4, "max_delay_ms": 1}}))
    with Runtime(repo) as rt:
        assert rt.model("mlp").batcher.config.max_batch_size == 4
    (repo.root / "mlp" / "serving.json").write_text(json.dumps({"batching": {"max_batch_size": 0}}))
    with pytest.raises(edgeserve.RepositoryError, match="max_batch_size must be between"):
        Runtime(repo)


def test_close_drains_and_refuses_after(repo: Repository) -> None:
    rt = Runtime(repo, batching=BatchConfig(max_batch_size=64, max_delay_ms=5000))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(rt.predict, "mlp", rows(1, seed=i)) for i in range(4)]
        time.sleep(0.1)
        rt.close(timeout=5)
        assert all(f.result(5)["logits"].shape == (1, 4) for f in futures)
    with pytest.raises(ClosedError):
        rt.predict("mlp", rows(1))
