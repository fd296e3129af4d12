"""What ``auto`` picks, and how fast, on the bundled examples and on models shaped like real exports.

    pytest benchmarks/test_auto_targets.py -s

Models: the bundled digits CNN and tiny BERT; a MiniLM-sized encoder (6 layers, d=384, 12 heads, seq 128; built
with torch); a YOLO-like detector on 160x160 images (torch; two sigmoid heads); a convolution-heavy network on
64x64 images, where dynamic int8 is slower than fp32. With OpenVINO (and NNCF) installed, their candidates join
the same search, so each table is also the backend comparison. Each search
times every candidate against fp32 with the same threads in the same run; the table printed at the end is the
evidence, and the only assertion is the rule auto must never break: whatever it picks beats fp32 and fits the budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import edgeserve
from edgeserve.converter.autotune import MIN_SPEEDUP
from edgeserve.examples import get_example
from edgeserve.summary import auto_lines

REPO = Path(__file__).resolve().parents[1]
_tables: list[str] = []


def _minilm(tmp: Path) -> tuple[Path, Path, Path, str | None, dict]:
    pytest.importorskip("torch")
    import torch

    sys.path.insert(0, str(REPO / "models"))
    from build import TinyBert, _export, token_batch  # type: ignore[import-not-found]

    torch.manual_seed(0)
    model = TinyBert.make(vocab=8000, dim=384, heads=12, layers=6, ffn=1536, max_len=128).eval()
    rng = np.random.default_rng(0)
    ids, mask = token_batch(rng, 2, seq=128, vocab=8000)
    path = tmp / "minilm.onnx"
    _export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), ["input_ids", "attention_mask"],
            ["last_hidden_state", "pooled"], path, seq_axis=True)
    cal, ev = tmp / "minilm_cal.npz", tmp / "minilm_eval.npz"
    np.savez(cal, **dict(zip(["input_ids", "attention_mask"], token_batch(rng, 64, seq=128, vocab=8000))))
    np.savez(ev, **dict(zip(["input_ids", "attention_mask"], token_batch(rng, 32, seq=128, vocab=8000))))
    return path, cal, ev, None, {"min_cosine": 0.99}


def _conv_heavy(tmp: Path) -> tuple[Path, Path, Path, str | None, dict]:
    sys.path.insert(0, str(REPO))
    from tests.factories import cnn_opset11, save

    path = save(cnn_opset11(size=64), tmp / "conv64.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp / "conv_cal.npz", x=rng.standard_normal((64, 3, 64, 64)).astype(np.float32))
    np.savez(tmp / "conv_eval.npz", x=rng.standard_normal((32, 3, 64, 64)).astype(np.float32))
    return path, tmp / "conv_cal.npz", tmp / "conv_eval.npz", None, {"min_cosine": 0.99}


def _yolo_like(tmp: Path) -> tuple[Path, Path, Path, str | None, dict]:
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(REPO))
    import edgeserve
    from tests.factories import torch_yolo_like

    net = torch_yolo_like()
    rng = np.random.default_rng(0)
    x = rng.random((96, 3, 160, 160), dtype=np.float32)
    fp32 = edgeserve.convert(net, tmp / "yolo-src", example_inputs=torch.from_numpy(x[:2]),
                             output_names=["boxes", "objectness"], quantize="none")
    np.savez(tmp / "yolo_cal.npz", input=x[:64])
    np.savez(tmp / "yolo_eval.npz", input=x[64:])
    return fp32.model_path, tmp / "yolo_cal.npz", tmp / "yolo_eval.npz", None, {"min_cosine": 0.99}


def _example(name: str):
    def build(tmp: Path):
        ex = get_example(name)
        budget = {"max_accuracy_drop": 0.01} if ex.labels else {"min_cosine": 0.99}
        return ex.model, ex.calibration, ex.evaluation, ex.labels, budget
    return build


CASES = {"digits-cnn": _example("digits-cnn"), "tiny-bert": _example("tiny-bert"), "minilm-sized": _minilm,
         "yolo-like-160": _yolo_like, "conv-heavy": _conv_heavy}


@pytest.mark.parametrize("case", list(CASES))
def test_auto(case: str, tmp_path: Path) -> None:
    model, cal, ev, labels, budget = CASES[case](tmp_path)
    pkg = edgeserve.convert(model, tmp_path / "auto", quantize="auto", calibration=cal, eval_data=ev, labels=labels,
                            time_budget=120, **budget)
    auto = pkg.manifest.recipe["auto"]
    _tables.append("\n".join([f"== {case}", *auto_lines(pkg.manifest.recipe)]))
    if auto["chosen"] != "fp32":
        chosen = next(c for c in auto["candidates"] if c["name"] == auto["chosen"])
        assert chosen["within_budget"] and chosen["speedup"] >= MIN_SPEEDUP


def teardown_module() -> None:
    print("\n\n" + "\n\n".join(_tables))
