"""The shortest input each variable axis takes: measured on the converted model, recorded in its signature.

A model whose inputs have a variable length (a waveform's samples, an image's height, a sequence's steps) often has
a floor under it: an audio model's strided convolutions need hundreds of samples before they produce one frame, a
network that pools five times needs 32 pixels. Below it the engine fails deep inside ("Invalid input shape: {1}"
from a Conv node, "CpuBlockedMemoryDesc overflow" from OpenVINO), which tells a caller nothing. The converter finds
the floor by running the converted model on one held-out row cut shorter along the axis, and the input contract
then refuses a shorter input saying how long it must be.

The search doubles the length from 1 until the model runs, then bisects between the last failure and that success:
the shortest length that runs with every shorter one tried failing. It does not bisect down from the full length:
a network that takes only multiples of 32 fails at most lengths between, and a bisection from 224 would land on
224 and refuse 32, 64, ... that run. Axes that share a name (``input_ids`` and ``attention_mask`` both ``[batch,
sequence]``) are cut together. A model that runs at length 1 (most) costs one run per axis.

What is recorded is a floor, not a fixed size: only a length that runs below the sample's own (a size the model
takes only as traced is :mod:`.sizes`' finding, and an input cut out of step with another it must match, as a
decoder's ``input_ids`` with a ``past_sequence_length + sequence_length`` mask, runs only at the full length).
A dimension named by an expression, or named in one, is never cut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from ..dims import names_in
from ..tensors import TensorSpec
from .sizes import dim_groups

log = logging.getLogger(__name__)

Run = Callable[[dict[str, np.ndarray]], object]


def variable_axes(specs: Sequence[TensorSpec]) -> list[list[tuple[str, int]]]:
    """Groups of (input, axis) whose size varies (a named or unknown dimension that is not the batch axis); a name
    the inputs share makes one group. Dimensions tied to others by an expression are left out."""
    groups, derived = dim_groups(specs)
    tied = {name for expr in derived for name in names_in(expr)}
    return [members for dim, members in groups.items() if dim not in tied]


def shortest_lengths(run: Run, specs: Sequence[TensorSpec], sample: Mapping[str, np.ndarray]) -> tuple[TensorSpec, ...]:
    """``specs`` with the shortest length each variable axis runs at (``TensorSpec.shortest``), found by running
    ``run`` on ``sample`` (one row of every input, which runs) cut along each axis in turn."""
    found: dict[str, dict[int, int]] = {}
    for group in variable_axes(specs):
        lengths = {sample[name].shape[axis] for name, axis in group if name in sample}
        if len(lengths) != 1:
            continue  # inputs that disagree, or none in the sample: nothing to cut
        full = lengths.pop()

        def runs(length: int, group: list[tuple[str, int]] = group) -> bool:
            return _runs(run, _cut(sample, group, length))

        least = _least(runs, full)
        if 1 < least < full:  # a floor; only the full length running says nothing of one
            log.info("inputs %s need at least %d along their variable axis", group, least)
            for name, axis in group:
                found.setdefault(name, {})[axis] = least
    return tuple(replace(s, shortest=tuple(sorted(found[s.name].items()))) if s.name in found else s for s in specs)


def _least(runs: Callable[[int], bool], full: int) -> int:
    """The shortest length in ``1 .. full`` that runs, every shorter one tried having failed (``full`` runs)."""
    if full <= 1 or runs(1):
        return 1
    failed, length = 1, 2
    while length < full and not runs(length):
        failed, length = length, length * 2
    works = min(length, full)
    while works - failed > 1:
        mid = (failed + works) // 2
        if runs(mid):
            works = mid
        else:
            failed = mid
    return works


def _cut(sample: Mapping[str, np.ndarray], group: Sequence[tuple[str, int]], length: int) -> dict[str, np.ndarray]:
    feed = dict(sample)
    for name, axis in group:
        index = (slice(None),) * axis + (slice(0, length),)
        feed[name] = np.ascontiguousarray(feed[name][index])
    return feed


def _runs(run: Run, feed: dict[str, np.ndarray]) -> bool:
    try:
        run(feed)
    except Exception:  # noqa: BLE001 - any engine failure means "too short"; the contract refuses it from now on
        return False
    return True
