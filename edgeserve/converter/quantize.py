"""Quantisation recipes over onnxruntime.quantization: dynamic int8, static int8 QDQ, fp16."""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..config import QuantizeConfig
from ..environment import has_vnni, is_arm
from ..errors import ConversionError, first_line
from .data import Samples
from .quiet import quiet_tools

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: the converter's only way of telling a UI how far it is."""


def cpu_defaults(config: QuantizeConfig) -> dict[str, Any]:
    """Signedness and ``reduce_range`` as onnxruntime's guidance advises for this CPU, unless set explicitly.

    x86 with VNNI: uint8 activations, int8 weights, full range. x86 without VNNI: the same with 7-bit weights
    (``reduce_range``) so 8-bit products cannot saturate. ARM: symmetric int8 activations.
    """
    vnni = has_vnni()
    activation = config.activation_type or ("int8" if is_arm() else "uint8")
    reduce_range = config.reduce_range if config.reduce_range is not None else (not vnni and not is_arm())
    return {"activation_type": activation, "weight_type": "int8", "reduce_range": reduce_range, "cpu_vnni": vnni}


class _Reader:
    """Feeds calibration rows to onnxruntime's calibrator one batch per pass, reporting progress.

    onnxruntime's calibrators keep every intermediate output of the rows they are given until they reduce them;
    handing them one batch per pass (:meth:`arm`, then ``collect_data``) keeps memory at one batch's activations
    whatever the number of samples, for MinMax and the histogram methods alike. ``batch_size`` may change between
    passes (see :func:`calibrate`).
    """

    def __init__(self, samples: Samples, batch_size: int, progress: Progress | None) -> None:
        self._samples = samples
        self.batch_size = batch_size
        self._progress = progress
        self._row = 0
        self._armed = False

    @property
    def done(self) -> bool:
        return self._row >= self._samples.rows

    def arm(self) -> None:
        """Let the next ``get_next`` hand out one batch (the calibrator asks until it gets None)."""
        self._armed = True

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self._armed or self.done:
            return None
        self._armed = False
        start = self._row
        if self._samples.stacked:
            self._row = min(self._samples.rows, start + self.batch_size)
            feed = self._samples.select(slice(start, self._row))
        else:  # one sample per feed
            self._row = start + 1
            feed = {k: np.asarray(v[start]) for k, v in self._samples.arrays.items()}
        if self._progress:
            self._progress("calibrating", self._row, self._samples.rows)
        return feed


def quantize(src: Path, dst: Path, config: QuantizeConfig, *, calibration: Samples | None,
             progress: Progress | None = None, calibration_cache: Path | None = None) -> dict[str, Any]:
    """Write the quantised model to ``dst`` and return the recipe actually applied.

    ``calibration_cache`` (static only): a file of activation ranges; computed and written there when it does not
    exist, reused when it does, so several recipes over one model calibrate once.
    """
    if config.mode == "none":
        shutil.copyfile(src, dst)
        return {"mode": "none"}
    recipe = _quantized(src, dst, config, calibration, progress, calibration_cache)
    if config.mode != "fp16":
        from .prepare import quantised_ops

        if not quantised_ops(dst):  # a tree ensemble's operators have no integer form: the fp32 model, renamed
            recipe["nothing_quantised"] = (f"{config.mode} quantisation found no operator to quantise in the main "
                                           f"graph ({_why_nothing_to_calibrate(src)}): the model stays float")
    return recipe


def _quantized(src: Path, dst: Path, config: QuantizeConfig, calibration: Samples | None,
               progress: Progress | None, calibration_cache: Path | None) -> dict[str, Any]:
    """:func:`quantize`'s work, by mode, its tools' errors said in a sentence."""
    try:
        with quiet_tools():
            if config.mode == "dynamic":
                return _dynamic(src, dst, config)
            if config.mode == "static":
                if calibration is None:
                    raise ConversionError("static quantisation needs calibration data (--calibration FILE.npz)")
                return _static(src, dst, config, calibration, progress, calibration_cache)
            if config.mode == "int4":
                return _int4(src, dst, config)
            if config.mode == "nncf":
                if calibration is None:
                    raise ConversionError("nncf quantisation needs calibration data (--calibration FILE.npz)")
                return _nncf(src, dst, config, calibration)
            return _fp16(src, dst)
    except ConversionError:
        raise
    except Exception as exc:
        tool = {"nncf": "NNCF", "fp16": "onnxruntime's float16 converter"}.get(config.mode,
                                                                                "onnxruntime.quantization")
        why = first_line(exc) if isinstance(exc, (ValueError, RuntimeError, TypeError)) else \
            f"{type(exc).__name__}: {first_line(exc)}"  # a bare KeyError reads as a name and nothing else
        raise ConversionError(f"{config.mode} quantisation failed in {tool}: {why}{_foreign_operators(src)}") from exc


