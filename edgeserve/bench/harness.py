"""``bench``: build every variant of a model with the converter, then measure them all on the same data.

Per model: variants are converted (a failure is recorded with its reason and the rest carry on), loaded in
this process, measured interleaved round by round, and started cold in fresh processes. The accuracy side
comes from the converter's verification on the held-out evaluation data, against the fp32 source.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import write_npz
from ..config import SessionConfig, available_cores
from ..converter.api import convert
from ..converter.data import Samples
from ..environment import environment
from ..errors import ConfigError, EdgeserveError, first_line
from ..examples import example_names
from ..names import check_name
from ..timing import speedups
from . import machine, measure
from .sources import ModelSource, cycling, data_label, load_samples, make_feeds, resolve_source
from .variants import BASELINE, Variant, parse_variants

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """How a benchmark run measures."""

    variants: tuple[str, ...] | None = None
    """Variant names; ``None`` means fp32, fp32-optimised, int8-dynamic, int8-static, fp16 and auto."""
    threads: int | None = None
    """Intra-op threads for every variant (``None``: all cores)."""
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Batch sizes for the throughput measurement."""
    concurrency: tuple[int, ...] = (4,)
    """Numbers of concurrent callers (batch 1 each) for the concurrency measurement."""
    rounds: int = 5
    """Interleaved rounds per measurement; the median and spread are over rounds."""
    time_budget: float = 40.0
    """Seconds of in-process measurement per model, shared by latency, throughput and concurrency."""
    cold_start_repeats: int = 3
    """Fresh processes per variant for cold start and peak memory (0 turns it off)."""
    auto_time_budget: float = 90.0
    """Seconds the ``auto`` variant's search may start new candidates for."""
    metrics: tuple[Any, ...] = ()
    """Task metrics with thresholds (:func:`edgeserve.target`) every variant is judged by; empty: inferred."""

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if any(c < 1 for c in self.concurrency):
            raise ConfigError(f"concurrency must be positive integers, got {self.concurrency}")
        if not (1 <= self.rounds <= 100):
            raise ConfigError(f"rounds must be between 1 and 100, got {self.rounds}")
        if self.time_budget <= 0:
            raise ConfigError(f"time_budget must be positive seconds, got {self.time_budget}")
        if self.cold_start_repeats < 0:
            raise ConfigError(f"cold_start_repeats must be 0 or more, got {self.cold_start_repeats}")
        parse_variants(self.variants)  # validates names


@dataclass
class VariantResult:
    name: str
    status: str = "ok"
    error: str | None = None
    recipe: dict[str, Any] = field(default_factory=dict)
    build_s: float | None = None
    size_bytes: int | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, Any] = field(default_factory=dict)
    concurrency: dict[str, Any] = field(default_factory=dict)
    concurrency_batched: dict[str, Any] = field(default_factory=dict)
    cold_start: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    """The task metrics' scores against fp32 (what judged the package)."""
    budget: dict[str, Any] = field(default_factory=dict)
    """The targets those metrics were held to, and why they were chosen."""
    accuracy: float | None = None
    accuracy_loss: float | None = None
    label_rmse: float | None = None
    """A regressor's RMS error against the held-out targets (``--labels`` that are values, not classes)."""
    label_rmse_increase: float | None = None
    """The variant's RMSE against the targets minus fp32's (positive: worse)."""
    speedup: float | None = None

    def fail(self, stage: str, exc: BaseException) -> None:
        self.status = "failed"
        self.error = f"{stage}: {first_line(exc, 400)}"

    def skip(self, reason: str) -> None:
        """Not a failure: the variant does not apply to this model (its engine lacks the model's operators) or to
        the data given (a static recipe without calibration rows)."""
        self.status = "skipped"
        self.error = reason


def bench_model(src: str | os.PathLike[str], out: Path, config: BenchConfig, *, data: Path | None = None,
                labels: str | None = None, calibration: Path | None = None,
                progress: Progress | None = None, model: Any = None, dynamic_axes: Any = None) -> dict[str, Any]:
    """Build and measure every variant of one model; returns the model's section of results.json. ``model``: what
    to convert instead of the file ``src`` (the module or estimator a pickle the caller vouched for holds);
    ``dynamic_axes``: the converter's, for a torch model traced on example rows."""
    say = progress or (lambda message: None)
    source = resolve_source(src, data=data, labels=labels, calibration=calibration)
    source.loaded, source.dynamic_axes = model, dynamic_axes
    variants = parse_variants(config.variants)
    threads = config.threads or available_cores()
    work = _fresh_work_folder(out, source.name)
    results = {v.name: VariantResult(v.name) for v in variants}

    packages = _build_all(source, variants, work, results, say, threads=threads, auto_budget=config.auto_time_budget,
                          metrics=config.metrics)
    models = _load_all(packages, threads, results)
    reference: dict[str, Any] | None = None
    try:
        samples = load_samples(source, models)
        if samples is not None and models:
            reference = _measure_in_process(models, samples, config, results, say)
            if config.cold_start_repeats:
                _measure_cold_start(packages, models, samples, work, threads, config, results, say)
    finally:
        for m in models.values():
            m.close()
    _relate_to_baseline(results)
    return {
        "model": source.name,
        "source": str(source.model),
        "data": data_label(source),
        "labels": source.labels,
        "threads": threads,
        "variants": [asdict(r) for r in results.values()],
        **({"machine": reference} if reference else {}),
    }


