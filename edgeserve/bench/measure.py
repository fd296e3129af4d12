"""Measurements: latency, throughput, concurrency (in process) and cold start, memory (in a fresh process).

Variants are always measured round by round, interleaved (A B C, C B A, B C A, A C B, …: see ``timing.order``),
so that a machine that slows down or speeds up during the run favours none of them. Every function returns plain
numbers in seconds/bytes.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..fidelity import percentiles
from ..timing import NOISY_SPREAD, Call, calls_for, estimate_call_time, latency, order, summarise_rounds

__all__ = ["calls_for", "cold_start", "concurrent", "estimate_call_time", "interleaved", "latency", "order", "run_probe",
           "summarise_rounds", "throughput"]


def throughput(calls: Mapping[str, Call], rows_per_call: int, *, rounds: int, budget_s: float) -> dict[str, dict[str, Any]]:
    """Rows per second calling back to back, median over interleaved rounds."""
    names = list(calls)
    per_call = {n: estimate_call_time(calls[n], warmup_s=0.05, min_warmup=2, probes=3) for n in names}
    n_calls = {n: calls_for(budget_s / (rounds * len(names)), per_call[n], low=3) for n in names}
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in order(names, r):
            call = calls[n]
            t0 = time.perf_counter()
            for _ in range(n_calls[n]):
                call()
            rates[n].append(rows_per_call * n_calls[n] / (time.perf_counter() - t0))
    out = {}
    for n in names:
        med = float(np.median(rates[n]))
        spread = (max(rates[n]) - min(rates[n])) / med if med > 0 else 0.0
        out[n] = {"rows_per_s": med, "round_values": rates[n], "spread": spread, "noisy": spread > NOISY_SPREAD}
    return out


def concurrent(call: Call, *, callers: int, duration_s: float, rows_per_call: int = 1) -> dict[str, Any]:
    """``callers`` threads calling back to back for ``duration_s``: rows/s and per-call latency percentiles."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(callers)]
    errors: list[BaseException] = []

    def worker(slot: list[float]) -> None:
        clock = time.perf_counter
        try:
            while not stop.is_set():
                t0 = clock()
                call()
                slot.append(clock() - t0)
        except BaseException as exc:  # reported, never swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(latencies[i],), daemon=True) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration_s)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    flat = [x for slot in latencies for x in slot]
    return {"callers": callers, "rows_per_s": rows_per_call * len(flat) / elapsed, "calls": len(flat), **percentiles(flat)}


def interleaved(calls: dict[str, Call], *, callers: int, duration_s: float, rounds: int = 5) -> dict[str, dict[str, Any]]:
    """:func:`concurrent` for several setups in ``rounds`` short rounds, interleaved (in ``timing.order``),
    ``duration_s`` each in all: per setup its median round (with ``round_values``, every round's rows/s). Setups
    compared side by side this way see the same moments of a noisy machine, where one long reading each would not."""
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in calls}
    for r in range(rounds):
        for n in order(list(calls), r):
            runs[n].append(concurrent(calls[n], callers=callers, duration_s=duration_s / rounds))
    out = {}
    for n, got in runs.items():
        ordered = sorted(got, key=lambda g: g["rows_per_s"])
        out[n] = {**ordered[len(ordered) // 2], "round_values": [g["rows_per_s"] for g in got]}
    return out


def _probe_command(package: Path | None, inputs: Path | None, threads: int, cache_dir: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "edgeserve.bench.probe", "--threads", str(threads)]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    if package is not None and inputs is not None:
        cmd += [str(package), str(inputs)]
    return cmd


def run_probe(package: Path | None, inputs: Path | None, threads: int, *, cache_dir: Path | None = None,
              timeout: float = 300) -> dict[str, Any]:
    """Start a fresh Python process that loads the package and answers once; time it from spawn to answer."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    line, answered = timed_first_line(_probe_command(package, inputs, threads, cache_dir), env=env, timeout=timeout)
    try:
        result = json.loads(line)
    except json.JSONDecodeError:
        raise RuntimeError(f"cold-start probe printed {line[:200]!r} instead of its JSON result") from None
    result["process_to_first_answer_s"] = answered
    return result


def timed_first_line(cmd: list[str], *, env: Mapping[str, str] | None = None, timeout: float = 300) -> tuple[str, float]:
    """Run ``cmd``; return its first line of stdout and the seconds from spawn to that line, once it exited 0.

    # NOTE: stderr goes to a file, not a pipe: a child that writes more than a pipe holds (64 KiB) to stderr before
    # its answer would otherwise block on that write while this process blocks reading stdout. The wait for the
    # line is bounded by ``timeout`` too, so a child that hangs is killed, not waited for."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env)
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            line = proc.stdout.readline().decode("utf-8", "replace") if ready else ""
            answered = time.perf_counter() - start
            if not ready:
                raise subprocess.TimeoutExpired(cmd, timeout)
            proc.stdout.read()  # drain, so the child never blocks on a full stdout pipe
            proc.wait(timeout=max(1.0, timeout - answered))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} did not answer within {timeout} s") from None
        finally:
            proc.stdout.close()
        if proc.returncode != 0 or not line.strip():
            err.seek(0)
            last = err.read().decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"cold-start probe failed (exit {proc.returncode}): {last[0][:300]}")
    return line, answered


def cold_start(packages: Mapping[str, Path], inputs: Mapping[str, Path], threads: int, *, repeats: int,
               cache_root: Path) -> dict[str, dict[str, Any]]:
    """Per variant, medians over ``repeats`` interleaved pairs of fresh processes: the first starts with an empty
    graph cache (it optimises and stores the graph), the second loads the stored graph. Peak RSS is the first's;
    a bare-import process gives the baseline it is compared with."""
    names = list(packages)
    runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {n: [] for n in names}
    baseline = [run_probe(None, None, threads) for _ in range(max(1, repeats // 2))]
    base_rss = float(np.median([b["peak_rss_bytes"] for b in baseline]))
    for r in range(repeats):
        for n in order(names, r):
            cache = cache_root / f"{n}-{r}"
            cold = run_probe(packages[n], inputs[n], threads, cache_dir=cache)
            warm = run_probe(packages[n], inputs[n], threads, cache_dir=cache)
            runs[n].append((cold, warm))
    out = {}
    for n in names:
        cold_runs = [c for c, _ in runs[n]]
        warm_runs = [w for _, w in runs[n]]

        def med(rs: list[dict[str, Any]], key: str) -> float:
            return float(np.median([x[key] for x in rs]))

        out[n] = {
            "process_to_first_answer_s": med(cold_runs, "process_to_first_answer_s"),
            "process_to_first_answer_cached_s": med(warm_runs, "process_to_first_answer_s"),
            "load_s": med(cold_runs, "load_s"),
            "load_cached_s": med(warm_runs, "load_s"),
            "cache_hits": sum(bool(w.get("from_cache")) for w in warm_runs),
            "first_predict_s": med(cold_runs, "first_predict_s"),
            "peak_rss_bytes": med(cold_runs, "peak_rss_bytes"),
            "rss_over_baseline_bytes": med(cold_runs, "peak_rss_bytes") - base_rss,
            "repeats": repeats,
        }
    return out
