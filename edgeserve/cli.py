"""The ``edgeserve`` command: a thin layer of click over the public API. Heavy imports happen inside commands."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import CALIBRATION_METHODS, QUANTIZE_MODES

EXIT_RUNTIME_ERROR = 1


class _Group(click.Group):
    """Turns edgeserve errors into one line and exit code 1; usage errors stay click's (exit code 2)."""

    def invoke(self, ctx: click.Context) -> Any:
        from .errors import EdgeserveError

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except EdgeserveError as exc:
            if _debug(ctx):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_RUNTIME_ERROR)
        except Exception as exc:
            if _debug(ctx):
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                       "(run with --debug for the traceback)", err=True)
            ctx.exit(EXIT_RUNTIME_ERROR)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().params.get("debug")) or os.environ.get("EDGESERVE_DEBUG") == "1"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show progress and info logs.")
@click.version_option(package_name="edgeserve", prog_name="edgeserve")
def main(debug: bool, verbose: bool) -> None:
    """edgeserve: convert, quantise, verify, benchmark and serve models on CPU."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


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
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Package folder to write.")
@click.option("-q", "--quantize", type=click.Choice(QUANTIZE_MODES), default="none", show_default=True,
              help="none (optimised fp32), dynamic int8, static int8 (needs --calibration) or fp16.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path),
              help="Calibration data: .npz with one array per input, or a folder of NAME.npy.")
@click.option("--data", "eval_data", type=click.Path(exists=True, path_type=Path),
              help="Held-out evaluation data (.npz) for measuring fidelity and accuracy.")
@click.option("--labels", help="Name of the labels array inside --data, for task accuracy.")
@click.option("--name", help="Model name recorded in the manifest (default: the file name).")
@click.option("--version", "version", default="1", show_default=True, help="Version recorded in the manifest.")
@click.option("--per-channel", is_flag=True, help="Quantise weights per channel.")
@click.option("--calibration-method", type=click.Choice(CALIBRATION_METHODS), default="minmax", show_default=True)
@click.option("--min-cosine", type=click.FloatRange(0, 1), help="Fail unless every row's cosine to fp32 is at least this.")
@click.option("--min-top1-agreement", type=click.FloatRange(0, 1), help="Fail unless top-1 agreement with fp32 is at least this.")
@click.option("--max-accuracy-drop", help="Fail unless task accuracy drops at most this much: 0.01 (one point) or 1% "
              "(relative to fp32). Needs --data and --labels.")
@click.option("--time-budget", type=click.FloatRange(1, 86400), default=300.0, show_default=True,
              help="auto: seconds after which no new candidate is started.")
@click.option("--threads", type=click.IntRange(1, 1024), help="auto: intra-op threads to time candidates with "
              "(default: all cores; use what you will deploy with).")
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]),
              help="Verify and record the package for this engine (auto chooses it itself).")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), help="OpenVINO precision (default: bf16 where native).")
@click.option("--allow-domain", multiple=True, help="Allow a custom operator domain (repeatable).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def convert(src: Path, output: Path, quantize: str, calibration: Path | None, eval_data: Path | None,
            labels: str | None, name: str | None, version: str, per_channel: bool, calibration_method: str,
            min_cosine: float | None, min_top1_agreement: float | None, max_accuracy_drop: str | None,
            time_budget: float, threads: int | None, backend: str | None, precision: str | None,
            allow_domain: tuple[str, ...], force: bool) -> None:
    """Convert an ONNX model SRC into a verified package.

    --quantize auto tries every recipe that fits the model, measures each on the held-out data, and keeps the
    fastest inside the budget (--max-accuracy-drop, --min-cosine, --min-top1-agreement).
    """
    from .config import QuantizeConfig
    from .converter.api import convert as do_convert

    qconfig = QuantizeConfig(mode=quantize, per_channel=per_channel, calibration_method=calibration_method)  # type: ignore[arg-type]
    drop, drop_kind = _parse_drop(max_accuracy_drop)
    click.echo(f"converting {src} ({quantize}) → {output}", err=True)
    pkg = do_convert(
        src, output, quantize=qconfig, calibration=calibration, eval_data=eval_data, labels=labels, name=name,
        version=version, min_cosine=min_cosine, min_top1_agreement=min_top1_agreement, max_accuracy_drop=drop,
        accuracy_drop=drop_kind, time_budget=time_budget, threads=threads, backend=backend, precision=precision,
        allowed_domains=allow_domain,
        overwrite=force, progress=_progress_printer(),
    )
    from .summary import auto_lines, fidelity_lines

    m = pkg.manifest
    size = sum(f.stat().st_size for f in pkg.path.iterdir())
    click.echo(f"wrote {pkg.path} ({m.name}@{m.version}, {quantize}, {size / 1024:.1f} KiB)")
    for line in auto_lines(m.recipe):
        click.echo(f"  {line}")
    for line in fidelity_lines(m.fidelity):
        click.echo(f"  {line}")


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
    """Summarise a package's manifest: signature, recipe, fidelity, envelope, environment."""
    import json

    from .package import Package
    from .summary import manifest_lines

    pkg = Package.open(package, verify=not no_verify)
    if as_json:
        click.echo(json.dumps(pkg.manifest.to_dict(), indent=2))
        return
    for line in manifest_lines(pkg):
        click.echo(line)
    if not no_verify:
        click.echo("digests: ok")


