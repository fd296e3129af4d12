"""``auto``: the fastest recipe that stays inside the accuracy budget, found by measuring, never by assuming.

The search tries every candidate recipe that fits the model (dynamic and static int8 in their variants, int4
weight-only for MatMul-heavy graphs, fp16), measures each against the fp32 model on held-out data — latency
interleaved with fp32 in the same rounds, fidelity and accuracy on rows the calibration never saw — and keeps the
most sensitive nodes in fp32, greedily, for the fastest candidates that miss the budget. It returns the fastest
candidate inside the budget that beats fp32; otherwise the optimised fp32 model, and says why.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import available_backends, get_backend
from ..config import QuantizeConfig, SessionConfig
from ..errors import ConfigError, EdgeserveError, first_line
from ..fidelity import Budget, accuracy, compare_outputs
from ..timing import latency, speedups
from .data import Samples, run_samples
from .quantize import Progress, quantize

log = logging.getLogger(__name__)

QUANTISABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU",
                   "EmbedLayerNormalization", "MatMulNBits")
MIN_SPEEDUP = 1.03
"""A candidate must beat fp32 by at least this much: anything closer is within timing noise, not a win."""
SENSITIVITY_ROWS = 32


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
    fidelity: dict[str, float] = field(default_factory=dict)
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
    """The recipes worth trying on this graph, cheapest to build first."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    init = {t.name for t in model.graph.initializer}
    matmul_weights = sum(1 for n in model.graph.node if n.op_type == "MatMul" and any(i in init for i in n.input))
    plan = [
        Candidate("int8-dynamic", QuantizeConfig(mode="dynamic")),
        Candidate("int8-dynamic-per-channel", QuantizeConfig(mode="dynamic", per_channel=True)),
    ]
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
    if "openvino" in available_backends():
        from ..backends.openvino import has_native_bf16

        plan.append(Candidate("openvino-f32", QuantizeConfig(mode="none"), backend="openvino", precision="f32"))
        if has_native_bf16():
            plan.append(Candidate("openvino-bf16", QuantizeConfig(mode="none"), backend="openvino", precision="bf16"))
        if has_calibration:
            plan.append(Candidate("openvino-int8-qdq", QuantizeConfig(mode="static"), backend="openvino", precision="f32"))
            if _importable("nncf"):
                plan.append(Candidate("openvino-nncf-int8", QuantizeConfig(mode="nncf"), backend="openvino",
                                      precision="f32"))
    # NOTE: dynamic int8 on convolutions is usually slower than fp32 (ConvInteger lacks fast kernels); it stays in
    # the plan so that the measurement, not an assumption, rules it out.
    return plan


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


class _Evaluator:
    """Runs a model file over the held-out rows and compares it with the fp32 reference."""

    def __init__(self, reference: Path, held_out: Samples, labels: np.ndarray | None, threads: int,
                 sessions: ExitStack) -> None:
        self._threads = threads
        self._sessions = sessions
        self.held_out = held_out
        self.labels = labels
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
        return run_samples(session, self.held_out, session.outputs)

    def judge(self, session) -> tuple[dict[str, float], float | None]:
        out = self.outputs(session)
        summary = compare_outputs(out, self.reference)["summary"]
        acc = accuracy(out, self.labels) if self.labels is not None else None
        return summary, acc

    def timing_call(self, session) -> Callable[[], object]:
        feeds = list(self.held_out.feeds(1))[:16] or [next(self.held_out.feeds(1))]
        state = {"i": 0}

        def call() -> object:
            state["i"] += 1
            return session.run(feeds[state["i"] % len(feeds)])

        return call


