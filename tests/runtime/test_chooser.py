"""Batched or direct: the chooser on made-up epochs (no clock, no threads), then the batcher's direct way."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgeserve import BatchConfig, ClosedError
from edgeserve.runtime.batcher import Batcher
from edgeserve.runtime.chooser import BATCH, DIRECT, EPOCH_MIN, EPOCH_S, IDLE_S, RECHECK_S, Chooser
from edgeserve.tensors import TensorSpec

SPEC = TensorSpec("x", "float32", ("batch", 2), batch_axis=0)


class Load:
    """Drives a chooser epoch by epoch: each way answers at its own rate, with its own engine share."""

    def __init__(self, chooser: Chooser, rates: dict[str, float], busy: dict[str, float] | None = None) -> None:
        self.chooser = chooser
        self.rates = rates
        self.busy = busy or {BATCH: 0.1, DIRECT: 0.0}
        self.now = 0.0
        self.modes: list[str] = []

    def epochs(self, n: int) -> list[str]:
        """Run ``n`` epochs; the way each ran."""
        for _ in range(n):
            mode = self.chooser.arrived(self.now)
            self.modes.append(mode)
            rows = self.rates[mode] * EPOCH_S
            self.chooser.answered(EPOCH_MIN, int(rows), self.busy[mode] * EPOCH_S)
            self.now += EPOCH_S * 1.001  # NOTE: a hair over, so float sums never fall short of an epoch
        return self.modes[-n:]


def test_a_model_faster_than_a_hand_off_goes_direct() -> None:
    load = Load(Chooser(), {BATCH: 15_000, DIRECT: 30_000})
    load.epochs(20)
    assert load.chooser.winner == DIRECT and load.modes[-10:].count(DIRECT) >= 8  # a recheck of batching may run


def test_a_model_that_batching_speeds_up_stays_batched() -> None:
    load = Load(Chooser(), {BATCH: 6_000, DIRECT: 2_500})
    load.epochs(200)  # 4 s: trials come and go, the winner does not change
    assert load.chooser.winner == BATCH
    assert load.modes.count(DIRECT) <= 6  # a trial costs one epoch, and they grow rarer: ~log2(4 s / 0.5 s)


def test_an_engine_busy_with_batches_still_goes_direct_when_that_answers_more() -> None:
    """A small transformer at 4 callers keeps the engine busy with batches, yet answers more rows side by side
    (its operators parallelise poorly inside one run): busy batches are no proof that batching pays."""
    load = Load(Chooser(), {BATCH: 1_900, DIRECT: 3_100}, busy={BATCH: 0.95, DIRECT: 0.0})
    load.epochs(20)
    assert load.chooser.winner == DIRECT and load.modes[-10:].count(DIRECT) >= 8


def test_one_slow_epoch_does_not_hand_over_the_model() -> None:
    """The winner's epoch before a trial was slow (callers still starting): the challenger must also beat the
    epoch after its trial."""
    chooser = Chooser()
    load = Load(chooser, {BATCH: 500, DIRECT: 3_000})
    load.epochs(3)  # settling, then a slow batched epoch: the direct way is tried next
    assert chooser.mode == DIRECT
    load.rates[BATCH] = 9_000
    load.epochs(2)  # the trial, then batched at full speed
    assert chooser.winner == BATCH and load.epochs(1) == [BATCH]


def test_trials_grow_rarer_while_the_winner_keeps_winning() -> None:
    load = Load(Chooser(), {BATCH: 6_000, DIRECT: 2_500})
    load.epochs(int(20 / EPOCH_S))
    trials = [i * EPOCH_S for i, m in enumerate(load.modes) if m == DIRECT]
    gaps = np.diff(trials)
    assert len(trials) >= 3 and all(b > a for a, b in zip(gaps, gaps[1:]))
    assert gaps[0] >= RECHECK_S[0]


def test_a_trial_lost_to_a_cold_start_is_soon_repeated() -> None:
    """The other way's first trial comes while its first runs are still slow (a fresh session): it loses, and is
    tried again within about a second, not after two that a short load may never reach."""
    load = Load(Chooser(), {BATCH: 7_000, DIRECT: 3_000})
    load.epochs(4)  # settling, measured, the trial (slow), judged
    assert load.chooser.winner == BATCH
    load.rates[DIRECT] = 16_000
    load.epochs(int(1.1 / EPOCH_S))  # rechecked RECHECK_S[0] x 2 after the lost trial
    assert load.chooser.winner == DIRECT


def test_a_tie_within_the_noise_is_not_retried_every_epoch() -> None:
    """Both ways answer about as fast (one caller: either way runs its request at once), each epoch's rate noisy by
    a few percent: the loser is tried on the recheck schedule, not whenever one winner's epoch reads a little low
    (each trial of the other way costs its bookkeeping for a whole epoch)."""
    rng = np.random.default_rng(0)
    chooser = Chooser()
    now, modes = 0.0, []
    for _ in range(int(10 / EPOCH_S)):
        mode = chooser.arrived(now)
        modes.append(mode)
        chooser.answered(EPOCH_MIN, int(10_000 * (1 + rng.uniform(-0.03, 0.03)) * EPOCH_S), 0.05 * EPOCH_S)
        now += EPOCH_S * 1.001
    loser = DIRECT if chooser.winner == BATCH else BATCH
    assert modes.count(loser) <= 8  # ~log2(10 s / 1 s) + 1 rechecks, and the epochs that judge them


def test_a_load_that_changes_turns_the_choice() -> None:
    load = Load(Chooser(), {BATCH: 6_000, DIRECT: 2_500})
    load.epochs(20)
    assert load.chooser.winner == BATCH
    load.rates = {BATCH: 2_000, DIRECT: 20_000}  # the winner falls below the other's last rate: tried at once
    load.epochs(5)  # two low epochs, the trial, the epoch that judges it
    assert load.chooser.winner == DIRECT


def test_one_low_epoch_does_not_start_a_trial() -> None:
    """An epoch over a pause in the load (callers between two bursts) reads low: no trial of a way that loses by
    far until the winner reads low twice running."""
    load = Load(Chooser(), {BATCH: 20_000, DIRECT: 6_000})
    load.epochs(int(1.5 / EPOCH_S))  # two trials lost (at the start, ~1 s later): the next recheck is ~2 s away
    assert load.chooser.winner == BATCH and load.modes[-10:] == [BATCH] * 10
    for _ in range(5):
        load.rates[BATCH] = 4_000  # one epoch of it: the callers paused
        load.epochs(1)
        load.rates[BATCH] = 20_000
        load.epochs(3)
    assert load.modes[-20:] == [BATCH] * 20
    load.rates[BATCH] = 4_000  # low twice running: the other way is tried
    assert load.epochs(3)[-1] == DIRECT


def test_the_first_epoch_of_a_burst_is_not_measured() -> None:
    chooser = Chooser()
    load = Load(chooser, {BATCH: 100, DIRECT: 10_000})
    load.epochs(2)  # an epoch is measured when the next one begins: here the first has just ended
    assert chooser.rates == {BATCH: None, DIRECT: None}
    load.epochs(1)
    assert chooser.rates[BATCH] == pytest.approx(100, rel=0.05)
    load.now += IDLE_S * 2  # silence: the next epoch is a new burst's first
    before = dict(chooser.rates)
    load.epochs(1)
    assert chooser.rates == before


def test_the_direct_way_skips_the_lock_only_inside_a_direct_epoch() -> None:
    chooser = Chooser(start=DIRECT)
    assert not 0.0 < chooser.direct_until  # no epoch yet: the batcher must take its lock
    chooser.arrived(0.0)
    assert EPOCH_S / 2 < chooser.direct_until
    assert not EPOCH_S < chooser.direct_until  # an epoch ends: bookkeeping under the lock
    batched = Chooser(start=BATCH)
    batched.arrived(0.0)
    assert not EPOCH_S / 2 < batched.direct_until  # batched requests always queue under the lock


# --- the direct way, on threads -------------------------------------------------------------------------------------

def _direct_batcher(run, way: str = "run") -> Batcher:
    """``way``: "run", the direct way through ``run`` (any model); "engine", through the engine's own run, as a
    model on onnxruntime gives it (its errors translated by ``engine_failed``)."""
    from edgeserve import InferenceError

    engine = {} if way == "run" else {"engine": lambda names, feed, options: run(feed),
                                       "engine_failed": lambda exc, feed: InferenceError(f"engine: {exc}")}
    batcher = Batcher(run, [SPEC], [SPEC], BatchConfig(max_batch_size=32), name="m", **engine)
    assert batcher.chooser is not None
    batcher.chooser.winner = batcher.chooser.mode = DIRECT
    batcher.chooser.arrived(batcher._clock())  # a direct epoch begins: the next calls skip the lock
    return batcher


def _x(v: float, n: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 2), v, np.float32)}


@pytest.mark.parametrize("way", ["run", "engine"])
def test_direct_callers_run_side_by_side_each_with_its_own_answer(way: str) -> None:
    """Four callers must be inside the engine at once (a barrier of 4 in run) — impossible if they queued."""
    inside = threading.Barrier(4, timeout=10)

    def run(feed):
        inside.wait()
        return [feed["x"] * 2]

    batcher = _direct_batcher(run, way)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda v: batcher.call(_x(v, n=int(v)))["x"], [1.0, 2.0, 3.0, 4.0]))
    assert [a.shape[0] for a in answers] == [1, 2, 3, 4]
    assert [float(a[0, 0]) for a in answers] == [2.0, 4.0, 6.0, 8.0]
    stats = batcher.stats
    assert stats["ran_direct"] == 4 and stats["rows"] == 10 and stats["requests"] == 4
    batcher.close()


@pytest.mark.parametrize("way", ["run", "engine"])
def test_a_direct_failure_is_its_callers_alone(way: str) -> None:
    def run(feed):
        if feed["x"][0, 0] < 0:
            raise RuntimeError("index out of range")
        return [feed["x"] * 2]

    batcher = _direct_batcher(run, way)
    from edgeserve import InferenceError

    with pytest.raises(InferenceError, match=("engine: " if way == "engine" else "") + "index out of range"):
        batcher.call(_x(-1.0))
    assert batcher.call(_x(1.0))["x"][0, 0] == 2.0
    assert batcher.stats["failed_batches"] == 1 and batcher.stats["ran_direct"] == 1
    batcher.close()


@pytest.mark.parametrize("way", ["run", "engine"])
def test_close_waits_for_direct_callers_and_then_refuses_new_ones(way: str) -> None:
    entered, release = threading.Event(), threading.Event()

    def run(feed):
        entered.set()
        assert release.wait(10)
        return [feed["x"] * 2]

    batcher = _direct_batcher(run, way)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(batcher.call, _x(3.0))
        assert entered.wait(10)
        closing = pool.submit(batcher.close)
        with pytest.raises(TimeoutError):
            closing.result(timeout=0.2)  # still running: close must not return under it
        release.set()
        closing.result(10)
        assert running.result(10)["x"][0, 0] == 6.0
    with pytest.raises(ClosedError):
        batcher.call(_x(1.0))


def test_a_fresh_model_with_quick_or_long_runs_starts_direct_and_one_in_between_batched() -> None:
    """Quicker than a hand-off: batching cannot pay. As long as SLOW_RUN_S or longer (a segmentation network):
    only the engine's savings on bigger runs could, and callers side by side use the cores better until measured
    otherwise. In between (a wide MLP, a small transformer) batching starts."""
    from edgeserve.runtime.chooser import QUICK_RUN_S, SLOW_RUN_S

    def first_way(run_s: float) -> str:
        chooser = Chooser()
        chooser.arrived(0.0)
        chooser.answered(EPOCH_MIN, EPOCH_MIN, EPOCH_MIN * run_s)
        way = chooser.arrived(EPOCH_S * 1.001)
        assert chooser.winner == way
        return way

    assert first_way(QUICK_RUN_S / 3) == DIRECT
    assert first_way(QUICK_RUN_S * 3) == BATCH
    assert first_way(SLOW_RUN_S / 2) == BATCH
    assert first_way(SLOW_RUN_S * 2) == DIRECT


def test_a_trial_cut_short_by_silence_is_dropped_not_carried_into_the_next_burst() -> None:
    """The callers paused in the middle of a trial of the losing way: the next burst settles in the winner's way
    and tries the other again only after a measured epoch of its own, so a burst never starts in the way that
    loses by far."""
    load = Load(Chooser(start=BATCH), {BATCH: 2_000, DIRECT: 20_000})
    load.epochs(5)  # settling, batched, the direct trial, batched again, judged at the next: direct wins
    assert load.chooser.winner == DIRECT
    load.now += RECHECK_S[1]  # silence past any recheck
    assert load.epochs(3) == [DIRECT, DIRECT, BATCH]  # settling, a measured epoch, then the trial of batching
    load.now += IDLE_S * 2  # silence in the middle of the trial
    assert load.epochs(3) == [DIRECT, DIRECT, BATCH]  # the winner's way first again, then the trial anew