@main.command()
@click.argument("package", type=click.Path(exists=True, path_type=Path))
@click.option("-i", "--input", "input_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help=".npz with one array per model input.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the outputs to this .npz.")
@click.option("--threads", type=click.IntRange(1, 1024), help="Intra-op threads (default: all cores).")
@click.option("--golden", type=click.Choice(["error", "warn", "off"]), default="error", show_default=True,
              help="What a golden-sample mismatch at load does.")
def run(package: Path, input_file: Path, output: Path | None, threads: int | None, golden: str) -> None:
    """Run PACKAGE (or an .onnx file) on the arrays in an .npz file."""
    import numpy as np

    from .arrays import read_arrays, write_npz
    from .config import SessionConfig
    from .runtime.model import load

    arrays = read_arrays(input_file, what="input file")
    with load(package, config=SessionConfig(intra_op_threads=threads), golden=golden) as model:  # type: ignore[arg-type]
        outputs = model.predict(arrays)
    if output:
        write_npz(output, outputs)
        click.echo(f"wrote {len(outputs)} outputs to {output}")
    for name, value in outputs.items():
        preview = np.array2string(value.reshape(-1)[:6], precision=4, separator=", ", threshold=6)
        click.echo(f"{name}: {value.dtype} {list(value.shape)} {preview}{' …' if value.size > 6 else ''}")


def _int_list(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


@main.command()
@click.argument("sources", nargs=-1)
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out"),
              show_default=True, help="Folder for results.json, report.md, pareto.png and the built variants.")
@click.option("--variants", help="Comma-separated from fp32, fp32-optimised, int8-dynamic, int8-static, fp16, int4, "
              "auto, openvino-f32, openvino-bf16, openvino-int8 (default: fp32 to auto, no int4 or openvino).")
@click.option("--data", type=click.Path(exists=True, path_type=Path), help="Evaluation data (.npz) for one SRC.")
@click.option("--labels", help="Name of the labels array in --data, for task accuracy.")
@click.option("--calibration", type=click.Path(exists=True, path_type=Path), help="Calibration data for static int8.")
@click.option("--threads", type=click.IntRange(1, 1024), help="Intra-op threads for every variant (default: all cores).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Batch sizes for throughput.")
@click.option("--concurrency", default="4", show_default=True, help="Concurrent callers for the concurrency test.")
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True, help="Interleaved rounds.")
@click.option("--time-budget", type=click.FloatRange(1, 3600), default=40.0, show_default=True,
              help="Seconds of in-process measurement per model.")
@click.option("--cold-start-repeats", type=click.IntRange(0, 50), default=3, show_default=True,
              help="Fresh processes per variant for cold start and memory (0: skip).")