WORK_MARKER = ".edgeserve-bench"
"""The file that marks a folder as a benchmark's own work folder: only such a folder is ever replaced."""


def _fresh_work_folder(out: Path, name: str) -> Path:
    """``out/name`` made empty for this run. A folder there is replaced only when an earlier bench made it (it
    holds the marker file); anything else, or a link, is left alone and refused."""
    check_name(name, what="benchmark model name", error=ConfigError)  # manifests are checked too; stems are made safe
    work = out / name
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise ConfigError(f"{work} exists and is not a folder this benchmark made; choose another --out")
    if work.exists():
        marker = work / WORK_MARKER
        if marker.is_symlink() or not marker.is_file():
            raise ConfigError(f"{work} exists and was not made by edgeserve bench; choose another --out or move it")
        shutil.rmtree(work)
    (work / "variants").mkdir(parents=True)
    (work / WORK_MARKER).write_text("made by edgeserve bench; the next run replaces this folder\n", encoding="utf-8")
    return work


def _build_all(source: ModelSource, variants: Sequence[Variant], work: Path, results: dict[str, VariantResult],
               say: Progress, *, threads: int, auto_budget: float, metrics: Sequence[Any] = ()) -> dict[str, Path]:
    packages = {}
    for v in variants:
        r = results[v.name]
        if v.needs_calibration and source.calibration is None:
            r.skip("needs calibration data (--calibration CAL.npz)")  # what was asked of it, not a fault in it
            say(f"{source.name}: {v.name} skipped (no calibration data)")
            continue
        unsupported = _unsupported(source.model, v.backend) if source.loaded is None else None
        if unsupported:
            r.skip(unsupported)
            say(f"{source.name}: {v.name} skipped ({unsupported})")
            continue
        say(f"{source.name}: building {v.name}")
        t0 = time.perf_counter()
        try:
            pkg = convert(source.model if source.loaded is None else source.loaded, work / "variants" / v.name,
                          quantize=v.recipe, calibration=source.calibration, eval_data=source.evaluation,
                          labels=source.labels, name=source.name, overwrite=True, threads=threads,
                          time_budget=auto_budget, backend=v.backend, precision=v.precision, metrics=metrics,
                          dynamic_axes=source.dynamic_axes)
        except EdgeserveError as exc:
            r.fail("build", exc)
            say(f"{source.name}: {v.name} failed to build: {r.error}")
            continue
        r.build_s = time.perf_counter() - t0
        r.recipe = pkg.manifest.recipe
        if r.recipe.get("nothing_quantised"):  # the fp32 model under another name: measuring it would time noise
            r.skip(r.recipe["nothing_quantised"])
            say(f"{source.name}: {v.name} skipped ({r.recipe['nothing_quantised']})")
            continue
        if "auto" in r.recipe:
            say(f"{source.name}: auto chose {r.recipe['auto']['chosen']} ({r.recipe['auto']['reason']})")
        r.size_bytes = sum(f.stat().st_size for f in pkg.path.iterdir() if f.name.startswith(pkg.manifest.model_file))
        r.fidelity = pkg.manifest.fidelity.get("summary", {})
        r.metrics = pkg.manifest.fidelity.get("metrics") or {}
        r.budget = pkg.manifest.fidelity.get("budget") or {}
        acc = pkg.manifest.fidelity.get("accuracy") or {}
        r.accuracy = acc.get("converted")
        if acc.get("fp32") is not None and acc.get("converted") is not None:
            r.accuracy_loss = acc["fp32"] - acc["converted"]
        error = pkg.manifest.fidelity.get("label_rmse") or {}
        r.label_rmse = error.get("converted")
        if error.get("fp32") is not None and error.get("converted") is not None:
            r.label_rmse_increase = error["converted"] - error["fp32"]
        packages[v.name] = pkg.path
    return packages


