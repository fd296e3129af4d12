"""Prepare an fp32 ONNX graph: offline optimisation, shape inference, opset upgrade where quantisation needs it."""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.onnxruntime import optimize_offline
from ..errors import ConversionError, ModelFileError, first_line

log = logging.getLogger(__name__)

MIN_QDQ_OPSET = 13
"""Per-channel QDQ (and the quantiser's axis attributes) need opset 13 or newer."""


def optimize_fp32(src: Path, dst: Path, level: str = "basic") -> dict[str, Any]:
    """onnxruntime's offline optimisation. ``basic`` (constant folding, redundant-node removal) is portable across
    CPUs and engines; ``extended`` adds onnxruntime's CPU fusions (com.microsoft ops); ``none`` keeps the graph."""
    if level == "none":
        shutil.copyfile(src, dst)
        return {"optimization": "none"}
    try:
        optimize_offline(src, dst, level=level)
        return {"optimization": level}
    except ModelFileError as exc:
        # NOTE: some graphs load but cannot be re-serialised after optimisation; the runtime optimises them at load
        log.warning("offline optimisation skipped: %s", exc)
        shutil.copyfile(src, dst)
        return {"optimization": "none", "optimization_skipped": str(exc)}


def dedupe_opset_imports(model: Any) -> bool:
    """Keep one opset import per domain (the newest). Some exporters (skl2onnx) declare a domain twice, which
    onnxruntime accepts but its quantiser refuses ("Failed to find proper ai.onnx domain")."""
    newest: dict[str, int] = {}
    for entry in model.opset_import:
        domain = "" if entry.domain == "ai.onnx" else entry.domain
        newest[domain] = max(newest.get(domain, 0), entry.version)
    if len(newest) == len(model.opset_import):
        return False
    del model.opset_import[:]
    for domain, version in newest.items():
        model.opset_import.add(domain=domain, version=version)
    return True