def _dynamic(src: Path, dst: Path, config: QuantizeConfig) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    defaults = cpu_defaults(config)
    # NOTE: onnxruntime's ConvInteger kernel only takes uint8 weights, so a graph with convolutions gets uint8
    # weights; MatMul-only graphs keep int8 weights, which are faster and more accurate.
    has_conv = _has_op(src, "Conv")
    weight = QuantType.QUInt8 if has_conv else QuantType.QInt8
    quantize_dynamic(
        str(src), str(dst), per_channel=config.per_channel, reduce_range=defaults["reduce_range"], weight_type=weight,
        nodes_to_exclude=list(config.nodes_to_exclude) or None,
    )
    return {
        "mode": "dynamic", "per_channel": config.per_channel, "reduce_range": defaults["reduce_range"],
        "activation_type": "uint8", "weight_type": "uint8" if has_conv else "int8",
        "nodes_excluded": list(config.nodes_to_exclude), "cpu_vnni": defaults["cpu_vnni"],
    }


HUGE = 1e4
"""An activation reaching this magnitude (an attention mask's -1e4·(1 - mask), -inf, a float32 minimum) is a
sentinel, not a value to spread 256 levels over: such tensors are left in float."""
NARROW = 1e-3
"""A tensor whose magnitudes all lie within this fraction of the largest (a constant plus rounding noise) cannot be
cut into onnxruntime's 2048 histogram bins in float32 ("Too many bins for data range"): the histogram methods leave
it in float. A DETR's export had one, and percentile calibration failed on the whole model."""


def _static(src: Path, dst: Path, config: QuantizeConfig, calibration: Samples, progress: Progress | None,
            calibration_cache: Path | None) -> dict[str, Any]:
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    defaults = cpu_defaults(config)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    method = methods[config.calibration_method]
    with tempfile.TemporaryDirectory(prefix="edgeserve-calibrate-") as tmp:
        cache = calibration_cache or Path(tmp) / "ranges.json"
        sentinels = cache.with_name(cache.stem + ".left-float.json")
        batch_size = None  # ranges from the cache: calibrated for another recipe
        if cache.exists() and sentinels.exists():
            left_float = json.loads(sentinels.read_text())
        else:
            reader = _Reader(calibration, config.calibration_batch_size, progress)
            left_float = calibrate(src, reader, method, cache, Path(tmp))
            sentinels.write_text(json.dumps(left_float))
            batch_size = reader.batch_size
        if left_float and _unnamed_nodes(src):  # onnxruntime excludes nodes by name only
            src = _with_node_names(src, Path(tmp) / "named.onnx")
        excluded = sorted(set(config.nodes_to_exclude) | set(_nodes_touching(src, left_float)))
        quantize_static(
            str(src), str(dst), None, quant_format=QuantFormat.QDQ, per_channel=config.per_channel,
            reduce_range=defaults["reduce_range"], activation_type=types[defaults["activation_type"]],
            weight_type=QuantType.QInt8, calibrate_method=method, nodes_to_exclude=excluded or None,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": defaults["activation_type"] == "int8",
                           **({"UseQDQContribOps": True} if _newer_qdq_than_engine(src) else {})},
            calibration_cache_path=str(cache),
        )
    recipe: dict[str, Any] = {
        "mode": "static", "format": "QDQ", "per_channel": config.per_channel, "reduce_range": defaults["reduce_range"],
        "activation_type": defaults["activation_type"], "weight_type": "int8",
        "calibration": {"method": config.calibration_method, "samples": calibration.rows,
                        "batch_size": batch_size or config.calibration_batch_size, "left_float": left_float},
        "nodes_excluded": list(config.nodes_to_exclude), "cpu_vnni": defaults["cpu_vnni"],
    }
    return recipe