def _unsupported(model: Path, backend: str | None) -> str | None:
    """Why ``backend`` cannot run the model at all, or None. OpenVINO reads no ONNX-ML operators (the classic
    machine-learning ops of scikit-learn exports: Scaler, TreeEnsemble, ZipMap …)."""
    if backend != "openvino":
        return None
    from ..modelfile import check_model_file

    try:
        view = check_model_file(model)
    except EdgeserveError:
        return None  # the build says what is wrong with the file
    ml = sorted({n.op_type for n in view.graph.node if n.domain == "ai.onnx.ml"})
    return f"openvino has no ai.onnx.ml operators ({', '.join(ml)})" if ml else None


def _load_all(packages: dict[str, Path], threads: int, results: dict[str, VariantResult]) -> dict[str, Any]:
    from ..runtime.model import load

    models = {}
    for name, path in packages.items():
        try:
            models[name] = load(path, config=SessionConfig(intra_op_threads=threads))
        except EdgeserveError as exc:
            results[name].fail("load", exc)
    return models


class _VariantFailed(Exception):
    """A measured call failed: carries the variant by name, so the harness never has to guess it from a message."""

    def __init__(self, variant: str, cause: EdgeserveError) -> None:
        super().__init__(f"{variant}: {cause}")
        self.variant = variant
        self.cause = cause


def _guarded(names: Sequence[str], results: dict[str, VariantResult], stage: str,
             fn: Callable[[list[str]], dict[str, Any]]) -> dict[str, Any]:
    """Run a measurement over the variants; a variant that raises is marked failed and the others re-measured."""
    alive = [n for n in names if results[n].status == "ok"]
    while alive:
        try:
            return fn(alive)
        except _VariantFailed as exc:
            results[exc.variant].fail(stage, exc.cause)
            alive.remove(exc.variant)
    return {}


def _measure_in_process(models: dict[str, Any], samples: Samples, config: BenchConfig,
                        results: dict[str, VariantResult], say: Progress) -> dict[str, Any]:
    """Latency, throughput and concurrency of every variant; returns the machine reference's own timings, measured
    in the same rounds (see :mod:`.machine`)."""
    names = list(models)
    budget = config.time_budget
    reference = machine.Reference(config.threads or available_cores())
    say(f"latency at batch 1 ({config.rounds} interleaved rounds)")
    feeds1 = make_feeds(samples, 1)
    lat = _guarded(names, results, "latency", lambda alive: measure.latency(
        {**{n: _safe_call(n, models[n], feeds1) for n in alive}, machine.NAME: reference.call(1)},
        rounds=config.rounds, budget_s=0.45 * budget))
    own: dict[str, Any] = {"latency": lat.pop(machine.NAME, {}), "throughput": {}}
    for n, stats in lat.items():
        results[n].latency = stats
    sizes = [b for b in config.batch_sizes if samples.stacked or b == 1]
    for bs in sizes:
        say(f"throughput at batch {bs}")
        feeds = make_feeds(samples, bs, count=4)

        def run(alive: list[str], feeds: list[dict[str, np.ndarray]] = feeds, bs: int = bs) -> dict[str, Any]:
            return measure.throughput({**{n: _safe_call(n, models[n], feeds) for n in alive},
                                       machine.NAME: reference.call(bs)}, bs, rounds=config.rounds,
                                      budget_s=0.35 * budget / len(sizes))

        thr = _guarded(names, results, "throughput", run)
        if machine.NAME in thr:
            own["throughput"][str(bs)] = thr.pop(machine.NAME)
        for n, stats in thr.items():
            results[n].throughput[str(bs)] = stats
    for callers in config.concurrency:
        say(f"{callers} concurrent callers, dynamic batching off and on")
        duration = 0.1 * budget / (len(names) * len(config.concurrency))
        for n in names:
            if results[n].status != "ok":
                continue
            try:
                batched = _batched_twin(models[n], config.threads)
                if batched is None:
                    results[n].concurrency[str(callers)] = measure.concurrent(
                        cycling(models[n], feeds1), callers=callers, duration_s=duration)
                    continue
                with batched:
                    # NOTE: warmed up first, uncounted, as the unbatched model is by the measures before this one: a
                    # fresh session's first runs are slow, and the batcher takes ~0.1 s of this load to measure
                    # whether batching pays for it. Then off and on in interleaved rounds (one reading each swings
                    # by 2x on a shared VM)
                    measure.concurrent(cycling(batched, feeds1), callers=callers, duration_s=min(0.25, duration))
                    both = measure.interleaved({"off": cycling(models[n], feeds1), "on": cycling(batched, feeds1)},
                                               callers=callers, duration_s=2 * duration)
                results[n].concurrency[str(callers)] = both["off"]
                results[n].concurrency_batched[str(callers)] = both["on"]
            except EdgeserveError as exc:
                results[n].fail("concurrency", exc)
    return {"latency_p50": own["latency"].get("p50"),
            "throughput": {bs: t.get("rows_per_s") for bs, t in own["throughput"].items()}}


