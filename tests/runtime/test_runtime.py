"""The Runtime facade: serving a repository, hot reload under load, corrupt versions, rollback, drain."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve import BatchConfig, CacheConfig, ClosedError, IntegrityError, ModelNotFound, Runtime
from edgeserve.runtime.repository import Repository
from tests.factories import mlp_model, rows, save, wait_for


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
        reloaded = threading.Event()
        seen: list[str] = []
        after_reload: list[str] = []
        errors: list[BaseException] = []

        def client() -> None:
            while not stop.is_set():
                began_after_reload = reloaded.is_set()
                try:
                    out = rt.predict("mlp", x)["logits"]
                except BaseException as exc:  # noqa: BLE001 - every failure is a test failure
                    errors.append(exc)
                    return
                answer = "v1" if np.allclose(out, v1, atol=1e-5) else "v2" if np.allclose(out, v2, atol=1e-5) else "mixed"
                seen.append(answer)
                if began_after_reload:
                    after_reload.append(answer)

        with ThreadPoolExecutor(6) as pool:
            for _ in range(6):
                pool.submit(client)
            wait_for(lambda: seen.count("v1") >= 30 or bool(errors))
            repo.publish("mlp", _package(tmp_path, 1))
            assert rt.reload("mlp") == 2
            reloaded.set()
            wait_for(lambda: seen.count("v2") >= 30 or bool(errors))
            stop.set()
    assert not errors and "mixed" not in seen
    # once reload() has returned, every request that starts gets v2 (those already running finish on v1)
    assert after_reload and set(after_reload) == {"v2"}


def test_requests_in_flight_finish_on_their_version(repo: Repository, tmp_path: Path) -> None:
    x = rows(1)
    with Runtime(repo, batching=BatchConfig(max_batch_size=64, max_delay_ms=60_000)) as rt:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(rt.predict, "mlp", x)  # waits in version 1's queue for company
            wait_for(lambda: rt.models()["mlp"]["batching"]["queued"] == 1)
            repo.publish("mlp", _package(tmp_path, 1))
            rt.reload("mlp")
            # retiring version 1 runs its queue at once, on version 1
            np.testing.assert_allclose(waiting.result(10)["logits"], _expected(0, x), atol=1e-5)
        assert rt.models()["mlp"]["version"] == 2


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


def test_explicit_versions(repo: Repository, tmp_path: Path) -> None:
    repo.publish("mlp", _package(tmp_path, 1))
    with Runtime(repo) as rt:
        np.testing.assert_allclose(rt.predict("mlp", rows(1), version=1)["logits"], _expected(0, rows(1)), atol=1e-5)
        np.testing.assert_allclose(rt.predict("mlp", rows(1), version="2")["logits"], _expected(1, rows(1)), atol=1e-5)
        with pytest.raises(ModelNotFound):
            rt.predict("mlp", rows(1), version=7)
        with pytest.raises(edgeserve.RepositoryError, match="invalid version"):
            rt.predict("mlp", rows(1), version="../1")


def test_reload_drops_the_retired_versions_cached_answers(repo: Repository, tmp_path: Path) -> None:
    with Runtime(repo, cache=CacheConfig()) as rt:
        rt.predict("mlp", rows(1))
        rt.predict("mlp", rows(1))
        assert rt.models()["mlp"]["cache"]["hits"] == 1 and rt.models()["mlp"]["cache"]["entries"] == 1
        repo.publish("mlp", _package(tmp_path, 1))
        rt.reload("mlp")
        stats = rt.models()["mlp"]["cache"]
        assert stats["entries"] == 0 and stats["bytes"] == 0  # version 1's answers are gone, not just unreachable
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(1, rows(1)), atol=1e-5)


def test_reload_to_the_same_file_keeps_its_cached_answers(repo: Repository, tmp_path: Path) -> None:
    with Runtime(repo, cache=CacheConfig()) as rt:
        rt.predict("mlp", rows(1))
        repo.publish("mlp", repo.version_dir("mlp", 1))  # the same package again, as version 2
        rt.reload("mlp")
        rt.predict("mlp", rows(1))
        assert rt.models()["mlp"]["version"] == 2 and rt.models()["mlp"]["cache"]["hits"] == 1


def test_on_demand_versions_are_bounded_and_closed(repo: Repository, tmp_path: Path) -> None:
    from edgeserve.backends.base import SESSIONS

    for seed in (1, 2):
        repo.publish("mlp", _package(tmp_path, seed))
    with Runtime(repo, max_on_demand=1) as rt:
        live = SESSIONS.live()
        rt.predict("mlp", rows(1), version=1)
        assert rt.models()["mlp"]["on_demand"] == [1] and SESSIONS.live() == live + 1
        rt.predict("mlp", rows(1), version=2)  # version 1, least recently used, is closed
        assert rt.models()["mlp"]["on_demand"] == [2] and SESSIONS.live() == live + 1
        np.testing.assert_allclose(rt.predict("mlp", rows(1), version=1)["logits"], _expected(0, rows(1)), atol=1e-5)
        assert rt.models()["mlp"]["on_demand"] == [1]


def test_a_version_loaded_on_demand_is_promoted_not_loaded_again(repo: Repository, tmp_path: Path) -> None:
    from edgeserve.backends.base import SESSIONS

    repo.publish("mlp", _package(tmp_path, 1))
    with Runtime(repo) as rt:
        rt.predict("mlp", rows(1), version=1)
        live = SESSIONS.live()
        rt.rollback("mlp")  # version 1 becomes current: the loaded one is promoted, version 2 closes
        assert rt.models()["mlp"] == {**rt.models()["mlp"], "version": 1, "on_demand": []}
        assert SESSIONS.live() == live - 1


def test_unload_while_a_version_loads_on_demand(repo: Repository, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A version that finishes loading after its model was unloaded is closed, never handed out."""
    import edgeserve.runtime.runtime as runtime_module
    from edgeserve.backends.base import SESSIONS

    repo.publish("mlp", _package(tmp_path, 1))
    entered, release = threading.Event(), threading.Event()
    real_load = runtime_module.load

    def slow_load(*args, **kwargs):
        entered.set()
        assert release.wait(10)
        return real_load(*args, **kwargs)

    with Runtime(repo) as rt:
        live = SESSIONS.live()
        monkeypatch.setattr(runtime_module, "load", slow_load)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(rt.predict, "mlp", rows(1), version=1)
            assert entered.wait(10)
            rt.unload("mlp")
            release.set()
            with pytest.raises(ModelNotFound, match="unloaded while version 1 loaded"):
                pending.result(10)
        assert SESSIONS.live() == live - 1  # version 2 closed by the unload, version 1 never kept


