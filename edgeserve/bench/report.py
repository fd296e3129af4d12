"""Benchmark output: the terminal table, results.json, report.md, pareto.png and the comparison with an old run."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COLUMNS = ("variant", "size KiB", "p50 ms", "p99 ms", "speedup", "rows/s", "conc rows/s", "cold/cached ms", "RSS MiB",
           "accuracy", "loss pts", "task metric")


def _f(value: Any, fmt: str, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    try:
        return format(float(value) * scale, fmt)
    except (TypeError, ValueError):
        return "-"


def _ms(seconds: Any) -> str:
    """Milliseconds with three significant digits: 0.0152, 1.27, 48.3."""
    if seconds is None:
        return "-"
    ms = float(seconds) * 1e3
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _largest(mapping: Mapping[str, Any]) -> tuple[str, Any] | tuple[None, None]:
    if not mapping:
        return None, None
    key = max(mapping, key=lambda k: int(k))
    return key, mapping[key]


def rows(model: Mapping[str, Any]) -> list[list[str]]:
    out = []
    for v in model["variants"]:
        if v["status"] != "ok":
            out.append([v["name"], f"skipped: {v['error']}" if v["status"] == "skipped" else f"FAILED: {v['error']}"])
            continue
        lat, cold = v["latency"], v["cold_start"]
        _, thr = _largest(v["throughput"])
        _, conc = _largest(v["concurrency"])
        _, conc_on = _largest(v.get("concurrency_batched") or {})
        p50 = _ms(lat.get("p50")) + ("~" if lat.get("noisy") else "")
        auto = (v.get("recipe") or {}).get("auto")
        label = f"{v['name']} ({auto['chosen']})" if auto else v["name"]
        out.append([
            label, _f(v["size_bytes"], ".0f", 1 / 1024), p50, _ms(lat.get("p99")),
            _f(v["speedup"], ".2f") + ("x" if v["speedup"] else ""), _f(thr and thr["rows_per_s"], ".0f"),
            _f(conc and conc["rows_per_s"], ".0f") + "/" + _f(conc_on and conc_on["rows_per_s"], ".0f"), _f(cold.get("process_to_first_answer_s"), ".0f", 1e3) + "/" + _f(cold.get("process_to_first_answer_cached_s"), ".0f", 1e3),
            _f(cold.get("peak_rss_bytes"), ".0f", 1 / 2**20), *_accuracy_cells(v), task_metric(v),
        ])
    return out


def _accuracy_cells(v: Mapping[str, Any]) -> tuple[str, str]:
    """Accuracy and its loss in points against class labels; against a regressor's target values, its RMSE and
    how much that grew over fp32's (the columns are headed so, see :func:`_headers`)."""
    if _regressor(v):
        return _f(v["label_rmse"], ".4g"), _f(v.get("label_rmse_increase"), "+.4g")
    return _f(v["accuracy"], ".4f"), _f(v["accuracy_loss"], "+.2f", 100)


def _regressor(v: Mapping[str, Any]) -> bool:
    return v.get("accuracy") is None and v.get("label_rmse") is not None


def _headers(model: Mapping[str, Any]) -> list[str]:
    ok = [v for v in model["variants"] if v["status"] == "ok"]
    bs = _largest(ok[0]["throughput"])[0] if ok else None
    callers = _largest(ok[0]["concurrency"])[0] if ok else None
    headers = list(COLUMNS)
    headers[5] = f"rows/s@{bs}" if bs else "rows/s"
    headers[6] = f"x{callers} off/on" if callers else "conc rows/s"
    if ok and all(_regressor(v) for v in ok):
        headers[9:11] = ["label rmse", "rmse +"]
    return headers


