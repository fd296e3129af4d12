"""bench: every variant of a model, measured against each other."""

from __future__ import annotations

from pathlib import Path

import click

from . import main


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
@click.option("--metric", "metric_names", multiple=True, metavar="NAME[,OPT=V…]",
              help="Judge every variant by this task metric (as in convert; default: inferred from the model).")
@click.option("--min", "min_values", multiple=True, type=float, help="Threshold of a higher-is-better --metric.")
@click.option("--max", "max_values", multiple=True, type=float, help="Threshold of a lower-is-better --metric.")
@click.option("--compare", "compare_with", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier results.json: show changes and flag regressions beyond the noise.")
@click.option("--dynamic-axis", "dynamic_axis", multiple=True, metavar="NAME:AXIS[,AXIS…]",
              help="As in convert: an axis of a traced torch model's input or output that varies besides the batch.")
@click.option("--trust-pickle", is_flag=True,
              help="As in convert: load SRC even if it is a pickle (it runs any code the file holds).")
def bench(sources: tuple[str, ...], out: Path, variants: str | None, data: Path | None, labels: str | None,
          calibration: Path | None, threads: int | None, batch_sizes: str, concurrency: str, rounds: int,
          time_budget: float, cold_start_repeats: int, metric_names: tuple[str, ...], min_values: tuple[float, ...],
          max_values: tuple[float, ...], compare_with: Path | None, dynamic_axis: tuple[str, ...],
          trust_pickle: bool) -> None:
    """Benchmark every variant of SOURCES (.onnx files, torch's .pt2 or TorchScript .pt files, packages or example
    names; default: all bundled examples).

    Latency, throughput, concurrency, cold start and memory, against accuracy loss to fp32.
    """
    from ..bench.harness import BenchConfig
    from ..bench.harness import bench as run_bench
    from ..bench.report import comparison_lines, table
    from ..bench.variants import parse_variants
    from . import quiet_engine_logs
    from .convert import dynamic_axes_option, open_source, parse_targets

    quiet_engine_logs()
    model, axes = None, None
    if trust_pickle or dynamic_axis:
        if len(sources) != 1 or not Path(sources[0]).is_file():
            raise click.UsageError("--trust-pickle and --dynamic-axis apply to one model file: give one SRC")
        loaded = open_source(Path(sources[0]), trust_pickle)
        model = None if isinstance(loaded, Path) else loaded
        axes = dynamic_axes_option(dynamic_axis, loaded)

    config = BenchConfig(
        variants=tuple(v.name for v in parse_variants(variants)), threads=threads,
        batch_sizes=_int_list(batch_sizes) or (1,), concurrency=_int_list(concurrency) or (), rounds=rounds,
        time_budget=time_budget, cold_start_repeats=cold_start_repeats,
        metrics=tuple(parse_targets(metric_names, min_values, max_values)),
    )
    results = run_bench(sources, out, config, data=data, labels=labels, calibration=calibration,
                        compare_with=compare_with, progress=lambda message: click.echo(f"  {message}", err=True),
                        model=model, dynamic_axes=axes)
    for model in results["models"]:
        click.echo("")
        click.echo(table(model))
    if results.get("comparison"):
        click.echo("\nchanges against " + str(compare_with) + ":")
        for line in comparison_lines(results["comparison"]):
            click.echo(f"  {line}")
    click.echo(f"\n{results['duration_s']:.0f} s. Results: {out / 'results.json'}, report: {out / 'report.md'}"
               + (f", plot: {out / 'pareto.png'}" if results["files"]["plot"] else ""))


