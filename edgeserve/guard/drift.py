"""Streaming drift detection: CUSUM change detectors on every feature of every request, against the package's
reference, with thresholds set from a false-alarm budget.

How a live value is judged. Each feature's reference keeps quantile knots (see :mod:`.reference`); a live value
``x`` becomes its probability under the reference, ``u = F(x)``, drawn uniformly across the probability of the
small bucket ``x`` falls in — which, where ``x`` sits on an atom (a pixel that is mostly 0), is the atom's mass:
the *randomised probability integral transform*. Under the reference ``u`` is uniform on [0, 1] whatever the
feature's distribution, so one threshold fits every feature: skewed, discrete or constant. Two scores per value,
both mean 0 and variance 1 under the reference: ``m = sqrt(12) (u - 1/2)`` (location) and ``v = (m^2 - 1) /
sqrt(0.8)`` (scale: noise pushes ``u`` to the tails, a stuck sensor to the middle). The detectors do not draw
``u``: they take each score's *expectation over the draw* given the bucket (a table per feature, see
:class:`FeatureRanks`) — the same mean under the reference and under any shift, less variance, and no random
numbers to generate on the hot path. Each feeds a two-sided CUSUM, ``S = max(0, S + score - k)``, with ``k`` half
the shift to detect quickly (``GuardConfig.shift`` in reference standard deviations, 0.5 by default).

Thresholds. For increments ``y = score - k`` the CUSUM's false-alarm run length is at least ``exp(theta h)``,
where ``theta > 0`` solves ``E[exp(theta y)] = 1`` under the reference (Wald's identity; computed here from the
exact distribution of each randomised score). The expected scores keep that bound: by Jensen's inequality
``E[exp(theta E[y | bucket])] <= E[exp(theta y)] = 1``, so ``exp(theta S)`` is still a supermartingale. With ``D``
detectors (4 per feature) and a budget of at most one false alarm per ``B`` requests across all of them, ``h =
ln(D B) / theta``. The reference is a finite sample: ``k`` is lowered for ``theta`` by the largest error its
quantiles can make (``sqrt(12) (1/(2 sqrt(n)) + 1/(knots-1))``), so a stream drawn from the same population as the
reference, not from the reference rows themselves, stays inside the budget. A 0.5 sigma mean shift on one feature
of 64 moves ``m`` by ~0.48 per request: detected in ~250 requests at a budget of one false alarm per 10^6
(``tests/guard/test_drift.py`` measures it).

State is ``4 x features`` floats; a batch of rows updates it with a few numpy operations over the batch, never
a Python loop over values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SQRT12 = math.sqrt(12.0)
SCALE_SD = math.sqrt(0.8)
"""Standard deviation of ``m^2`` when ``m = sqrt(12) (u - 1/2)`` and ``u`` is uniform."""
GRID = 4096
"""Points of the quadrature over u that the thresholds are solved on."""
RELATIVE_FLOOR = 1e-3
"""A feature's range counts as at least this fraction of its magnitude (and of 1)."""
EXACT_ROWS = 1024
"""Up to this many rows, a fold sums its scores in float32 (see ``FeatureRanks.sums``)."""
CAP = 2.0
"""A detector's sum is capped at ``CAP x`` its threshold, so it comes back below the exit level in a bounded
number of requests once the shift ends."""


