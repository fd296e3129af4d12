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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import DataSource, read_arrays
from ..backends import get_backend
from ..config import QuantizeConfig, SessionConfig
from ..environment import environment
from ..errors import ConfigError, ConversionError, DataError, EdgeserveError, FidelityError
from ..fidelity import Budget, accuracy, compare_outputs
from ..golden import tolerance_for
from ..guard.envelope import envelope
from ..package import GOLDEN_FILE, MODEL_FILE, Manifest, Package, write_golden, write_manifest
from ..tensors import TensorSpec
from .autotune import search
from .data import Samples, check_samples, run_samples, synthetic_samples
from .frontends import load_source
from .prepare import fill_missing_types, finalize_model, optimize_fp32, preprocess_for_quantization, upgrade_opset
from .quantize import Progress, quantize

log = logging.getLogger(__name__)

GOLDEN_ROWS = 8
HOLDOUT_FRACTION = 0.2


def convert(
    source: Any,
    output: str | os.PathLike[str],
    *,
    quantize: str | QuantizeConfig = "none",
    calibration: DataSource | None = None,
    eval_data: DataSource | None = None,
    labels: str | None = None,
    name: str | None = None,
    version: str = "1",
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    min_cosine: float | None = None,
    min_top1_agreement: float | None = None,
    max_accuracy_drop: float | None = None,
    accuracy_drop: str = "absolute",
    time_budget: float = 300.0,
    threads: int | None = None,
    backend: str | None = None,
    precision: str | None = None,
    allowed_domains: Sequence[str] = (),
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Package:
    """Convert a model into a verified package at ``output`` and return it.

    ``source`` is a path to an ONNX file, an ``onnx.ModelProto``, a ``torch.nn.Module`` (with
    ``example_inputs``; every input and output gets a dynamic batch axis 0 unless ``dynamic_axes`` says otherwise,
    in torch's ``{name: {axis: "dim_name"}}`` form) or a fitted scikit-learn estimator (with a few rows of X as ``example_inputs``).
    ``calibration`` feeds static quantisation and the envelope statistics; ``eval_data`` (held out, with
    an optional ``labels`` array) measures fidelity to the fp32 model; without it a held-out tail of the
    calibration data is used, and without either, seeded synthetic inputs.

    The budget — ``min_cosine``, ``min_top1_agreement`` and ``max_accuracy_drop`` (``accuracy_drop="absolute"``
    points as a fraction, or ``"relative"`` to the fp32 accuracy; needs labels) — is a hard limit: a result
    outside it raises :class:`FidelityError`. With ``quantize="auto"`` it steers the search (default: one point
    of accuracy with labels, else cosine 0.99), which stops starting new candidates after ``time_budget`` seconds
    and times candidates with ``threads`` intra-op threads (default: all cores; use what you will deploy with).
    ``backend``/``precision`` (not with auto, which chooses them) verify and record the package for that engine,
    e.g. ``backend="openvino", precision="bf16"``.
    """
    qconfig = quantize if isinstance(quantize, QuantizeConfig) else QuantizeConfig(mode=quantize)  # type: ignore[arg-type]
    if accuracy_drop not in ("absolute", "relative"):
        raise ConfigError(f"accuracy_drop must be 'absolute' or 'relative', got {accuracy_drop!r}")
    if time_budget <= 0:
        raise ConfigError(f"time_budget must be positive seconds, got {time_budget}")
    if qconfig.mode == "auto" and (backend or precision):
        raise ConfigError("auto chooses the backend and precision itself; leave backend and precision unset")
    SessionConfig(backend=backend, precision=precision)  # validates both
    budget = Budget(max_accuracy_drop=max_accuracy_drop, relative=accuracy_drop == "relative",
                    min_cosine=min_cosine, min_top1_agreement=min_top1_agreement)
    output = Path(output)
    if output.exists() and not overwrite:
        raise ConversionError(f"{output} already exists; choose another folder or pass overwrite=True (--force)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeserve-convert-") as tmp:
            manifest = _build(
                source, staging, Path(tmp), qconfig, calibration=calibration, eval_data=eval_data, labels=labels,
                name=name or _default_name(source, output), version=version, example_inputs=example_inputs,
                input_names=input_names, output_names=output_names, opset=opset, dynamic_axes=dynamic_axes, budget=budget,
                time_budget=time_budget, threads=threads, engine=(backend, precision), allowed_domains=allowed_domains,
                progress=progress,
            )
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Package(output, manifest)


def _default_name(source: Any, output: Path) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).stem
    return output.name


def _publish(staging: Path, output: Path) -> None:
    if output.exists():
        trash = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(output, trash)
        os.replace(staging, output)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, output)


