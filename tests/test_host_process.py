"""A conversion inside a host application: no process-wide state changes, no leaked sessions on error paths."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.backends.base import SESSIONS
from tests.factories import example, rows


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_converting_changes_no_process_wide_logging_or_output(tmp_path: Path, mlp_path: Path) -> None:
    """Root logger level and handlers, sys.stdout: as they were; another thread's INFO records still arrive while
    a conversion that logs and prints (entropy calibration, int4) runs."""
    root = logging.getLogger()
    app = logging.getLogger("host.app")
    collect = _Collect()
    app.addHandler(collect)
    app.setLevel(logging.INFO)
    level, handlers, stdout = root.level, list(root.handlers), sys.stdout
    seen_during: list[tuple[int, object]] = []
    stop = threading.Event()

    def other_thread() -> None:
        i = 0
        while not stop.is_set():
            app.info("request %d", i)
            seen_during.append((root.level, sys.stdout))
            i += 1
            stop.wait(0.001)

    np.savez(tmp_path / "cal.npz", x=rows(64))
    worker = threading.Thread(target=other_thread)
    worker.start()
    try:
        for mode, method in (("static", "entropy"), ("static", "percentile"), ("int4", "minmax")):
            cfg = edgeserve.QuantizeConfig(mode=mode, calibration_method=method)  # type: ignore[arg-type]
            src = example("tiny-bert")[0] if mode == "int4" else mlp_path
            edgeserve.convert(src, tmp_path / f"pkg-{mode}-{method}", quantize=cfg,
                              calibration=None if mode == "int4" else tmp_path / "cal.npz")
    finally:
        stop.set()
        worker.join()
        app.removeHandler(collect)
    assert root.level == level and root.handlers == handlers and sys.stdout is stdout
    assert all(lv == level and out is stdout for lv, out in seen_during)
    assert len(collect.messages) == len(seen_during) > 0  # none of the host's records was swallowed


def test_tools_stay_quiet_for_the_caller(tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    np.savez(tmp_path / "cal.npz", x=rows(64))
    with caplog.at_level(logging.INFO):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize=edgeserve.QuantizeConfig(
            mode="static", calibration_method="entropy"), calibration=tmp_path / "cal.npz")
    out = capsys.readouterr()
    assert "histogram" not in out.out and "Finding optimal threshold" not in out.out
    assert not [r for r in caplog.records if r.pathname.find("onnxruntime") >= 0 and r.levelno < logging.ERROR]


@pytest.mark.parametrize("fail_at", ["read_data", "prepare_graph", "quantise", "verify", "write_package"])
def test_no_session_leaks_when_a_conversion_fails(tmp_path: Path, mlp_path: Path, fail_at: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeserve.converter.api as api

    def boom(c) -> None:
        raise edgeserve.ConversionError(f"failed in {fail_at}")

    steps = tuple(boom if step.__name__ == fail_at else step for step in api.STEPS)
    monkeypatch.setattr(api, "STEPS", steps)
    live = SESSIONS.live()
    np.savez(tmp_path / "cal.npz", x=rows(64))
    with pytest.raises(edgeserve.ConversionError, match=f"failed in {fail_at}"):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="static", calibration=tmp_path / "cal.npz")
    assert SESSIONS.live() == live and not (tmp_path / "pkg").exists()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_no_session_leaks_when_auto_fails_midway(tmp_path: Path, mlp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeserve.converter.autotune as autotune

    def broken_round(*args, **kwargs) -> None:
        raise edgeserve.ConversionError("the final round broke")

    monkeypatch.setattr(autotune.Search, "final_round", broken_round)
    live = SESSIONS.live()
    np.savez(tmp_path / "cal.npz", x=rows(64))
    with pytest.raises(edgeserve.ConversionError, match="final round broke"):
        edgeserve.convert(mlp_path, tmp_path / "pkg", quantize="auto", calibration=tmp_path / "cal.npz", time_budget=5)
    assert SESSIONS.live() == live