def _newer_qdq_than_engine(path: Path | str) -> bool:
    """The graph's opset defines QuantizeLinear in a version this onnxruntime has no kernel for (onnx 1.23 makes
    models at opset 28; onnxruntime 1.32's kernels stop at QuantizeLinear-25: "Could not find an implementation for
    QuantizeLinear(28)"). Static int8 then writes onnxruntime's own Q/DQ operators (com.microsoft), which its QDQ
    fusions take alike."""
    import onnx

    return _qdq_past_engine(onnx.load(str(path), load_external_data=False)) is not None


def _qdq_past_engine(model: Any) -> Any:
    """The default-domain opset import of ``model`` when its QuantizeLinear is newer than onnxruntime's kernels,
    else None."""
    import onnx

    opset_import = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset_import is None:
        return None
    try:
        wanted = onnx.defs.get_schema("QuantizeLinear", opset_import.version).since_version
    except onnx.defs.SchemaError:
        return None
    return opset_import if wanted > _engine_qdq_version() else None


def _engine_opset(model: Any) -> None:
    """Where onnxruntime has no kernel for the graph's QuantizeLinear version, label the graph with the newest
    opset it has one for, if every operator of the graph means the same there (its schema's version is the same):
    NNCF runs its partly quantised graphs on onnxruntime, and failed on QuantizeLinear(28)."""
    import onnx

    opset_import = _qdq_past_engine(model)
    if opset_import is None:
        return
    opset, target = opset_import.version, _engine_qdq_version()
    try:
        same = all(onnx.defs.get_schema(op, opset).since_version == onnx.defs.get_schema(op, target).since_version
                   for op in _graph_ops(model.graph, standard_only=True))
    except onnx.defs.SchemaError:
        return
    if same:
        opset_import.version = target


def _graph_ops(graph: Any, *, standard_only: bool = False) -> set[str]:
    """The operators of ``graph`` and of its If/Loop branches (``standard_only``: of the default domain alone)."""
    ops: set[str] = set()
    for node in graph.node:
        if not standard_only or node.domain in ("", "ai.onnx"):
            ops.add(node.op_type)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                ops |= _graph_ops(sub, standard_only=standard_only)
    return ops


@functools.lru_cache(maxsize=1)
def _engine_qdq_version() -> int:
    """The newest QuantizeLinear version onnxruntime's CPU kernels implement."""
    from onnxruntime.capi import _pybind_state

    return max((k.version_range[0] for k in _pybind_state.get_all_opkernel_def()
                if k.op_name == "QuantizeLinear" and k.domain in ("", "ai.onnx")
                and k.provider == "CPUExecutionProvider"), default=0)


_SAID_NOTHING: set[str] = set()
"""Graphs that static quantisation was found to have nothing to calibrate in, said once each."""


