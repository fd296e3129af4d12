"""The optimised-graph cache: a second load skips optimisation; damaged or stale entries are rebuilt, never fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve import SessionConfig
from edgeserve.backends.graph_cache import GraphCache
from tests.factories import rows


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def test_second_load_comes_from_the_cache(tmp_path: Path, mlp_package: Path) -> None:
    config = SessionConfig(cache_dir=str(tmp_path / "cache"))
    with edgeserve.load(mlp_package, config=config) as first:
        a = first.predict(rows(4))["logits"]
        assert not first.from_cache
    assert len(_entries(tmp_path / "cache")) == 1
    with edgeserve.load(mlp_package, config=config) as second:
        assert second.from_cache
        np.testing.assert_allclose(second.predict(rows(4))["logits"], a, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-record", "garbage"])
def test_damaged_entries_are_rebuilt(tmp_path: Path, mlp_package: Path, damage: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    config = SessionConfig(cache_dir=str(tmp_path / "cache"))
    edgeserve.load(mlp_package, config=config).close()
    entry = _entries(tmp_path / "cache")[0]
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        entry.write_bytes(bytes(data))
    elif damage == "truncate":
        entry.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "no-record":
        entry.with_suffix(".json").unlink()
    else:
        entry.write_bytes(b"not a model")
        entry.with_suffix(".json").write_text("{broken")
    with edgeserve.load(mlp_package, config=config) as model:
        assert not model.from_cache  # rebuilt from the package, answers correctly
        assert model.predict(rows(2))["logits"].shape == (2, 4)
    assert "rebuilding" in caplog.text
    with edgeserve.load(mlp_package, config=config) as model:
        assert model.from_cache


def test_unusable_cache_folder_is_not_an_error(tmp_path: Path, mlp_package: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with edgeserve.load(mlp_package, config=SessionConfig(cache_dir=str(blocker / "cache"))) as model:
        assert model.predict(rows(1))["logits"].shape == (1, 4)


def test_cache_off_writes_nothing(tmp_path: Path, mlp_package: Path, graph_cache: Path) -> None:
    before = set(graph_cache.iterdir())
    edgeserve.load(mlp_package, config=SessionConfig(cache_dir=None)).close()
    assert set(graph_cache.iterdir()) == before


def test_default_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGESERVE_CACHE_DIR", str(tmp_path / "env"))
    assert SessionConfig().cache_path == tmp_path / "env"
    monkeypatch.delenv("EDGESERVE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert SessionConfig().cache_path == tmp_path / "xdg" / "edgeserve" / "graphs"


def test_keys_change_with_everything_that_changes_the_graph(tmp_path: Path) -> None:
    cache = GraphCache(tmp_path)
    base = cache.key("a" * 64, "onnxruntime", "1.20.0", {"level": "all"})
    assert base == cache.key("a" * 64, "onnxruntime", "1.20.0", {"level": "all"})
    assert base != cache.key("b" * 64, "onnxruntime", "1.20.0", {"level": "all"})
    assert base != cache.key("a" * 64, "onnxruntime", "1.21.0", {"level": "all"})  # stale after an upgrade
    assert base != cache.key("a" * 64, "onnxruntime", "1.20.0", {"level": "basic"})