def _build(source: Any, staging: Path, work: Path, qconfig: QuantizeConfig, *, calibration: DataSource | None,
           eval_data: DataSource | None, labels: str | None, name: str, version: str, example_inputs: Any,
           input_names: Sequence[str] | None, output_names: Sequence[str] | None, opset: int | None,
           dynamic_axes: Mapping[str, Mapping[int, str]] | None,
           budget: Budget, time_budget: float, threads: int | None, engine: tuple[str | None, str | None],
           allowed_domains: Sequence[str],
           progress: Progress | None) -> Manifest:
    step = progress or (lambda stage, done, total: None)
    step("loading source", 0, 1)
    src = load_source(
        source, work, example_inputs=example_inputs, input_names=input_names, output_names=output_names,
        opset=opset, dynamic_axes=dynamic_axes, allowed_domains=allowed_domains,
    )
    backend = get_backend("onnxruntime")
    config = SessionConfig(cache_dir=None)  # converter sessions are throwaway: keep them out of the graph cache
    reference = backend.open(src.path, config, label="the source model")
    in_specs, out_specs = reference.inputs, reference.outputs

    cal = _samples(calibration, in_specs, "calibration data") if calibration is not None else None
    held_out, label_values, fidelity_data = _held_out(eval_data, labels, cal, in_specs)
    if cal is not None and eval_data is None and cal.rows >= 2:
        cal = cal.split(HOLDOUT_FRACTION)[0]  # never measure fidelity on the rows the ranges were calibrated on
    if qconfig.mode in ("static", "nncf") and cal is None:
        raise DataError(f"{qconfig.mode} quantisation needs calibration data: pass calibration= (or --calibration FILE.npz)")

    step("preparing graph", 0, 1)
    recipe: dict[str, Any] = {}
    int8_source = fp32 = None
    if qconfig.mode in ("dynamic", "static", "nncf", "auto"):
        # quant_pre_process optimises and infers shapes itself; the quantisers then need opset >= 13
        pre, upgraded, int8_source = work / "pre.onnx", work / "pre13.onnx", work / "typed.onnx"
        recipe.update(preprocess_for_quantization(src.path, pre))
        recipe.update(upgrade_opset(pre, upgraded))
        recipe.update(fill_missing_types(upgraded, int8_source))
    if qconfig.mode not in ("dynamic", "static", "nncf"):
        fp32 = work / "fp32.onnx"
        recipe.update(optimize_fp32(src.path, fp32, qconfig.optimization))
    if qconfig.mode == "auto":
        assert fp32 is not None and int8_source is not None
        if label_values is None and budget.max_accuracy_drop is not None:
            raise DataError("max_accuracy_drop needs labelled evaluation data: pass eval_data= and labels=")
        step("searching (auto)", 0, 1)
        chosen, auto_recipe = search(fp32, int8_source, work, held_out=held_out, labels=label_values, calibration=cal,
                                     budget=budget, time_budget=time_budget, threads=threads, progress=progress)
        recipe.update(finalize_model(chosen, staging / MODEL_FILE))
        recipe.update(auto_recipe)
        recipe["mode"] = "auto"
        recipe["auto_choice"] = auto_recipe.get("mode", "none")
    else:
        to_quantize = int8_source if qconfig.mode in ("dynamic", "static", "nncf") else fp32
        if qconfig.mode in ("fp16", "int4"):
            to_quantize = work / "typed.onnx"
            recipe.update(fill_missing_types(fp32, to_quantize))  # type: ignore[arg-type]
        step(f"quantising ({qconfig.mode})", 0, 1)
        assert to_quantize is not None
        quantized = work / "quantized.onnx"
        recipe.update(quantize(to_quantize, quantized, qconfig, calibration=cal, progress=progress))
        recipe.update(finalize_model(quantized, staging / MODEL_FILE))

    step("verifying", 0, 1)
    if qconfig.mode != "auto":
        recipe["backend"], recipe["precision"] = engine[0] or "onnxruntime", engine[1]
    chosen_backend, precision = recipe.get("backend") or "onnxruntime", recipe.get("precision")
    if chosen_backend == "openvino" and precision is None:
        from ..backends.openvino import default_precision

        precision = default_precision()  # record what actually ran, not "the default"
    candidate = get_backend(chosen_backend).open(
        staging / MODEL_FILE, replace(config, backend=chosen_backend, precision=precision),
        label=f"the {qconfig.mode} model on {chosen_backend}")
    try:
        if [(s.name, s.dtype) for s in candidate.inputs] != [(s.name, s.dtype) for s in in_specs]:
            raise ConversionError("the converted model's inputs differ from the source model's; this is a bug, please report it")
        ref_out = _run_all(reference, held_out, out_specs)
        cand_out = _run_all(candidate, held_out, out_specs)
        golden_in = _golden_inputs(held_out, in_specs, out_specs)
        golden_out = dict(zip([o.name for o in out_specs], candidate.run(golden_in))) if golden_in else None
    finally:
        candidate.close()
        reference.close()
    fidelity = compare_outputs(cand_out, ref_out)
    fidelity.update(reference="fp32 source", data=fidelity_data, rows=held_out.rows)
    if label_values is not None:
        fidelity["accuracy"] = {"fp32": accuracy(ref_out, label_values), "converted": accuracy(cand_out, label_values)}
    acc = fidelity.get("accuracy") or {}
    missed = budget.violations(fidelity["summary"], acc.get("fp32"), acc.get("converted"))
    if missed and recipe.get("auto_choice") == "none":
        # auto already said no candidate fits and fell back to fp32; fp32 is the reference, so what it misses is
        # float rounding or an unreachable budget, recorded rather than refused
        fidelity["budget_missed_by_fp32_fallback"] = missed
    elif missed:
        raise FidelityError(
            f"fidelity budget missed ({'; '.join(missed)}); try --per-channel, static calibration, "
            "--quantize auto, or a lighter mode"
        )
    fidelity["budget"] = asdict(budget)
    recipe["backend"], recipe["precision"] = chosen_backend, precision
    recipe["backends"] = [{"backend": chosen_backend, "precision": precision}]
    if chosen_backend != "onnxruntime":
        fallback = _verify_fallback(staging / MODEL_FILE, config, held_out, out_specs, ref_out, label_values, budget)
        if fallback is not None:
            recipe["backends"].append(fallback)

    if golden_in and golden_out:
        write_golden(staging / GOLDEN_FILE, golden_in, golden_out, (tuple(in_specs), tuple(out_specs)))
        golden = {"file": GOLDEN_FILE, "count": min(GOLDEN_ROWS, held_out.rows) if held_out.stacked else 1,
                  "rel_tolerance": max(tolerance_for(recipe.get("auto_choice", qconfig.mode)),
                                       tolerance_for("bf16") if precision == "bf16" else 0.0)}
    else:
        golden = {"count": 0, "skipped": "string tensors cannot be stored without pickles"}
    env_source = cal if cal is not None else (held_out if fidelity_data != "synthetic" else None)
    manifest = Manifest(
        name=name,
        version=version,
        backend=chosen_backend,
        inputs=in_specs,
        outputs=out_specs,
        source={**src.info, "options": {"opset": opset, "input_names": input_names, "output_names": output_names}},
        recipe=recipe,
        fidelity=fidelity,
        envelope=envelope(env_source.arrays, source="calibration" if env_source is cal else "evaluation") if env_source else {},
        environment=environment(),
        golden=golden,
    )
    return write_manifest(staging, manifest)


