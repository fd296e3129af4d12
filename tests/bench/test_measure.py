"""Benchmark statistics on constructed cases with known answers."""

from __future__ import annotations

import time

import pytest

from edgeserve.bench import measure
from edgeserve.bench.report import compare, comparison_lines, label_groups, pareto_front


def test_summarise_rounds_known_values() -> None:
    rounds = [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [3.0, 4.0, 5.0]]
    s = measure.summarise_rounds(rounds)
    assert s["round_medians"] == [2.0, 3.0, 4.0]
    assert s["p50"] == pytest.approx(3.0) and s["mean"] == pytest.approx(3.0) and s["samples"] == 9
    assert s["spread"] == pytest.approx((4.0 - 2.0) / 3.0) and s["noisy"] is True
    steady = measure.summarise_rounds([[1.0, 1.0], [1.0, 1.02]])
    assert steady["noisy"] is False


def test_a_speedup_is_the_median_of_paired_round_ratios_so_a_slow_spell_cancels() -> None:
    """A slow spell of the machine falls on both variants' neighbouring rounds: paired round by round it cancels,
    where pooling every call of each and comparing p50s reads the candidate faster than the baseline."""
    from edgeserve.timing import speedups

    def stats(*rounds: list[float]) -> dict:
        return measure.summarise_rounds(rounds)

    base = stats([1.0] * 4, [1.0] * 4, [3.0] * 6, [3.0] * 6)  # the spell hit more of fp32's calls than the other's
    cand = stats([1.1] * 6, [1.1] * 6, [3.3] * 4, [3.3] * 4)
    assert base["p50"] / cand["p50"] > 1.5  # pooled: 2.7x faster
    assert speedups({"fp32": base, "c": cand}, "fp32") == {"fp32": 1.0, "c": pytest.approx(1 / 1.1)}
    bare = {"fp32": {"p50": 2.0}, "c": {"p50": 1.0}}  # no rounds recorded: the ratio of p50s
    assert speedups(bare, "fp32")["c"] == 2.0