def table(model: Mapping[str, Any]) -> str:
    """A fixed-width table for the terminal."""
    headers, body = _headers(model), rows(model)
    widths = [max(len(h), *(len(r[i]) for r in body if len(r) > 2)) if any(len(r) > 2 for r in body) else len(h)
              for i, h in enumerate(headers)]
    lines = [f"{model['model']}  (threads {model['threads']}, data: {Path(model['data']).name})",
             "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for r in body:
        if len(r) == 2:
            lines.append(f"{r[0].ljust(widths[0])}  {r[1]}")
        else:
            lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


LEGEND = ("p50/p99: latency at batch 1; ~ marks a p50 whose round medians spread by more than 10%. speedup: fp32 over the "
          "variant, the median over rounds of fp32's median latency over the variant's. rows/s@N: throughput at batch N; xC off/on: rows/s with C concurrent callers at batch 1, dynamic batching off and on. cold/cached: "
          "fresh process to first answer with an empty graph cache, then with the cached optimised graph; RSS: peak memory. accuracy and loss (points, fp32 minus variant) on the "
          "held-out labels (a regressor's label rmse and rmse +: its RMSE against the targets, and how much it grew over fp32's); task metric: the variant's score, against fp32, in the metric that judged it (named with "
          "--metric, or inferred from the model's signature; `inspect` says which and why), or with labels, top1: the "
          "share of rows whose predicted class agrees with fp32's.")


def markdown(results: Mapping[str, Any], *, has_plot: bool = True) -> str:
    env = results["environment"]
    cpu = env["cpu"]
    out = [
        "# edgeserve bench",
        "",
        f"{results['started_at']}, {results['duration_s']:.0f} s. {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores; "
        f"{', '.join(cpu['flags']) or 'no notable flags'}). Python {env['python']}, onnx {env['onnx']}, onnxruntime "
        f"{env['onnxruntime']}, numpy {env['numpy']}, edgeserve {env['edgeserve']} (git {env.get('git_revision') or '-'}).",
        "",
        f"Settings: {json.dumps(results['settings'])}",
        "",
    ]
    for model in results["models"]:
        headers, body = _headers(model), rows(model)
        out += [f"## {model['model']}", "", f"Data: `{model['data']}`, threads {model['threads']}.", "",
                "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for r in body:
            out.append("| " + " | ".join(r + [""] * (len(headers) - len(r))) + " |")
        out.append("")
        reference = model.get("machine") or {}
        if reference.get("latency_p50"):
            rates = ", ".join(f"{r:.0f} rows/s at batch {bs}" for bs, r in (reference.get("throughput") or {}).items()
                              if r)
            out += [f"Machine reference (a fixed MLP timed in the same rounds; `--compare` judges timings against "
                    f"it): p50 {reference['latency_p50'] * 1e3:.4g} ms{', ' + rates if rates else ''}.", ""]
    out += [LEGEND, ""]
    if results.get("comparison"):
        out += ["## Compared with the previous run", ""] + [f"- {line}" for line in comparison_lines(results["comparison"])]
    out += ["", "![latency vs accuracy loss](pareto.png)" if has_plot else "(no plot: matplotlib is not installed)", ""]
    return "\n".join(out)


def _first_target(v: Mapping[str, Any]) -> tuple[str, bool] | None:
    """The metric that judged a variant (its first target) and whether higher is better."""
    targets = (v.get("budget") or {}).get("targets") or []
    if not targets or targets[0]["metric"] not in (v.get("metrics") or {}):
        return None
    return targets[0]["metric"], "min" in targets[0]


def task_metric(v: Mapping[str, Any]) -> str:
    """``map-iou 0.9974``: the variant's score in the metric that judged it; where labels judged it (the accuracy
    columns), how often its predicted class agrees with fp32's; ``cos`` (worst row's cosine) when neither."""
    first = _first_target(v)
    if first is None:
        fidelity = v["fidelity"]
        agreement = fidelity.get("top1_agreement", fidelity.get("agreement"))
        if v.get("accuracy") is not None and agreement is not None:
            return "top1 " + _f(agreement, ".4f")
        return "cos " + _f(fidelity.get("cosine_min"), ".4f")
    name = first[0].split(",")[0]
    return f"{name} {v['metrics'][first[0]]:.4g}"


def loss_axis(model: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """Accuracy loss in points where labels exist, otherwise the loss in the task metric that judged the variants
    (1 - score for metrics better when higher, x1000; the error itself for error metrics)."""
    ok = [v for v in model["variants"] if v["status"] == "ok" and v["latency"].get("p50")]
    if ok and all(v["accuracy_loss"] is not None for v in ok):
        return "accuracy loss (points)", {v["name"]: 100 * v["accuracy_loss"] for v in ok}
    if ok and all(v.get("label_rmse_increase") is not None for v in ok):
        return "RMSE increase against the labels", {v["name"]: float(v["label_rmse_increase"]) for v in ok}
    firsts = {_first_target(v) for v in ok}
    only = next(iter(firsts)) if len(firsts) == 1 else None
    if only is not None:
        spec, higher = only
        name = spec.split(",")[0]
        if higher:
            return f"(1 - {name} to fp32) x 1000", {v["name"]: 1000 * (1 - v["metrics"][spec]) for v in ok}
        return f"{name} to fp32", {v["name"]: float(v["metrics"][spec]) for v in ok}
    return "(1 - min cosine to fp32) x 1000", {v["name"]: 1000 * (1 - v["fidelity"].get("cosine_min", 0.0)) for v in ok}


def pareto_front(points: Mapping[str, tuple[float, float]]) -> set[str]:
    """Names no other point beats on both axes (lower is better on both)."""
    front = set()
    for name, (x, y) in points.items():
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y) for other, (ox, oy) in points.items() if other != name
        )
        if not dominated:
            front.add(name)
    return front


LABEL_CLOSENESS = 0.03
"""Points nearer than this share of the axes' spans on both axes share one label (two int8 variants of one file
sit on the same spot, and their names written over each other read as neither)."""


def label_groups(points: Mapping[str, tuple[float, float]]) -> list[tuple[tuple[float, float], list[str]]]:
    """One label per group of points close together on the plot: the first point's position and every name in
    the group, in order of latency."""
    if not points:
        return []
    xs, ys = zip(*points.values())
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    groups: list[tuple[tuple[float, float], list[str]]] = []
    for name, (x, y) in sorted(points.items(), key=lambda item: item[1]):
        near = next((g for g in groups if abs(g[0][0] - x) <= LABEL_CLOSENESS * dx
                     and abs(g[0][1] - y) <= LABEL_CLOSENESS * dy), None)
        if near is None:
            groups.append(((x, y), [name]))
        else:
            near[1].append(name)
    return groups


def plot(results: Mapping[str, Any], path: Path) -> bool:
    """Latency against accuracy loss per model, Pareto-optimal variants filled. False when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'edgeserve[plot]'): no pareto.png")
        return False
    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        label, losses = loss_axis(model)
        points = {v["name"]: (v["latency"]["p50"] * 1e3, losses[v["name"]]) for v in model["variants"] if v["name"] in losses}
        front = pareto_front(points)
        for name, (x, y) in points.items():
            on = name in front
            ax.scatter([x], [y], s=60, marker="o", facecolors="tab:blue" if on else "none", edgecolors="tab:blue")
        for (x, y), names in label_groups(points):
            ax.annotate("\n".join(names), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8,
                        va="bottom")
        losses_shown = [y for _, y in points.values()]
        if losses_shown and min(losses_shown) >= 0:  # no variant better than fp32: the axis starts at no loss
            top = max(losses_shown) or 1.0
            ax.set_ylim(-0.05 * top, 1.2 * top)
        if len(front) > 1:
            xs, ys = zip(*sorted(points[n] for n in front))
            ax.step(xs, ys, where="post", color="tab:blue", alpha=0.4, linewidth=1)
        ax.margins(x=0.15)  # room for the labels of the slowest variants
        ax.set_title(model["model"])
        ax.set_xlabel("p50 latency at batch 1 (ms)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("edgeserve bench: latency vs accuracy loss (filled: Pareto-optimal)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


METRICS = (
    # (name, getter, higher is better, is a timing with a measured spread)
    ("p50 latency", lambda v: v["latency"].get("p50"), False, lambda v: v["latency"].get("spread", 0.0)),
    ("throughput", lambda v: (_largest(v["throughput"])[1] or {}).get("rows_per_s"), True,
     lambda v: (_largest(v["throughput"])[1] or {}).get("spread", 0.0)),
    ("cold start", lambda v: v["cold_start"].get("process_to_first_answer_s"), False, lambda v: 0.10),
    ("peak RSS", lambda v: v["cold_start"].get("peak_rss_bytes"), False, lambda v: 0.05),
    ("accuracy loss", lambda v: v["accuracy_loss"], False, None),
    ("label RMSE", lambda v: v.get("label_rmse"), False, lambda v: 0.0),  # deterministic: MIN_NOISE applies
)
MIN_NOISE = 0.05
ACCURACY_TOLERANCE = 0.005


def compare(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model, variant and metric: old, new, relative change, and whether it is a regression beyond the noise.

    Latency and throughput are judged against the machine's own change between the runs where both runs timed the
    reference workload (:mod:`.machine`): a variant 30% slower on a machine that is 30% slower is no regression.
    ``machine`` in a change is that factor (the new run's time for the same work over the old run's)."""
    old_models = {m["model"]: m for m in old.get("models", [])}
    changes = []
    for model in new["models"]:
        before_model = old_models.get(model["model"], {})
        before = {v["name"]: v for v in before_model.get("variants", []) if v["status"] == "ok"}
        slower = _machine_factors(before_model.get("machine"), model.get("machine"))
        for v in model["variants"]:
            if v["status"] != "ok" or v["name"] not in before:
                continue
            o = before[v["name"]]
            for metric, get, higher_better, noise in METRICS:
                a, b = get(o), get(v)
                if a is None or b is None:
                    continue
                factor = None
                if noise is None:  # accuracy: absolute points
                    worse = (b - a) > ACCURACY_TOLERANCE
                    rel = b - a
                    threshold = ACCURACY_TOLERANCE
                else:
                    key = f"throughput@{_largest(v['throughput'])[0]}" if metric == "throughput" else metric
                    factor = slower.get(key)  # only the timings the reference measures: latency, throughput
                    expected = a if not factor else a / factor if higher_better else a * factor
                    rel = (b - expected) / expected if expected else 0.0
                    threshold = max(MIN_NOISE, noise(o) or 0.0, noise(v) or 0.0)
                    worse = (-rel if higher_better else rel) > threshold
                changes.append({"model": model["model"], "variant": v["name"], "metric": metric, "old": a, "new": b,
                                "change": rel, "threshold": threshold, "regression": bool(worse),
                                **({"machine": factor} if factor else {})})
    return changes


def _machine_factors(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[str, float]:
    """How much slower the machine ran the reference workload in the new run than in the old: for ``p50 latency``
    (time over time) and ``throughput@B`` at each batch size both timed (rows/s over rows/s, inverted)."""
    if not old or not new:
        return {}
    out = {}
    if old.get("latency_p50") and new.get("latency_p50"):
        out["p50 latency"] = float(new["latency_p50"]) / float(old["latency_p50"])
    for bs, rate in (new.get("throughput") or {}).items():
        before = (old.get("throughput") or {}).get(bs)
        if rate and before:
            out[f"throughput@{bs}"] = float(before) / float(rate)
    return out


def comparison_lines(changes: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    for c in changes:
        if c["metric"] == "accuracy loss":
            delta = f"{c['change'] * 100:+.2f} points"
        else:
            delta = f"{c['change'] * 100:+.1f}% (noise {c['threshold'] * 100:.0f}%)"
            if c.get("machine"):
                pace = c["machine"] - 1
                delta += f"; judged against the machine, {abs(pace) * 100:.0f}% {'slower' if pace > 0 else 'faster'} this run"
        flag = "  REGRESSION" if c["regression"] else ""
        yield f"{c['model']} {c['variant']} {c['metric']}: {delta}{flag}"


def write_reports(results: dict[str, Any], out: Path) -> None:
    """results.json, report.md and pareto.png into ``out``; each written whole, then renamed into place."""
    has_plot = plot(results, out / "pareto.png.tmp.png")
    if has_plot:
        (out / "pareto.png.tmp.png").replace(out / "pareto.png")
    results["files"] = {"json": "results.json", "markdown": "report.md", "plot": "pareto.png" if has_plot else None}
    for name, text in (("results.json", json.dumps(results, indent=2, default=float) + "\n"),
                       ("report.md", markdown(results, has_plot=has_plot))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
