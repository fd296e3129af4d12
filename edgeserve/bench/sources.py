"""What a benchmark runs on: the source model and its data, and the feeds cut from that data."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import read_arrays
from ..converter.api import HOLDOUT_FRACTION
from ..converter.data import Samples, check_samples, synthetic_samples
from ..errors import ConfigError
from ..examples import example_names, get_example
from ..modelfile import model_in_folder
from ..names import safe_name
from ..package import Package, is_package


@dataclass
class ModelSource:
    name: str
    model: Path
    calibration: Path | None
    evaluation: Path | None
    labels: str | None
    loaded: Any = None
    """What to convert instead of the file ``model``: the module or estimator of a pickle the user vouched for."""
    dynamic_axes: Any = None
    """The converter's ``dynamic_axes`` (a torch model traced on example rows: ``--dynamic-axis``)."""


def resolve_source(src: str | os.PathLike[str], *, data: Path | None, labels: str | None,
                   calibration: Path | None) -> ModelSource:
    """An example name, an .onnx file, or a package folder (its model file is the source)."""
    if isinstance(src, str) and src in example_names():
        ex = get_example(src)
        return ModelSource(ex.name, ex.model, calibration or ex.calibration, data or ex.evaluation,
                           labels if data else (labels or ex.labels))
    path = Path(src)
    if path.is_dir() and not is_package(path):  # an exporter's folder: its model file, named after the folder
        return ModelSource(safe_name(path.name), model_in_folder(path), calibration, data, labels)
    if path.is_dir():
        package = Package.open(path)  # manifest fields checked, every file's digest verified, no links followed
        return ModelSource(package.manifest.name, package.model_path, calibration, data, labels)
    if path.is_file():
        return ModelSource(safe_name(path.stem), path, calibration, data, labels)
    raise ConfigError(f"{src} is neither a bundled example ({', '.join(example_names())}), an .onnx file nor a package")


def load_samples(source: ModelSource, models: dict[str, Any]) -> Samples | None:
    """What every variant runs on: the evaluation data; else the calibration rows the converter held out (real
    shapes: a dynamic axis of a stand-in is 8 long, a sentence of 8 tokens or an image 8 pixels wide); else
    synthetic rows."""
    if not models:
        return None
    first = next(iter(models.values()))
    specs = first.inputs
    single = specs[0].name if len(specs) == 1 else None
    # as the converter reads them: numpy's float64 rows for a graph a front end made float32
    narrow = first.manifest is not None and first.manifest.source.get("framework") in ("sklearn", "torch")
    if source.evaluation is not None:
        arrays = read_arrays(source.evaluation, what="evaluation data", single=single)
        if source.labels:
            arrays.pop(source.labels, None)
        return check_samples(arrays, specs, what="evaluation data", narrow=narrow)
    if source.calibration is not None:
        arrays = read_arrays(source.calibration, what="calibration data", single=single)
        return check_samples(arrays, specs, what="calibration data", narrow=narrow).split(HOLDOUT_FRACTION)[1]
    vocabularies = {}
    if first.path is not None and first.manifest is not None:  # token ids across their embedding table
        from ..converter.prepare import embedding_inputs

        vocabularies = embedding_inputs(Path(first.path) / first.manifest.model_file)
    return synthetic_samples(specs, rows=64, vocabularies=vocabularies)


def data_label(source: ModelSource) -> str:
    """Where :func:`load_samples` took the data from, for the report."""
    if source.evaluation is not None:
        return str(source.evaluation)
    if source.calibration is not None:
        return f"{source.calibration} (held-out calibration rows)"
    return "synthetic"


def rows_at(samples: Samples, start: int, size: int) -> dict[str, np.ndarray]:
    """``size`` consecutive rows starting at ``start`` (wrapping, repeating the data when it is short)."""
    idx = np.arange(start, start + size) % samples.rows
    return {k: np.asarray(v, order="C") for k, v in samples.select(idx).items()}  # keeps 0-d arrays 0-d


def make_feeds(samples: Samples, size: int, count: int = 16) -> list[dict[str, np.ndarray]]:
    if samples.stacked:
        return [rows_at(samples, i * size, size) for i in range(count)]
    return [{k: np.asarray(v[i % samples.rows]) for k, v in samples.arrays.items()} for i in range(count)]


def cycling(model: Any, feeds: list[dict[str, np.ndarray]]) -> Callable[[], object]:
    """A call that walks through several inputs, so no cache anywhere sees the same row twice in a row."""
    state = {"i": 0}
    predict = model.predict

    def call() -> object:
        i = state["i"]
        state["i"] = i + 1
        return predict(feeds[i % len(feeds)])

    return call