def _scores(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = (u - 0.5) * SQRT12
    return m, (m * m - 1.0) / SCALE_SD


def _theta(values: np.ndarray, k: float) -> float:
    """The positive root of E[exp(theta (X - k))] = 1 for X distributed as ``values`` (equally weighted)."""
    y = values - k

    def excess(theta: float) -> float:
        return float(np.mean(np.exp(theta * y))) - 1.0

    lo, hi = 1e-6, 1.0
    while excess(hi) < 0 and hi < 1e3:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if excess(mid) < 0:
            lo = mid
        else:
            hi = mid
    return lo


def thresholds(k: float, detectors: int, budget: float, rows: int, knots: int) -> np.ndarray:
    """Thresholds of the four detectors (m up, m down, v up, v down) for ``detectors`` detectors in all, at most
    one false alarm per ``budget`` requests, from a reference of ``rows`` rows kept as ``knots`` quantiles."""
    u = (np.arange(GRID) + 0.5) / GRID  # midpoints: E[f(u)] for uniform u, exact to ~1/GRID^2 for smooth f
    m, v = _scores(u)
    slack = SQRT12 * (0.5 / math.sqrt(max(rows, 1)) + 1.0 / max(knots - 1, 1))
    k_eff = max(k - slack, k / 4)
    level = math.log(detectors * budget)
    location = level / _theta(m, k_eff)  # m is symmetric: the same threshold up and down
    return np.array([location, location, level / _theta(v, k_eff), level / _theta(-v, k_eff)])


class FeatureRanks:
    """Maps ``[rows, features]`` values to their location and scale scores' sums per feature (see the module
    docstring).

    Each feature's range, widened by its span on both sides, is cut into ``BUCKETS`` equal buckets; from the
    quantile knots (linear between knots, jumps at atoms, and a thin tail of ``1 / (rows + 1)`` spread over the
    widening) each bucket gets the reference probability below it, ``lower``, and its own, ``mass``. A value's
    bucket is found by arithmetic, not by search, and its scores are the expectations of ``m`` and ``v`` for ``u``
    uniform on ``[lower, lower + mass]`` — the randomised probability integral transform of the bucketed value,
    averaged over its draw (uniform under the reference whatever the feature's distribution, atoms included, since
    an atom falls inside one bucket)."""

    BUCKETS = 768

    def __init__(self, knots: Sequence[Sequence[float]], rows: int = 1000) -> None:
        table = np.asarray(knots, dtype=np.float64)  # [features, n]
        self.features, self.n = table.shape
        lo, hi = table[:, 0], table[:, -1]
        # NOTE: a floor on the span, relative to the values: a feature that barely varies (a layer-normed output's
        # norm) must not turn the last digits of float rounding on another CPU into drift
        span = np.maximum(hi - lo, RELATIVE_FLOOR * np.maximum(np.maximum(np.abs(lo), np.abs(hi)), 1.0))
        width = 3.0 * span / self.BUCKETS
        # buckets cover [min - span, max + span], shifted half a bucket down: the reference's min and max (where a
        # discrete feature's atoms sit, the 0 and 1 of a category's share, a classifier's few confidences) then fall
        # mid-bucket, where the float32 arithmetic of :meth:`index` cannot move them across an edge into the
        # thin tail beside them (measured: a 3-valued confidence alarmed after 128 requests of the reference's mix)
        start = lo - span - width / 2
        edges = start[:, None] + width[:, None] * np.arange(self.BUCKETS + 1)[None, :]
        cdf = np.stack([_below(table[j], edges[j], 1.0 / (rows + 1), span[j]) for j in range(self.features)])
        lower = cdf[:, :-1].ravel()  # [features * BUCKETS]: P(x < bucket's left edge)
        mass = cdf[:, 1:].ravel() - lower
        self.mass = mass.astype(np.float32)
        m, v = expected_scores(lower, mass)
        self.m, self.v = m.astype(np.float32), v.astype(np.float32)
        self._mv = np.concatenate([np.stack([self.m, self.v], axis=1), np.zeros((1, 2), np.float32)])
        self.neutral = self.features * self.BUCKETS
        """The last row of ``_mv``: scores 0, what a NaN (a missing value the guard let through) adds."""
        """``[features * BUCKETS, 2]``: both scores of a bucket side by side, so one gather and one sum serve both
        (7.8 -> 3.4 us for 6 rows of 75 features, 17 -> 10 us for 64)."""
        # NOTE: float32, as the values mostly are: float64 factors would double every pass over the rows. The span's
        # relative floor keeps x / width under ~3e5 inside the widened range, where float32 resolves 1/30 of a bucket
        self.inverse = (1.0 / width).astype(np.float32)
        self.neg_start_scaled = (-start / width).astype(np.float32)
        self.offsets = (np.arange(self.features) * self.BUCKETS)[None, :]

    def index(self, x: np.ndarray) -> np.ndarray:
        """Each value's bucket, as an index into the flattened ``[features * BUCKETS]`` tables."""
        scaled = x * self.inverse
        scaled += self.neg_start_scaled
        np.fmax(scaled, 0.0, out=scaled)  # NOTE: fmax, not maximum: a NaN becomes 0 (and is set aside below)
        np.minimum(scaled, self.BUCKETS - 1, out=scaled)
        index = scaled.astype(np.intp)
        index += self.offsets
        missing = np.isnan(x)
        if missing.any():  # a missing value is no evidence either way: the reference's knots leave NaN out too
            index[missing] = self.neutral
        return index

    def sums(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per feature, the sums over the rows of ``[rows, features]`` ``x`` of the expected location and scale
        scores (float64)."""
        # NOTE: summed in float32 over a chunk of up to EXACT_ROWS rows (row by row along axis 0, so the error grows
        # with the rows: ~1e-5 of a threshold there), in float64 over more
        both = self._mv.take(self.index(x), axis=0).sum(axis=0, dtype=None if len(x) <= EXACT_ROWS else np.float64)
        both = both.astype(np.float64, copy=False)  # [features, 2]: one cast, none where summed in float64
        return both[:, 0], both[:, 1]


def expected_scores(lower: np.ndarray, mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[m] and E[v] for ``u`` uniform on ``[lower, lower + mass]`` (``mass`` may be 0)."""
    b = lower - 0.5
    a = b + mass
    m = SQRT12 * (a + b) / 2.0
    m2 = 12.0 * (a * a + a * b + b * b) / 3.0  # 12 E[(u - 1/2)^2] = 12 (a^3 - b^3) / (3 (a - b)), no division
    return m, (m2 - 1.0) / SCALE_SD


def _below(knots: np.ndarray, edges: np.ndarray, tail: float, span: float) -> np.ndarray:
    """P(x < e) for each edge, from quantile knots at evenly spaced levels, with ``tail`` mass spread linearly
    over the ``span`` below the lowest knot and above the highest."""
    n = len(knots)
    levels = np.linspace(tail, 1.0 - tail, n)
    left = np.searchsorted(knots, edges, "left")  # knots strictly below each edge
    out = np.empty(len(edges))
    inside = (left > 0) & (left < n)
    i = left[inside]
    k0, k1 = knots[i - 1], knots[i]
    frac = np.divide(edges[inside] - k0, k1 - k0, out=np.ones_like(k0), where=k1 > k0)
    out[inside] = levels[i - 1] + frac * (levels[i] - levels[i - 1])
    below = left == 0  # at or under the lowest knot
    out[below] = tail * np.clip((edges[below] - (knots[0] - span)) / span, 0.0, 1.0)
    above = left >= n  # over the highest knot
    out[above] = 1.0 - tail + tail * np.clip((edges[above] - knots[-1]) / span, 0.0, 1.0)
    return np.maximum.accumulate(out)


class Cusum:
    """Two-sided CUSUM on location and scale scores of every feature (4 sums per feature)."""

    def __init__(self, knots: Sequence[Sequence[float]], *, shift: float, budget: float, rows: int) -> None:
        self.ranks = FeatureRanks(knots, rows)
        self.features = self.ranks.features
        self.k = shift / 2.0
        self.h = thresholds(self.k, 4 * self.features, budget, rows, self.ranks.n)  # [4]
        self.limit = np.repeat(self.h, self.features)  # [4F], detector order: m+, m-, v+, v-
        self.cap = CAP * self.limit
        self.sums = np.zeros(4 * self.features)

    def update(self, x: np.ndarray) -> None:
        """Fold ``[rows, features]`` values in as one step: the sums move by the rows' total scores.

        A CUSUM on batch totals keeps the same false-alarm bound (``theta`` solves the same equation for a sum
        of i.i.d. increments) and detects at most one batch later than one row at a time."""
        self.add(*self.ranks.sums(x), len(x))

    def add(self, ms: np.ndarray, vs: np.ndarray, rows: int) -> None:
        """:meth:`update` from the rows' score sums per feature (``FeatureRanks.sums``)."""
        step = np.concatenate([ms, -ms, vs, -vs]) - rows * self.k
        np.add(self.sums, step, out=self.sums)
        np.clip(self.sums, 0.0, self.cap, out=self.sums)

    def score(self) -> np.ndarray:
        """Per feature, the highest of its four sums over its threshold (>= 1: alarm)."""
        return (self.sums / self.limit).reshape(4, self.features).max(axis=0)

    def reset(self) -> None:
        self.sums[:] = 0.0


def describe_thresholds(detector: Cusum) -> dict[str, Any]:
    names = ("location up", "location down", "scale up", "scale down")
    return {"k": detector.k, "h": dict(zip(names, (round(float(h), 2) for h in detector.h)))}
