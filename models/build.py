"""Build the bundled example models and their data, offline, in well under a minute on 2 cores.

    python models/build.py            # writes next to this file

(a) digits-mlp:  a scikit-learn MLP (scaler + MLPClassifier) on scikit-learn's bundled digits, via skl2onnx
(b) digits-cnn:  a small convolutional network trained with PyTorch on the same digits (as 1x8x8 images)
(c) tiny-bert:   a small BERT-like transformer encoder (random, seeded weights) with a mean-pooled output

Each model ships with a calibration split and a held-out evaluation split (.npz, one array per input; the
digits evaluation sets also hold the true labels as ``labels``). Everything is seeded: reruns give the same data.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 0


def digits_splits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, random_state=SEED, stratify=y)
    x_cal, x_eval, y_cal, y_eval = train_test_split(x_rest, y_rest, test_size=0.5, random_state=SEED, stratify=y_rest)
    return (x_train, y_train), (x_cal, y_cal), (x_eval, y_eval)


def build_digits_mlp(out: Path) -> None:
    import warnings

    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (x_train, y_train), (x_cal, _), (x_eval, y_eval) = digits_splits()
    model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=200, random_state=SEED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train, y_train)
    clf = model.steps[-1][1]
    onx = to_onnx(model, x_train[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    (out / "digits_mlp.onnx").write_bytes(onx.SerializeToString())
    name = onx.graph.input[0].name
    np.savez(out / "digits_mlp_calibration.npz", **{name: x_cal})
    np.savez(out / "digits_mlp_eval.npz", **{name: x_eval, "labels": y_eval.astype(np.int64)})
    print(f"digits-mlp: held-out accuracy {model.score(x_eval, y_eval):.4f}")


def build_digits_cnn(out: Path) -> None:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    (x_train, y_train), (x_cal, _), (x_eval, y_eval) = digits_splits()

    def images(x):
        return (x / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    xt, yt = torch.from_numpy(images(x_train)), torch.from_numpy(y_train.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _epoch in range(15):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(images(x_eval))).argmax(1).numpy() == y_eval).mean()
    _export(model, (torch.from_numpy(images(x_eval[:2])),), ["image"], ["logits"], out / "digits_cnn.onnx")
    np.savez(out / "digits_cnn_calibration.npz", image=images(x_cal))
    np.savez(out / "digits_cnn_eval.npz", image=images(x_eval), labels=y_eval.astype(np.int64))
    print(f"digits-cnn: held-out accuracy {acc:.4f}")


class TinyBert:
    """Built inside a function so that importing this script does not need torch."""

    @staticmethod
    def make(vocab: int = 2000, dim: int = 128, heads: int = 4, layers: int = 2, ffn: int = 512, max_len: int = 64):
        import torch
        from torch import nn

        class Layer(nn.Module):
            def __init__(self):
                super().__init__()
                self.qkv = nn.Linear(dim, 3 * dim)
                self.proj = nn.Linear(dim, dim)
                self.ln1 = nn.LayerNorm(dim)
                self.ff = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
                self.ln2 = nn.LayerNorm(dim)

            def forward(self, h, bias):
                b, t, _ = h.shape
                q, k, v = self.qkv(h).reshape(b, t, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
                att = (q @ k.transpose(-1, -2)) / math.sqrt(dim // heads) + bias
                ctx = (att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, dim)
                h = self.ln1(h + self.proj(ctx))
                return self.ln2(h + self.ff(h))

        class Encoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.tok = nn.Embedding(vocab, dim)
                self.pos = nn.Embedding(max_len, dim)
                self.ln = nn.LayerNorm(dim)
                self.layers = nn.ModuleList(Layer() for _ in range(layers))

            def forward(self, input_ids, attention_mask):
                t = input_ids.shape[1]
                pos = torch.arange(t, device=input_ids.device).unsqueeze(0)
                h = self.ln(self.tok(input_ids) + self.pos(pos))
                mask = attention_mask.to(h.dtype)
                bias = (1.0 - mask)[:, None, None, :] * -10000.0
                for layer in self.layers:
                    h = layer(h, bias)
                pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
                return h, pooled

        return Encoder()


def token_batch(rng: np.random.Generator, rows: int, seq: int = 32, vocab: int = 2000):
    lengths = rng.integers(4, seq + 1, size=rows)
    ids = rng.integers(1, vocab, size=(rows, seq)).astype(np.int64)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def build_tiny_bert(out: Path) -> None:
    import torch

    torch.manual_seed(SEED)
    model = TinyBert.make().eval()
    rng = np.random.default_rng(SEED)
    ids, mask = token_batch(rng, 2)
    _export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), ["input_ids", "attention_mask"],
            ["last_hidden_state", "pooled"], out / "tiny_bert.onnx", seq_axis=True)
    cal_ids, cal_mask = token_batch(rng, 128)
    ev_ids, ev_mask = token_batch(rng, 64)
    np.savez(out / "tiny_bert_calibration.npz", input_ids=cal_ids, attention_mask=cal_mask)
    np.savez(out / "tiny_bert_eval.npz", input_ids=ev_ids, attention_mask=ev_mask)
    print("tiny-bert: built (random seeded weights; measured by fidelity to fp32)")


def _export(model, args, input_names, output_names, path: Path, seq_axis: bool = False) -> None:
    import warnings

    import torch

    axes = {n: ({0: "batch", 1: "sequence"} if seq_axis else {0: "batch"}) for n in input_names}
    for n in output_names:
        axes[n] = {0: "batch", 1: "sequence"} if seq_axis and n == "last_hidden_state" else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)


def main(out: Path = HERE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    build_digits_mlp(out)
    build_digits_cnn(out)
    build_tiny_bert(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