def test_interleaved_order_alternates() -> None:
    assert measure.order(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert measure.order(["a", "b", "c"], 1) == ["c", "b", "a"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_interleaved_order_puts_every_variant_at_every_place_and_after_every_other(n: int) -> None:
    """Not only early and late: a variant kept in the middle always runs right after another one (whose threads
    may still be spinning) and reads slower for it."""
    names = [chr(ord("a") + i) for i in range(n)]
    rounds = [measure.order(names, r) for r in range(2 * n)]
    assert all(sorted(r) == names for r in rounds)
    for name in names:
        places = [r.index(name) for r in rounds]
        assert sorted(places) == sorted(list(range(n)) * 2), (name, places)
    if n <= 3:  # rotations of one order: each variant comes after each other one (beyond three, its neighbours)
        follows = {(r[i - 1], r[i]) for r in rounds for i in range(1, n)}
        assert follows == {(a, b) for a in names for b in names if a != b}


def test_concurrent_setups_are_measured_in_alternating_rounds_and_reported_by_their_median(monkeypatch) -> None:
    seen: list[str] = []
    readings = {"off": iter([10.0, 50.0, 20.0, 30.0, 40.0]), "on": iter([5.0, 1.0, 2.0, 4.0, 3.0])}

    def fake(call, *, callers, duration_s):
        name = call()
        seen.append(name)
        return {"callers": callers, "rows_per_s": next(readings[name]), "duration": duration_s}

    monkeypatch.setattr(measure, "concurrent", fake)
    out = measure.interleaved({"off": lambda: "off", "on": lambda: "on"}, callers=4, duration_s=1.0, rounds=5)
    assert seen == ["off", "on", "on", "off", "off", "on", "on", "off", "off", "on"]
    assert out["off"]["rows_per_s"] == 30.0 and out["on"]["rows_per_s"] == 3.0  # the median rounds
    assert out["off"]["round_values"] == [10.0, 50.0, 20.0, 30.0, 40.0]
    assert out["off"]["duration"] == pytest.approx(0.2)  # the time split over the rounds


def test_latency_measures_each_variant_separately() -> None:
    calls = {"fast": lambda: None, "slow": lambda: time.sleep(0.002)}
    result = measure.latency(calls, rounds=2, budget_s=0.2)
    assert result["slow"]["p50"] >= 0.0015 > result["fast"]["p50"]
    assert len(result["fast"]["round_medians"]) == 2


def test_concurrency_counts_every_call() -> None:
    result = measure.concurrent(lambda: time.sleep(0.001), callers=3, duration_s=0.1)
    assert result["callers"] == 3 and result["calls"] > 30 and result["rows_per_s"] > 300


def test_concurrency_reports_errors() -> None:
    def boom() -> None:
        raise ValueError("broken call")

    with pytest.raises(ValueError, match="broken call"):
        measure.concurrent(boom, callers=2, duration_s=0.05)


def test_pareto_front() -> None:
    points = {"a": (1.0, 5.0), "b": (2.0, 1.0), "c": (3.0, 3.0), "d": (1.0, 5.0), "e": (0.5, 9.0)}
    assert pareto_front(points) == {"a", "b", "d", "e"}  # c is beaten by b on both axes


def test_variants_on_the_same_spot_share_one_label() -> None:
    """Two int8 variants of one file answer alike at the same speed: their names drawn at one spot read as
    neither, so they are written one under the other; points apart keep their own labels."""
    points = {"fp32": (26.9, 0.0), "int8-static": (15.30, 0.0), "openvino-int8": (15.31, 0.0), "fp16": (37.8, 0.0),
              "int8-dynamic": (15.3, 4.0)}
    assert label_groups(points) == [((15.3, 0.0), ["int8-static", "openvino-int8"]), ((15.3, 4.0), ["int8-dynamic"]),
                                    ((26.9, 0.0), ["fp32"]), ((37.8, 0.0), ["fp16"])]
    assert label_groups({}) == []


def _results(p50: float, spread: float, loss: float | None, rows: float = 1000.0) -> dict:
    return {"models": [{"model": "m", "variants": [{
        "name": "fp32", "status": "ok", "latency": {"p50": p50, "spread": spread},
        "throughput": {"8": {"rows_per_s": rows, "spread": spread}}, "cold_start": {}, "accuracy_loss": loss}]}]}


def test_compare_flags_only_changes_beyond_the_noise() -> None:
    old = _results(1.0, 0.02, 0.0)
    within = {c["metric"]: c for c in compare(_results(1.04, 0.02, 0.0), old)}
    assert within["p50 latency"]["regression"] is False
    slower = {c["metric"]: c for c in compare(_results(1.30, 0.02, 0.0), old)}
    assert slower["p50 latency"]["regression"] is True and slower["p50 latency"]["change"] == pytest.approx(0.30)
    noisy = {c["metric"]: c for c in compare(_results(1.30, 0.40, 0.0), old)}
    assert noisy["p50 latency"]["regression"] is False  # 30% inside a 40% spread is not a finding
    faster = {c["metric"]: c for c in compare(_results(0.5, 0.02, 0.0, rows=2000), old)}
    assert not any(c["regression"] for c in faster.values())
    worse_acc = {c["metric"]: c for c in compare(_results(1.0, 0.02, 0.02), old)}
    assert worse_acc["accuracy loss"]["regression"] is True


def test_compare_judges_timings_against_the_machine_reference_timed_in_each_run() -> None:
    """A run on a machine a third slower (its reference workload, timed in the same rounds, says so) is no
    regression; the same timings on a machine as fast as before are one."""
    def run(p50: float, rows: float, machine_p50: float, machine_rows: float) -> dict:
        results = _results(p50, 0.02, 0.0, rows=rows)
        results["models"][0]["machine"] = {"latency_p50": machine_p50, "throughput": {"8": machine_rows}}
        return results

    old = run(1.0, 1000.0, 0.5, 4000.0)
    slow_machine = {c["metric"]: c for c in compare(run(1.3, 770.0, 0.65, 3080.0), old)}
    assert not any(c["regression"] for c in slow_machine.values()), slow_machine
    assert slow_machine["p50 latency"]["machine"] == pytest.approx(1.3)
    assert slow_machine["p50 latency"]["change"] == pytest.approx(0.0)
    assert slow_machine["throughput"]["machine"] == pytest.approx(4000 / 3080)
    same_machine = {c["metric"]: c for c in compare(run(1.3, 770.0, 0.5, 4000.0), old)}
    assert same_machine["p50 latency"]["regression"] and same_machine["throughput"]["regression"]
    lines = "\n".join(comparison_lines(list(slow_machine.values())))
    assert "judged against the machine, 30% slower this run" in lines
    unmarked = compare(_results(1.3, 0.02, 0.0), old)  # an older results.json without the reference: as before
    assert {c["metric"]: c for c in unmarked}["p50 latency"]["regression"]


def test_compare_flags_a_regressor_whose_rmse_against_the_targets_grew() -> None:
    old, same, worse = (_results(1.0, 0.02, None), _results(1.0, 0.02, None), _results(1.0, 0.02, None))
    for results, rmse in ((old, 10.0), (same, 10.2), (worse, 11.0)):
        results["models"][0]["variants"][0]["label_rmse"] = rmse
    assert {c["metric"]: c for c in compare(same, old)}["label RMSE"]["regression"] is False
    grew = {c["metric"]: c for c in compare(worse, old)}["label RMSE"]
    assert grew["regression"] is True and grew["change"] == pytest.approx(0.1)


def test_a_child_that_floods_stderr_before_answering_does_not_deadlock() -> None:
    """200 KiB on stderr (more than a pipe holds) before the answer: the line still arrives, and is timed."""
    import sys

    script = "import sys; sys.stderr.write('w' * 200_000); sys.stderr.flush(); print('answer', flush=True)"
    line, seconds = measure.timed_first_line([sys.executable, "-c", script], timeout=60)
    assert line.strip() == "answer" and seconds > 0


def test_a_child_that_hangs_is_killed_at_the_timeout() -> None:
    import sys

    with pytest.raises(RuntimeError, match="did not answer within 0.5 s"):
        measure.timed_first_line([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5)


def test_a_failing_child_reports_its_last_stderr_line() -> None:
    import sys

    with pytest.raises(RuntimeError, match="exit 3.*the reason"):
        measure.timed_first_line([sys.executable, "-c", "import sys; print('x'); sys.stderr.write('the reason'); "
                                  "sys.exit(3)"], timeout=60)


def test_the_task_metric_column_says_what_judged_the_variant() -> None:
    from edgeserve.bench.report import task_metric

    fidelity = {"cosine_min": 0.0638, "top1_agreement": 0.9944}
    judged = {"budget": {"targets": [{"metric": "map-iou", "min": 0.9}]}, "metrics": {"map-iou": 0.9974},
              "fidelity": fidelity, "accuracy": None}
    labelled = {"budget": {}, "metrics": {}, "fidelity": fidelity, "accuracy": 0.97}
    neither = {"budget": {}, "metrics": {}, "fidelity": fidelity, "accuracy": None}
    # a worst-row cosine of 0.06 (one row's probabilities swapped classes) is not the task's measure of a
    # classifier judged by labels: how often it picks fp32's class is
    assert (task_metric(judged), task_metric(labelled), task_metric(neither)) == (
        "map-iou 0.9974", "top1 0.9944", "cos 0.0638")