def search(
    fp32: Path,
    int8_source: Path,
    work: Path,
    *,
    held_out: Samples,
    labels: np.ndarray | None,
    calibration: Samples | None,
    budget: Budget,
    time_budget: float = 300.0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the search; returns the chosen model file and the recipe (with the whole search) for the manifest.

    ``fp32`` is the optimised fp32 model (the fallback and the reference), ``int8_source`` the same graph prepared
    for the quantisers (pre-processed, opset >= 13, every tensor typed).
    """
    step = progress or (lambda stage, done, total: None)
    if budget.empty:
        budget = Budget(max_accuracy_drop=0.01) if labels is not None else Budget(min_cosine=0.99)
    if budget.max_accuracy_drop is not None and labels is None:
        raise ConfigError("max_accuracy_drop needs labelled evaluation data (eval_data= with labels=)")
    threads = threads or SessionConfig().threads
    started = time.monotonic()
    deadline = started + time_budget
    plan = plan_candidates(int8_source, has_calibration=calibration is not None)
    per_candidate_timing = max(0.3, min(3.0, time_budget / (6 * (len(plan) + 4))))
    with ExitStack() as sessions:  # every session the search opens, closed however it ends
        evaluator = _Evaluator(fp32, held_out, labels, threads, sessions)
        fp32_session = evaluator.reference_session
        for i, cand in enumerate(plan):
            if time.monotonic() > deadline:
                cand.status, cand.reason = "skipped", "time budget exhausted"
                continue
            step(f"auto: {cand.name}", i, len(plan))
            _try(cand, cand.config, fp32, int8_source, work, evaluator, fp32_session, calibration, budget,
                 per_candidate_timing)
        _repair(plan, fp32, int8_source, work, evaluator, fp32_session, calibration, budget, deadline,
                per_candidate_timing, step)
        _final_round(plan, evaluator, fp32_session, per_candidate_timing, step)
    fit = [c for c in plan if c.status == "ok" and c.within_budget and (c.speedup or 0) >= MIN_SPEEDUP]
    if fit:
        chosen = max(fit, key=lambda c: c.speedup or 0)
        path, reason = chosen.path, f"fastest inside the budget: {chosen.speedup:.2f}x fp32"
    else:
        chosen, path = None, fp32
        in_budget = [c for c in plan if c.status == "ok" and c.within_budget]
        reason = ("no candidate met the budget" if not in_budget else
                  f"no candidate inside the budget beat fp32 by {MIN_SPEEDUP:.2f}x or more")
        reason += "; keeping the optimised fp32 model"
    log.info("auto: %s", reason)
    assert path is not None
    recipe: dict[str, Any] = dict(chosen.recipe) if chosen else {"mode": "none"}
    recipe["auto"] = {
        "chosen": chosen.name if chosen else "fp32",
        "reason": reason,
        "budget": asdict(budget),
        "threads": threads,
        "fp32_accuracy": evaluator.acc_fp32,
        "held_out_rows": held_out.rows,
        "search_s": round(time.monotonic() - started, 2),
        "candidates": [c.record() for c in plan],
    }
    return path, recipe


def _try(cand: Candidate, config: QuantizeConfig, fp32: Path, int8_source: Path, work: Path, evaluator: _Evaluator,
         fp32_session, calibration: Samples | None, budget: Budget, timing_s: float) -> None:
    """Build one recipe, then measure its fidelity and its latency against fp32 (interleaved)."""
    suffix = f"-x{len(config.nodes_to_exclude)}" if config.nodes_to_exclude else ""
    dst = work / f"auto-{cand.name}{suffix}.onnx"
    source = int8_source  # pre-processed and fully typed: what every recipe, fp16 and int4 included, needs
    if config.mode == "none":
        source = fp32
    cache = work / f"calibration-{config.calibration_method}-{config.activation_type or 'auto'}.json"
    try:
        recipe = quantize(source, dst, config, calibration=calibration,
                          calibration_cache=cache if config.mode == "static" else None)
        session = evaluator.open(dst, cand.backend, cand.precision)
    except EdgeserveError as exc:
        cand.status, cand.reason = "failed", first_line(exc)
        return
    try:
        summary, acc = evaluator.judge(session)
        stats = latency({"fp32": evaluator.timing_call(fp32_session), cand.name: evaluator.timing_call(session)},
                        rounds=3, budget_s=timing_s)
    except EdgeserveError as exc:
        cand.status, cand.reason = "failed", first_line(exc)
        return
    finally:
        session.close()
    missed = budget.violations(summary, evaluator.acc_fp32, acc)
    cand.status = "ok"
    cand.recipe = {**recipe, "backend": cand.backend, "precision": cand.precision}
    cand.path = dst
    cand.fidelity = {k: v for k, v in summary.items() if k in ("cosine_min", "cosine_mean", "top1_agreement",
                                                              "agreement", "max_rel_error", "mean_rel_error")}
    cand.accuracy = acc
    cand.latency_p50_ms = stats[cand.name]["p50"] * 1e3
    cand.speedup = speedups(stats, "fp32")[cand.name]
    cand.within_budget = not missed
    cand.nodes_kept_fp32 = list(config.nodes_to_exclude)
    cand.reason = "; ".join(missed) if missed else None


def _final_round(plan: list[Candidate], evaluator: _Evaluator, fp32_session, timing_s: float,
                 step: Callable[[str, int, int], None], finalists: int = 3) -> None:
    """Time the best few candidates inside the budget again, together with fp32 in one interleaved measurement:
    one candidate at a time is noisy on a shared machine, and the choice should rest on a like-for-like race."""
    best = sorted((c for c in plan if c.status == "ok" and c.within_budget and c.path is not None),
                  key=lambda c: -(c.speedup or 0))[:finalists]
    if not best:
        return
    step("auto: final timing", 0, 1)
    try:
        sessions = {c.name: evaluator.open(c.path, c.backend, c.precision) for c in best if c.path is not None}
        calls = {"fp32": evaluator.timing_call(fp32_session)}
        calls.update({name: evaluator.timing_call(s) for name, s in sessions.items()})
        stats = latency(calls, rounds=5, budget_s=timing_s * (len(calls) + 1))
    except EdgeserveError:
        return
    ratio = speedups(stats, "fp32")
    for c in best:
        c.speedup_first = c.speedup
        c.speedup = ratio[c.name]
        c.latency_p50_ms = stats[c.name]["p50"] * 1e3


def _repair(plan: list[Candidate], fp32: Path, int8_source: Path, work: Path, evaluator: _Evaluator, fp32_session,
            calibration: Samples | None, budget: Budget, deadline: float, timing_s: float,
            step: Callable[[str, int, int], None]) -> None:
    """For the fastest int8 candidates that beat fp32 but miss the budget, keep sensitive nodes in fp32."""
    best_fit = max([c.speedup or 0.0 for c in plan if c.status == "ok" and c.within_budget], default=0.0)
    failing = sorted(
        (c for c in plan if c.status == "ok" and not c.within_budget and c.config.mode in ("static", "dynamic", "nncf")
         and (c.speedup or 0) >= max(MIN_SPEEDUP, best_fit)),
        key=lambda c: -(c.speedup or 0),
    )[:2]
    for cand in failing:
        if time.monotonic() > deadline:
            return
        assert cand.path is not None
        ranking = rank_sensitivity(int8_source, cand.path, evaluator.held_out, threads=SessionConfig().threads)
        if not ranking:
            continue
        k = 1
        while k <= max(1, len(ranking) // 2) and time.monotonic() < deadline:
            excluded = tuple(name for name, _ in ranking[:k])
            repaired = Candidate(f"{cand.name}+fp32x{k}", QuantizeConfig(**{**asdict(cand.config), "nodes_to_exclude": excluded}),
                                 backend=cand.backend, precision=cand.precision)
            step(f"auto: {repaired.name}", 0, 1)
            _try(repaired, repaired.config, fp32, int8_source, work, evaluator, fp32_session, calibration, budget,
                 timing_s)
            repaired.recipe.setdefault("sensitivity", [{"node": n, "score": round(s, 6)} for n, s in ranking[:k]])
            plan.append(repaired)
            if repaired.status != "ok" or repaired.within_budget or (repaired.speedup or 0) < MIN_SPEEDUP:
                break
            k *= 2


def rank_sensitivity(fp32: Path, quantised: Path, held_out: Samples, *, threads: int) -> list[tuple[str, float]]:
    """Nodes ranked by the error their quantisation adds: relative error of the node's output minus that of its
    input, from activations of the fp32 and the quantised graph on the same held-out rows (names match, as the
    quantisers keep the float tensors' names)."""
    import onnx

    from ..backends.onnxruntime import BACKEND

    model = onnx.load(str(fp32), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type in QUANTISABLE_OPS and n.name and n.output]
    if not nodes:
        return []
    init = {t.name for t in model.graph.initializer}
    probes: dict[str, tuple[str, str | None]] = {}
    for n in nodes:
        act_in = next((i for i in n.input if i and i not in init), None)
        probes[n.name] = (n.output[0], act_in)
    wanted = sorted({t for pair in probes.values() for t in pair if t})
    rows = held_out.take(0, min(SENSITIVITY_ROWS, held_out.rows))
    config = SessionConfig(intra_op_threads=threads, cache_dir=None)
    acts = []
    for path in (fp32, quantised):
        with tempfile.TemporaryDirectory(prefix="edgeserve-probe-") as tmp, ExitStack() as stack:
            exposed = _expose(path, wanted, onnx, Path(tmp))
            session = BACKEND.open(exposed, config, label=path.name)
            stack.callback(session.close)
            names = [o.name for o in session.outputs]
            values: dict[str, list[np.ndarray]] = {}
            for feed in rows.feeds(SENSITIVITY_ROWS):
                for name, v in zip(names, session.run(feed, names)):
                    values.setdefault(name, []).append(np.asarray(v, dtype=np.float64).reshape(-1))
        acts.append({k: np.concatenate(v) for k, v in values.items()})
    ref, got = acts

    def rel(t: str | None) -> float:
        if not t or t not in ref or t not in got or ref[t].shape != got[t].shape:
            return 0.0
        return float(np.linalg.norm(got[t] - ref[t]) / (np.linalg.norm(ref[t]) + 1e-12))

    scores = [(name, rel(out) - rel(inp)) for name, (out, inp) in probes.items() if out in ref and out in got]
    return sorted(scores, key=lambda s: -s[1])


def _expose(path: Path, tensors: Sequence[str], onnx: Any, folder: Path) -> Path:
    """A copy of the model with ``tensors`` added as outputs (those that exist and are float)."""
    model = onnx.load(str(path))
    produced = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    existing = {o.name for o in model.graph.output}
    for t in tensors:
        if t in produced and t not in existing:
            model.graph.output.add().name = t
    dst = folder / (path.stem + ".probe.onnx")
    onnx.save_model(model, str(dst))
    return dst