def test_a_model_that_does_not_load_is_reported_and_the_others_serve(repo: Repository, tmp_path: Path) -> None:
    repo.publish("other", _package(tmp_path, 1))
    (repo.root / "other" / "1" / "model.onnx").write_bytes(b"corrupted on disk")
    (repo.root / "empty").mkdir()  # a model folder without versions
    with Runtime(repo) as rt:
        models = rt.models()
        assert models["mlp"]["version"] == 1 and models["mlp"]["error"] is None
        assert models["other"]["version"] is None and "does not match its manifest digest" in models["other"]["error"]
        assert models["empty"]["version"] is None and "no versions" in models["empty"]["error"]
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(0, rows(1)), atol=1e-5)
        with pytest.raises(ModelNotFound, match="no loaded version: .*digest"):
            rt.predict("other", rows(1))
        repo.publish("other", _package(tmp_path, 2))
        assert rt.reload("other") == 2 and rt.models()["other"]["error"] is None  # a fix serves without a restart
    with pytest.raises(ModelNotFound, match="no model named 'nope'"):
        Runtime(repo, models=["mlp", "nope"])


def test_a_model_failing_in_an_unforeseen_way_is_reported_by_name_and_the_others_serve(
        repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug met while loading one model (a ValueError deep in numpy) is that model's error, named, not the end
    of the server: it took every model of ``edgeserve serve`` down with it, naming none."""
    from edgeserve.runtime import runtime as runtime_module

    repo.publish("other", _package(tmp_path, 1))
    real = runtime_module.load

    def load(path, **kw):
        if "other" in Path(path).parts:
            raise ValueError("setting an array element with a sequence")
        return real(path, **kw)

    monkeypatch.setattr(runtime_module, "load", load)
    with Runtime(repo) as rt:
        models = rt.models()
        assert models["mlp"]["version"] == 1 and models["mlp"]["error"] is None
        assert models["other"]["version"] is None
        assert "model 'other' version 1 did not load: ValueError: setting an array" in models["other"]["error"]
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(0, rows(1)), atol=1e-5)


def test_serving_settings_per_model(repo: Repository) -> None:
    (repo.root / "mlp" / "serving.json").write_text(json.dumps({"batching": {"max_batch_size": 4, "max_delay_ms": 1}}))
    with Runtime(repo) as rt:
        assert rt.model("mlp").batcher.config.max_batch_size == 4
    (repo.root / "mlp" / "serving.json").write_text(json.dumps({"batching": {"max_batch_size": 0}}))
    with Runtime(repo) as rt:
        assert "max_batch_size must be between" in rt.models()["mlp"]["error"]
    (repo.root / "mlp" / "serving.json").write_text("[1, 2]")
    with Runtime(repo) as rt:
        assert "expected a JSON object" in rt.models()["mlp"]["error"]
    (repo.root / "mlp" / "serving.json").write_text(json.dumps({"batching": {"batch_dependent": "no"}}))
    with Runtime(repo) as rt:  # a truthy string read as true batched what "no" meant to keep apart
        assert "batch_dependent must be true or false, got 'no'" in rt.models()["mlp"]["error"]


def test_close_drains_and_refuses_after(repo: Repository) -> None:
    rt = Runtime(repo, batching=BatchConfig(max_batch_size=64, max_delay_ms=60_000))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(rt.predict, "mlp", rows(1, seed=i)) for i in range(4)]
        wait_for(lambda: rt.models()["mlp"]["batching"]["queued"] == 4)
        rt.close(timeout=10)
        assert all(f.result(5)["logits"].shape == (1, 4) for f in futures)
    with pytest.raises(ClosedError):
        rt.predict("mlp", rows(1))


def test_serving_settings_set_a_models_engine_over_the_runtimes(repo: Repository) -> None:
    def threads(rt: Runtime) -> int:
        return int(rt.model("mlp")._session._session.get_session_options().intra_op_num_threads)

    (repo.root / "mlp" / "serving.json").write_text(json.dumps({"session": {"intra_op_threads": 1}}))
    with Runtime(repo, config=edgeserve.SessionConfig(intra_op_threads=2, cache_dir=None)) as rt:
        assert threads(rt) == 1 and rt.models()["mlp"]["error"] is None
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(0, rows(1)), atol=1e-5)
        assert rt.config.intra_op_threads == 2  # the runtime's own settings stay; other models keep them
    refused = {
        json.dumps({"session": {"cache_dir": "/tmp/elsewhere"}}): "cache_dir cannot be set here",
        json.dumps({"session": {"intra_op_threads": "2"}}): 'session.intra_op_threads: expected int or null, got "2"',
        json.dumps({"session": {"nice": True}}): "session.nice: expected int, got true",
        json.dumps({"session": {"intra_op_threads": 0}}): "intra_op_threads must be between 1 and 1024",
        json.dumps({"session": [1]}): "session: expected a JSON object",
    }
    for text, message in refused.items():
        (repo.root / "mlp" / "serving.json").write_text(text)
        with Runtime(repo) as rt:
            assert message in (rt.models()["mlp"]["error"] or ""), rt.models()["mlp"]["error"]


def test_refresh_serves_what_another_process_did_to_the_repository(repo: Repository, tmp_path: Path) -> None:
    """``edgeserve models publish / rollback`` from another process, and a model folder added or deleted: the
    runtime catches up on ``refresh()``, and does nothing when nothing changed."""
    with Runtime(repo) as rt:
        assert rt.refresh() == {}
        other = Repository(repo.root)  # another process's view
        other.publish("mlp", _package(tmp_path, 1))
        assert rt.predict("mlp", rows(1))["logits"].tolist() == _expected(0, rows(1)).tolist()  # not yet
        assert rt.refresh() == {"mlp": "version 2"}
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(1, rows(1)), atol=1e-5)
        other.rollback("mlp")
        assert rt.refresh() == {"mlp": "version 1"} and rt.models()["mlp"]["version"] == 1
        other.publish("second", _package(tmp_path, 2))
        assert rt.refresh() == {"second": "loaded"}
        np.testing.assert_allclose(rt.predict("second", rows(1))["logits"], _expected(2, rows(1)), atol=1e-5)
        import shutil

        shutil.rmtree(repo.root / "second")
        assert rt.refresh() == {"second": "unloaded"}
        with pytest.raises(ModelNotFound):
            rt.predict("second", rows(1))
        other.publish("second", _package(tmp_path, 3))  # published again: it serves again
        assert rt.refresh() == {"second": "loaded"}
        assert rt.refresh() == {}


def test_refresh_keeps_the_serving_version_when_the_new_one_is_broken_and_tries_it_once(repo: Repository,
                                                                                       tmp_path: Path) -> None:
    with Runtime(repo) as rt:
        repo.publish("mlp", _package(tmp_path, 1))
        (repo.root / "mlp" / "2" / "golden.npz").write_bytes(b"broken")
        changed = rt.refresh()
        assert changed["mlp"].startswith("failed: ") and rt.models()["mlp"]["version"] == 1
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(0, rows(1)), atol=1e-5)
        assert rt.refresh() == {}  # not tried again at every pass
        repo.publish("mlp", _package(tmp_path, 2))  # a fixed version
        assert rt.refresh() == {"mlp": "version 3"}


def test_refresh_follows_an_edited_serving_json_and_keeps_serving_through_a_broken_one(repo: Repository,
                                                                                      tmp_path: Path) -> None:
    """Settings edited in ``serving.json`` take effect at the next refresh (the server's poll) without a restart;
    a file that does not load leaves the model serving as it was, and is not tried again until it changes."""
    settings = repo.root / "mlp" / "serving.json"
    with Runtime(repo, batching=None) as rt:
        with rt.using("mlp") as (model, _):
            assert model.batcher is None
        settings.write_text(json.dumps({"batching": {"max_batch_size": 8}}))
        assert rt.refresh() == {"mlp": "new settings"}
        with rt.using("mlp") as (model, version):
            assert model.batcher is not None and model.batcher.config.max_batch_size == 8 and version == 1
        assert rt.refresh() == {}
        settings.write_text(json.dumps({"batching": {"max_batch_size": 8, "no_such_setting": 1}}))
        changed = rt.refresh()
        assert changed["mlp"].startswith("failed: ") and "batching: unknown field 'no_such_setting' (it takes " \
            "max_batch_size, max_delay_ms" in changed["mlp"]
        with rt.using("mlp") as (model, _):
            assert model.batcher is not None and model.batcher.config.max_batch_size == 8  # as it was
        np.testing.assert_allclose(rt.predict("mlp", rows(1))["logits"], _expected(0, rows(1)), atol=1e-5)
        assert rt.refresh() == {}  # not tried again at every pass
        settings.unlink()  # back to the runtime's own settings
        assert rt.refresh() == {"mlp": "new settings"}
        with rt.using("mlp") as (model, _):
            assert model.batcher is None
        assert rt.refresh() == {}
        settings.write_text("{")
        repo.publish("mlp", _package(tmp_path, 1))  # a new version, which these settings keep from loading
        assert rt.refresh()["mlp"].startswith("failed: ") and rt.refresh() == {}
        settings.write_text("{}")
        assert rt.refresh() == {"mlp": "version 2"}  # the version was fine: tried again once the settings changed


def test_a_version_loaded_on_demand_before_the_settings_changed_is_loaded_again_not_promoted(
        repo: Repository, tmp_path: Path) -> None:
    with Runtime(repo, batching=None) as rt:
        repo.pin("mlp", 1)
        repo.publish("mlp", _package(tmp_path, 1))  # version 2, not serving yet
        rt.predict("mlp", rows(1), version=2)  # loaded on demand, without batching
        (repo.root / "mlp" / "serving.json").write_text(json.dumps({"batching": {"max_batch_size": 4}}))
        repo.pin("mlp", 2)
        assert rt.refresh() == {"mlp": "version 2"}
        with rt.using("mlp") as (model, version):
            assert version == 2 and model.batcher is not None and model.batcher.config.max_batch_size == 4


def test_model_controls_load_of_a_serving_model_takes_its_new_settings(repo: Repository) -> None:
    """Triton's repository extension: loading a model that is loaded loads it again with its new configuration."""
    with Runtime(repo, batching=None) as rt:
        assert rt.reload("mlp", action="load") == 1
        (repo.root / "mlp" / "serving.json").write_text(json.dumps({"batching": {"max_batch_size": 4}}))
        with rt.using("mlp") as (model, _):
            assert model.batcher is None  # nothing polls here
        assert rt.reload("mlp", action="load") == 1
        with rt.using("mlp") as (model, _):
            assert model.batcher is not None and model.batcher.config.max_batch_size == 4


def test_refresh_leaves_a_model_unloaded_on_purpose_alone(repo: Repository) -> None:
    with Runtime(repo) as rt:
        rt.unload("mlp")
        assert rt.refresh() == {}
        with pytest.raises(ModelNotFound):
            rt.predict("mlp", rows(1))
        rt.reload("mlp")  # loaded on purpose again (model control's load)
        assert rt.models()["mlp"]["version"] == 1


def test_a_runtime_of_some_models_does_not_load_others_on_refresh(repo: Repository, tmp_path: Path) -> None:
    repo.publish("other", _package(tmp_path, 1))
    with Runtime(repo, models=["mlp"]) as rt:
        repo.publish("third", _package(tmp_path, 2))
        assert rt.refresh() == {} and sorted(rt.models()) == ["mlp"]


def test_runtime_predict_answers_and_fails_exactly_as_the_models_own_predict(tmp_path: Path) -> None:
    """Runtime.predict runs a plain model's requests itself (no second Python call per request): the same answers,
    and the same errors, as Model.predict — for a request that breaks the contract and for one the engine refuses."""
    from tests.factories import gather_model

    repo = Repository(tmp_path / "repo", create=True)
    repo.publish("tok", edgeserve.convert(save(gather_model(), tmp_path / "g.onnx"), tmp_path / "pkg").path)
    with Runtime(repo, guard=None) as rt, rt.using("tok") as (model, _):
        assert model._fast  # the path Runtime.predict writes out
        ids = np.array([[1, 2, 3]], np.int64)
        assert rt.predict("tok", ids).keys() == model.predict(ids).keys()
        np.testing.assert_array_equal(next(iter(rt.predict("tok", ids).values())),
                                      next(iter(model.predict(ids).values())))
        for bad in (np.array([[1.5, 2, 3]]), np.array([[1, 2, 99]], np.int64)):  # a float; an id past the table
            with pytest.raises(edgeserve.EdgeserveError) as direct:
                model.predict(bad)
            with pytest.raises(type(direct.value)) as via:
                rt.predict("tok", bad)
            assert str(via.value) == str(direct.value)


def test_watch_follows_the_repository_until_unwatched(repo: Repository, tmp_path: Path) -> None:
    with Runtime(repo) as rt:
        rt.watch(0.01)
        repo.publish("mlp", _package(tmp_path, 1))
        wait_for(lambda: rt.models()["mlp"]["version"] == 2)
        rt.unwatch()
        assert rt._watcher is None
        repo.rollback("mlp")
        assert rt.models()["mlp"]["version"] == 2  # no longer watching: the next refresh is the caller's
        assert rt.refresh() == {"mlp": "version 1"}
        rt.watch(0.01)
    assert rt._watcher is None  # close stopped it
    with Runtime(repo) as rt, pytest.raises(edgeserve.ConfigError, match="watch interval"):
        rt.watch(0)