def _verify_fallback(model: Path, config: SessionConfig, held_out: Samples, out_specs: Sequence[TensorSpec],
                     ref_out: dict[str, np.ndarray], labels: np.ndarray | None, budget: Budget) -> dict[str, Any] | None:
    """Check that onnxruntime runs the chosen model file inside the budget too, so a machine without the chosen
    backend can fall back to it; None when it cannot."""
    try:
        session = get_backend("onnxruntime").open(model, config, label="the fallback check")
        try:
            out = _run_all(session, held_out, out_specs)
        finally:
            session.close()
    except EdgeserveError as exc:
        log.info("onnxruntime cannot serve as a fallback: %s", exc)
        return None
    summary = compare_outputs(out, ref_out)["summary"]
    acc_ref = accuracy(ref_out, labels) if labels is not None else None
    acc = accuracy(out, labels) if labels is not None else None
    if budget.violations(summary, acc_ref, acc):
        return None
    return {"backend": "onnxruntime", "precision": None, "cosine_min": summary.get("cosine_min")}


def _samples(source: DataSource, specs: Sequence[TensorSpec], what: str) -> Samples:
    return check_samples(read_arrays(source, what=what), specs, what=what)


def _held_out(eval_data: DataSource | None, labels: str | None, cal: Samples | None,
              specs: Sequence[TensorSpec]) -> tuple[Samples, np.ndarray | None, str]:
    if eval_data is not None:
        arrays = read_arrays(eval_data, what="evaluation data")
        label_values = None
        if labels is not None:
            if labels not in arrays:
                raise DataError(f"evaluation data has no array named '{labels}' for the labels; it has {', '.join(sorted(arrays))}")
            label_values = arrays.pop(labels)
        samples = check_samples(arrays, specs, what="evaluation data")
        if label_values is not None and len(label_values) != samples.rows:
            raise DataError(f"evaluation data: {len(label_values)} labels for {samples.rows} rows")
        return samples, label_values, "evaluation"
    if labels is not None:
        raise DataError("labels name an array in the evaluation data; pass eval_data= (--data) too")
    if cal is not None:
        return cal.split(HOLDOUT_FRACTION)[1], None, "calibration hold-out"
    log.warning("no calibration or evaluation data given: fidelity is measured on synthetic inputs")
    return synthetic_samples(specs), None, "synthetic"


def _run_all(session, samples: Samples, out_specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    try:
        return run_samples(session, samples, out_specs)
    except EdgeserveError as exc:
        raise ConversionError(f"verification run failed: {exc}") from exc


def _golden_inputs(held_out: Samples, in_specs: Sequence[TensorSpec],
                   out_specs: Sequence[TensorSpec]) -> dict[str, np.ndarray] | None:
    """The first few held-out rows (one sample without a batch axis); None where strings make npz need pickles."""
    if any(s.dtype == "str" for s in (*in_specs, *out_specs)):
        return None
    if held_out.stacked:
        return held_out.take(0, GOLDEN_ROWS).arrays
    return {k: v[0] for k, v in held_out.arrays.items()}
