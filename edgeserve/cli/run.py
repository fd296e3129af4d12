"""run: one package (or .onnx file) on the arrays of an .npz file — the command whose start-up time matters."""

from __future__ import annotations

from pathlib import Path

import click

from . import main


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

    from ..arrays import read_arrays, write_npz
    from ..config import SessionConfig
    from ..runtime.model import load

    arrays = read_arrays(input_file, what="input file")
    with load(package, config=SessionConfig(intra_op_threads=threads), golden=golden) as model:  # type: ignore[arg-type]
        outputs = model.predict(arrays)
    if output:
        write_npz(output, outputs)
        click.echo(f"wrote {len(outputs)} outputs to {output}")
    for name, value in outputs.items():
        preview = np.array2string(value.reshape(-1)[:6], precision=4, separator=", ", threshold=6)
        click.echo(f"{name}: {value.dtype} {list(value.shape)} {preview}{' …' if value.size > 6 else ''}")


