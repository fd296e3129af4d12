"""``convert``: frontend → prepare → quantise → verify → write package, all or nothing.

Everything is built in a staging folder beside the destination and renamed into place only once the result
loads, answers its golden inputs and stays inside the fidelity budget. A failure leaves nothing at the destination.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Collection, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import DataSource, read_arrays
from ..backends import get_backend
from ..batch_axes import batch_dependence, confirm_batch_axes
from ..config import QuantizeConfig, SessionConfig
from ..environment import environment
from ..errors import ConfigError, ConversionError, DataError, EdgeserveError, FidelityError, PackageError
from ..fidelity import Budget, accuracy, compare_outputs, label_error, make_budget
from ..golden import tolerance_for
from ..guard.envelope import envelope
from ..metrics import MetricError, Target, generic_targets, infer_targets, is_ragged
from ..names import check_name, safe_name
from ..package import GOLDEN_FILE, MODEL_FILE, Manifest, Package, is_package, write_golden, write_manifest
from ..tensors import TensorSpec
from .autotune import Graphs, search
from .data import Samples, batch_axes_from_data, check_samples, run_samples, synthetic_samples
from .frontends import is_sklearn_model, is_torch_module, is_torchscript_file, load_source
from .memory import MemoryBudget, parse_size, work_rows
from .prepare import (
    conv_inputs,
    describe_ops,
    embedding_inputs,
    fill_missing_types,
    finalize_model,
    optimize_fp32,
    position_table,
    preprocess_for_quantization,
    quantised_ops,
    upcast_half,
    upgrade_opset,
)
from .quantize import Progress, quantize
from .shortest import shortest_lengths
from .sizes import fixed_sizes

log = logging.getLogger(__name__)

GOLDEN_ROWS = 8
GOLDEN_BYTES = 2 << 20
"""Golden inputs and answers, bytes at most (one row at least): 8 of whisper's [80, 3000] features with their
[1500, 128] answers were 13 MiB beside a 1 MiB model, each re-run at every load."""
HOLDOUT_FRACTION = 0.2


def convert(
    source: Any,
    output: str | os.PathLike[str],
    *,
    quantize: str | QuantizeConfig = "none",
    calibration: DataSource | None = None,
    eval_data: DataSource | None = None,
    labels: str | None = None,
    reference: DataSource | None = None,
    name: str | None = None,
    version: str = "1",
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    metrics: Sequence[Target | str] = (),
    min_cosine: float | None = None,
    min_top1_agreement: float | None = None,
    max_accuracy_drop: float | None = None,
    accuracy_drop: str = "absolute",
    time_budget: float = 300.0,
    threads: int | None = None,
    timing_batch: int = 1,
    backend: str | None = None,
    precision: str | None = None,
    allowed_domains: Sequence[str] = (),
    max_memory: int | str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Package:
    """Convert a model into a verified package at ``output`` and return it.

    ``source`` is a path to an ONNX file, an ``onnx.ModelProto``, a ``torch.nn.Module`` (with
    ``example_inputs``; every input and output gets a dynamic batch axis 0 unless ``dynamic_axes`` says otherwise,
    in torch's ``{name: {axis: "dim_name"}}`` form) or a fitted scikit-learn estimator (with a few rows of X as ``example_inputs``).
    ``calibration`` feeds static quantisation and, unless ``reference`` (rows like those the model will serve;
    prefer it when you have more of them) is given, the reference statistics the runtime's envelope and drift
    checks compare requests with; ``eval_data`` (held out, with
    an optional ``labels`` array) measures fidelity to the fp32 model; without it a held-out tail of the
    calibration data is used, and without either, seeded synthetic inputs.

    The budget — ``metrics`` (task metrics with thresholds: ``edgeserve.target("pooled-cosine", min=0.99)``,
    ``"top1>=0.98"``, a user function; see :mod:`edgeserve.metrics`), the shorthands ``min_cosine`` and
    ``min_top1_agreement``, and ``max_accuracy_drop`` (``accuracy_drop="absolute"`` points as a fraction, or
    ``"relative"`` to the fp32 accuracy; needs labels) — is a hard limit: a result outside it raises
    :class:`FidelityError`. Without one, the metric is inferred from the signature (one point of accuracy when
    labels are given), recorded and, for ``auto``, held to; the reason is reported. With ``quantize="auto"`` the
    budget steers the search, which stops starting new candidates after ``time_budget`` seconds and times
    candidates with ``threads`` intra-op threads (default: all cores; use what you will deploy with) on calls of
    ``timing_batch`` rows (default 1, a lone request; the batch a batching server runs, to choose by throughput).
    ``max_memory`` (bytes, ``"8G"``, ``"50%"``; default half the machine's memory) bounds the whole conversion:
    a quantiser that outgrows it is stopped (in ``auto``, that candidate is skipped with the reason).
    ``backend``/``precision`` (not with auto, which chooses them) verify and record the package for that engine,
    e.g. ``backend="openvino", precision="bf16"``.
    """
    qconfig = quantize if isinstance(quantize, QuantizeConfig) else QuantizeConfig(mode=quantize)  # type: ignore[arg-type]
    if accuracy_drop not in ("absolute", "relative"):
        raise ConfigError(f"accuracy_drop must be 'absolute' or 'relative', got {accuracy_drop!r}")
    if time_budget <= 0:
        raise ConfigError(f"time_budget must be positive seconds, got {time_budget}")
    if not 1 <= timing_batch <= 65536:
        raise ConfigError(f"timing_batch must be between 1 and 65536 rows, got {timing_batch}")
    if qconfig.mode == "auto" and (backend or precision):
        raise ConfigError("auto chooses the backend and precision itself; leave backend and precision unset")
    SessionConfig(backend=backend, precision=precision)  # validates both
    budget = make_budget(metrics, min_cosine=min_cosine, min_top1_agreement=min_top1_agreement,
                         max_accuracy_drop=max_accuracy_drop, relative=accuracy_drop == "relative")
    memory = MemoryBudget(parse_size(max_memory)) if max_memory is not None else MemoryBudget()
    output = Path(output)
    _check_output(output, overwrite, [source, calibration, eval_data, reference])
    options = Options(calibration=calibration, eval_data=eval_data, labels=labels, reference=reference,
                      name=check_name(name or _default_name(source, output), what="package name", error=ConfigError),
                      version=check_name(version, what="package version", error=ConfigError),
                      example_inputs=example_inputs, input_names=input_names, output_names=output_names, opset=opset,
                      dynamic_axes=dynamic_axes, time_budget=time_budget, threads=threads,
                      timing_batch=timing_batch, backend=backend,
                      precision=precision, allowed_domains=allowed_domains)
    staging = output.parent / f".{output.name}.staging-{uuid.uuid4().hex[:8]}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as exc:
        blocked = next((p for p in output.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocked} is a file" if blocked is not None else exc.strerror or str(exc)
        raise ConversionError(f"cannot write the package to {output} ({why}); choose a folder you can write "
                              "to") from None
    try:
        with tempfile.TemporaryDirectory(prefix="edgeserve-convert-") as tmp, ExitStack() as sessions, memory:
            manifest = _build(Conversion(source, staging, Path(tmp), qconfig, options, budget, memory, sessions,
                                         progress or (lambda stage, done, total: None)))
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Package(output, manifest)


def _check_output(output: Path, overwrite: bool, inputs: Sequence[Any]) -> None:
    """``output`` may be written: new, or (with ``overwrite``) a package or an empty folder, holding none of the
    files the conversion reads and not holding the working directory. Anything else is the user's, never replaced."""
    if not output.exists() and not output.is_symlink():
        return
    if not overwrite:
        raise ConversionError(f"{output} already exists; choose another folder or pass overwrite=True (--force)")
    if output.is_symlink() or not output.is_dir():
        what = "a link" if output.is_symlink() else "a file"
        raise ConversionError(f"{output} is {what}, not a package folder; overwrite (--force) replaces only a "
                              "package written by edgeserve: choose another output folder")
    if not is_package(output) and any(output.iterdir()):
        raise ConversionError(f"{output} is a folder that is not an edgeserve package; overwrite (--force) would "
                              "delete what it holds, and replaces only a package or an empty folder: choose another "
                              "output folder")
    real = output.resolve()
    if real == Path.cwd().resolve() or real in Path.cwd().resolve().parents:
        raise ConversionError(f"{output} holds the working directory; run the command from outside it, or choose "
                              "another output folder")
    for path in inputs:
        if isinstance(path, (str, os.PathLike)) and real in Path(path).resolve().parents:
            raise ConversionError(f"{output} holds {path}, which this conversion reads; write the package to "
                                  "another folder")


def _default_name(source: Any, output: Path) -> str:
    return safe_name(Path(source).stem if isinstance(source, (str, os.PathLike)) else output.name)


def _publish(staging: Path, output: Path) -> None:
    if output.exists():
        trash = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output, trash)
        os.replace(staging, output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, output)


@dataclass(frozen=True)
class Options:
    """What :func:`convert` was asked to do, as it was asked (see its docstring for each)."""

    calibration: DataSource | None
    eval_data: DataSource | None
    labels: str | None
    reference: DataSource | None
    name: str
    version: str
    example_inputs: Any
    input_names: Sequence[str] | None
    output_names: Sequence[str] | None
    opset: int | None
    dynamic_axes: Mapping[str, Mapping[int, str]] | None
    time_budget: float
    threads: int | None
    timing_batch: int
    backend: str | None
    precision: str | None
    allowed_domains: Sequence[str]


@dataclass
class Conversion:
    """What one conversion knows, filled in by the steps of :data:`STEPS` in order.

    Every backend session a step opens goes into ``sessions`` (one ExitStack per conversion), so no error path,
    wherever it happens, leaves one open."""

    source: Any
    staging: Path
    work: Path
    qconfig: QuantizeConfig
    options: Options
    budget: Budget
    memory: MemoryBudget
    sessions: ExitStack
    step: Progress
    src: Any = None
    reference: Any = None
    in_specs: tuple[TensorSpec, ...] = ()
    out_specs: tuple[TensorSpec, ...] = ()
    calibration: Samples | None = None
    held_out: Samples | None = None
    baseline: Samples | None = None
    """The rows the reference statistics come from: ``reference=``, else all calibration rows, else held-out ones."""
    labels: np.ndarray | None = None
    ref_out: dict[str, np.ndarray] | None = None
    """The source model's answers on the held-out rows: what every result is judged against."""
    enforce: bool = True
    """False when the budget was inferred for an explicit mode: measured and recorded, not held to."""
    fidelity_data: str = "synthetic"
    recipe: dict[str, Any] = field(default_factory=dict)
    backend: str = "onnxruntime"
    precision: str | None = None
    fidelity: dict[str, Any] = field(default_factory=dict)
    golden_in: dict[str, np.ndarray] | None = None
    golden_rows: int = 0
    golden_out: dict[str, np.ndarray] | None = None
    candidate: Any = None
    """The verified result's session (open until the conversion ends)."""
    manifest: Manifest | None = None

    def open(self, path: Path, config: SessionConfig, label: str, backend: str = "onnxruntime") -> Any:
        """A session that closes when the conversion ends, however it ends."""
        session = get_backend(backend).open(path, config, label=label)
        self.sessions.callback(session.close)
        return session


BATCH_DEPENDENCE = 1e-4
"""Answers that move by more than this (relative to the output's range) with the rows batched beside them are
recorded as batch-dependent (dynamic int8); float rounding of a different GEMM blocking stays under it."""
SESSION = SessionConfig(cache_dir=None)
"""Converter sessions are throwaway: they stay out of the graph cache."""


def _build(c: Conversion) -> Manifest:
    for step in STEPS:
        step(c)
    assert c.manifest is not None
    return c.manifest


def load_the_source(c: Conversion) -> None:
    c.step("loading source", 0, 1)
    o = c.options
    example = o.example_inputs
    if example is None and (is_sklearn_model(c.source) or is_torchscript_file(c.source)):
        example = _rows_of_x(o)
    elif example is None and is_torch_module(c.source):  # a module from a pickle (convert --trust-pickle)
        rows = _rows_of_x(o)
        example = None if rows is None else {k: np.asarray(v)[:2] for k, v in rows.items()} \
            if isinstance(rows, Mapping) else np.asarray(rows)[:2]
    c.src = load_source(c.source, c.work, example_inputs=example, input_names=o.input_names,
                        output_names=o.output_names, opset=o.opset, dynamic_axes=o.dynamic_axes,
                        allowed_domains=o.allowed_domains)
    c.reference = c.open(c.src.path, SESSION, "the source model")
    c.in_specs, c.out_specs = c.reference.inputs, c.reference.outputs


def _rows_of_x(o: Options) -> Any:
    """A scikit-learn model's example rows when none were given: X as the calibration, reference or (unlabelled)
    evaluation data holds it, a bare array, a DataFrame or its columns by name; None when there is none."""
    for data in (o.calibration, o.reference, o.eval_data if o.labels is None else None):
        if data is None:
            continue
        if isinstance(data, (str, os.PathLike)):
            arrays = read_arrays(data, what="the data given for X")
            return next(iter(arrays.values())) if len(arrays) == 1 else arrays
        return data
    return None


def read_data(c: Conversion) -> None:
    """Calibration rows, and held-out rows that calibration never sees (with labels when given)."""
    o = c.options
    narrow = c.src.info.get("framework") in ("sklearn", "torch")  # numpy's float64 data for a graph made float32
    single = _only_input(c.in_specs)
    calibration, eval_data, reference = (
        None if source is None else read_arrays(source, what=what, single=single)
        for source, what in ((o.calibration, "calibration data"), (o.eval_data, "evaluation data"),
                             (o.reference, "reference data")))
    first = next((d for d in (calibration, eval_data, reference) if d is not None), None)
    if first is not None:  # an input the names leave without a batch axis may show one in the data
        c.in_specs = batch_axes_from_data(c.in_specs, first)
    cal = _samples(calibration, c.in_specs, "calibration data", narrow) if calibration is not None else None
    c.held_out, c.labels, c.fidelity_data = _held_out(eval_data, o.labels, cal, c.in_specs, narrow, c.src.path)
    if reference is not None:
        c.baseline = _samples(reference, c.in_specs, "reference data", narrow)
    else:
        c.baseline = cal if cal is not None else (c.held_out if c.fidelity_data != "synthetic" else None)
    if cal is not None and eval_data is None and cal.rows >= 2:
        cal = cal.split(HOLDOUT_FRACTION)[0]  # never measure fidelity on the rows the ranges were calibrated on
    mode = c.qconfig.mode
    if mode in ("static", "nncf") and cal is None:
        raise DataError(f"{mode} quantisation needs calibration data: pass calibration= (or --calibration FILE.npz)")
    if mode == "auto" and c.labels is None and c.budget.max_accuracy_drop is not None:
        raise DataError("max_accuracy_drop needs labelled evaluation data: pass eval_data= and labels=")
    c.calibration = cal


def choose_budget(c: Conversion) -> None:
    """Run the source model on the held-out rows, and settle what results are held to: the user's targets, one
    point of accuracy when labels are given, else the metric the signature suggests (reported, and held to by
    auto; for an explicit mode, measured and recorded). Every target is tried on fp32 against itself first, so
    a metric that does not fit the model fails now, naming what it needs, not after an hour of search."""
    assert c.held_out is not None
    if c.held_out.stacked and c.held_out.rows:
        # NOTE: measured on the source before its answers are joined and judged: an exporter's dimension names can
        # put the batch on the wrong axis (a traced CRNN's [steps, batch, classes] named [batch, ?, 37]), and joined
        # along it the held-out answers were mixed up, and the task metric read steps as rows
        names = [o.name for o in c.out_specs]
        reference = c.reference
        c.out_specs = confirm_batch_axes(lambda feed: dict(zip(names, reference.run(feed, names))), c.in_specs,
                                         c.out_specs, c.held_out.arrays, label="the source model")
    c.ref_out = _run_all(c.reference, c.held_out, c.out_specs)
    if c.held_out.stacked and c.held_out.rows:
        fixed = fixed_sizes(c.reference, c.in_specs, next(c.held_out.feeds(1)))
        if fixed:
            c.recipe["fixed_sizes"] = fixed
    classes = c.labels is not None and accuracy(c.ref_out, c.labels) is not None  # NOTE: refuses labels it cannot be
    if c.labels is not None and not classes and c.budget.max_accuracy_drop is not None:
        raise ConfigError("max_accuracy_drop needs an output that predicts a class (an integer label, class scores or "
                          f"class names); this model answers {_signature(c.out_specs)}: hold it to a metric instead "
                          "(--metric 'nrmse<=0.1' for a regressor; see edgeserve convert --help)")
    if c.budget.empty:
        _infer_budget(c, classes)
        log.info("judging by %s (%s)", c.budget.describe(), c.budget.because)
        c.step(f"judging by {c.budget.describe()} ({c.budget.because})", 0, 1)
    elif classes and c.budget.max_accuracy_drop is not None and (chance := _no_better_than_chance(c)):
        c.recipe["labels_at_chance"] = chance
        log.warning("%s; the accuracy budget named cannot tell a broken result from a good one: name the task's "
                    "metric beside it (--metric; see edgeserve convert --help)", chance)
    _check_the_budget_on_fp32(c)


def _infer_budget(c: Conversion, classes: bool) -> None:
    """The budget when none is named: one point of accuracy against labels of classes, with the task metric the
    signature suggests beside it when fp32 does no better than chance on them; else that metric alone (held to by
    auto; for an explicit mode, measured and recorded)."""
    assert c.held_out is not None and c.ref_out is not None
    chance = _no_better_than_chance(c) if classes else None
    if classes and chance is None:
        c.budget = Budget(max_accuracy_drop=0.01, because="labels given: at most one point of accuracy lost")
        return
    targets, why = infer_targets(c.held_out.arrays, c.ref_out, {s.name: s.batch_axis for s in c.out_specs})
    c.enforce = c.qconfig.mode == "auto"
    if chance is not None:
        c.budget = Budget(tuple(targets), max_accuracy_drop=0.01,
                          because=f"inferred: {chance}; so the signature's task metric judges too: {why}")
        log.warning("%s: the inferred task metric judges beside them", chance)
        return
    if c.labels is not None:
        why += " (the labels given are not classes of any output: their error is recorded, not held to)"
    c.budget = Budget(tuple(targets), because=f"inferred: {why}")
    vacuous = c.budget.passed_by_zeros(c.ref_out, c.held_out.arrays)
    if vacuous and [t.metric.name for t in targets] != [t.metric.name for t in generic_targets()]:
        c.budget = Budget(tuple(generic_targets()), because=(
            f"inferred: {why}; but fp32 finds nothing in this data for {', '.join(vacuous)} to judge (a "
            "model answering zeros would pass it), so per-row cosine and the error against the values' spread judge "
            "instead: give --data the model finds something in"))


def _check_the_budget_on_fp32(c: Conversion) -> None:
    """Every target tried on fp32 against itself: a metric that does not fit the model fails now, naming what it
    needs; one a model answering zeros would pass is said loudly."""
    assert c.held_out is not None and c.ref_out is not None
    try:
        itself = c.budget.judge(c.ref_out, c.ref_out, c.held_out.arrays)
    except MetricError as exc:
        raise ConfigError(str(exc)) from None
    missed = [m for m in itself.missed if not m.startswith("accuracy")]
    vacuous = [] if missed else c.budget.passed_by_zeros(c.ref_out, c.held_out.arrays)
    if vacuous and not c.budget.because.startswith("inferred"):  # the user's choice: kept, and said loudly
        c.recipe["budget_passed_by_zeros"] = vacuous
        log.warning("on this evaluation data a model answering zeros would pass %s: fp32's answers give it nothing "
                    "to judge (no detection, no marked pixel, no decoded text, one class, values inside the "
                    "threshold); give evaluation data the model finds something in (--data), or name another "
                    "metric", ", ".join(vacuous))
    if missed and c.budget.because.startswith("inferred"):  # the guess, not the model, is wrong: say what to do
        raise ConfigError(f"the metric inferred for this model does not fit its outputs: the fp32 model compared "
                          f"with itself scores {'; '.join(missed)} ({c.budget.because}); name the task's metric "
                          "with --metric (e.g. --metric 'cosine>=0.99'; see edgeserve convert --help)")
    if missed:
        raise ConfigError(f"the fp32 model compared with itself misses the budget ({'; '.join(missed)}): "
                          "that threshold cannot be met by any result")


def _no_better_than_chance(c: Conversion) -> str | None:
    """Why the labels cannot judge a result, or None: fp32 gets no more of them right than always answering the
    most common one would (to within one row). Then every result keeps within a point of that, however broken
    (random labels, or labels in another order than the rows: a static int8 ViT at a cosine of 0.82 to fp32 passed
    "one point of accuracy" at 0.13 against fp32's 0.12)."""
    assert c.labels is not None and c.ref_out is not None
    fp32 = accuracy(c.ref_out, c.labels)
    labels = np.asarray(c.labels).reshape(len(c.labels), -1)
    if fp32 is None or not len(labels):
        return None
    if labels.shape[1] > 1:  # one-hot rows: their classes
        labels = labels.argmax(axis=1)
    common = float(np.unique(labels, return_counts=True)[1].max()) / len(labels)
    if fp32 > common + 1.0 / len(labels):
        return None
    return (f"labels given, but fp32 gets {fp32:.4f} of them right, no better than always answering the most common "
            f"one ({common:.4f}): they say nothing of this model (labels of other data, or in another order?)")


def prepare_graph(c: Conversion) -> None:
    """The graphs the next step starts from: the quantisers' (pre-processed, opset >= 13, every tensor typed)
    and the optimised fp32 one."""
    c.step("preparing graph", 0, 1)
    mode, work = c.qconfig.mode, c.work
    if mode in ("dynamic", "static", "nncf", "auto"):
        full, pre, upgraded = work / "float32-source.onnx", work / "pre.onnx", work / "pre13.onnx"
        c.recipe.update(upcast_half(c.src.path, full))
        c.recipe.update(preprocess_for_quantization(full, pre))
        c.recipe.update(upgrade_opset(pre, upgraded))
        c.recipe.update(fill_missing_types(upgraded, work / "int8-source.onnx"))
    if mode not in ("dynamic", "static", "nncf"):
        c.recipe.update(optimize_fp32(c.src.path, work / "fp32.onnx", c.qconfig.optimization))


def quantise(c: Conversion) -> None:
    """Apply the recipe (or search for one, with auto) and write the result as the package's model file."""
    mode, work = c.qconfig.mode, c.work
    if mode == "auto":
        already = quantised_ops(c.src.path)
        if already:
            c.recipe["source_quantised"] = already
            log.warning("the source model is quantised already (%s nodes): auto tries only what does not "
                        "quantise it again", describe_ops(already))
        c.step("searching (auto)", 0, 1)
        assert c.held_out is not None
        graphs = Graphs(exported=c.src.path, fp32=work / "fp32.onnx", prepared=work / "int8-source.onnx")
        chosen, auto_recipe = search(graphs, work, held_out=c.held_out, labels=c.labels, calibration=c.calibration,
                                     budget=c.budget, memory=c.memory, time_budget=c.options.time_budget,
                                     threads=c.options.threads, timing_batch=c.options.timing_batch,
                                     progress=c.step)
        c.recipe.update(finalize_model(chosen, c.staging / MODEL_FILE))
        c.recipe.update(auto_recipe)
        c.recipe["mode"] = "auto"
        c.recipe["auto_choice"] = auto_recipe.get("mode", "none")
        c.backend = c.recipe.get("backend") or "onnxruntime"
        c.precision = c.recipe.get("precision")
        return
    if mode in REQUANTISING:
        already = quantised_ops(c.src.path)
        if already:
            raise ConversionError(
                f"the source model is quantised already ({describe_ops(already)} nodes): {mode} quantisation would "
                "quantise it twice. Convert the float model it was made from, or package this one as it is with "
                "--quantize none (or let --quantize auto measure what still helps)")
    if mode in ("dynamic", "static", "nncf"):
        to_quantize = work / "int8-source.onnx"
    elif mode in ("fp16", "int4"):
        to_quantize = work / "typed.onnx"
        c.recipe.update(fill_missing_types(work / "fp32.onnx", to_quantize))
    else:
        to_quantize = work / "fp32.onnx"
    c.step(f"quantising ({mode})", 0, 1)
    quantized = work / "quantized.onnx"
    c.recipe.update(c.memory.run(f"{mode} quantisation", quantize, to_quantize, quantized, c.qconfig,
                                 calibration=c.calibration, progress=c.step))
    c.recipe.update(finalize_model(quantized, c.staging / MODEL_FILE))
    c.backend, c.precision = c.options.backend or "onnxruntime", c.options.precision


def verify(c: Conversion) -> None:
    """Run the result on the held-out rows in its engine, compare with fp32, and hold it to the budget."""
    c.step("verifying", 0, 1)
    if c.backend == "openvino" and c.precision is None:
        from ..backends.openvino import default_precision

        c.precision = default_precision()  # record what actually ran, not "the default"
    candidate = c.open(c.staging / MODEL_FILE, replace(SESSION, backend=c.backend, precision=c.precision),
                       f"the {c.qconfig.mode} model on {c.backend}", backend=c.backend)
    if [(s.name, s.dtype) for s in candidate.inputs] != [(s.name, s.dtype) for s in c.in_specs]:
        raise ConversionError("the converted model's inputs differ from the source model's; this is a bug, please report it")
    assert c.held_out is not None and c.ref_out is not None
    ref_out = c.ref_out
    cand_out = _run_all(candidate, c.held_out, c.out_specs)
    names = [o.name for o in c.out_specs]

    def answers(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, candidate.run(feed, names)))

    if c.held_out.stacked:
        c.out_specs = confirm_batch_axes(answers, c.in_specs, c.out_specs, c.held_out.arrays,
                                         label="the converted model")
        c.recipe["batch_axes"] = "measured"
        moved = batch_dependence(answers, c.in_specs, c.out_specs, c.held_out.arrays)
        if moved > BATCH_DEPENDENCE:
            c.recipe["batch_dependence"] = float(f"{moved:.3g}")
    c.in_specs = shortest_lengths(lambda feed: candidate.run(feed, names), c.in_specs, next(c.held_out.feeds(1)))
    c.golden_in, c.golden_rows = _golden_inputs(c.held_out, c.ref_out)
    c.candidate = candidate
    if c.golden_in:
        c.golden_out = dict(zip([o.name for o in c.out_specs], candidate.run(c.golden_in)))
    fidelity = compare_outputs(cand_out, ref_out)
    fidelity.update(reference="fp32 source", data=c.fidelity_data, rows=c.held_out.rows)
    if c.labels is not None:
        fidelity["accuracy"] = {"fp32": accuracy(ref_out, c.labels), "converted": accuracy(cand_out, c.labels)}
        error = {"fp32": label_error(ref_out, c.labels), "converted": label_error(cand_out, c.labels)}
        if error["fp32"] is not None and fidelity["accuracy"]["fp32"] is None:
            fidelity.pop("accuracy")
            fidelity["label_rmse"] = error
    acc = fidelity.get("accuracy") or {}
    verdict = c.budget.judge(ref_out, cand_out, c.held_out.arrays, acc.get("fp32"), acc.get("converted"))
    fidelity["metrics"] = verdict.scores
    missed = verdict.missed
    if missed and not c.enforce:
        fidelity["budget_missed"] = missed  # an inferred budget for an explicit mode: reported, not held to
    elif missed and c.recipe.get("auto_choice") == "none":
        # auto already said no candidate fits and fell back to fp32; fp32 is the reference, so what it misses is
        # float rounding or an unreachable budget, recorded rather than refused
        fidelity["budget_missed_by_fp32_fallback"] = missed
    elif missed:
        raise FidelityError(
            f"fidelity budget missed ({'; '.join(missed)}); try --per-channel, static calibration, "
            "--quantize auto, or a lighter mode"
        )
    fidelity["budget"] = {**c.budget.record(), "enforced": c.enforce}
    c.fidelity = fidelity
    c.recipe["backend"], c.recipe["precision"] = c.backend, c.precision
    c.recipe["backends"] = [{"backend": c.backend, "precision": c.precision}]
    if c.backend != "onnxruntime":
        fallback = _verify_fallback(c, ref_out)
        if fallback is not None:
            c.recipe["backends"].append(fallback)