def calibrate(src: Path, reader: _Reader, method: Any, cache: Path, tmp: Path) -> dict[str, str]:
    """onnxruntime's calibrator, fed one batch per pass (bounded memory, see :class:`_Reader`), with a guard on
    its session: a tensor holding non-finite or sentinel-sized values (an attention mask adding -inf or
    -1e4·(1 - mask)) is dropped from calibration at the batch it first shows up — the histogram methods
    would otherwise fail (``autodetected range … is not finite``) and min-max would spread int8 over the
    sentinel. Writes the ranges to ``cache`` and returns the tensors left in float, with why."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates by default
    calibrator = create_calibrator(src, ops, augmented_model_path=str(tmp / "augmented.onnx"), calibrate_method=method)
    left_float: dict[str, str] = {}
    minmax = method == CalibrationMethod.MinMax
    session = _priority_ordered(calibrator)
    if not {o.name for o in session.get_outputs()} - set(calibrator.model_original_outputs):
        # NOTE: nothing added to calibrate: the operators the quantiser takes are all inside control flow, which it
        # does not reach (silero-VAD's export, in an If). Min-max went on to quantise nothing; the histogram
        # methods failed with onnxruntime's "Histogram has not been collected". Both now write no ranges.
        if str(src) not in _SAID_NOTHING:  # NOTE: once per graph: auto calibrates it for each static recipe
            _SAID_NOTHING.add(str(src))
            log.warning("static quantisation finds nothing to calibrate in the main graph (%s): the model stays float",
                        _why_nothing_to_calibrate(src))
        from onnxruntime.quantization.calibrate import TensorsData

        save_tensors_data(TensorsData(method, {}), cache)
        return left_float
    calibrator.infer_session = guarded = _Guarded(calibrator, session, left_float, minmax)
    wanted = reader.batch_size
    reader.batch_size = 1  # the first pass measures what one row's intermediate outputs take
    while not reader.done:
        reader.arm()
        calibrator.collect_data(reader)
        if reader.batch_size == 1 and wanted > 1:
            reader.batch_size = max(1, min(wanted, CALIBRATION_BYTES // max(guarded.last_bytes, 1)))
    histograms = getattr(getattr(calibrator, "collector", None), "histogram_dict", None)
    if isinstance(histograms, dict):  # collected before the tensor showed its sentinel
        for name in left_float:
            histograms.pop(name, None)
    ranges = calibrator.compute_data()
    kept = {k: v for k, v in ranges.data.items() if k not in left_float}
    save_tensors_data(type(ranges)(ranges.calibration_method, kept), cache)
    return left_float


CALIBRATION_BYTES = 256 << 20
"""Intermediate outputs per calibration pass at most (one row at least): the histogram methods take every tensor
of the graph as an output, ~340 MB a row on ViT-B/16, so its default 16 rows a pass took 5.4 GB."""


def _priority_ordered(calibrator: Any) -> Any:
    """The calibrator's session again, run in priority order.

    NOTE: onnxruntime's default order runs the ReduceMin/ReduceMax the calibrator adds to every tensor last, so
    every activation stays alive until the end: ViT-B/16 at 16 rows took 5.2 GB over the session against 158 MB
    in priority order, and 7.4 s against 2.1 s. (The calibrator's own session is built before it can be told.)"""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    calibrator.infer_session = None  # the default-ordered one, freed before the other is built
    return ort.InferenceSession(calibrator.augmented_model_path, sess_options=options,
                                providers=calibrator.execution_providers)


class _Guarded:
    """The calibrator's inference session, watching every output for sentinel values (see :func:`calibrate`)
    and counting the bytes of the last pass's outputs."""

    SUFFIXES = ("_ReduceMin", "_ReduceMax")

    def __init__(self, calibrator: Any, session: Any, left_float: dict[str, str], minmax: bool) -> None:
        self._session = session
        self._calibrator = calibrator
        self._left_float = left_float
        self._names = [o.name for o in self._session.get_outputs()]
        self._minmax = minmax
        self.last_bytes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, output_names: Any, feed: Any, *args: Any) -> Any:
        values = self._session.run(output_names, feed, *args)
        self.last_bytes = sum(getattr(v, "nbytes", 0) for v in values)
        names = output_names or self._names
        for name, value in zip(names, values):
            arr = np.asarray(value)
            if not np.issubdtype(arr.dtype, np.floating) or arr.size == 0:
                continue
            finite = np.isfinite(arr)
            reason = None
            if not finite.all():
                reason = "non-finite values"
            elif float(np.max(np.abs(arr))) >= HUGE:
                reason = f"values of magnitude >= {HUGE:g}"
            elif not self._minmax and _too_narrow_to_bin(arr):
                reason = "values too close together for a histogram of 2048 bins"
            if reason is None:
                continue
            tensor = name
            if self._minmax:
                tensor = next((name[: -len(s)] for s in self.SUFFIXES if name.endswith(s)), name)
            if tensor not in self._left_float:
                self._left_float[tensor] = reason
                to_calibrate = getattr(self._calibrator, "tensors_to_calibrate", None)
                if isinstance(to_calibrate, set):
                    to_calibrate.discard(tensor)
        return values


def _too_narrow_to_bin(values: np.ndarray) -> bool:
    """Magnitudes spread, but over less than ``NARROW`` of the largest, or all but zero (denormal): see ``NARROW``.
    One value throughout bins well (numpy widens its range), so a constant stays calibrated."""
    magnitude = np.abs(values)
    hi, lo = float(magnitude.max()), float(magnitude.min())
    return 0.0 < hi - lo and (hi < 1e-30 or hi - lo < hi * NARROW)


