"""Golden samples: answers recorded at conversion time, re-checked on the machine that loads the package."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Relative tolerance (against the largest reference magnitude) per recipe: an fp32 graph should agree to float
# rounding across CPU code paths; low-precision kernels differ more between instruction sets.
TOLERANCE = {"none": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int4": 5e-2, "dynamic": 5e-2, "static": 5e-2}


TASK_SLACK = 10.0
"""Answers off by more than the tolerance, but by at most this many times it, still pass when the package's task
metrics hold between them and the recorded ones; anything further off is a different answer whatever the metric."""


def tolerance_for(mode: str) -> float:
    return TOLERANCE.get(mode, 5e-2)


def mismatches(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], rel_tol: float) -> list[str]:
    """One line per output that differs beyond ``rel_tol`` (float) or at all (integers, strings)."""
    problems = []
    for name, ref in expected.items():
        got = np.asarray(actual.get(name))
        if got.shape != ref.shape:
            problems.append(f"output '{name}': shape {list(got.shape)}, recorded {list(ref.shape)}")
            continue
        if np.issubdtype(ref.dtype, np.floating):
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            if not np.array_equal(np.isfinite(ref64), np.isfinite(got64)):
                problems.append(f"output '{name}': NaN/Inf where the recorded output has none (or the reverse)")
                continue
            finite = np.isfinite(ref64)
            scale = float(np.max(np.abs(ref64[finite]))) if finite.any() else 0.0
            diff = float(np.max(np.abs(got64[finite] - ref64[finite]))) if finite.any() else 0.0
            if diff > rel_tol * max(scale, 1e-6) + 1e-7:
                problems.append(f"output '{name}': differs by up to {diff:.3g} (allowed {rel_tol * max(scale, 1e-6):.3g})")
        elif not np.array_equal(got, ref):
            changed = int(np.sum(got != ref))
            problems.append(f"output '{name}': {changed} of {ref.size} values differ")
    return problems


def task_agrees(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                inputs: Mapping[str, np.ndarray], records: list[dict]) -> bool:
    """True when the package's built-in task metrics hold between the recorded and this machine's answers: an
    argmax, a decoded string or a thresholded map that did not change is the same answer, even where the raw
    values moved by more than the tolerance (another instruction set's int8 or bf16 kernels)."""
    if not records:
        return False
    from .errors import EdgeserveError
    from .metrics import targets_from_record

    targets = targets_from_record(records)
    if not targets:
        return False
    try:
        return all(t.holds(t.metric.score(expected, actual, inputs)) for t in targets)
    except EdgeserveError:
        return False