def write_package(c: Conversion) -> None:
    """Golden samples, then the manifest with the digest of every file."""
    assert c.held_out is not None
    golden: dict[str, Any] = {"count": 0, "skipped": "no sample rows"}
    if c.golden_in and c.golden_out:
        try:
            write_golden(c.staging / GOLDEN_FILE, c.golden_in, c.golden_out, (tuple(c.in_specs), tuple(c.out_specs)))
            golden = {"file": GOLDEN_FILE, "count": c.golden_rows,
                      "rel_tolerance": max(tolerance_for(c.recipe.get("auto_choice", c.qconfig.mode)),
                                           tolerance_for("bf16") if c.precision == "bf16" else 0.0),
                      # answers off by more than the tolerance still pass when the task metrics hold (an argmax
                      # or a thresholded map that did not change is the same answer)
                      "targets": [t.record() for t in c.budget.targets if t.metric.builtin]}
        except PackageError as exc:  # an object array that is not text
            golden = {"count": 0, "skipped": str(exc)}
    c.recipe["memory"] = c.memory.record()
    o = c.options
    c.manifest = write_manifest(c.staging, Manifest(
        name=o.name,
        version=o.version,
        backend=c.backend,
        inputs=c.in_specs,
        outputs=c.out_specs,
        source={**c.src.info, "options": {"opset": o.opset, "input_names": o.input_names,
                                          "output_names": o.output_names}},
        recipe=c.recipe,
        fidelity=c.fidelity,
        envelope=_reference_statistics(c),
        environment=environment(),
        golden=golden,
    ))


