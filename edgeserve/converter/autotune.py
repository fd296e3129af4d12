"""``auto``: the fastest recipe that stays inside the accuracy budget, found by measuring, never by assuming.

The search tries every candidate recipe that fits the model (dynamic and static int8 in their variants, NNCF,
int4 weight-only for MatMul-heavy graphs, fp16, OpenVINO f32/bf16/int8), each built from the graph its engine runs
best (OpenVINO from the exported graph, the quantisers from the prepared one; the other when that one fails) in a
child process held to the conversion's memory budget. It measures each against the fp32 model on held-out data —
latency interleaved with fp32 in the same rounds, the budget's task metrics (:mod:`edgeserve.metrics`) and
accuracy on rows the calibration never saw — keeps the most sensitive nodes in fp32 for the fastest candidates
that narrowly miss the budget, and races the best again. It returns the fastest candidate inside the budget that
beats fp32; otherwise the optimised fp32 model, and says why.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import available_backends, get_backend
from ..config import QuantizeConfig, SessionConfig
from ..errors import ConfigError, EdgeserveError, first_line
from ..fidelity import Budget, Verdict, accuracy, compare_outputs
from ..metrics import MetricError
from ..timing import latency, speedups
from .data import Samples, run_samples
from .memory import MemoryBudget, MemoryBudgetExceeded, work_rows
from .prepare import quantised_ops
from .quantize import Progress, quantize

log = logging.getLogger(__name__)

QUANTISABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU",
                   "EmbedLayerNormalization", "MatMulNBits")
MIN_SPEEDUP = 1.03
SAME_SPEED = 1.03
"""Candidates within this factor of the fastest are equally fast (the timing's noise): the one closest to fp32
of them is chosen."""
"""A candidate must beat fp32 by at least this much: anything closer is within timing noise, not a win."""
MIN_PROGRESS = 0.1
"""A repair keeps doubling the nodes it keeps in fp32 only while each doubling takes this share off the shortfall."""
SENSITIVITY_ROWS = 32
ADDS_ERROR = 1e-6
"""A node whose quantisation raises the relative error of its output over its input's by no more than this adds
none: float32 round-off of the same computation, not quantisation."""
REPAIRABLE = ("static", "dynamic", "nncf")
PROBE_NODES = 3
"""How many of the nodes with the largest activation error the repair tries alone, to rank them by the metric."""
CONFIRMATIONS = 3
"""How many picks the head-to-head race may turn down before the choice is made among the confirmed ones only."""
RACE_ROUNDS = 8
"""Alternating rounds of a pick's race against fp32 alone: a speedup is the median of their paired ratios."""


@dataclass
class Candidate:
    name: str
    config: QuantizeConfig
    backend: str = "onnxruntime"
    precision: str | None = None
    """Engine precision (openvino: f32 or bf16); None runs the graph's own precision."""
    status: str = "pending"
    reason: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    speedup: float | None = None
    speedup_first: float | None = None
    """The speedup measured alone, before the final round re-timed the best candidates together."""
    speedup_final_round: float | None = None
    """The final round's speedup of a pick, before a race against fp32 alone confirmed it (``speedup`` is then the
    race's)."""
    scores: dict[str, float] = field(default_factory=dict)
    """The budget's metrics, keyed by metric."""
    shortfall: float = 0.0
    """How far outside the budget (0 inside): the repair tries near misses first."""
    fidelity: dict[str, float] = field(default_factory=dict)
    """Raw output measures (worst-row cosine and friends), kept for comparison with the task metrics."""
    accuracy: float | None = None
    within_budget: bool = False
    nodes_kept_fp32: list[str] = field(default_factory=list)
    path: Path | None = None

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("config")
        out.pop("path")
        return out


def plan_candidates(model_path: Path, *, has_calibration: bool) -> list[Candidate]:
    """The recipes worth trying on this graph, cheapest to build first (what a time budget cuts is last)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    init = {t.name for t in model.graph.initializer}
    matmul_weights = sum(1 for n in model.graph.node if n.op_type == "MatMul" and any(i in init for i in n.input))
    plan = [
        Candidate("int8-dynamic", QuantizeConfig(mode="dynamic")),
        Candidate("int8-dynamic-per-channel", QuantizeConfig(mode="dynamic", per_channel=True)),
    ]
    openvino = "openvino" in available_backends()
    if openvino:  # NOTE: early: no calibration to build, and often the fastest on x86 (on a ViT-B/16 the 300 s
        # budget ran out before them when they came last)
        from ..backends.openvino import has_native_bf16

        plan.append(Candidate("openvino-f32", QuantizeConfig(mode="none"), backend="openvino", precision="f32"))
        if has_native_bf16():
            plan.append(Candidate("openvino-bf16", QuantizeConfig(mode="none"), backend="openvino", precision="bf16"))
    if has_calibration:
        plan += [
            Candidate("int8-static-minmax", QuantizeConfig(mode="static")),
            Candidate("int8-static-minmax-per-channel", QuantizeConfig(mode="static", per_channel=True)),
            Candidate("int8-static-minmax-s8s8", QuantizeConfig(mode="static", activation_type="int8")),
            Candidate("int8-static-percentile", QuantizeConfig(mode="static", calibration_method="percentile")),
            Candidate("int8-static-entropy", QuantizeConfig(mode="static", calibration_method="entropy")),
        ]
    if has_calibration and _importable("nncf"):
        plan.append(Candidate("int8-nncf", QuantizeConfig(mode="nncf")))
    if matmul_weights >= 2:  # int4 weight-only only touches MatMul with constant weights
        plan.append(Candidate("int4-weight-only", QuantizeConfig(mode="int4")))
    plan.append(Candidate("fp16", QuantizeConfig(mode="fp16")))
    if openvino and has_calibration:
        plan.append(Candidate("openvino-int8-qdq", QuantizeConfig(mode="static"), backend="openvino", precision="f32"))
        if _importable("nncf"):
            plan.append(Candidate("openvino-nncf-int8", QuantizeConfig(mode="nncf"), backend="openvino",
                                  precision="f32"))
    # NOTE: dynamic int8 on convolutions is usually slower than fp32 (ConvInteger lacks fast kernels); it stays in
    # the plan so that the measurement, not an assumption, rules it out.
    if quantised_ops(model_path):  # quantised already: only what does not quantise it again (nor cast its
        # QuantizeLinear scales to fp16, which onnxruntime's fp16 converter does and then cannot load)
        plan = [c for c in plan if c.config.mode not in ("dynamic", "static", "nncf", "int4", "fp16")]
    return plan


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class Graphs:
    """The graphs a candidate can start from: the exported one (what OpenVINO, which fuses for itself, runs best),
    the optimised fp32 one (the reference) and the quantisers' prepared one."""

    exported: Path
    fp32: Path
    prepared: Path

    def for_candidate(self, cand: Candidate) -> list[tuple[str, Path]]:
        """Where to start, in order: a transformed graph an engine fails on is retried from the exported one."""
        if cand.backend == "openvino":
            first = [("exported", self.exported)]
            return first + ([("prepared", self.prepared)] if cand.config.mode != "none" else [("fp32", self.fp32)])
        if cand.config.mode == "none":
            return [("fp32", self.fp32)]
        return [("prepared", self.prepared), ("exported", self.exported)]


class _Evaluator:
    """Runs a model file over the held-out rows and judges it against the fp32 reference by the budget."""

    def __init__(self, reference: Path, held_out: Samples, labels: np.ndarray | None, budget: Budget, threads: int,
                 sessions: ExitStack, timing_batch: int = 1) -> None:
        self._threads = threads
        self._timing_feeds = timing_feeds(held_out, timing_batch)
        self._sessions = sessions
        self.held_out = held_out
        self.labels = labels
        self.budget = budget
        self.reference_session = self.open(reference)
        self.reference = self.outputs(self.reference_session)
        self.acc_fp32 = accuracy(self.reference, labels) if labels is not None else None

    def open(self, path: Path, backend: str = "onnxruntime", precision: str | None = None):
        """A session that closes when the search ends, however it ends (closing it earlier is fine too)."""
        config = SessionConfig(intra_op_threads=self._threads, cache_dir=None, backend=backend, precision=precision)
        session = get_backend(backend).open(path, config, label=path.name)
        self._sessions.callback(session.close)
        return session

    def outputs(self, session) -> dict[str, np.ndarray]:
        rows = work_rows(self.held_out.arrays, self.held_out.rows)
        return run_samples(session, self.held_out, session.outputs, batch_size=rows)

    def judge(self, session) -> tuple[Verdict, dict[str, float], float | None]:
        """The budget's verdict, the raw output measures (for the record) and the accuracy."""
        out = self.outputs(session)
        acc = accuracy(out, self.labels) if self.labels is not None else None
        verdict = self.budget.judge(self.reference, out, self.held_out.arrays, self.acc_fp32, acc)
        return verdict, compare_outputs(out, self.reference)["summary"], acc

    def timing_call(self, session) -> Callable[[], object]:
        feeds = self._timing_feeds
        state = {"i": 0}

        def call() -> object:
            state["i"] += 1
            return session.run(feeds[state["i"] % len(feeds)])

        return call


def timing_feeds(held_out: Samples, rows: int, most: int = 16) -> list[dict[str, np.ndarray]]:
    """What a candidate is timed on: up to ``most`` calls of ``rows`` held-out rows each, the rows taken in turn
    (and again from the first when there are fewer than that); one sample a call for a model without a batch
    axis, whatever ``rows`` says."""
    if rows == 1 or not held_out.stacked:
        return list(itertools.islice(held_out.feeds(1), most)) or [next(held_out.feeds(1))]
    calls = max(1, min(most, held_out.rows // rows))
    return [held_out.select(np.arange(i * rows, (i + 1) * rows) % held_out.rows) for i in range(calls)]


def search(
    graphs: Graphs,
    work: Path,
    *,
    held_out: Samples,
    labels: np.ndarray | None,
    calibration: Samples | None,
    budget: Budget,
    memory: MemoryBudget,
    time_budget: float = 300.0,
    threads: int | None = None,
    timing_batch: int = 1,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the search; returns the chosen model file and the recipe (with the whole search) for the manifest.

    ``budget`` must name what to hold candidates to (the converter infers a default when the user names none).
    """
    if budget.empty:
        raise ConfigError("auto needs a budget: a metric with its threshold, or max_accuracy_drop with labels")
    if budget.max_accuracy_drop is not None and labels is None:
        raise ConfigError("max_accuracy_drop needs labelled evaluation data (eval_data= with labels=)")
    threads = threads or SessionConfig().threads
    if timing_batch > 1 and not held_out.stacked:
        log.warning("auto: the model takes one sample a call (no batch axis), so candidates are timed one sample a "
                    "call, not %d rows", timing_batch)
    import onnx

    started = time.monotonic()
    plan = plan_candidates(graphs.prepared, has_calibration=calibration is not None)
    with ExitStack() as sessions:  # every session the search opens, closed however it ends
        s = Search(plan=plan, graphs=graphs, work=work, calibration=calibration, budget=budget, memory=memory,
                   evaluator=_Evaluator(graphs.fp32, held_out, labels, budget, threads, sessions, timing_batch),
                   deadline=started + time_budget,
                   timing_s=max(0.3, min(3.0, time_budget / (6 * (len(plan) + 4)))),
                   step=progress or (lambda stage, done, total: None),
                   writers=_writers_of_answers(onnx.load(str(graphs.prepared), load_external_data=False).graph))
        s.try_every_candidate()
        s.repair_near_misses()
        s.final_round()
        chosen, path, reason = s.confirmed_choice()
    log.info("auto: %s", reason)
    recipe: dict[str, Any] = dict(chosen.recipe) if chosen else {"mode": "none"}
    recipe["auto"] = {
        "chosen": chosen.name if chosen else "fp32",
        "reason": reason,
        "budget": budget.record(),
        "threads": threads,
        "timing_batch": timing_batch if held_out.stacked else 1,
        "fp32_accuracy": s.evaluator.acc_fp32,
        "held_out_rows": held_out.rows,
        "search_s": round(time.monotonic() - started, 2),
        "candidates": [c.record() for c in plan],
    }
    return path, recipe


def worth_repairing(plan: Sequence[Candidate], most: int = 2) -> list[Candidate]:
    """The int8 candidates outside the budget that are faster than fp32 (by ``MIN_SPEEDUP``) and than every
    candidate inside it, near misses first (then the faster), at most ``most``: what the repair works on."""
    best_fit = max([c.speedup or 0.0 for c in plan if c.status == "ok" and c.within_budget], default=0.0)
    return sorted(
        (c for c in plan if c.status == "ok" and not c.within_budget and c.config.mode in REPAIRABLE
         and (c.speedup or 0) >= max(MIN_SPEEDUP, best_fit) and c.shortfall < math.inf),
        key=lambda c: (c.shortfall, -(c.speedup or 0)),
    )[:most]


@dataclass
class Search:
    """One auto search: try every candidate, repair the near misses, race the best, choose."""

    plan: list[Candidate]
    graphs: Graphs
    work: Path
    calibration: Samples | None
    budget: Budget
    memory: MemoryBudget
    evaluator: _Evaluator
    deadline: float
    timing_s: float
    step: Callable[[str, int, int], None]
    writers: frozenset[str] = frozenset()
    """The nodes that write the model's answers: the repair probes them wherever they rank."""

    def try_every_candidate(self) -> None:
        nothing: dict[tuple[str, str], Candidate] = {}
        """The first candidate of each engine and quantisation mode that found nothing to quantise: its variants
        (per channel, another calibration method) would quantise the same nothing, a model build each."""
        for i, cand in enumerate(list(self.plan)):
            # NOTE: the first candidate always runs: a budget spent before the search began (loading, calibrating a
            # big model) would otherwise leave nothing tried, and whether it did depended on the machine's speed
            if i and time.monotonic() > self.deadline:
                cand.status, cand.reason = "skipped", "time budget exhausted"
                continue
            kind = (cand.backend, cand.config.mode)
            if kind in nothing:
                cand.status, cand.reason = "skipped", f"as {nothing[kind].name}: {nothing[kind].reason}"
                continue
            self.step(f"auto: {cand.name}", i, len(self.plan))
            self.trial(cand)
            if cand.recipe.get("nothing_quantised"):
                nothing[kind] = cand

    def trial(self, cand: Candidate) -> None:
        """Build the candidate from the first graph that works on its engine, then measure it against fp32."""
        failures = []
        for graph, source in self.graphs.for_candidate(cand):
            error = self._trial_from(cand, graph, source)
            if error is None:
                return
            failures.append(f"{graph} graph: {error}")
            if cand.status == "skipped":  # out of memory: another graph would not help
                break
        if cand.status != "skipped":
            cand.status = "failed"
        cand.reason = "; ".join(failures)

    def _trial_from(self, cand: Candidate, graph: str, source: Path) -> str | None:
        config = cand.config
        suffix = f"-x{len(config.nodes_to_exclude)}" if config.nodes_to_exclude else ""
        dst = self.work / f"auto-{_file_stem(cand.name)}{suffix}-{graph}.onnx"
        cache = self.work / f"calibration-{graph}-{config.calibration_method}-{config.activation_type or 'auto'}.json"
        try:
            recipe = self.memory.run(f"the {cand.name} candidate", quantize, source, dst, config,
                                     calibration=self.calibration,
                                     calibration_cache=cache if config.mode == "static" else None)
        except MemoryBudgetExceeded as exc:
            cand.status = "skipped"
            return first_line(exc)
        except EdgeserveError as exc:
            return first_line(exc)
        if recipe.get("nothing_quantised"):
            # NOTE: the fp32 model under another name (a tree ensemble has no operator an int8 quantiser takes):
            # timed against fp32 it read 1.03-1.21x by noise alone, and auto then chose "int8-static" for a
            # HistGradientBoostingClassifier that held not one int8 value
            cand.status, cand.reason = "skipped", f"{recipe['nothing_quantised']} (the same model as fp32)"
            cand.recipe = recipe
            return None
        try:
            session = self.evaluator.open(dst, cand.backend, cand.precision)
            try:
                verdict, raw, acc = self.evaluator.judge(session)
                stats = latency({"fp32": self.evaluator.timing_call(self.evaluator.reference_session),
                                 cand.name: self.evaluator.timing_call(session)}, rounds=3, budget_s=self.timing_s)
            finally:
                session.close()
        except MetricError:
            raise  # the metric itself does not fit the model: no candidate can be judged, say so at once
        except EdgeserveError as exc:
            return first_line(exc)
        cand.status = "ok"
        cand.recipe = {**recipe, "backend": cand.backend, "precision": cand.precision, "graph": graph}
        cand.path = dst
        cand.scores = verdict.scores
        cand.shortfall = verdict.shortfall
        cand.fidelity = {k: v for k, v in raw.items() if k in ("cosine_min", "cosine_mean", "top1_agreement",
                                                               "agreement", "max_rel_error", "mean_rel_error")}
        cand.accuracy = acc
        cand.latency_p50_ms = stats[cand.name]["p50"] * 1e3
        cand.speedup = speedups(stats, "fp32")[cand.name]
        cand.within_budget = verdict.ok
        cand.nodes_kept_fp32 = list(config.nodes_to_exclude)
        cand.reason = "; ".join(verdict.missed) if verdict.missed else None
        return None

    def repair_near_misses(self, most: int = 2) -> None:
        """For int8 candidates faster than the best one inside the budget that miss it, keep the most sensitive
        nodes in fp32, doubling their number until the budget holds (or a doubling gains nothing). Nodes are ranked
        by activation error, then the first few by their measured effect on the budget's metrics. Near misses go
        first: 0.0003 short of the threshold is more likely to be repaired within the time left than a candidate
        far outside it."""
        for cand in worth_repairing(self.plan, most):
            if time.monotonic() > self.deadline:
                return
            assert cand.path is not None
            ranking = rank_sensitivity(self.graphs.prepared, cand.path, self.evaluator.held_out,
                                       threads=SessionConfig().threads)
            ranking = self._by_effect_on_the_metric(cand, ranking)
            k = 2 if len(ranking) > 1 else 1
            left = cand.shortfall
            while ranking and k <= max(1, len(ranking) // 2) and time.monotonic() < self.deadline:
                excluded = tuple(name for name, _ in ranking[:k])
                repaired = Candidate(f"{cand.name}+fp32x{k}", replace(cand.config, nodes_to_exclude=excluded),
                                     backend=cand.backend, precision=cand.precision)
                self.step(f"auto: {repaired.name}", 0, 1)
                self.trial(repaired)
                repaired.recipe.setdefault("sensitivity", [{"node": n, "activation_error": round(s, 6)}
                                                       for n, s in ranking[:k]])
                self.plan.append(repaired)
                if repaired.status != "ok" or repaired.within_budget or (repaired.speedup or 0) < MIN_SPEEDUP:
                    break
                # NOTE: twice the nodes in fp32 that took less than a tenth off the shortfall will not reach the
                # budget by doubling again: measured on PP-OCRv4's detector, x2, x4 and x8 all stayed at 0.3403
                # map-iou of 0.95, a minute of the search
                if repaired.shortfall > left * (1 - MIN_PROGRESS):
                    break
                left = repaired.shortfall
                k *= 2

    def _by_effect_on_the_metric(self, cand: Candidate, ranking: list[tuple[str, float]],
                                 probes: int = PROBE_NODES) -> list[tuple[str, float]]:
        """Re-rank the nodes with the largest activation error by what keeping each alone in fp32 does to the
        budget's metrics (the smaller the remaining shortfall, the earlier): a node whose error the task never
        sees is not worth its speed. Each probe is a real candidate, recorded, and wins if it fits the budget."""
        # NOTE: and the nodes that write an answer, wherever they rank: their error is the task's own, keeping
        # them in fp32 costs little (a detector's last Concat), and the activation error cannot tell how much a
        # task minds it (a score column's 12% in a Concat of pixels read 0.004, under three Convs' 0.005-0.007)
        chosen = ranking[:probes] + [(n, s) for n, s in ranking[probes:] if n in self.writers]
        measured: list[tuple[str, float, float]] = []
        for name, score in chosen:
            if time.monotonic() > self.deadline:
                break
            probe = Candidate(f"{cand.name}+fp32[{name}]", replace(cand.config, nodes_to_exclude=(name,)),
                              backend=cand.backend, precision=cand.precision)
            self.step(f"auto: {probe.name}", 0, 1)
            self.trial(probe)
            probe.recipe.setdefault("sensitivity", [{"node": name, "activation_error": round(score, 6)}])
            self.plan.append(probe)
            effect = probe.shortfall if probe.status == "ok" else math.inf
            measured.append((name, score, effect))
        ordered = [(n, s) for n, s, _ in sorted(measured, key=lambda m: (m[2], -m[1]))]
        probed = {n for n, _ in ordered}
        return ordered + [(n, s) for n, s in ranking if n not in probed]

    def final_round(self, finalists: int = 3) -> None:
        """Time the best few candidates inside the budget again, together with fp32 in one interleaved measurement:
        one candidate at a time is noisy on a shared machine, and the choice should rest on a like-for-like race."""
        best = sorted((c for c in self.plan if c.status == "ok" and c.within_budget and c.path is not None),
                      key=lambda c: -(c.speedup or 0))[:finalists]
        if not best:
            return
        self.step("auto: final timing", 0, 1)
        try:
            sessions = {c.name: self.evaluator.open(c.path, c.backend, c.precision) for c in best if c.path is not None}
            calls = {"fp32": self.evaluator.timing_call(self.evaluator.reference_session)}
            calls.update({name: self.evaluator.timing_call(s) for name, s in sessions.items()})
            stats = latency(calls, rounds=5, budget_s=self.timing_s * (len(calls) + 1))
        except EdgeserveError:
            return
        ratio = speedups(stats, "fp32")
        for c in best:
            c.speedup_first = c.speedup
            c.speedup = ratio[c.name]
            c.latency_p50_ms = stats[c.name]["p50"] * 1e3

    def confirmed_choice(self) -> tuple[Candidate | None, Path, str]:
        """The choice, its pick raced against fp32 alone before it is kept.

        The final round times several candidates at once, and on a shared machine one of them can read fast there by
        luck: a small uint8-image CNN's static int8 read 1.25x fp32 in it, ran at 0.8-0.9x head to head, and read
        0.97x in a second search. A pick takes the race's speedup, and the choice is made again until it falls on a
        confirmed candidate (or fp32), at most ``CONFIRMATIONS`` races; then among the confirmed ones only."""
        confirmed: set[str] = set()
        while True:
            chosen, path, why = self.choice(among=confirmed if len(confirmed) >= CONFIRMATIONS else None)
            if chosen is None or chosen.name in confirmed:
                return chosen, path, why
            confirmed.add(chosen.name)
            self.step("auto: confirming " + chosen.name, 0, 1)
            try:
                speedup = self.race(chosen)
            except EdgeserveError:
                return chosen, path, why
            chosen.speedup_final_round, chosen.speedup = chosen.speedup, speedup

    def race(self, cand: Candidate) -> float:
        """The candidate's speedup over fp32, the two timed alone in alternating rounds: the median of the rounds'
        ratios."""
        assert cand.path is not None
        session = self.evaluator.open(cand.path, cand.backend, cand.precision)
        try:
            stats = latency({"fp32": self.evaluator.timing_call(self.evaluator.reference_session),
                             cand.name: self.evaluator.timing_call(session)},
                            rounds=RACE_ROUNDS, budget_s=2 * self.timing_s)
        finally:
            session.close()
        return speedups(stats, "fp32")[cand.name]

    def choice(self, among: set[str] | None = None) -> tuple[Candidate | None, Path, str]:
        """The fastest candidate inside the budget that beats fp32 (of those ``among``, if named)."""
        fit = [c for c in self.plan if c.status == "ok" and c.within_budget and (c.speedup or 0) >= MIN_SPEEDUP
               and (among is None or c.name in among)]
        if fit:
            fastest = max(fit, key=lambda c: c.speedup or 0)
            # NOTE: among the equally fast, the one that uses least of the budget (resnet: OpenVINO's int8 QDQ at
            # cosine 0.9997 against NNCF's 0.9949, both 1.36x)
            chosen = min((c for c in fit if (c.speedup or 0) * SAME_SPEED >= (fastest.speedup or 0)),
                         key=lambda c: (self.budget.used(c.scores), -(c.speedup or 0)))
            assert chosen.path is not None
            why = f"fastest inside the budget: {chosen.speedup:.2f}x fp32{_raced(chosen)}"
            if chosen is not fastest:
                why = (f"{chosen.speedup:.2f}x fp32, as fast as the fastest inside the budget ({fastest.name}, "
                       f"{fastest.speedup:.2f}x, within {SAME_SPEED - 1:.0%}) and closer to fp32 "
                       f"({self.budget.used(chosen.scores):.0%} of the budget used against "
                       f"{self.budget.used(fastest.scores):.0%})")
            return chosen, chosen.path, why
        in_budget = [c for c in self.plan if c.status == "ok" and c.within_budget]
        reason = ("no candidate met the budget" if not in_budget else
                  f"no candidate inside the budget beat fp32 by {MIN_SPEEDUP:.2f}x or more"
                  + "".join(f" ({c.name}: {c.speedup:.2f}x{_raced(c)})" for c in in_budget
                            if c.speedup_final_round is not None))
        kept = "the optimised source model (quantised already)" if quantised_ops(self.graphs.exported) \
            else "the optimised fp32 model"
        return None, self.graphs.fp32, f"{reason}; keeping {kept}"


def _raced(cand: Candidate) -> str:
    if cand.speedup_final_round is None:
        return ""
    return f" head to head, {cand.speedup_final_round:.2f}x in the final round"


def rank_sensitivity(fp32: Path, quantised: Path, held_out: Samples, *, threads: int) -> list[tuple[str, float]]:
    """Nodes ranked by the error their quantisation adds: relative error of the node's output minus that of its
    input, from activations of the fp32 and the quantised graph on the same held-out rows. Tensors are compared
    as the next node sees them (see ``_as_seen``). Only nodes the recipe changed and that add error are ranked:
    keeping in fp32 a node that adds none (a Gather of a shape, an LSTM the recipe left in float) costs a trial of
    the repair and cannot repair anything. The nodes ranked are those with weights, and whatever writes one of the
    model's answers: a detector's last Concat of boxes in pixels, scores in [0, 1] and class ids gets one int8
    scale for all three, every score rounded by up to half a step of 1.0 (and was never ranked before)."""
    import onnx

    model = onnx.load(str(fp32), load_external_data=False)
    writers = _writers_of_answers(model.graph)
    nodes = [n for n in model.graph.node if (n.op_type in QUANTISABLE_OPS or n.name in writers) and n.name
             and n.output]
    if not nodes:
        return []
    seen = _as_seen(onnx.load(str(quantised), load_external_data=False).graph)
    init = {t.name for t in model.graph.initializer}
    written = {o for n in model.graph.node for o in n.output}
    probes: dict[str, tuple[str, str | None]] = {}
    for n in nodes:
        if _left_in_float(n, seen, init):
            continue  # nothing to keep in fp32
        act_in = next((i for i in n.input if i and i not in init), None)
        out = seen.outputs.get(n.name, n.output[0])
        # NOTE: a node writing a graph output writes it renamed (``output0_QuantizeLinear_Input``), so that the
        # output keeps its name after the pair: compared under the fp32 name, as the model answers it
        probes[n.name] = (out if out in written else n.output[0], act_in)
    tensors = sorted({t for pair in probes.values() for t in pair if t})
    rel = _relative_errors(fp32, quantised, {t: seen.values.get(t, t) for t in tensors}, held_out, threads, onnx)
    scores = [(name, rel[out] - rel.get(inp or "", 0.0)) for name, (out, inp) in probes.items() if out in rel]
    return sorted((s for s in scores if s[1] > ADDS_ERROR), key=lambda s: -s[1])


def _writers_of_answers(graph: Any) -> frozenset[str]:
    """The names of the nodes that write one of the model's answers (its graph outputs)."""
    answers = {o.name for o in graph.output}
    return frozenset(n.name for n in graph.node if n.name and answers & set(n.output))


@dataclass(frozen=True)
class _Seen:
    outputs: dict[str, str]
    """Node name -> the float tensor it writes in the quantised graph. A static quantiser folds an activation into
    the node before it (Conv + Relu: the Conv writes the Relu's output, which its QuantizeLinear clamps)."""
    values: dict[str, str]
    """Float tensor -> the tensor that carries it to its consumers in the quantised graph: the DequantizeLinear
    after its QuantizeLinear where there is one (the value the next node really reads, clamp and rounding
    included), else itself."""
    nodes: dict[str, tuple[str, tuple[str, ...]]]
    """Node name -> (op type, inputs) in the quantised graph: a node found there as it was in fp32 was not
    quantised."""


def _left_in_float(node: Any, seen: _Seen, init: set[str]) -> bool:
    """True when the recipe did not quantise ``node``: it is in the quantised graph with the same inputs (an
    Attention or GRU the recipe does not cover, a Gather of a shape), or with the same weights and only its
    activations read through the QuantizeLinear/DequantizeLinear pair the node before it writes (a node the
    recipe excludes). A node without weights whose inputs are quantised counts as quantised: keeping it in fp32
    may drop those pairs."""
    got = seen.nodes.get(node.name)
    if got is None or got[0] != node.op_type or len(got[1]) != len(node.input):
        return False
    if got[1] == tuple(node.input):
        return True
    return any(i in init for i in node.input) and all(
        j == i or (i not in init and j == seen.values.get(i)) for i, j in zip(node.input, got[1]))


def _as_seen(graph: Any) -> _Seen:
    dequantised = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input}
    values = {n.input[0]: dequantised[n.output[0]] for n in graph.node
              if n.op_type == "QuantizeLinear" and n.input and n.output and n.output[0] in dequantised}
    outputs = {n.name: n.output[0] for n in graph.node
               if n.name and n.output and n.op_type not in ("QuantizeLinear", "DequantizeLinear")}
    return _Seen(outputs, values, {n.name: (n.op_type, tuple(n.input)) for n in graph.node if n.name})


def _relative_errors(fp32: Path, quantised: Path, pairs: dict[str, str], held_out: Samples, threads: int,
                     onnx: Any) -> dict[str, float]:
    """For each tensor t both graphs produce with the same shape, the mean over its channels of
    ||quantised[pairs[t]] - fp32[t]|| / ||fp32[t]|| per channel (axis 1 of a 4-D or 5-D tensor, an image's; else
    the last, a layer's features). Per channel, not over the whole tensor: an outlier weight wrecks every other
    channel of its layer while keeping its own, which then dominates a whole-tensor norm (measured with
    onnxruntime 1.32: a 300 among weights of ~0.2 zeroed 7 of 8 logits and scored 0.017, under the first layer's
    ordinary 0.018). A channel far quieter than the tensor's average is weighed against that average, not its own
    near-zero norm. Streams: both graphs run batch by batch and only the sums of squares per channel are kept, so
    memory is one batch of activations whatever the number of rows."""
    from ..backends.onnxruntime import BACKEND

    rows = held_out.take(0, min(SENSITIVITY_ROWS, held_out.rows))
    config = SessionConfig(intra_op_threads=threads, cache_dir=None)
    diff2: dict[str, np.ndarray] = {}
    ref2: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="edgeserve-probe-") as tmp, ExitStack() as stack:
        sessions = []
        for i, (path, names) in enumerate(((fp32, list(pairs)), (quantised, list(pairs.values())))):
            session = BACKEND.open(_expose(path, names, onnx, Path(tmp), f"{i}"), config, label=path.name)
            stack.callback(session.close)
            sessions.append(session)
        ref_session, got_session = sessions
        have_ref, have_got = {o.name for o in ref_session.outputs}, {o.name for o in got_session.outputs}
        both = {t: q for t, q in pairs.items() if t in have_ref and q in have_got}
        for feed in rows.feeds(work_rows(rows.arrays, rows.rows, most=SENSITIVITY_ROWS)):
            refs = ref_session.run(feed, list(both))
            gots = got_session.run(feed, list(both.values()))
            for name, ref, got in zip(both, refs, gots):
                r, g = np.asarray(ref, np.float64), np.asarray(got, np.float64)
                if r.shape != g.shape or (name in diff2 and _channels(r).shape[0] != len(diff2[name])):
                    continue
                with np.errstate(invalid="ignore", over="ignore"):
                    d = _channels(np.nan_to_num(g - r, posinf=1e30, neginf=1e30) ** 2).sum(axis=1)
                rr = _channels(np.nan_to_num(r, posinf=0, neginf=0) ** 2).sum(axis=1)
                diff2[name] = diff2[name] + d if name in diff2 else d
                ref2[name] = ref2[name] + rr if name in ref2 else rr
    out = {}
    for t, d in diff2.items():
        floor = 1e-3 * float(np.mean(ref2[t])) + 1e-24  # a quiet channel: against the tensor's average
        out[t] = float(np.mean(np.sqrt(d / np.maximum(ref2[t], floor))))
    return out


def _channels(values: np.ndarray) -> np.ndarray:
    """``values`` as ``[channels, everything else]``: axis 1 of an image's ``[N, C, H, W]`` (or 5-D), else the last
    axis (a layer's features); a scalar is one channel."""
    if values.ndim == 0:
        return values.reshape(1, 1)
    axis = 1 if values.ndim >= 4 else values.ndim - 1
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def _expose(path: Path, tensors: Sequence[str], onnx: Any, folder: Path, tag: str = "") -> Path:
    """A copy of the model with ``tensors`` added as outputs (those that exist and are float)."""
    model = onnx.load(str(path))
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t in produced and t not in existing:
            model.graph.output.add().name = t
    dst = folder / (path.stem + f".probe{tag}.onnx")
    onnx.save_model(model, str(dst))
    return dst


def _file_stem(name: str) -> str:
    """A file name for a candidate: its name carries node names as exporters write them ("/enc/layers.1/MatMul"),
    which may hold path separators or run past a file system's name limit."""
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", name)[:80]
    return f"{slug}-{hashlib.sha1(name.encode()).hexdigest()[:8]}" if slug != name else slug
