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
from edgeserve.summary import auto_lines, budget_text

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # minutes: a whole auto search per model; `-m "not slow"` leaves it out
_tables: list[str] = []
_summary: list[str] = []


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
    return path, cal, ev, None, {}


def _conv_heavy(tmp: Path) -> tuple[Path, Path, Path, str | None, dict]:
    sys.path.insert(0, str(REPO))
    from tests.factories import cnn_opset11, save

    path = save(cnn_opset11(size=64), tmp / "conv64.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp / "conv_cal.npz", x=rng.standard_normal((64, 3, 64, 64)).astype(np.float32))
    np.savez(tmp / "conv_eval.npz", x=rng.standard_normal((32, 3, 64, 64)).astype(np.float32))
    return path, tmp / "conv_cal.npz", tmp / "conv_eval.npz", None, {}


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
    with edgeserve.load(fp32.path) as model:  # named after forward's parameter
        name = model.inputs[0].name
    np.savez(tmp / "yolo_cal.npz", **{name: x[:64]})
    np.savez(tmp / "yolo_eval.npz", **{name: x[64:]})
    return fp32.model_path, tmp / "yolo_cal.npz", tmp / "yolo_eval.npz", None, {}


def _example(name: str):
    def build(tmp: Path):
        ex = get_example(name)
        budget = {"max_accuracy_drop": 0.01} if ex.labels else {}
        return ex.model, ex.calibration, ex.evaluation, ex.labels, budget
    return build


def _stand_in(name: str):
    """The task stand-ins of tests/factories.py, each judged by the metric inferred from its signature."""

    def build(tmp: Path):
        sys.path.insert(0, str(REPO))
        from tests import factories as f

        model, data = {
            "sparse-prob-map": lambda: (f.prob_map_model(), {"image": f.prob_map_data(96)}),
            "padded-encoder": lambda: (f.encoder_model(vocab=500, dim=128), f.encoder_data(96, seq=32, vocab=500)),
            "ctc-head": lambda: (f.ctc_model(), {"features": f.ctc_data(96)}),
            "vad-like-stateful": lambda: (f.vad_like_model(samples=512, hidden=64), f.vad_like_data(96, 512, 64)),
        }[name]()
        path = f.save(model, tmp / f"{name}.onnx")
        np.savez(tmp / f"{name}.npz", **data)
        return path, tmp / f"{name}.npz", None, None, {}

    return build


CASES = {"digits-cnn": _example("digits-cnn"), "tiny-bert": _example("tiny-bert"), "minilm-sized": _minilm,
         "yolo-like-160": _yolo_like, "conv-heavy": _conv_heavy, "sparse-prob-map": _stand_in("sparse-prob-map"),
         "padded-encoder": _stand_in("padded-encoder"), "ctc-head": _stand_in("ctc-head"),
         "vad-like-stateful": _stand_in("vad-like-stateful")}
BASELINES = ("int8-dynamic", "openvino-f32", "openvino-bf16", "int8-nncf", "openvino-nncf-int8")
"""The tools' own defaults: auto must be at least as fast as the fastest of these that keeps the task metric."""


@pytest.mark.parametrize("case", list(CASES))
def test_auto(case: str, tmp_path: Path) -> None:
    model, cal, ev, labels, budget = CASES[case](tmp_path)
    pkg = edgeserve.convert(model, tmp_path / "auto", quantize="auto", calibration=cal, eval_data=ev, labels=labels,
                            time_budget=120, **budget)
    auto = pkg.manifest.recipe["auto"]
    budget_record = auto["budget"]
    baselines = [c for c in auto["candidates"] if c["name"] in BASELINES and c["within_budget"]]
    best = max(baselines, key=lambda c: c["speedup"] or 0, default=None)
    chosen = next((c for c in auto["candidates"] if c["name"] == auto["chosen"]), None)
    _summary.append(f"| {case} | {budget_text(budget_record)} | {auto['chosen']} | "
                    f"{(chosen or {}).get('speedup') or 1.0:.2f}x | "
                    f"{(best['name'] + ' ' + format(best['speedup'], '.2f') + 'x') if best else 'none in budget'} | "
                    f"{pkg.manifest.recipe['memory']['peak_rss_bytes'] / 2**20:.0f} MiB |")
    _tables.append("\n".join([f"== {case}: judged by {budget_record.get('because')}", *auto_lines(pkg.manifest.recipe)]))
    if chosen is not None:
        assert chosen["within_budget"] and chosen["speedup"] >= MIN_SPEEDUP


def teardown_module() -> None:
    print("\n\n" + "\n\n".join(_tables))
    print("\n| model | judged by | auto chose | speedup vs fp32 | fastest tool default in budget | peak RSS |")
    print("|---|---|---|---|---|---|")
    print("\n".join(_summary))
