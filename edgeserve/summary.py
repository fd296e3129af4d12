"""Human-readable summaries of manifests and fidelity, as lines of text (the CLI prints them)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .package import Package
from .tensors import TensorSpec, row_sets


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


FEW_ROWS = 30
"""Held-out rows under which the fidelity verdict is flagged as resting on too few answers."""


def fidelity_lines(fidelity: Mapping[str, Any]) -> Iterator[str]:
    if not fidelity:
        return
    summary = fidelity.get("summary", {})
    keys = ("cosine_min", "cosine_mean", "top1_agreement", "agreement", "max_rel_error", "mean_rel_error")
    shown = ", ".join(f"{k}={_fmt(summary[k])}" for k in keys if k in summary)
    rows = fidelity.get("rows")
    yield f"fidelity to fp32 on {rows if rows is not None else '?'} rows of {fidelity.get('data', '?')} data: {shown}"
    if isinstance(rows, int) and 0 < rows < FEW_ROWS:
        yield (f"WARNING: only {rows} held-out rows judged the result; pass --data with a few hundred held-out rows, "
               "or more --calibration rows (a fifth are held out), for a verdict and an auto choice to rely on")
    budget = fidelity.get("budget") or {}
    for t in budget.get("targets", []):
        score = (fidelity.get("metrics") or {}).get(t["metric"])
        limit = f">= {t['min']:g}" if "min" in t else f"<= {t['max']:g}"
        yield f"metric {t['metric']}: {_fmt(score) if score is not None else '-'} (budget {limit})"
    if budget.get("because") or budget.get("targets"):
        held = "" if budget.get("enforced", True) else "; measured, not enforced (name a metric to enforce it)"
        yield f"judged by: {budget.get('because', 'named by the user')}{held}"
    for missed in fidelity.get("budget_missed", []):
        yield f"outside the inferred budget: {missed}"
    error = fidelity.get("label_rmse")
    if error and error.get("fp32") is not None:
        yield f"RMSE against the labels: fp32 {error['fp32']:.5g}, converted {error['converted']:.5g}"
    acc = fidelity.get("accuracy")
    if acc and acc.get("fp32") is not None:
        drop = acc["fp32"] - acc["converted"]
        yield f"accuracy: fp32 {acc['fp32']:.4f}, converted {acc['converted']:.4f} (drop {drop * 100:+.2f} points)"


def auto_lines(recipe: Mapping[str, Any]) -> Iterator[str]:
    """The auto search as a small table: every candidate with its speed, fidelity and verdict."""
    auto = recipe.get("auto")
    if not auto:
        return
    budget = auto.get("budget", {})
    rows = f", {auto['timing_batch']} rows a call" if auto.get("timing_batch", 1) > 1 else ""
    yield f"auto chose {auto['chosen']}: {auto['reason']} (budget {budget_text(budget)}, threads={auto.get('threads')}" \
          f"{rows}, {auto.get('search_s')} s)"
    main = (budget.get("targets") or [{}])[0].get("metric")
    head = (main or "").split(",")[0]  # the metric without its options (the budget line has them)
    width = max(12, len(head)) if main else 0  # an accuracy budget alone: no metric column, only its dashes
    column = f" {head:>{width}}" if main else ""
    yield f"  {'candidate':<34} {'status':<8} {'speedup':>7}{column} {'raw cos':>8} {'accuracy':>8}  note"
    for c in auto.get("candidates", []):
        speed = f"{c['speedup']:.2f}x" if c.get("speedup") else "-"
        score = (c.get("scores") or {}).get(main) if main else None
        metric = f"{score:.4g}" if score is not None else "-"
        cos = f"{c['fidelity']['cosine_min']:.4f}" if c.get("fidelity", {}).get("cosine_min") is not None else "-"
        acc = f"{c['accuracy']:.4f}" if c.get("accuracy") is not None else "-"
        reason = c.get("reason") or ""
        verdict = "in budget" if c.get("within_budget") else _short(reason) if c.get("status") == "failed" \
            else _whole(reason, 70)
        kept = f"; {len(c['nodes_kept_fp32'])} nodes kept fp32" if c.get("nodes_kept_fp32") else ""
        if c.get("speedup_final_round") is not None:
            kept += f"; raced fp32 alone ({c['speedup_final_round']:.2f}x in the final round)"
        column = f" {metric:>{width}}" if main else ""
        yield f"  {c['name']:<34} {c['status']:<8} {speed:>7}{column} {cos:>8} {acc:>8}  {verdict}{kept}"


def _whole(reason: str, width: int) -> str:
    """A candidate's misses (``top1 0.96 < 0.99; prob-change 0.0501 > 0.05``) cut to the note column's width
    between misses, never inside one, where a cut threshold would read as another number; what is left out is
    counted (the whole text is in the manifest)."""
    parts = reason.split("; ")
    kept = [parts[0]]
    for part in parts[1:]:
        if len("; ".join([*kept, part])) > width:
            break
        kept.append(part)
    more = len(parts) - len(kept)
    return "; ".join(kept) + (f"; +{more} more" if more else "")


def _short(reason: str) -> str:
    """A candidate's reason for the table's note column: the first attempt's cause, without the scratch file's
    name, which the column's width would otherwise leave as all there is to read (the whole text is in the
    manifest)."""
    first = re.sub(r"^[\w -]*graph: ", "", reason.split("; ")[0])
    return re.sub(r"cannot load \S+: (-- )?", "cannot load it: ", first)[:160]


def budget_text(budget: Mapping[str, Any]) -> str:
    """``pooled-cosine,mask=attention_mask >= 0.99, accuracy drop <= 0.01``, from a manifest's budget record."""
    parts = [f"{t['metric']} {'>=' if 'min' in t else '<='} {t.get('min', t.get('max')):g}"
             for t in budget.get("targets", [])]
    if budget.get("max_accuracy_drop") is not None:
        parts.append(f"accuracy drop <= {budget['max_accuracy_drop']:g}{' of fp32' if budget.get('relative') else ''}")
    return ", ".join(parts) or "none"


