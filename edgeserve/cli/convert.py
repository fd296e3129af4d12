"""convert and inspect: making packages and reading one."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import CALIBRATION_METHODS, QUANTIZE_MODES
from . import main


def _progress_printer() -> Callable[[str, int, int], None]:
    last: dict[str, Any] = {"stage": None, "pct": -1}
    tty = sys.stderr.isatty()

    def show(stage: str, done: int, total: int) -> None:
        if stage != last["stage"]:
            if tty and last["stage"] == "calibrating":
                click.echo("", err=True)
            last["stage"], last["pct"] = stage, -1
            if stage != "calibrating":
                click.echo(f"  {stage}…", err=True)
        if stage == "calibrating" and total:
            pct = int(100 * done / total)
            if tty:
                click.echo(f"\r  calibrating {done}/{total} rows ({pct}%)", err=True, nl=False)
            elif pct // 25 != last["pct"] // 25 or done == total:
                click.echo(f"  calibrating {done}/{total} rows ({pct}%)", err=True)
            last["pct"] = pct

    return show


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Package folder to write.")
@click.option("-q", "--quantize", type=click.Choice(QUANTIZE_MODES), default="none", show_default=True,
              help="none (optimised fp32), dynamic int8, static int8 (needs --calibration) or fp16.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path),
              help="Calibration data: .npz with one array per input, or a folder of NAME.npy.")
@click.option("--data", "eval_data", type=click.Path(exists=True, path_type=Path),
              help="Held-out evaluation data (.npz) for measuring fidelity and accuracy.")
@click.option("--reference", type=click.Path(exists=True, path_type=Path),
              help="Rows like those the model will serve (.npz): the reference the runtime's envelope and drift "
                   "checks compare requests with (default: the calibration rows; prefer this when you have more).")
@click.option("--labels", help="Name of the labels array inside --data, for task accuracy.")
@click.option("--name", help="Model name recorded in the manifest (default: the file name).")
@click.option("--version", "version", default="1", show_default=True, help="Version recorded in the manifest.")
@click.option("--per-channel", is_flag=True, help="Quantise weights per channel.")
@click.option("--calibration-method", type=click.Choice(CALIBRATION_METHODS), default="minmax", show_default=True)
@click.option("--metric", "metric_names", multiple=True, metavar="NAME[,OPT=V…]",
              help="Judge the result by this task metric (repeatable): cosine, rel-l2, nrmse, max-abs, top1, prob-change, "
              "pooled-cosine, map-iou, ctc, detection, slots, query-detection, seg-miou, box-match, or module:function. "
              "Thresholds pair in order with --min "
              "(metrics better when higher) and --max (errors); or write top1>=0.98. Default: inferred from the "
              "model's signature, and printed.")
@click.option("--min", "min_values", multiple=True, type=float, help="Threshold of a higher-is-better --metric.")
@click.option("--max", "max_values", multiple=True, type=float, help="Threshold of a lower-is-better --metric.")
@click.option("--min-cosine", type=click.FloatRange(0, 1), help="Fail unless every row's cosine to fp32 is at least this "
              "(the same as --metric cosine --min X).")
@click.option("--min-top1-agreement", type=click.FloatRange(0, 1), help="Fail unless top-1 agreement with fp32 is at least this.")
@click.option("--max-accuracy-drop", help="Fail unless task accuracy drops at most this much: 0.01 (one point) or 1% "
              "(relative to fp32). Needs --data and --labels.")
@click.option("--time-budget", type=click.FloatRange(1, 86400), default=300.0, show_default=True,
              help="auto: seconds after which no new candidate is started (the first always is).")
@click.option("--threads", type=click.IntRange(1, 1024), help="auto: intra-op threads to time candidates with "
              "(default: all cores; use what you will deploy with).")
@click.option("--timing-batch", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="auto: rows per timed call: 1 times a lone request's latency; the batch your server runs (e.g. "
                   "32 with dynamic batching) chooses by throughput, where int8 often differs.")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]),
              help="Verify and record the package for this engine (auto chooses it itself).")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), help="OpenVINO precision (default: bf16 where native).")
@click.option("--allow-domain", multiple=True, help="Allow a custom operator domain (repeatable).")
@click.option("--max-memory", help="Memory the whole conversion may use: 8G, 512M, 60% (default: 50% of this "
              "machine's). A quantiser that outgrows it is stopped; auto skips that candidate and says why.")
@click.option("--dynamic-axis", "dynamic_axis", multiple=True, metavar="NAME:AXIS[,AXIS…]",
              help="A torch model traced on example rows (TorchScript, --trust-pickle): an axis of an input or output "
                   "that varies in size besides the batch (repeatable), e.g. x:1 for [batch, samples] audio.")
@click.option("--trust-pickle", is_flag=True,
              help="Load SRC even if it is a pickle (joblib.dump, pickle.dump, torch.save of a whole module): that "
                   "runs any code the file holds, so only for files you made. Example rows come from --calibration.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def convert(src: Path, output: Path, quantize: str, calibration: Path | None, eval_data: Path | None,
            reference: Path | None, labels: str | None, name: str | None, version: str, per_channel: bool, calibration_method: str,
            metric_names: tuple[str, ...], min_values: tuple[float, ...], max_values: tuple[float, ...],
            min_cosine: float | None, min_top1_agreement: float | None, max_accuracy_drop: str | None,
            time_budget: float, threads: int | None, timing_batch: int, backend: str | None, precision: str | None,
            allow_domain: tuple[str, ...], max_memory: str | None, dynamic_axis: tuple[str, ...], trust_pickle: bool,
            force: bool) -> None:
    """Convert a model SRC (.onnx, or torch's .pt2 from torch.export.save or TorchScript .pt from torch.jit.save)
    into a verified package. SRC may name a bundled example (digits-mlp, digits-cnn, tiny-bert): its calibration
    and evaluation data come with it.

    --quantize auto tries every recipe that fits the model, measures each on the held-out data, and keeps the
    fastest inside the budget (--metric with --min/--max, --max-accuracy-drop).
    """
    from ..config import QuantizeConfig
    from ..converter.api import convert as do_convert
    from ..examples import example_names, get_example
    from . import quiet_engine_logs

    quiet_engine_logs()

    targets = parse_targets(metric_names, min_values, max_values)
    qconfig = QuantizeConfig(mode=quantize, per_channel=per_channel, calibration_method=calibration_method)  # type: ignore[arg-type]
    drop, drop_kind = _parse_drop(max_accuracy_drop)
    click.echo(f"converting {src} ({quantize}) → {output}", err=True)
    if not src.exists() and str(src) in example_names():  # a bundled example by name, as bench takes it
        ex = get_example(str(src))
        src, calibration = ex.model, calibration or ex.calibration
        if eval_data is None:
            eval_data, labels = ex.evaluation, labels or ex.labels
        click.echo(f"  the bundled example {ex.name}: {src}, calibration {calibration.name}, evaluation "
                   f"{eval_data.name}", err=True)
    source = open_source(src, trust_pickle)
    if source is not src:
        name = name or src.stem
    pkg = do_convert(
        source, output, quantize=qconfig, calibration=calibration, eval_data=eval_data, labels=labels, name=name, reference=reference,
        version=version, metrics=targets, min_cosine=min_cosine, min_top1_agreement=min_top1_agreement, max_accuracy_drop=drop,
        accuracy_drop=drop_kind, time_budget=time_budget, threads=threads, timing_batch=timing_batch, backend=backend,
        precision=precision,
        allowed_domains=allow_domain, max_memory=max_memory, dynamic_axes=dynamic_axes_option(dynamic_axis, source),
        overwrite=force, progress=_progress_printer(),
    )
    from ..summary import auto_lines, fidelity_lines, reference_lines

    m = pkg.manifest
    size = sum(f.stat().st_size for f in pkg.path.iterdir())
    click.echo(f"wrote {pkg.path} ({m.name}@{m.version}, {quantize}, {size / 1024:.1f} KiB)")
    if m.recipe.get("nothing_quantised"):
        click.echo(f"  WARNING: {m.recipe['nothing_quantised']}")
    for line in auto_lines(m.recipe):
        click.echo(f"  {line}")
    for line in fidelity_lines(m.fidelity):
        click.echo(f"  {line}")
    for line in reference_lines(m.envelope):
        click.echo(f"  {line}")


def open_source(src: Path, trust_pickle: bool) -> Any:
    """``src``, or with ``--trust-pickle`` the model a pickle file holds (loading it runs the file's code)."""
    if not trust_pickle:
        return src
    from ..converter import saved

    kind = saved.kind_of(src)
    return saved.load_pickle(src, kind) if kind in (saved.PICKLE, saved.TORCH_SAVE) else src


def dynamic_axes_option(given: tuple[str, ...], source: Any) -> Any:
    """``--dynamic-axis x:1,2`` as the torch front end's extra axes; None when none are given."""
    if not given:
        return None
    from ..converter.frontends import ExtraAxes, is_torch_module, is_torchscript_file

    if not (is_torch_module(source) or is_torchscript_file(source)):
        raise click.UsageError("--dynamic-axis applies to a torch model traced on example rows (a TorchScript file, "
                               "or a module with --trust-pickle); an ONNX or .pt2 file's dimensions are its own")
    out = ExtraAxes()
    for text in given:
        name, _, axes = text.rpartition(":")
        try:
            numbers = [int(a) for a in axes.split(",")]
        except ValueError:
            numbers = []
        if not name or not numbers or any(a < 0 for a in numbers):
            raise click.UsageError(f"--dynamic-axis takes NAME:AXIS[,AXIS…] (e.g. x:1), got {text!r}")
        out.setdefault(name, {}).update({a: f"{name}_{a}" for a in numbers})
    return out


def parse_targets(names: tuple[str, ...], mins: tuple[float, ...], maxes: tuple[float, ...]) -> list[Any]:
    """``--metric`` values with their thresholds: ``name>=x`` / ``name<=x`` carry their own; the others take
    ``--min`` values in order if better when higher, ``--max`` values in order if lower, else their default."""
    from ..errors import ConfigError
    from ..metrics import metric, target

    mins_left, maxes_left = list(mins), list(maxes)
    out = []
    try:
        for text in names:
            if ">=" in text or "<=" in text:
                out.append(target(text))
                continue
            m = metric(text)
            if not m.builtin:  # a user function: its direction is whichever threshold comes next
                if mins_left:
                    out.append(target(m, min=mins_left.pop(0)))
                elif maxes_left:
                    out.append(target(m, max=maxes_left.pop(0)))
                else:
                    out.append(target(m))  # raises: a user metric needs a threshold
            elif m.higher_is_better:
                out.append(target(m, min=mins_left.pop(0)) if mins_left else target(m))
            else:
                out.append(target(m, max=maxes_left.pop(0)) if maxes_left else target(m))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--metric") from None
    if mins_left or maxes_left:
        extra = ", ".join([f"--min {v:g}" for v in mins_left] + [f"--max {v:g}" for v in maxes_left])
        raise click.BadParameter(f"{extra} pairs with no --metric (--min goes with a metric better when higher, "
                                 "--max with an error metric)", param_hint="--min/--max")
    return out


def _parse_drop(text: str | None) -> tuple[float | None, str]:
    """``0.01`` is an absolute drop (one point); ``1%`` is relative to the fp32 accuracy."""
    if text is None:
        return None, "absolute"
    relative = text.strip().endswith("%")
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise click.BadParameter(f"expected a number such as 0.01 or 1%, got {text!r}", param_hint="--max-accuracy-drop") from None
    value = value / 100 if relative else value
    if not 0 <= value <= 1:
        raise click.BadParameter(f"must be between 0 and 1 (or 0% and 100%), got {text!r}", param_hint="--max-accuracy-drop")
    return value, "relative" if relative else "absolute"


@main.command()
@click.argument("package", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw manifest as JSON.")
@click.option("--no-verify", is_flag=True, help="Skip checking file digests.")
def inspect(package: Path, as_json: bool, no_verify: bool) -> None:
    """Summarise a package's manifest: signature, recipe, fidelity, envelope, environment (or, for a bare
    .onnx file, its signature as edgeserve reads it)."""
    import json

    from ..modelfile import model_in_folder
    from ..package import Package, is_package
    from ..summary import manifest_lines, model_file_lines

    if package.is_dir() and not is_package(package):
        package = model_in_folder(package)  # an exporter's folder: its model file
    if package.is_file():
        if as_json:
            raise click.UsageError("--json prints a package's manifest; a bare model file has none")
        for line in model_file_lines(package):
            click.echo(line)
        return
    pkg = Package.open(package, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(pkg.manifest.to_dict(), indent=2))
        return
    for line in manifest_lines(pkg):
        click.echo(line)
    if not no_verify:
        click.echo("digests: ok")