@click.option("--compare", "compare_with", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier results.json: show changes and flag regressions beyond the noise.")
def bench(sources: tuple[str, ...], out: Path, variants: str | None, data: Path | None, labels: str | None,
          calibration: Path | None, threads: int | None, batch_sizes: str, concurrency: str, rounds: int,
          time_budget: float, cold_start_repeats: int, compare_with: Path | None) -> None:
    """Benchmark every variant of SOURCES (.onnx files, packages or example names; default: all bundled examples).

    Latency, throughput, concurrency, cold start and memory, against accuracy loss to fp32.
    """
    from .bench.harness import BenchConfig
    from .bench.harness import bench as run_bench
    from .bench.report import comparison_lines, table
    from .bench.variants import parse_variants

    config = BenchConfig(
        variants=tuple(v.name for v in parse_variants(variants)), threads=threads,
        batch_sizes=_int_list(batch_sizes) or (1,), concurrency=_int_list(concurrency) or (), rounds=rounds,
        time_budget=time_budget, cold_start_repeats=cold_start_repeats,
    )
    results = run_bench(sources, out, config, data=data, labels=labels, calibration=calibration,
                        compare_with=compare_with, progress=lambda message: click.echo(f"  {message}", err=True))
    for model in results["models"]:
        click.echo("")
        click.echo(table(model))
    if results.get("comparison"):
        click.echo("\nchanges against " + str(compare_with) + ":")
        for line in comparison_lines(results["comparison"]):
            click.echo(f"  {line}")
    click.echo(f"\n{results['duration_s']:.0f} s. Results: {out / 'results.json'}, report: {out / 'report.md'}"
               + (f", plot: {out / 'pareto.png'}" if results["files"]["plot"] else ""))


@main.group()
def models() -> None:
    """Manage a model repository: REPO/NAME/VERSION/ folders holding packages."""


def _repo(root: Path, create: bool = False):
    from .runtime.repository import Repository

    return Repository(root, create=create)


@models.command("list")
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
def models_list(repo: Path) -> None:
    """Models, their versions and the one serving."""
    repository = _repo(repo)
    states = list(repository)
    if not states:
        click.echo(f"{repo}: no models (publish one with: edgeserve models publish {repo} NAME PACKAGE)")
    for state in states:
        versions = ", ".join(f"{v} (serving{', pinned' if state.pinned else ''})" if v == state.current else str(v)
                             for v in state.versions)
        click.echo(f"{state.name}: {versions or 'no versions'}")


@models.command("publish")
@click.argument("repo", type=click.Path(file_okay=False, path_type=Path))
@click.argument("name")
@click.argument("package", type=click.Path(exists=True, file_okay=False, path_type=Path))
def models_publish(repo: Path, name: str, package: Path) -> None:
    """Copy PACKAGE into REPO as the next version of NAME (verified, atomic); it serves unless NAME is pinned."""
    repository = _repo(repo, create=True)
    version = repository.publish(name, package)
    state = repository.state(name)
    note = "" if state.current == version else f" (pinned: version {state.current} keeps serving)"
    click.echo(f"published {name} version {version}{note}")


@models.command("rollback")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
def models_rollback(repo: Path, name: str) -> None:
    """Serve the version before the current one (a running server picks it up on reload)."""
    version = _repo(repo).rollback(name)
    click.echo(f"{name}: serving version {version}")


@models.command("pin")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.argument("version")
def models_pin(repo: Path, name: str, version: str) -> None:
    """Serve VERSION of NAME and stay on it when newer versions are published."""
    v = _repo(repo).pin(name, version)
    click.echo(f"pinned {name} to version {v}")


@models.command("unpin")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
def models_unpin(repo: Path, name: str) -> None:
    """Follow the newest version of NAME again."""
    v = _repo(repo).unpin(name)
    click.echo(f"{name}: serving the newest version, {v}")


@models.command("remove")
@click.argument("repo", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("name")
@click.argument("version")
@click.option("--force", is_flag=True, help="Remove even the serving version (the newest remaining then serves).")
def models_remove(repo: Path, name: str, version: str, force: bool) -> None:
    """Delete VERSION of NAME."""
    _repo(repo).remove(name, version, force=force)
    click.echo(f"removed {name} version {version}")