def upgrade_opset(src: Path, dst: Path, target: int = MIN_QDQ_OPSET) -> dict[str, Any]:
    """Convert the default domain to ``target`` when it is older; onnx's version converter does the work."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    deduped = dedupe_opset_imports(model)
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current == 0:
        # graphs of ai.onnx.ml operators only (scikit-learn linear models, trees) import no default domain; the
        # quantiser insists on one, and declaring it changes nothing else
        model.opset_import.append(onnx.helper.make_opsetid("", target))
        onnx.save_model(model, str(dst))
        return {"opset": target, "opset_added": True}
    if current >= target:
        if deduped:
            onnx.save_model(model, str(dst))
        elif src != dst:
            shutil.copyfile(src, dst)
        return {"opset": current}
    try:
        upgraded = version_converter.convert_version(model, target)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        raise ConversionError(
            f"the model is at opset {current}; quantisation needs opset {target} or newer and onnx's version "
            f"converter failed ({first_line(exc, 200)}). Re-export the model at opset >= {target}"
        ) from exc
    onnx.save_model(upgraded, str(dst))
    return {"opset": target, "opset_upgraded_from": current}


def preprocess_for_quantization(src: Path, dst: Path) -> dict[str, Any]:
    """onnxruntime's quantisation pre-processing (symbolic shape inference, then ``quant_pre_process``: optimise and
    onnx shape inference), falling back step by step.

    Symbolic shape inference fails on many real graphs with dynamic dims ("Incomplete symbolic shape
    inference"); quantisation still works from onnx's own shape inference, so it is skipped, not fatal. It runs
    here rather than inside ``quant_pre_process`` because, when it fails there, it saves the half-inferred model
    and its weights into the *current directory*, which belongs to the host application (see
    :func:`symbolic_shapes`). Nothing is written outside ``dst``.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .quiet import quiet_tools

    attempts: tuple[tuple[str, bool, dict[str, bool]], ...] = (
        ("full", True, {}),
        ("without symbolic shape inference", False, {}),
        ("shape inference only", False, {"skip_optimization": True}),
    )
    errors: list[str] = []
    # NOTE: a model with external data (torch's exporter writes one for every model) must be written back with
    # external data: saved inline by its temporary step, the tool fails ("should be stored in .../x.onnx.data")
    # and the graph would go unoptimised
    external: dict[str, Any] = {"save_as_external_data": True, "all_tensors_to_one_file": True,
                                "external_data_location": f"{dst.name}.data"} if _has_external_data(src) else {}
    for label, symbolic, kwargs in attempts:
        try:
            with quiet_tools():
                model = str(src)
                if symbolic:  # NOTE: handed over as a file: the tool loses external weights of a ModelProto
                    model = str(dst.with_name(f"{dst.stem}.symbolic.onnx"))
                    onnx.save_model(symbolic_shapes(onnx.load(str(src))), model, **_external_data_options(
                        external, f"{dst.stem}.symbolic.onnx.data"))
                quant_pre_process(model, str(dst), skip_symbolic_shape=True, **kwargs, **external)
            return {"preprocess": label, **({"preprocess_fallback_reason": errors[0]} if errors else {})}
        except Exception as exc:  # the tools raise bare Exceptions; each failure is recorded, the next tried
            errors.append(f"{label}: {first_line(exc, 200)}")
            log.info("quantisation pre-processing (%s) failed: %s", label, exc)
    shutil.copyfile(src, dst)
    return {"preprocess": "skipped", "preprocess_errors": errors}


def _external_data_options(external: dict[str, Any], location: str) -> dict[str, Any]:
    """``onnx.save_model``'s arguments for writing weights beside the model when the source kept them so."""
    return {"save_as_external_data": True, "all_tensors_to_one_file": True, "location": location} if external else {}


def _has_external_data(path: Path) -> bool:
    from ..modelfile import uses_external_data
    from ..onnxwire import read_model

    return uses_external_data(read_model(path.read_bytes()))


@functools.lru_cache(maxsize=1)
def _symbolic_shape_inference() -> Any:
    """onnxruntime's ``SymbolicShapeInference`` class, without importing torch.

    NOTE: the package ``onnxruntime.tools`` imports torch in its ``__init__`` whenever torch is installed (for a
    PyTorch export helper nothing here uses): 3.4 s on this project's machine, paid by every conversion of a
    scikit-learn or ONNX model and again in each ``auto`` candidate's subprocess. The module is read from its file
    under a private name instead; ``onnxruntime.tools`` is left unimported, as a host application would expect."""
    import importlib.util
    import sys

    if "onnxruntime.tools.symbolic_shape_infer" in sys.modules:
        return sys.modules["onnxruntime.tools.symbolic_shape_infer"].SymbolicShapeInference
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("edgeserve._symbolic_shape_infer", path)
    if spec is None or spec.loader is None:
        raise ConversionError(f"symbolic shape inference is not available in this onnxruntime (no {path})")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SymbolicShapeInference


def symbolic_shapes(model: Any) -> Any:
    """onnxruntime's symbolic shape inference, without the file it leaves behind.

    # NOTE: ``SymbolicShapeInference.infer_shapes`` saves ``sym_shape_infer_temp.onnx`` (and UUID-named weight files)
    # into the current directory when inference is incomplete. This is its loop without that save; the current
    # directory is the whole process's, so a converter inside a host application must never write there.
    """
    inference = _symbolic_shape_inference()(2**31 - 1, False, False, 0)
    try:
        inference._preprocess(model)
        done = False
        while inference.run_:
            done = inference._infer_impl()
        inference._update_output_from_vi()
    except AttributeError as exc:  # an onnxruntime whose inference is shaped differently: skip, never litter
        raise ConversionError(f"symbolic shape inference is not available in this onnxruntime ({exc})") from None
    if not done:
        raise ConversionError("Incomplete symbolic shape inference")
    return inference.out_mp_


def half_weights(path: Path) -> bool:
    """Most of the model's float weights are float16 (an exporter's ``--fp16``, a mixed-precision conversion)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - only a question
        return False
    kinds = [t.data_type for t in model.graph.initializer
             if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    return bool(kinds) and kinds.count(onnx.TensorProto.FLOAT16) * 2 > len(kinds)


def upcast_half(src: Path, dst: Path) -> dict[str, Any]:
    """A float16 model as float32 inside, for onnxruntime's int8 tools (which expect float32 weights): weights,
    constants and casts become float32, and float16 inputs and outputs keep their type through a Cast at the
    boundary, so the package takes and answers what the source did. Copies a float32 model as it is."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not half_weights(src):
        if src != dst:
            shutil.copyfile(src, dst)
        return {}
    model = onnx.load(str(src))
    half, full = TensorProto.FLOAT16, TensorProto.FLOAT

    def up(t: Any) -> None:
        if t.data_type == half:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name))

    def graph_up(graph: Any) -> None:
        for t in graph.initializer:
            up(t)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    up(attr.t)
                elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i == half:
                    attr.i = full
                elif attr.type == onnx.AttributeProto.GRAPH:
                    graph_up(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        graph_up(g)
        del graph.value_info[:]  # re-inferred from the float32 weights

    graph = model.graph
    graph_up(graph)
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    casts_in = []
    for value in graph.input:
        if value.type.tensor_type.elem_type == half:
            inner = _fresh(f"{value.name}_float32", taken)
            for node in graph.node:
                node.input[:] = [inner if x == value.name else x for x in node.input]
            casts_in.append(helper.make_node("Cast", [value.name], [inner], to=full, name=f"{inner}_cast"))
    for value in graph.output:
        if value.type.tensor_type.elem_type == half:
            inner = _fresh(f"{value.name}_float32", taken)
            for node in graph.node:
                node.output[:] = [inner if x == value.name else x for x in node.output]
                node.input[:] = [inner if x == value.name else x for x in node.input]
            graph.node.append(helper.make_node("Cast", [inner], [value.name], to=half, name=f"{value.name}_cast"))
    for node in reversed(casts_in):
        graph.node.insert(0, node)
    onnx.save(model, str(dst))
    log.info("the model holds float16 weights: int8 recipes start from it upcast to float32 inside")
    return {"upcast_from_float16": True}


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def fill_missing_types(src: Path, dst: Path) -> dict[str, Any]:
    """Record the element type of every intermediate tensor onnx's inference left untyped.

    The quantisers and the fp16 converter need a type for each tensor they touch, and onnx's shape inference
    stops at operators it cannot type (``ai.onnx.ml`` ops, custom domains): the quantiser then fails with
    "Unable to find data type for weight_name". onnxruntime types every tensor when it loads a graph, so the
    missing ones are read from a session over the graph with those tensors exposed as outputs.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(src))
    graph = model.graph
    known = {v.name for v in (*graph.value_info, *graph.input, *graph.output)} | {i.name for i in graph.initializer}
    missing = [o for n in graph.node for o in n.output if o and o not in known]
    if not missing:
        if src != dst:
            shutil.copyfile(src, dst)
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in missing:
        probe.graph.output.add().name = name  # typeless outputs: onnxruntime infers them
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        log.info("could not type intermediate tensors: %s", exc)
        if src != dst:
            shutil.copyfile(src, dst)
        return {"typed_by_onnxruntime": 0}
    elem = {v: k for k, v in {
        onnx.TensorProto.FLOAT: "tensor(float)", onnx.TensorProto.FLOAT16: "tensor(float16)",
        onnx.TensorProto.DOUBLE: "tensor(double)", onnx.TensorProto.INT64: "tensor(int64)",
        onnx.TensorProto.INT32: "tensor(int32)", onnx.TensorProto.INT8: "tensor(int8)",
        onnx.TensorProto.UINT8: "tensor(uint8)", onnx.TensorProto.BOOL: "tensor(bool)",
        onnx.TensorProto.STRING: "tensor(string)",
    }.items()}
    added = 0
    for out in sess.get_outputs():
        if out.name in missing and out.type in elem:
            # NOTE: onnxruntime reports an unknown shape as [], the same as a scalar's: record the type only then
            dims = [d if isinstance(d, int) and d >= 0 else None for d in out.shape] if out.shape else None
            graph.value_info.append(onnx.helper.make_tensor_value_info(out.name, elem[out.type], dims))
            added += 1
    onnx.save_model(model, str(dst))
    return {"typed_by_onnxruntime": added}


SINGLE_FILE_LIMIT = 1_800_000_000
"""Below this many bytes a package's model is one self-contained file; above, weights go to model.onnx.data."""


def finalize_model(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``src`` (and any external data it refers to, wherever a tool put it) as the package's model file."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    if model.ByteSize() < SINGLE_FILE_LIMIT:
        onnx.save_model(model, str(dst))
        return {}
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dst.name + ".data")
    return {"external_data": dst.name + ".data"}


_PASS_THROUGH = frozenset({"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "DequantizeLinear"})


def _graph(model: Path | Any) -> Any:
    """The graph of the model file at ``model`` (weights in external data left unread), or of a loaded model: what
    :func:`embedding_inputs` and :func:`conv_inputs` look at, read once for both."""
    if not isinstance(model, (str, Path)):
        return model.graph
    import onnx

    return onnx.load(str(model), load_external_data=False).graph


def embedding_inputs(model: Path | Any) -> dict[str, int]:
    """Graph inputs that index an embedding table (a Gather on a 2-D initializer, through casts, reshapes and
    dequantisation), with the table's row count: the ids the model can look up are ``0 .. rows - 1``. ``model``:
    a path or a loaded model."""
    graph = _graph(model)
    tables = {t.name: list(t.dims) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input} - set(tables)
    found: dict[str, int] = {}
    for node in _row_gathers(graph):
        dims = tables.get(_chain(producer, node.input[0])[-1])
        source = _chain(producer, node.input[1])[-1]
        if dims is not None and len(dims) == 2 and source in inputs:
            found[source] = min(found.get(source, dims[0]), int(dims[0]))
    return found


def _row_gathers(graph: Any) -> Iterator[Any]:
    """The Gathers that pick rows of their data (axis 0): an embedding table's lookups."""
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) >= 2 and not any(a.name == "axis" and a.i != 0
                                                                         for a in node.attribute):
            yield node


def _chain(producer: Mapping[str, Any], name: str, through: frozenset[str] | None = None) -> list[str]:
    """``name`` and what it was made from, back through the operators ``through`` (default ``_PASS_THROUGH``: casts,
    reshapes, dequantisation), 16 steps at most; the last is where it comes from."""
    through = _PASS_THROUGH if through is None else through
    names = [name]
    while name in producer and producer[name].op_type in through and len(names) <= 16:
        name = producer[name].input[0]
        names.append(name)
    return names


MIN_POSITIONS = 8
_POSITION_PATH = frozenset({"Slice", "Expand", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Identity"})
"""Operators between a constant ``0 .. P-1`` and the Gather it indexes a position table with (a slice to the
sequence's length, broadcast to the batch)."""


def position_table(model: Path | Any, folder: Path | None = None) -> int | None:
    """The longest sequence the model's position embeddings hold, or None when it has none: a Gather on a 2-D table
    whose indices are a slice of a constant ``0 .. P-1`` (transformers' BERT-like models register ``position_ids``
    so, ``max_position_embeddings`` long, and slice it to the sequence's length), or ``Range(0, length, 1)``
    (torch.export's ``arange``: GPT-2's positions); the table's rows bound the length. A longer sequence fails deep in the
    engine ("invalid expand shape"); the envelope says what was wrong instead. Positions computed from the input
    (RoBERTa's, from the mask) or rotary ones have no such constant: None. ``model``: a path or a loaded model;
    ``folder``: where a loaded model's external data is (a path's is beside it)."""
    from onnx import numpy_helper

    graph = _graph(model)
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    folder = Path(model).parent if isinstance(model, (str, Path)) else folder

    def arange(name: str) -> int | None:
        t = inits.get(name)
        if t is None or t.data_type not in (6, 7):  # INT32, INT64
            return None
        dims = list(t.dims)
        if not (len(dims) == 1 or (len(dims) == 2 and dims[0] == 1)) or dims[-1] < MIN_POSITIONS:
            return None
        values = _small_values(t, folder)
        if values is None:
            return None
        values = values.reshape(-1)
        return values.size if np.array_equal(values, np.arange(values.size)) else None

    def scalar(name: str) -> float | None:
        """The value of a one-element constant (an initializer or a Constant node), else None."""
        if name in inits:
            t = inits[name]
            values = _small_values(t, folder) if np.prod(t.dims, dtype=np.int64) == 1 else None
            return None if values is None else float(values.reshape(-1)[0])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t).reshape(-1)
            return float(value[0]) if value.size == 1 else None
        return None

    def counts_from_zero(name: str) -> bool:
        """``name`` is ``Range(0, n, 1)``: the positions of a sequence computed from its length (torch.export's
        ``arange(seq)``, GPT-2's ``cache_position`` without a cache)."""
        node = producer.get(name)
        return (node is not None and node.op_type == "Range" and scalar(node.input[0]) == 0.0
                and scalar(node.input[2]) == 1.0)

    found = None
    for node in _row_gathers(graph):
        table = inits.get(_chain(producer, node.input[0])[-1])
        if table is None or len(table.dims) != 2:
            continue
        path = _chain(producer, node.input[1], _POSITION_PATH)
        size = next((n for n in map(arange, path) if n is not None), None)
        if size is None and counts_from_zero(path[-1]):
            size = int(table.dims[0])
        if size is not None:
            size = min(size, int(table.dims[0]))
            found = size if found is None else min(found, size)
    return found


SMALL_TENSOR = 1 << 20
"""Elements of an initializer read from external data to look at its values (a position buffer, a constant)."""


def _small_values(tensor: Any, folder: Path | None) -> np.ndarray | None:
    """The values of an initializer, read from the external data file beside the model (``folder``) when they are
    kept there (a model over 2 GB keeps even its small constants so) and there are at most ``SMALL_TENSOR``; None
    when they cannot be read."""
    from onnx import TensorProto, numpy_helper

    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    if folder is None or np.prod(tensor.dims, dtype=np.int64) > SMALL_TENSOR:
        return None
    from onnx.external_data_helper import load_external_data_for_tensor

    copy = TensorProto()
    copy.CopyFrom(tensor)
    try:
        load_external_data_for_tensor(copy, str(folder))
    except (OSError, ValueError):  # the data file missing or short: no values, as before
        return None
    copy.data_location = TensorProto.DEFAULT
    del copy.external_data[:]
    return numpy_helper.to_array(copy)


_SAME_AXES = frozenset({"Cast", "Identity", "QuantizeLinear", "DequantizeLinear"})
"""Operators whose output keeps its input's axes as they are."""
_CONVS = frozenset({"Conv", "ConvInteger", "QLinearConv"})


def conv_inputs(model: Path | Any) -> set[str]:
    """Graph inputs that a convolution takes as its data, axes unchanged (through casts and (de)quantisation): their
    axis 1 holds channels (``[rows, channels, steps]`` for a 1-D convolution over a spectrogram's frames). ``model``:
    a path or a loaded model."""
    graph = _graph(model)
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    found = set()
    for graph_input in graph.input:
        frontier, seen = [graph_input.name], 0
        while frontier and seen < 64:
            name, seen = frontier.pop(), seen + 1
            for node, i in consumers.get(name, []):
                if node.op_type in _CONVS and i == 0:
                    found.add(graph_input.name)
                elif node.op_type in _SAME_AXES and i == 0:
                    frontier.extend(node.output)
    return found


QUANTISED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
    "ConvInteger", "MatMulNBits", "QGemm", "QAttention", "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul",
})
"""Operators of a graph that is quantised already (onnxruntime's QDQ and QOperator formats, int4 weights)."""


def quantised_ops(path: Path) -> dict[str, int]:
    """How many nodes of each quantisation operator the graph at ``path`` holds (empty: a float graph)."""
    from ..modelfile import check_model_file

    counts: dict[str, int] = {}
    for node in check_model_file(path).graph.node:
        if node.op_type in QUANTISED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def describe_ops(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1]))