def model_file_lines(path: Path) -> Iterator[str]:
    """A bare ONNX file (not yet a package): its signature as the runtime reads it, opsets, operators, size."""
    import onnx

    from .modelfile import check_model_file
    from .runtime.model import load

    view = check_model_file(path)  # refused files stop here, before any engine or parser sees them
    model = onnx.load(str(path), load_external_data=False)
    with load(path, golden="off") as loaded:
        inputs, outputs = loaded.inputs, loaded.outputs
    yield f"{path.name}: an ONNX model, not an edgeserve package ({path.stat().st_size / 1024:.1f} KiB)"
    yield (f"  ir_version {model.ir_version}, opsets "
           + ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in view.opset_import)
           + (f", produced by {model.producer_name} {model.producer_version}".rstrip() if model.producer_name else ""))
    yield "inputs:"
    for spec in inputs:
        yield f"  {spec.name}: {spec.describe()}" + _axis(spec)
    yield from _row_set_lines(inputs)
    yield "outputs:"
    for spec in outputs:
        yield f"  {spec.name}: {spec.describe()}" + _axis(spec)
    ops = Counter(node.op_type for node in model.graph.node)
    yield (f"graph: {len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers; "
           + ", ".join(f"{op} {n}" for op, n in ops.most_common(8)) + (", …" if len(ops) > 8 else ""))
    yield (f"next: edgeserve convert {path} -o PACKAGE --quantize auto --calibration DATA.npz "
           "(a verified package with reference statistics; see --help)")


def _axis(spec: TensorSpec) -> str:
    if spec.batch_axis is not None:
        return f"  batch axis {spec.batch_axis}"
    return "  batch 1 (rows run one at a time)" if spec.rows_on_axis0 else "  no batch axis"


def _row_set_lines(inputs: Sequence[TensorSpec]) -> Iterator[str]:
    """Inputs whose rows are counted apart (CLIP's images and texts), when there are such."""
    sets = row_sets(inputs)
    if len(sets) > 1:
        groups = " | ".join(", ".join(s.name for s in group) for group in sets)
        yield (f"  rows counted apart: {groups} (each set its own number of rows; requests are not batched "
               "together)")


