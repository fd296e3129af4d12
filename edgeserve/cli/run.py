"""run: one package (or .onnx file) on the arrays of an .npz file — the command whose start-up time matters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

    from ..arrays import by_input, read_arrays, write_npz
    from ..config import SessionConfig
    from ..runtime.model import load

    if output is not None:
        _check_output(output, package, input_file)
    arrays = read_arrays(input_file, what="input file")
    with load(package, config=SessionConfig(intra_op_threads=threads), golden=golden) as model:  # type: ignore[arg-type]
        arrays = by_input(arrays, [s.name for s in model.inputs])
        stacked = {s.name for s in model.inputs if s.shape[:1] == (1,)} if model.one_row_per_call else set()
        rows = _rows(stacked, arrays)
        if rows is None:
            outputs = model.predict(arrays)
        else:  # one call per row, and one array per row and output: their lengths differ
            answers = [model.predict({k: v[i:i + 1] if k in stacked and v.ndim else v for k, v in arrays.items()})
                       for i in range(rows)]
            outputs = {f"{name}/{i}": value for i, answer in enumerate(answers) for name, value in answer.items()}
    if output:
        write_npz(output, outputs)
        click.echo(f"wrote {len(outputs)} outputs to {output}" + ("" if rows is None else
                                                                   f" (NAME/ROW: one array per row of {rows})"))
    if rows is not None:
        for name in answers[0]:
            counts = [len(a[name]) if a[name].ndim else 1 for a in answers]
            shown = ", ".join(map(str, counts[:8])) + (", …" if rows > 8 else "")
            click.echo(f"{name}/0..{rows - 1}: {answers[0][name].dtype}, lengths {shown}")
        return
    for name, value in outputs.items():
        preview = np.array2string(value.reshape(-1)[:6], precision=4, separator=", ", threshold=6)
        click.echo(f"{name}: {value.dtype} {list(value.shape)} {preview}{' …' if value.size > 6 else ''}")


def _check_output(output: Path, package: Path, input_file: Path) -> None:
    """The answers never replace what was run: the input file, the model file, or anything in the package."""
    real = output.resolve()
    if real == input_file.resolve():
        raise click.BadParameter("is the input file; write the outputs to another file", param_hint="'-o'")
    model = package.resolve()
    if real == model or (model.is_dir() and model in real.parents):
        raise click.BadParameter(f"is inside the package {package}, which it would corrupt; write the outputs "
                                 "elsewhere", param_hint="'-o'")


def _rows(stacked: set[str], arrays: dict[str, Any]) -> int | None:
    """How many rows ``arrays`` hold in the ``stacked`` inputs ([1, ...] in a model that takes one row per call and
    cannot join their answers, see ``Model.one_row_per_call``); None when there are none or the file holds one."""
    counts = {name: arrays[name].shape[0] for name in stacked if name in arrays and arrays[name].ndim}
    if len(set(counts.values())) > 1:
        from ..errors import InputError

        raise InputError("the inputs hold different numbers of rows: "
                         + ", ".join(f"'{k}' {v}" for k, v in counts.items()))
    rows = next(iter(counts.values()), 1)
    return rows if rows > 1 else None