def _unnamed_nodes(src: Path) -> bool:
    import onnx

    return any(not n.name for n in onnx.load(str(src), load_external_data=False).graph.node)


def _with_node_names(src: Path, dst: Path) -> Path:
    """``src`` saved to ``dst`` with a name for every node of its main graph that has none: onnxruntime's quantiser
    leaves nodes in float by name, and a node without one could not be (a hand-built graph, some exporters')."""
    import onnx

    from .prepare import SINGLE_FILE_LIMIT, _fresh

    model = onnx.load(str(src))
    taken = {n.name for n in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = _fresh(f"{node.op_type}_{i}", taken)
    onnx.save_model(model, str(dst), save_as_external_data=model.ByteSize() > SINGLE_FILE_LIMIT)
    return dst


def _nodes_touching(src: Path, tensors: Mapping[str, str]) -> list[str]:
    """The nodes producing or consuming any of ``tensors``: quantising them would put Q/DQ on a float tensor."""
    if not tensors:
        return []
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    return [n.name for n in model.graph.node if n.name and (set(n.input) | set(n.output)) & set(tensors)]


def _int4(src: Path, dst: Path, config: QuantizeConfig) -> dict[str, Any]:
    """Weight-only 4-bit MatMul (com.microsoft MatMulNBits); activations stay float. Pays on MatMul-heavy models."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    quantizer = MatMulNBitsQuantizer(
        model, bits=4, block_size=config.int4_block_size, is_symmetric=True, accuracy_level=4,
        nodes_to_exclude=list(config.nodes_to_exclude),
    )
    quantizer.process()
    quantized = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in quantized.graph.node):
        raise ConversionError("int4 weight-only quantisation found no MatMul with constant weights to quantise")
    onnx.save_model(quantized, str(dst))
    return {"mode": "int4", "bits": 4, "block_size": config.int4_block_size, "symmetric": True,
            "accuracy_level": 4, "nodes_excluded": list(config.nodes_to_exclude)}


def _nncf(src: Path, dst: Path, config: QuantizeConfig, calibration: Samples) -> dict[str, Any]:
    """OpenVINO's post-training quantiser (NNCF) on the ONNX graph, with the preset that fits the model: the
    transformer preset where the graph has attention (Softmax over MatMul), NNCF's default otherwise. The result
    is an ONNX QDQ model that both backends run."""

    try:
        import nncf
    except ImportError:
        raise ConversionError("nncf quantisation needs the extra: pip install 'edgeserve[nncf]'") from None
    # NOTE: not nncf.set_log_level(), which also changes the level of every handler attached to its logger (other
    # tools', a test runner's): quieten the logger alone, and only while it runs
    nncf_logger = logging.getLogger("nncf")
    previous = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        return _nncf_run(nncf, src, dst, config, calibration)
    finally:
        nncf_logger.setLevel(previous)


def _nncf_run(nncf: Any, src: Path, dst: Path, config: QuantizeConfig, calibration: Samples) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(src))
    _default_domain_first(model)
    _engine_opset(model)
    ops = {n.op_type for n in model.graph.node}
    transformer = {"Softmax", "MatMul"} <= ops
    items = list(calibration.feeds(1))
    kwargs: dict[str, Any] = {"subset_size": len(items)}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if config.nodes_to_exclude:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(config.nodes_to_exclude), validate=False)
    quantized = nncf.quantize(model, nncf.Dataset(items), **kwargs)
    onnx.save_model(quantized, str(dst))
    return {"mode": "nncf", "preset": "transformer" if transformer else "default", "calibration":
            {"method": "nncf", "samples": calibration.rows}, "nodes_excluded": list(config.nodes_to_exclude)}


def _foreign_operators(path: Path | str) -> str:
    """A hint naming the operators outside the standard set (scikit-learn's ``ai.onnx.ml`` ones), which the
    quantisers do not handle; empty when there are none."""
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - only a hint
        return ""
    foreign = sorted({f"{n.domain}.{n.op_type}" for n in graph.node
                      if n.domain not in ("", "ai.onnx", "com.microsoft")})
    if not foreign:
        return ""
    return (f" (the model has operators outside the standard set, {', '.join(foreign[:4])}"
            f"{', …' if len(foreign) > 4 else ''}, which this quantiser does not handle)")


def _default_domain_first(model: Any) -> None:
    """Put the default operator set first in ``model.opset_import``. NOTE: NNCF takes ``opset_import[0]`` for the
    model's opset, and skl2onnx writes ``ai.onnx.ml`` (version 1) first: every scikit-learn model was refused as
    "opset version < 10"."""
    imports = list(model.opset_import)
    ordered = sorted(imports, key=lambda o: o.domain not in ("", "ai.onnx"))
    if ordered != imports:
        del model.opset_import[:]
        model.opset_import.extend(ordered)


def _fp16(src: Path, dst: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    kinds = {t.data_type for t in model.graph.initializer}
    if onnx.TensorProto.FLOAT16 in kinds and onnx.TensorProto.FLOAT not in kinds:
        # NOTE: a model exported in half precision: nothing to convert, and the tool, given the casts onnxruntime's
        # optimiser put around its float16 operators, writes a graph that does not load
        log.warning("the model's weights are float16 already: fp16 changes nothing; the model stays as it is")
        onnx.save_model(model, str(dst))
        return {"mode": "fp16", "keep_io_types": True, "already_float16": True}
    # keep_io_types: callers still send and receive float32; the casts sit inside the graph
    blocked = _float32_only(model.graph)
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False,
                                         op_block_list=[*DEFAULT_OP_BLOCK_LIST, *blocked])
    _casts_into_their_subgraphs(converted.graph)
    onnx.save_model(converted, str(dst))
    return {"mode": "fp16", "keep_io_types": True}


def _float32_only(graph: Any) -> list[str]:
    """The operators of a graph quantised already (QOperator, dynamic int8, int4 weights, QDQ), which stay float32
    inside casts: ``QLinearConv``'s scales and ``DynamicQuantizeLinear``'s input are float32 only, and
    ``QuantizeLinear`` takes float16 only from opset 19. Cast to float16 they made a graph that does not load
    ("Type 'tensor(float16)' of input parameter (image_scale) of operator (QLinearConv) is invalid")."""
    from .prepare import QUANTISED_OPS

    ops = _graph_ops(graph)  # NOTE: and inside If/Loop branches, where the float16 tool reaches too
    return sorted(op for op in ops if op in QUANTISED_OPS or op.startswith("QLinear"))


def _casts_into_their_subgraphs(graph: Any) -> None:
    """Move each node of ``graph`` whose input is made inside an If/Loop branch into that branch, after its maker.
    NOTE: onnxruntime's float16 converter appends every Cast it adds around an operator without a float16 kernel
    (NonMaxSuppression, RoiAlign…) to the main graph, also when that operator sits in a branch: the graph then reads a
    value the branch makes and does not load ("Node input '4159' is not a graph input…"); every torchvision
    detector's fp16 failed so."""
    import onnx

    made_at: dict[str, tuple[Any, int]] = {}

    def index(g: Any) -> None:
        for node in g.node:
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    for i, inner in enumerate(sub.node):
                        made_at.update({name: (sub, i) for name in inner.output if name})
                    index(sub)

    index(graph)
    here = {name for node in graph.node for name in node.output}
    here |= {v.name for v in graph.input} | {t.name for t in graph.initializer}
    strays = [n for n in graph.node if any(name and name not in here and name in made_at for name in n.input)]
    for node in strays:
        sub, _ = made_at[next(name for name in node.input if name and name not in here and name in made_at)]
        moved = onnx.NodeProto()
        moved.CopyFrom(node)
        graph.node.remove(node)
        maker = next(i for i, inner in enumerate(sub.node) if set(inner.output) & set(moved.input))
        sub.node.insert(maker + 1, moved)
        infos = [v for v in graph.value_info if v.name in moved.output]
        for info in infos:
            sub.value_info.append(info)
            graph.value_info.remove(info)


def _why_nothing_to_calibrate(path: Path | str) -> str:
    """Where what static int8 would quantise is: inside control flow, or nowhere (the operators the model has)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return "what it would quantise is inside If/Loop subgraphs, which onnxruntime's quantiser does not reach"
    ops = sorted({n.op_type for n in graph.node})
    return f"its operators, {', '.join(ops[:8])}{', …' if len(ops) > 8 else ''}, have no integer form there"


def _has_op(path: Path, op_type: str) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == op_type for n in model.graph.node)