def reference_lines(envelope: Mapping[str, Any]) -> Iterator[str]:
    """A warning when the reference is too small for the drift detectors to keep their false-alarm budget."""
    from .guard.envelope import FEW_DRIFT_ROWS, MIN_DRIFT_ROWS

    rows = envelope.get("rows") or 0
    if not envelope.get("inputs") or rows >= FEW_DRIFT_ROWS:
        return
    what = (f"too few for drift detection (it needs {MIN_DRIFT_ROWS})" if rows < MIN_DRIFT_ROWS else
            f"fewer than {FEW_DRIFT_ROWS}: drift detectors built on them can alarm on requests like them")
    yield (f"WARNING: the reference holds {rows} rows, {what}; convert with --reference of 1000 or more rows like "
           "those the model will serve")


def manifest_lines(pkg: Package) -> Iterator[str]:
    m = pkg.manifest
    yield f"{m.name}@{m.version}  ({pkg.path})"
    yield f"  created {m.created_at}, schema {m.schema_version}, backend {m.backend}"
    yield "inputs:"
    for s in m.inputs:
        yield f"  {s.name}: {s.describe()}" + _axis(s)
    yield from _row_set_lines(m.inputs)
    yield "outputs:"
    for s in m.outputs:
        yield f"  {s.name}: {s.describe()}"
    src = m.source
    yield f"source: {src.get('framework', '?')} {src.get('class') or src.get('file') or ''} sha256 {str(src.get('sha256', ''))[:16]}…"
    check = src.get("estimator_check")
    if check:
        measure = (f"probabilities differ by {check['max_abs_diff']:.3g}" if "max_abs_diff" in check
                   else f"labels agree on {check['agreement']:.1%}")
        yield (f"  the converted graph against the estimator on {check['rows']} example rows: {measure}"
               + ("" if check.get("ok") else " (WARNING: not the estimator's answers; check it on your data)"))
    for node, named in (src.get("locales_replaced") or {}).items():
        yield f"  {node}: the locale {named} could not be loaded when converting; it uses C.UTF-8"
    for name, labels in (src.get("zipmap_removed") or {}).items():
        yield f"  output {name} was a ZipMap: answers [rows, {len(labels)}] probabilities, classes {labels[:20]}"
    for fixed in m.recipe.get("fixed_sizes") or []:
        yield (f"WARNING: '{fixed['dim']}' ({', '.join(fixed['inputs'])}) is declared variable but the model ran "
               f"only at {fixed['size']} (tried {fixed['size'] - 1} and {2 * fixed['size']})")
    backends = m.recipe.get("backends") or [{"backend": m.backend, "precision": m.recipe.get("precision")}]
    engines = [b["backend"] + (f" {b['precision']}" if b.get("precision") else "") for b in backends]
    yield f"verified on: {engines[0]}" + (f"; falls back to {', '.join(engines[1:])}" if len(engines) > 1 else "")
    yield "recipe:"
    for key, value in m.recipe.items():
        if key not in ("auto", "backends", "backend", "precision", "memory", "fixed_sizes", "batch_dependence"):
            yield f"  {key}: {_fmt(value)}"
    if m.recipe.get("batch_dependence"):
        yield (f"NOTE: an answer moves with the rows batched beside it, by up to {m.recipe['batch_dependence']:.2g} "
               "of the output's range (dynamic int8 quantises a batch with one scale); BatchConfig(batch_dependent="
               "False) runs each request alone where answers must not depend on other callers'")
    yield from auto_lines(m.recipe)
    yield from fidelity_lines(m.fidelity)
    if m.envelope.get("inputs"):
        yield f"reference statistics ({m.envelope.get('source')}, {m.envelope.get('rows')} rows):"
        yield from (f"  {line}" for line in reference_lines(m.envelope))
        for name, st in m.envelope["inputs"].items():
            if "min" in st:
                layout = st.get("layout") or {}
                kind = f" [{layout['kind']}]" if layout else ""
                if layout.get("kind") == "series" and layout.get("axis") is not None:
                    kind = f" [series, features on axis {layout['axis']}]"
                elif layout.get("kind") == "channels" and layout.get("axis") is not None:
                    kind = f" [channels on axis {layout['axis']}]"
                feats = f", {len(st['features'])} features" if "features" in st else ""
                missing = f", {st['nan']} missing (NaN, let through)" if st.get("nan") else ""
                state = " (a state fed back: checked for NaN/inf only, not watched for drift)" if st.get("state") else ""
                yield (f"  {name}{kind}: min {_fmt(st['min'])}, max {_fmt(st['max'])}, mean {_fmt(st['mean'])}, "
                       f"std {_fmt(st['std'])}{feats}{missing}{state}")
            if "categories" in st:
                cats = st["categories"]
                yield f"  {name} [categories]: {len(cats)} values: " + ", ".join(cats[:12]) + (" …" if len(cats) > 12 else "")
                if "drift" in st:
                    yield (f"    drift reference: the shares of {len(st['drift']['knots'])} most frequent values "
                           f"(reference {', '.join(f'{v} {m:.0%}' for v, m in zip(st['layout']['values'], st['drift']['mean']))})")
                continue
            if "tokens" in st:
                t = st["tokens"]
                lengths = t["lengths"]
                top = ", ".join(f"{i} ({f:.1%})" for i, f in t["top"][:5])
                pad = "no padding seen" if t["pad"] < 0 else f"padding id {t['pad']}"
                limit = f"; at most {t['max_length']}, the model's position table" if t.get("max_length") else ""
                yield (f"    tokens: vocabulary {t['vocabulary']}, {pad}, length "
                       f"{_fmt(lengths.get('min'))}..{_fmt(lengths.get('max'))} (mean {_fmt(lengths.get('mean'))}"
                       f"{limit}); most frequent {top}")
            if "drift" in st:
                yield (f"    drift reference: {len(st['drift']['knots'])} {_unit(st.get('layout'))} x "
                       f"{len(st['drift']['knots'][0])} quantile knots")
        for name, st in (m.envelope.get("outputs") or {}).items():
            kind = (st.get("layout") or {}).get("kind", "?")
            q = st.get("quantiles") or {}
            yield (f"  output {name} [{kind}]: mean {_fmt(st.get('mean'))}, p5 {_fmt(q.get('p5'))}, "
                   f"p50 {_fmt(q.get('p50'))}, p95 {_fmt(q.get('p95'))}")
        if m.envelope.get("outputs_unwatched"):
            yield f"  outputs not watched for drift: {m.envelope['outputs_unwatched']}"
    elif m.envelope == {}:
        if m.inputs and not any(s.rows_on_axis0 or s.batch_axis is not None for s in m.inputs):
            yield ("reference statistics: none (the inputs have no batch axis, so requests hold no rows to compare "
                   "with a reference; export the model with a batch axis for envelope and drift checks)")
        else:
            yield ("reference statistics: none (convert with calibration or --reference data for envelope and drift "
                   "checks)")
    env = m.environment
    cpu = env.get("cpu", {})
    yield (f"environment: python {env.get('python')}, onnx {env.get('onnx')}, onnxruntime {env.get('onnxruntime')}, "
           f"numpy {env.get('numpy')}; {cpu.get('model', '?')} ({cpu.get('arch', '?')}, {cpu.get('cores', '?')} cores)")
    mem = m.recipe.get("memory") or {}
    if mem.get("peak_rss_bytes"):
        yield (f"memory: peak {mem['peak_rss_bytes'] / 2**20:.0f} MiB of a {mem['budget_bytes'] / 2**20:.0f} MiB budget"
               + (f"; stopped: {'; '.join(mem['stopped'])}" if mem.get("stopped") else ""))
    yield f"golden samples: {m.golden.get('count', 0)}" + (f" (tolerance {m.golden['rel_tolerance']})" if "rel_tolerance" in m.golden else "")
    yield "files:"
    for name in sorted(m.digests):
        path = pkg.path / name
        size = path.stat().st_size if path.exists() else 0
        yield f"  {name}  {size / 1024:.1f} KiB  sha256 {m.digests[name][:16]}…"


def _unit(layout: dict[str, Any] | None) -> str:
    kind = (layout or {}).get("kind")
    return {"tabular": "features", "channels": "channels", "series": "features", "tokens": "sequence summaries",
            "flat": "row summaries", "categories": "category shares"}.get(str(kind), "features")
