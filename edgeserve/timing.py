"""Timing variants against each other, interleaved round by round, as the converter's auto search and the
benchmark harness both do. Lives below both so that neither imports the other."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .fidelity import percentiles

Call = Callable[[], object]
NOISY_SPREAD = 0.10
"""A metric whose per-round medians spread by more than this fraction of their median is flagged as noisy."""


def order(names: Sequence[str], round_index: int) -> list[str]:
    """Forward on even rounds, backward on odd ones, and for three or more variants rotated by one every two
    rounds: over ``2 n`` rounds each variant sits at every place twice (three variants: all six orders, so each
    runs after each other one).

    NOTE: flipping alone left the middle one of three always right after another variant, whose engine threads
    were still spinning: the wide MLP with batching on read 0.80-0.87 of off there, in three runs, and 1.04-1.07
    rotated (the A/A pair 0.95-1.16)."""
    shift = (round_index // 2) % len(names) if len(names) > 2 else 0
    turned = list(names[shift:]) + list(names[:shift])
    return turned if round_index % 2 == 0 else turned[::-1]


def estimate_call_time(call: Call, *, warmup_s: float = 0.2, min_warmup: int = 5, probes: int = 5) -> float:
    """Warm up (at least ``min_warmup`` calls and ``warmup_s`` seconds: caches, allocator, thread pool, clocks),
    then time a few calls. Without a real warm-up the first variant measured pays for everyone's start-up."""
    start = time.perf_counter()
    n = 0
    while n < min_warmup or time.perf_counter() - start < warmup_s:
        call()
        n += 1
        if n >= 10_000:
            break
    start = time.perf_counter()
    for _ in range(probes):
        call()
    return (time.perf_counter() - start) / probes


def calls_for(budget_s: float, per_call_s: float, *, low: int = 10, high: int = 5000) -> int:
    return int(min(high, max(low, budget_s / max(per_call_s, 1e-7))))


def summarise_rounds(samples_by_round: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Percentiles over all samples, the median per round, and how much those round medians spread."""
    flat = [s for r in samples_by_round for s in r]
    per_round = [float(np.median(r)) for r in samples_by_round if len(r)]
    median = float(np.median(per_round)) if per_round else float("nan")
    spread = (max(per_round) - min(per_round)) / median if per_round and median > 0 else 0.0
    return {
        **percentiles(flat),
        "mean": float(np.mean(flat)) if flat else float("nan"),
        "samples": len(flat),
        "round_medians": per_round,
        "spread": spread,
        "noisy": spread > NOISY_SPREAD,
    }


def latency(calls: Mapping[str, Call], *, rounds: int, budget_s: float) -> dict[str, dict[str, Any]]:
    """Per-call latency of each variant, interleaved by round, after an uncounted warm-up."""
    names = list(calls)
    per_call = {n: estimate_call_time(calls[n]) for n in names}
    n_calls = {n: calls_for(budget_s / (rounds * len(names)), per_call[n]) for n in names}
    samples: dict[str, list[list[float]]] = {n: [] for n in names}
    clock = time.perf_counter
    for r in range(rounds):
        for n in order(names, r):
            call, times = calls[n], []
            for _ in range(n_calls[n]):
                t0 = clock()
                call()
                times.append(clock() - t0)
            samples[n].append(times)
    return {n: summarise_rounds(samples[n]) for n in names}


def speedups(stats: Mapping[str, Mapping[str, Any]], baseline: str) -> dict[str, float]:
    """Each variant's speedup over the baseline, from one interleaved measurement: the median over rounds of the
    baseline's round median over the variant's, so that a slow spell of the machine, which falls on neighbouring
    rounds of both, cancels (pooling every call's time and comparing p50s let it move a speedup by 20%: a
    candidate at a median 0.96x of fp32 head to head read up to 1.18x in 20 pooled measurements, at most 1.03x
    paired).
    Stats without rounds fall back to the ratio of p50s."""
    base = stats[baseline]
    out: dict[str, float] = {}
    for name, s in stats.items():
        mine, theirs = s.get("round_medians") or [], base.get("round_medians") or []
        if mine and len(mine) == len(theirs) and min(mine) > 0:
            out[name] = float(np.median(np.asarray(theirs) / np.asarray(mine)))
        elif s.get("p50"):
            out[name] = base["p50"] / s["p50"]
    return out