def _batched_twin(model: Any, threads: int | None) -> Any:
    """The same package loaded again with dynamic batching as a user gets it by default (``BatchConfig()``: a
    lone request runs at once, batches form while the engine is busy); None without a batch axis."""
    from ..config import BatchConfig
    from ..runtime.model import load

    if model.path is None:
        return None
    # NOTE: the session configured as the unbatched model's (graph cache included): an fp16 CNN's freshly optimised
    # session answered 4 callers 0.6x as fast as its cached graph did, which read as batching's cost
    twin = load(model.path, config=SessionConfig(intra_op_threads=threads), golden="off",
                batching=BatchConfig())
    if twin.batcher is None:
        twin.close()
        return None
    return twin


def _safe_call(name: str, model: Any, feeds: list[dict[str, np.ndarray]]) -> Callable[[], object]:
    call = cycling(model, feeds)

    def wrapped() -> object:
        try:
            return call()
        except EdgeserveError as exc:
            raise _VariantFailed(name, exc) from exc

    return wrapped


def _measure_cold_start(packages: dict[str, Path], models: dict[str, Any], samples: Samples, work: Path, threads: int,
                        config: BenchConfig, results: dict[str, VariantResult], say: Progress) -> None:
    say(f"cold start and peak memory ({config.cold_start_repeats} fresh processes per variant)")
    inputs = work / "first_request.npz"
    write_npz(inputs, make_feeds(samples, 1, count=1)[0])
    alive = {n: packages[n] for n in models if results[n].status == "ok"}
    while alive:
        try:
            cold = measure.cold_start(alive, {n: inputs for n in alive}, threads, repeats=config.cold_start_repeats,
                                      cache_root=work / "graph-cache")
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            # find which variant fails in a single probe, record it, measure the rest
            culprit = next((n for n in alive if not _probe_ok(alive[n], inputs, threads)), None)
            if culprit is None:
                for n in alive:
                    results[n].cold_start = {"error": str(exc)[:300]}
                return
            results[culprit].fail("cold start", exc)
            del alive[culprit]
            continue
        for n, stats in cold.items():
            results[n].cold_start = stats
        return


def _probe_ok(package: Path, inputs: Path, threads: int) -> bool:
    try:
        measure.run_probe(package, inputs, threads)
        return True
    except (RuntimeError, subprocess.SubprocessError, OSError):
        return False


def _relate_to_baseline(results: dict[str, VariantResult]) -> None:
    """Each variant's speedup over fp32 as ``auto`` reads it (:func:`edgeserve.timing.speedups`): paired round by
    round, so a slow spell of the machine cancels."""
    base = results.get(BASELINE)
    if not (base and base.status == "ok" and base.latency.get("p50")):
        return
    timed = {name: r.latency for name, r in results.items() if r.latency.get("p50")}
    for name, ratio in speedups(timed, BASELINE).items():
        results[name].speedup = ratio


def bench(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], config: BenchConfig | None = None, *,
          data: Path | None = None, labels: str | None = None, calibration: Path | None = None,
          compare_with: str | os.PathLike[str] | None = None, progress: Progress | None = None,
          model: Any = None, dynamic_axes: Any = None) -> dict[str, Any]:
    """Benchmark each source (default: every bundled example) and write results.json, report.md and pareto.png.

    ``compare_with`` names an earlier results.json: every metric's change is reported, and regressions beyond the
    measured noise are flagged. ``model`` and ``dynamic_axes`` apply to one source (see :func:`bench_model`).
    """
    from .report import compare, write_reports

    old = _read_results(Path(compare_with)) if compare_with else None

    config = config or BenchConfig()
    sources = list(sources) or list(example_names())
    if len(sources) > 1 and (data or calibration):
        raise ConfigError("--data and --calibration apply to one model; benchmark one source at a time with them")
    if len(sources) != 1 and (model is not None or dynamic_axes):
        raise ConfigError("--trust-pickle and --dynamic-axis apply to one model file; benchmark it on its own")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    models = [bench_model(s, out, config, data=data, labels=labels, calibration=calibration, progress=progress,
                          model=model, dynamic_axes=dynamic_axes) for s in sources]
    results = {
        "edgeserve_bench": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": time.time() - started,
        "environment": {**environment(), "git_revision": _git_revision()},
        "settings": {**asdict(config), "variants": [v.name for v in parse_variants(config.variants)],
                     "threads": config.threads or available_cores(), "inter_op_threads": 1},
        "models": models,
    }
    if old is not None:
        results["comparison"] = compare(results, old)
    write_reports(results, out)
    return results


def _read_results(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the results to compare with, {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("edgeserve_bench") != 1 or not isinstance(data.get("models"), list):
        raise ConfigError(f"{path} is not an edgeserve bench results.json")
    return data


def _git_revision() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None
