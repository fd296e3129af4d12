"""Engine worker threads below the caller's CPU priority (Linux: the nice value belongs to each thread)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.priority import lowered, supported
from tests.factories import mlp_model, rows, save

pytestmark = pytest.mark.skipif(not supported(), reason="thread priorities are per process here")


def _nice(tid: int) -> int:
    return int(Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def _threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_lowered_runs_on_a_thread_below_the_callers_priority_and_returns_its_value() -> None:
    me = threading.get_native_id()
    mine = _nice(me)
    seen = lowered(5, lambda: (threading.get_native_id(), _nice(threading.get_native_id())))
    assert seen[0] != me and seen[1] == min(19, mine + 5)
    assert _nice(me) == mine  # the caller keeps its own
    assert lowered(0, threading.get_native_id) == me  # 0: here, as is


def test_lowered_raises_what_it_ran_raised_on_the_callers_thread() -> None:
    def fails() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        lowered(3, fails)


def test_an_engines_worker_threads_start_below_the_process_and_the_caller_stays(tmp_path: Path) -> None:
    pkg = edgeserve.convert(save(mlp_model(), tmp_path / "m.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": rows(16)})
    me, before = threading.get_native_id(), _threads()
    mine = _nice(me)
    with edgeserve.load(pkg.path, config=edgeserve.SessionConfig(intra_op_threads=2, nice=7, cache_dir=None)) as m:
        m.predict(rows(4))
        workers = _threads() - before
        assert workers, "onnxruntime started no worker thread for 2 intra-op threads"
        assert {_nice(t) for t in workers if t in _threads()} == {min(19, mine + 7)}
        assert _nice(me) == mine
    before = _threads()
    with edgeserve.load(pkg.path, config=edgeserve.SessionConfig(intra_op_threads=2, cache_dir=None)) as m:
        m.predict(rows(4))
        assert {_nice(t) for t in _threads() - before if t in _threads()} == {mine}


def test_nice_outside_0_to_19_is_refused() -> None:
    with pytest.raises(edgeserve.ConfigError, match="nice must be between 0 and 19"):
        edgeserve.SessionConfig(nice=20)


def test_a_batch_led_for_callers_that_cannot_lead_runs_at_the_engines_priority() -> None:
    from edgeserve.config import BatchConfig
    from edgeserve.runtime.batcher import Batcher
    from edgeserve.tensors import TensorSpec

    spec = TensorSpec("x", "float32", ("batch", 1), 0)
    seen: list[int] = []

    def run(feed):
        seen.append(_nice(threading.get_native_id()))
        return [feed["x"]]

    mine = _nice(threading.get_native_id())
    for nice, expected in ((6, min(19, mine + 6)), (0, mine)):
        batcher = Batcher(run, [spec], [spec], BatchConfig(), name="m", nice=nice)
        try:
            batcher.submit({"x": np.zeros((1, 1), np.float32)}).result(10)  # led on the batcher's executor
        finally:
            batcher.close()
        assert seen.pop() == expected