REQUANTISING = ("dynamic", "static", "nncf", "int4")
"""Modes that quantise the graph's weights or activations: refused on a graph that is quantised already."""

STEPS = (load_the_source, read_data, choose_budget, prepare_graph, quantise, verify, write_package)
"""A conversion, in order: each step reads what the ones before it left in the :class:`Conversion`."""


def _verify_fallback(c: Conversion, ref_out: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Check that onnxruntime runs the chosen model file inside the budget too, so a machine without the chosen
    backend can fall back to it; None when it cannot."""
    assert c.held_out is not None
    try:
        with ExitStack() as stack:
            session = get_backend("onnxruntime").open(c.staging / MODEL_FILE, SESSION, label="the fallback check")
            stack.callback(session.close)
            out = _run_all(session, c.held_out, c.out_specs)
    except EdgeserveError as exc:
        log.info("onnxruntime cannot serve as a fallback: %s", exc)
        return None
    acc_ref = accuracy(ref_out, c.labels) if c.labels is not None else None
    acc = accuracy(out, c.labels) if c.labels is not None else None
    verdict = c.budget.judge(ref_out, out, c.held_out.arrays, acc_ref, acc)
    if c.enforce and not verdict.ok:
        return None
    return {"backend": "onnxruntime", "precision": None, "metrics": verdict.scores}


def _signature(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {s.describe()}" for s in specs)


def _samples(source: DataSource, specs: Sequence[TensorSpec], what: str, narrow: bool = False) -> Samples:
    return check_samples(read_arrays(source, what=what, single=_only_input(specs)), specs, what=what, narrow=narrow)


def _only_input(specs: Sequence[TensorSpec]) -> str | None:
    return specs[0].name if len(specs) == 1 else None


def _held_out(eval_data: DataSource | None, labels: str | None, cal: Samples | None,
              specs: Sequence[TensorSpec], narrow: bool, model: Path) -> tuple[Samples, np.ndarray | None, str]:
    if eval_data is not None:
        arrays = read_arrays(eval_data, what="evaluation data", single=_only_input(specs))
        label_values = None
        if labels is not None:
            if labels not in arrays:
                raise DataError(f"evaluation data has no array named '{labels}' for the labels; it has {', '.join(sorted(arrays))}")
            label_values = arrays.pop(labels)
        samples = check_samples(arrays, specs, what="evaluation data", narrow=narrow)
        if label_values is not None:
            label_values = _one_label_a_row(np.asarray(label_values), str(labels))
            if len(label_values) != samples.rows:
                raise DataError(f"evaluation data: {len(label_values)} labels for {samples.rows} rows")
        return samples, label_values, "evaluation"
    if labels is not None:
        raise DataError("labels name an array in the evaluation data; pass eval_data= (--data) too")
    if cal is not None:
        return cal.split(HOLDOUT_FRACTION)[1], None, "calibration hold-out"
    log.warning("no calibration or evaluation data given: fidelity is measured on synthetic inputs")
    return synthetic_samples(specs, vocabularies=embedding_inputs(model)), None, "synthetic"


def _one_label_a_row(values: np.ndarray, name: str) -> np.ndarray:
    """The labels as one per row: one-hot rows (Keras' ``to_categorical``) as their class indexes, a column
    ``[rows, 1]`` as its values; anything else is refused, naming what is read."""
    if values.ndim == 2 and values.shape[1] == 1:
        return values[:, 0]
    if values.ndim == 2 and values.shape[1] > 1 and values.dtype.kind in "biuf" and len(values) \
            and np.isin(values, (0, 1)).all() and (values.sum(axis=1) == 1).all():
        log.info("labels '%s' are one-hot [rows, %d]: read as class indexes", name, values.shape[1])
        return values.argmax(axis=1)
    if values.ndim != 1:
        raise DataError(f"labels '{name}' are shaped {list(values.shape)}: give one label a row, as class indexes "
                        "[rows], class names [rows], one-hot rows [rows, classes], or a regressor's targets [rows]")
    return values


def _reference_statistics(c: Conversion) -> dict[str, Any]:
    """The envelope: statistics of the baseline rows, and of the converted model's answers on them."""
    base = c.baseline
    if base is None:
        return {}
    batch_one = not base.stacked and all(s.rows_on_axis0 for s in c.in_specs)
    if not (base.stacked or batch_one):
        return {}
    source = "reference" if c.options.reference is not None else (
        "calibration" if c.options.calibration is not None else "evaluation")
    outputs = _run_all(c.candidate, base, c.out_specs) if c.candidate is not None else None
    arrays = base.arrays
    in_specs = c.in_specs
    if base.stacked:  # a time-major [steps, batch, features]: rows first, as the guard reads requests
        arrays = rows_first(arrays, in_specs)
        outputs = None if outputs is None else rows_first(outputs, c.out_specs)
        in_specs = tuple(rows_first_spec(s) for s in in_specs)
    if batch_one:  # one sample per request, [1, ...] each: the samples are the rows, as requests will hold them
        arrays = {k: v[:, 0] for k, v in arrays.items()}
        outputs = {s.name: outputs[s.name] for s in c.out_specs  # joined on their batch-1 axis already
                   if outputs is not None and s.rows_on_axis0 and not is_ragged(outputs[s.name])}
    sequences = [s.name for s in in_specs if len(s.shape) == 2 and not isinstance(s.shape[1], int)]
    import onnx

    model = onnx.load(str(c.staging / MODEL_FILE), load_external_data=False)  # read once for both looks below
    return envelope(arrays, source=source, outputs=outputs, vocabularies=embedding_inputs(model),
                    sequences=sequences, feature_axes=series_feature_axes(in_specs, conv_inputs(model)),
                    max_length=position_table(model, c.staging),
                    varying_outputs=[s.name for s in c.out_specs if _named_step_axis(s)])


def _named_step_axis(spec: TensorSpec) -> bool:
    """The output's rows are of a size the model declares variable by name (``frames``, ``sequence``): not an
    unnamed axis (``None``) nor one an exporter left unknown (tf2onnx's ``unk__12``), which class scores may have."""
    return any(isinstance(d, str) and not d.startswith("unk__")
               for i, d in enumerate(spec.shape) if i != (spec.batch_axis or 0))


def rows_first(arrays: Mapping[str, Any], specs: Sequence[TensorSpec]) -> dict[str, Any]:
    """``arrays`` with each batch axis moved to the front (a time-major recurrent model's [steps, batch, ...])."""
    axes = {s.name: s.batch_axis for s in specs if s.batch_axis}
    return {k: np.moveaxis(v, axes[k], 0) if k in axes and not is_ragged(v) else v for k, v in arrays.items()}


def rows_first_spec(spec: TensorSpec) -> TensorSpec:
    """``spec`` with its batch axis moved to the front, as :func:`rows_first` moves its arrays."""
    axis = spec.batch_axis
    if not axis:
        return spec
    shape = list(spec.shape)
    return replace(spec, shape=tuple([shape.pop(axis), *shape]), batch_axis=0)


def series_feature_axes(specs: Sequence[TensorSpec], convolved: Collection[str]) -> dict[str, int]:
    """For each ``[rows, a, b]`` input, the axis of its features (the other holds steps): the fixed one when the
    other is declared of variable size (steps vary in number, features do not); else axis 1 when a convolution
    takes it as it is (channels first: a spectrogram ``[rows, mel bins, frames]``), axis 2 otherwise (a recurrent
    model's ``[rows, steps, features]``)."""
    axes = {}
    for spec in specs:
        if len(spec.shape) != 3:
            continue
        fixed = [a for a in (1, 2) if isinstance(spec.shape[a], int)]
        axes[spec.name] = fixed[0] if len(fixed) == 1 else 1 if spec.name in convolved else 2
    return axes


def _run_all(session, samples: Samples, out_specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        return run_samples(session, samples, out_specs, batch_size=work_rows(samples.arrays, samples.rows))
    except EdgeserveError as exc:
        raise ConversionError(f"verification run failed: {exc}") from exc


def _golden_inputs(held_out: Samples, answers: Mapping[str, Any] | None) -> tuple[dict[str, np.ndarray], int]:
    """The first held-out rows, as many as ``GOLDEN_BYTES`` holds with their answers, one at least and
    ``GOLDEN_ROWS`` at most (one sample without a batch axis); and how many."""
    if not held_out.stacked:
        return {k: np.asarray(v[0]) for k, v in held_out.arrays.items()}, 1
    shared = held_out.shared
    total = sum(v.nbytes for k, v in held_out.arrays.items() if k not in shared)
    total += sum(np.asarray(v).nbytes for v in (answers or {}).values() if not is_ragged(v))
    per_row = max(total // max(held_out.rows, 1), 1)
    golden = held_out.take(0, min(GOLDEN_ROWS, max(1, GOLDEN_BYTES // per_row)))
    return golden.arrays, golden.rows
