"""The bundled example models (built by ``models/build.py``), addressable by name: ``digits-cnn`` …"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Example:
    """One bundled model with its calibration split and held-out evaluation split."""

    name: str
    model: Path
    calibration: Path
    evaluation: Path
    labels: str | None
    """Name of the labels array in the evaluation file, when the task has labels."""
    description: str


_CATALOGUE = (
    ("digits-mlp", "digits_mlp", "labels", "scikit-learn MLP (scaler + 256-128 MLP) on the bundled digits data"),
    ("digits-cnn", "digits_cnn", "labels", "small PyTorch CNN (3 conv + 2 dense) on the digits as 8x8 images"),
    ("tiny-bert", "tiny_bert", None, "BERT-like encoder, 2 layers, d=128, seq 32; token ids + attention mask"),
)


def models_dir() -> Path:
    """Where the example files live: inside an installed wheel, or the repository's ``models/`` folder."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_models", here.parent / "models"):
        if (candidate / "digits_mlp.onnx").exists():
            return candidate
    raise ConfigError("the bundled example models are not installed; build them with: python models/build.py")


def examples() -> dict[str, Example]:
    folder = models_dir()
    return {
        name: Example(name, folder / f"{stem}.onnx", folder / f"{stem}_calibration.npz", folder / f"{stem}_eval.npz",
                      labels, description)
        for name, stem, labels, description in _CATALOGUE
    }


def example_names() -> tuple[str, ...]:
    return tuple(name for name, *_ in _CATALOGUE)


def get_example(name: str) -> Example:
    if name not in example_names():
        raise ConfigError(f"no bundled example named {name!r}; the examples are {', '.join(example_names())}")
    return examples()[name]
