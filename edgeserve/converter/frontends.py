"""Front ends: turn what the user has (an ONNX file, a torch module or a file torch saved, a scikit-learn model)
into an ONNX file.

torch and skl2onnx are optional extras, imported only when such a model is given. Nothing here loads a
pickle of Python objects (which runs whatever code it holds): torch and scikit-learn models arrive as live Python
objects, or as the files of ``torch.export.save`` and ``torch.jit.save``, which torch reads without one (see
:mod:`.saved`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..arrays import column, frame_columns, is_frame
from ..errors import ConversionError, DataError, first_line
from ..modelfile import load_model, model_in_folder, sha256_file, uses_external_data
from . import saved

DEFAULT_OPSET = 17

log = logging.getLogger(__name__)


@dataclass
class SourceModel:
    """The fp32 ONNX file the rest of the converter works from, and what it came from."""

    path: Path
    info: dict[str, Any] = field(default_factory=dict)


def is_torch_module(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def is_sklearn_model(obj: Any) -> bool:
    return type(obj).__module__.startswith("sklearn.") or (hasattr(obj, "fit") and hasattr(obj, "get_params"))


def is_torchscript_file(obj: Any) -> bool:
    """A path to a ``torch.jit.save`` file (which exports given example rows)."""
    return isinstance(obj, (str, os.PathLike)) and saved.kind_of(Path(obj)) == saved.TORCHSCRIPT


def load_source(
    source: Any,
    workdir: Path,
    *,
    example_inputs: Any = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    opset: int | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    allowed_domains: Sequence[str] = (),
) -> SourceModel:
    """Write the source model as ONNX into ``workdir`` and describe where it came from."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        kind = saved.kind_of(path)
        if kind == saved.EXPORTED:
            return _from_exported(path, workdir, output_names, opset or DEFAULT_OPSET)
        if kind == saved.TORCHSCRIPT:
            return _from_torchscript(path, workdir, example_inputs, output_names, opset or DEFAULT_OPSET, dynamic_axes)
        if kind is not None:
            raise saved.refuse(path, kind)
        return _from_onnx_file(path, workdir, allowed_domains)
    if type(source).__name__ == "ModelProto" and type(source).__module__.startswith("onnx"):
        return _from_onnx_proto(source, workdir, allowed_domains)
    if is_torch_module(source):
        return _from_torch(source, workdir, example_inputs, input_names, output_names, opset or DEFAULT_OPSET, dynamic_axes)
    if is_sklearn_model(source):
        return _from_sklearn(source, workdir, example_inputs, opset)
    raise ConversionError(
        f"cannot convert a {type(source).__module__}.{type(source).__name__}: give a path to an .onnx file, an "
        "onnx.ModelProto, a torch.nn.Module with example_inputs, or a fitted scikit-learn estimator or pipeline"
    )


def _from_onnx_file(path: Path, workdir: Path, allowed_domains: Sequence[str]) -> SourceModel:
    if path.is_dir():
        path = model_in_folder(path)
        log.warning("converting %s, the model in %s", path.name, path.parent)
    model = load_model(path, allowed_domains=allowed_domains, load_external_data=False)
    dst = workdir / "source.onnx"
    info: dict[str, Any] = {"framework": "onnx", "file": path.name, "sha256": sha256_file(path)}
    zipmaps = unzipped_outputs(model)
    shadowed = constant_initializers(model)
    functions = len(model.functions)
    if uses_external_data(model):
        import onnx

        model = load_model(path, allowed_domains=allowed_domains)  # checked, then loaded from beside the model
        unzip(model)
        constant_initializers(model)
        locales = portable_locales(model)
        model = inlined(model)
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location="source.onnx.data")
    elif (locales := portable_locales(model)) or zipmaps or shadowed or functions:
        unzip(model)
        dst.write_bytes(inlined(model).SerializeToString())
    else:
        shutil.copyfile(path, dst)
    if functions:
        info["functions_inlined"] = functions
    if shadowed:
        info["initializer_inputs_dropped"] = len(shadowed)
    if locales:
        info["locales_replaced"] = locales
    if zipmaps:
        info["zipmap_removed"] = zipmaps
        _say_unzipped(zipmaps)
    return SourceModel(dst, info)


def inlined(model: Any) -> Any:
    """``model`` with its local functions (an exporter's blocks: onnxscript, torch's dynamo exporter) written out
    in the graph. onnxruntime inlines them when it loads a model, but its quantisers and OpenVINO's do not look
    inside: static int8 and NNCF for OpenVINO found "no operator to quantise" in a graph of function calls."""
    if not model.functions:
        return model
    from onnx import inliner

    return inliner.inline_local_functions(model)


def constant_initializers(model: Any) -> list[str]:
    """Drop the graph inputs that name an initializer, and return their names.

    Older exporters (and the ONNX model zoo's older models) list every weight as a graph input too, which ONNX reads
    as a default a caller may override: onnxruntime then treats the weights as inputs, folds no constants through
    them, and warns about each one on stderr from every session the quantisation tools build. edgeserve's signature
    never offered them as inputs (a request cannot feed a weight), so they are made the constants they are."""
    graph = model.graph
    shadowed = weight_inputs(model)
    if shadowed:
        dropped = set(shadowed)
        kept = [v for v in graph.input if v.name not in dropped]
        del graph.input[:]
        graph.input.extend(kept)
    return shadowed


def weight_inputs(model: Any) -> list[str]:
    """The graph inputs that name an initializer (see :func:`constant_initializers`)."""
    weights = {t.name for t in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name in weights]


PORTABLE_LOCALE = "C.UTF-8"
"""The locale a StringNormalizer is given when the one it names cannot be loaded here: glibc systems, slim
containers included, have it built in."""


def portable_locales(model: Any) -> dict[str, str]:
    """Point each StringNormalizer (skl2onnx's TfidfVectorizer lowercases with one) whose locale this machine
    cannot load at ``PORTABLE_LOCALE``; returns node name → the locale it named. onnxruntime refuses to load the
    model otherwise ("Failed to construct locale with name: en_US.UTF-8", its default, which containers lack)."""
    changed: dict[str, str] = {}
    if not _locale_usable(PORTABLE_LOCALE):
        return changed
    for node in model.graph.node:
        if node.op_type != "StringNormalizer":
            continue
        attr = next((a for a in node.attribute if a.name == "locale"), None)
        named = attr.s.decode("utf-8", "replace") if attr is not None else "en_US.UTF-8"
        if _locale_usable(named):
            continue
        if attr is None:
            from onnx import helper

            node.attribute.append(helper.make_attribute("locale", PORTABLE_LOCALE))
        else:
            attr.s = PORTABLE_LOCALE.encode()
        changed[node.name or f"StringNormalizer {len(changed)}"] = named
    if changed:
        log.warning("the locale%s %s that the model's text normalisation names cannot be loaded here: it uses %s "
                    "instead (the same lowercasing for ASCII text; install the locale to keep it)",
                    "s" if len(set(changed.values())) > 1 else "", ", ".join(sorted(set(changed.values()))),
                    PORTABLE_LOCALE)
    return changed


def _locale_usable(name: str) -> bool:
    import locale

    previous = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, name)
        return True
    except locale.Error:
        return False
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)


def unzipped_outputs(model: Any) -> dict[str, list[Any]]:
    """Outputs a ``ZipMap`` turns into a sequence of {class: probability} maps (skl2onnx's default for
    classifiers), with their class labels: numpy cannot hold such a value, so the converter answers the
    ``[rows, classes]`` probabilities the map was made from instead."""
    outputs = {o.name for o in model.graph.output}
    found = {}
    for node in model.graph.node:
        if node.op_type == "ZipMap" and node.domain == "ai.onnx.ml" and node.output[0] in outputs:
            attrs = {a.name: a for a in node.attribute}
            labels: list[Any] = list(attrs["classlabels_int64s"].ints) if "classlabels_int64s" in attrs else [
                s.decode() for s in attrs["classlabels_strings"].strings] if "classlabels_strings" in attrs else []
            found[node.output[0]] = labels
    return found


def _say_unzipped(zipmaps: Mapping[str, list[Any]]) -> None:
    for name, labels in zipmaps.items():
        log.warning("output '%s' was a ZipMap of {class: probability}; the package answers float32 [rows, %d] "
                    "probabilities, classes in the order %s", name, len(labels), labels[:20])


def unzip(model: Any) -> None:
    """Replace each output's ``ZipMap`` (see :func:`unzipped_outputs`) by the probabilities it zips, same name."""
    from onnx import TensorProto, helper

    zipped = unzipped_outputs(model)
    if not zipped:
        return
    first = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    batch = first[0].dim_param if len(first) and first[0].dim_param else None
    nodes = []
    for node in model.graph.node:
        if node.op_type == "ZipMap" and node.output[0] in zipped:
            nodes.append(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=f"{node.name}_unzipped"))
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for i, out in enumerate(model.graph.output):
        if out.name in zipped:
            classes = len(zipped[out.name]) or None
            model.graph.output[i].CopyFrom(
                helper.make_tensor_value_info(out.name, TensorProto.FLOAT, [batch or "N", classes]))


def _from_onnx_proto(model: Any, workdir: Path, allowed_domains: Sequence[str]) -> SourceModel:
    from ..modelfile import check_model

    check_model(model, base_dir=None, allowed_domains=allowed_domains)
    dst = workdir / "source.onnx"
    data = model.SerializeToString()
    import hashlib

    info: dict[str, Any] = {"framework": "onnx", "file": None, "sha256": hashlib.sha256(data).hexdigest()}
    zipmaps = unzipped_outputs(model)
    shadowed = weight_inputs(model)
    functions = len(model.functions)
    if zipmaps or shadowed or functions or any(n.op_type == "StringNormalizer" for n in model.graph.node):
        import onnx

        model = onnx.ModelProto.FromString(data)  # the caller's model stays as it was
        unzip(model)
        if shadowed:
            constant_initializers(model)
            info["initializer_inputs_dropped"] = len(shadowed)
        locales = portable_locales(model)
        if functions:
            model = inlined(model)
            info["functions_inlined"] = functions
        data = model.SerializeToString()
        if locales:
            info["locales_replaced"] = locales
        if zipmaps:
            info["zipmap_removed"] = zipmaps
            _say_unzipped(zipmaps)
    dst.write_bytes(data)
    return SourceModel(dst, info)


def _say_fixed_batches(dynamic_axes: Mapping[str, Mapping[int, str]], names: Sequence[str], args: Sequence[Any]) -> None:
    """Warn about inputs that ``dynamic_axes`` (torch's form: every axis that varies, the batch's too) leaves at
    the example's batch of several rows: the model would take exactly that many, a slip more often than a wish
    (``{"img": {3: "w"}}`` for variable-width images)."""
    fixed = [f"'{n}' ({int(a.shape[0])} rows)" for n, a in zip(names, args)
             if getattr(a, "dim", lambda: 0)() > 0 and a.shape[0] > 1 and 0 not in dynamic_axes.get(n, {})]
    if fixed:
        log.warning("dynamic_axes makes no batch axis of %s: the model is exported to take exactly that many rows "
                    "(give every axis that varies, as torch does: {'name': {0: 'batch', ...}})", ", ".join(fixed))


class ExtraAxes(dict):  # type: ignore[type-arg]
    """Axes that vary in size on top of the defaults (the CLI's ``--dynamic-axis x:1``: a TorchScript or pickled
    module traced on rows of one length), name -> {axis: its name}."""


def _as_tuple(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, Mapping):
        return tuple(example_inputs.values())
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    return (example_inputs,)


def _from_torch(module: Any, workdir: Path, example_inputs: Any, input_names: Sequence[str] | None,
                output_names: Sequence[str] | None, opset: int,
                dynamic_axes: Mapping[str, Mapping[int, str]] | None) -> SourceModel:
    import torch

    if example_inputs is None:
        raise ConversionError("a torch model needs example_inputs (a tensor or a tuple of tensors shaped like one batch)")
    args = tuple(torch.as_tensor(x) if isinstance(x, np.ndarray) else x for x in _as_tuple(example_inputs))
    if not all(isinstance(a, torch.Tensor) for a in args):
        raise ConversionError("example_inputs must be torch tensors or numpy arrays")
    if input_names is None:
        input_names = list(example_inputs.keys()) if isinstance(example_inputs, Mapping) else (
            _parameter_names(module, len(args))
            or (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))])
        )
    if len(input_names) != len(args):
        raise ConversionError(f"{len(input_names)} input_names given for {len(args)} example inputs")
    module = module.eval()
    label = type(module).__name__
    with torch.no_grad():
        sample_out = module(**dict(zip(example_inputs, args))) if isinstance(example_inputs, Mapping) else module(*args)
    keys = _output_keys(sample_out)
    if isinstance(example_inputs, Mapping) or keys is not None:
        # NOTE: named inputs go in by name (a dict in another order than forward's parameters must not feed
        # token_type_ids as attention_mask), and a transformers ModelOutput comes out as its tensors, named
        module = _named(module, list(example_inputs) if isinstance(example_inputs, Mapping) else None)
        with torch.no_grad():
            sample_out = module(*args)
    outs = sample_out if isinstance(sample_out, (tuple, list)) else (sample_out,)
    if output_names is None:
        output_names = keys or (["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))])
    if dynamic_axes is None or isinstance(dynamic_axes, ExtraAxes):
        # by default every input and output gets a dynamic batch axis 0 (scalars excepted), and token ids and
        # masks ([batch, seq] integers) a dynamic sequence axis; models whose batch sits elsewhere (recurrent state
        # [layers, batch, hidden]) or that take other variable sizes pass dynamic_axes
        extra = dynamic_axes
        dynamic_axes = {n: ({0: "batch", 1: "sequence"} if a.dim() == 2 and not a.is_floating_point() else {0: "batch"})
                        for n, a in zip(input_names, args) if a.dim() > 0}
        dynamic_axes.update({n: {0: "batch"} for n, o in zip(output_names, outs) if getattr(o, "dim", lambda: 0)() > 0})
        if extra:
            unknown = sorted(set(extra) - {*input_names, *output_names})
            if unknown:
                raise ConversionError(f"--dynamic-axis names {', '.join(unknown)}, which the model does not have; its "
                                      f"inputs are {', '.join(input_names)} and its outputs {', '.join(output_names)}")
            for n, axes in extra.items():
                dynamic_axes[n] = {**dynamic_axes.get(n, {}), **axes}
    else:
        _say_fixed_batches(dynamic_axes, input_names, args)
    dst = workdir / "source.onnx"
    exporter, opset = _export(module, label, args, dst, list(input_names), list(output_names),
                              {k: dict(v) for k, v in dynamic_axes.items()}, opset)
    return SourceModel(dst, {
        "framework": "torch", "torch": torch.__version__, "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "sha256": sha256_file(dst), "opset": opset, "exporter": exporter,
    })


def _from_exported(path: Path, workdir: Path, output_names: Sequence[str] | None, opset: int) -> SourceModel:
    """A ``torch.export.save`` file: its program exported as it is (its own dynamic shapes and example inputs)."""
    import torch

    program = saved.open_exported(path)
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    outputs = list(output_names) if output_names else _exported_output_names(program)
    dst = workdir / "source.onnx"
    used = max(opset, 18)  # see _export: torch.export's exporter writes opset 18
    try:
        with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript", "torch._export"):
            warnings.simplefilter("ignore")
            torch.onnx.export(program, (), str(dst), input_names=user, output_names=outputs, opset_version=used,
                              dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter's error, in one line
        raise ConversionError(f"torch.onnx.export failed for the program in {path}: {_uncoloured(exc)}. Export it to "
                              "ONNX yourself and convert the .onnx file") from None
    return SourceModel(dst, {"framework": "torch", "torch": torch.__version__, "file": path.name,
                             "sha256": sha256_file(path), "saved_as": saved.EXPORTED, "opset": used,
                             "exporter": "torch.export"})


def _exported_output_names(program: Any) -> list[str]:
    """What a saved program's outputs are called where its ``forward`` returns them: a dict's keys (a
    transformers ``ModelOutput``'s fields), else ``output`` or ``output_0``…, as a module's are (see
    :func:`_output_keys`). Left to the exporter they were named after their last operator (``softmax``,
    ``sigmoid``), the names the user's code knows them by lost."""
    from torch.utils import _pytree as pytree

    count = len(program.graph_signature.user_outputs)
    try:
        spec = program.call_spec.out_spec
        tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        paths = [path for path, _ in pytree.tree_flatten_with_path(tree)[0]]
    except Exception:  # noqa: BLE001 - a program without a readable output structure: numbered names
        paths = []
    keys = [str(p[0].key) if isinstance(p[0], pytree.MappingKey) else p[0].name if isinstance(p[0], pytree.GetAttrKey)
            else None for p in paths if len(p) == 1]
    if len(keys) == len(paths) == count and None not in keys and len(set(keys)) == count:
        return [k for k in keys if k is not None]
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _from_torchscript(path: Path, workdir: Path, example_inputs: Any, output_names: Sequence[str] | None,
                      opset: int, dynamic_axes: Mapping[str, Mapping[int, str]] | None) -> SourceModel:
    """A ``torch.jit.save`` file: traced by the exporter on ``example_inputs`` (a few rows of the calibration
    data), its inputs named as its ``forward`` names them."""
    module = saved.open_torchscript(path)
    names = saved.torchscript_inputs(module)
    if example_inputs is None:
        raise ConversionError(f"{path} is a TorchScript model: exporting it needs a few example rows, an array per "
                              f"input ({', '.join(names) or 'x'}): give --calibration (or --reference) to convert, "
                              "--data to bench")
    if isinstance(example_inputs, Mapping):
        missing = [n for n in names if n not in example_inputs]
        if missing and len(example_inputs) == len(names) == 1:
            example_inputs = next(iter(example_inputs.values()))
        elif missing:
            raise DataError(f"the example rows for {path} lack the inputs {missing} its forward takes "
                            f"({', '.join(names)}); the data has {', '.join(map(str, example_inputs))}")
        else:
            example_inputs = {n: example_inputs[n] for n in names}
    # a couple of rows trace the graph (the batch axis stays dynamic); positional, in forward's order: a wrapper
    # that calls a TorchScript module by name cannot be traced
    rows = tuple(np.asarray(v)[:2] for v in example_inputs.values()) if isinstance(example_inputs, Mapping) \
        else (np.asarray(example_inputs)[:2],)
    source = _from_torch(module, workdir, rows, names[:len(rows)] if len(names) >= len(rows) else None,
                         output_names, opset, dynamic_axes)
    source.info.update({"file": path.name, "saved_as": saved.TORCHSCRIPT, "sha256_saved": sha256_file(path)})
    return source


def _uncoloured(exc: BaseException) -> str:
    """The first line of an exporter's error, without the terminal colours torch.export writes it in."""
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(exc))


def _export(module: Any, label: str, args: tuple[Any, ...], dst: Path, input_names: list[str],
            output_names: list[str], dynamic_axes: dict[str, dict[int, str]], opset: int) -> tuple[str, int]:
    """Export with the TorchScript exporter, else with ``torch.export`` (``dynamo=True``, which needs onnxscript):
    newer models trace only with the latter (``aten::diff``, an FFT have no TorchScript symbolic). Returns which
    one wrote ``dst``, and at which opset."""
    import torch

    failures = []
    for dynamo in (False, True):
        used = max(opset, 18) if dynamo else opset
        try:
            with warnings.catch_warnings(), _quiet("torch.onnx", "onnxscript"):
                warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter is not the user's concern
                # NOTE: torch.export's exporter writes opset 18 and converts down to an older one badly (an FFT's
                # ReduceL2 kept opset 18's noop_with_empty_axes at 17: a model onnxruntime refused), so not below it
                torch.onnx.export(module, args, str(dst), input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, opset_version=used,
                                  do_constant_folding=True, dynamo=dynamo, verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporters' own errors, reported together below
            failures.append(_uncoloured(exc))
            continue
        if dynamo:
            log.warning("torch.onnx.export could not trace %s (%s); exported it with torch.export (dynamo=True) "
                        "instead", label, failures[0])
        return ("torch.export" if dynamo else "torchscript"), used
    raise ConversionError(f"torch.onnx.export failed for {label}: {failures[0]}; with dynamo=True "
                          f"(torch.export; needs onnxscript): {failures[1]}. Export the model to ONNX yourself and "
                          "convert the .onnx file")


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Errors only from these loggers meanwhile (torch.export's notes on optional packages, onnxscript's on opset
    conversion)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _output_keys(out: Any) -> list[str] | None:
    """The names of a dict-like answer's tensors (a transformers ``ModelOutput``: ``logits``; ``last_hidden_state``,
    ``pooler_output``), in order, leaving out what is None; None for a tensor or a tuple."""
    if not isinstance(out, Mapping):
        return None
    return [k for k, v in out.items() if _is_tensor(v)]


def _tensors(out: Any) -> Any:
    """A dict-like answer's tensors: a cache object beside them (``past_key_values``: a transformers
    ``EncoderDecoderCache``, which no exporter can trace) and None are left out."""
    return tuple(v for v in out.values() if _is_tensor(v)) if isinstance(out, Mapping) else out


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _named(module: Any, keys: list[str] | None) -> Any:
    import torch

    class Named(torch.nn.Module):
        """``module`` called with its inputs by name, answering a tuple of tensors (what the exporter traces)."""

        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args: Any) -> Any:
            return _tensors(self.module(**dict(zip(keys, args))) if keys is not None else self.module(*args))

    return Named().eval()


def _parameter_names(module: Any, count: int) -> list[str] | None:
    """The names of ``forward``'s first ``count`` positional parameters (``input_ids``, ``attention_mask``), as
    torch's newer exporter names the inputs: what the calibration file's arrays are naturally called, and how a mask
    is recognised when the task metric is inferred. None when they cannot be read."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names[:count] if len(names) >= count else None


def _from_sklearn(model: Any, workdir: Path, example_inputs: Any, opset: int | None) -> SourceModel:
    try:
        import sklearn  # noqa: F401 - the extra's presence
        from skl2onnx import to_onnx
    except ImportError:
        raise ConversionError("converting scikit-learn models needs the extra: pip install 'edgeserve[sklearn]'") from None
    if example_inputs is None:
        raise ConversionError("a scikit-learn model needs example_inputs (a few rows of X, as a numpy array, or a "
                              "DataFrame for a pipeline of named columns), or calibration data holding X")
    converted = _convertible(model)
    options = {id(est): {"zipmap": False} for est in _estimators(converted) if hasattr(est, "predict_proba")}
    if is_frame(example_inputs) or isinstance(example_inputs, Mapping):
        return _from_sklearn_columns(model, workdir, example_inputs, opset, options, converted)
    x = np.asarray(example_inputs)
    if x.ndim != 2:
        raise DataError(f"example_inputs for a scikit-learn model must be 2-D [rows, features], got {list(x.shape)}")
    if x.dtype == np.float64:
        x = x.astype(np.float32)  # float32 runs on every ONNX kernel; sklearn trains in float64 either way
    if x.dtype == object:
        raise DataError("example_inputs mix text and numbers in one array; give a DataFrame (or a dict of column "
                        "name to values) so that each column becomes an input of its own type")
    try:
        onx = _skl2onnx(to_onnx, converted, x[:1], options=options or None, target_opset=opset)
    except Exception as exc:
        raise ConversionError(f"skl2onnx cannot convert {type(model).__name__}: {_why(exc)}") from exc
    return _sklearn_source(model, workdir, onx, example_inputs, {onx.graph.input[0].name: x})


def _from_sklearn_columns(model: Any, workdir: Path, example_inputs: Any, opset: int | None,
                          options: dict[int, Any], convertible: Any) -> SourceModel:
    """A pipeline fit on named columns (a ColumnTransformer of text categories and numbers): one ``[rows, 1]``
    input per column, typed after the column, as skl2onnx maps them to the columns by name."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import BooleanTensorType, FloatTensorType, Int64TensorType, StringTensorType

    columns = frame_columns(example_inputs) if is_frame(example_inputs) else {
        str(k): column(str(k), v) for k, v in example_inputs.items()}
    kinds = {"f": FloatTensorType, "i": Int64TensorType, "b": BooleanTensorType, "U": StringTensorType}
    initial = [(name, kinds[values.dtype.kind]([None, 1])) for name, values in columns.items()]
    converted = convertible if _takes_columns(model) else _over_columns(convertible, example_inputs, list(columns))
    try:
        onx = _skl2onnx(to_onnx, converted, initial_types=initial, options=options or None, target_opset=opset)
    except Exception as exc:
        raise ConversionError(f"skl2onnx cannot convert {type(model).__name__} over the columns "
                              f"{', '.join(columns)}: {_why(exc)}") from exc
    return _sklearn_source(model, workdir, onx, example_inputs, columns)


def _convertible(model: Any) -> Any:
    """The model as skl2onnx converts it: a ``VotingClassifier`` at its end (the model, or a pipeline's last step)
    only with ``flatten_transform=False`` ("flatten_transform==True is not implemented yet", the default), a setting
    that shapes ``transform()`` alone, never ``predict`` or ``predict_proba``: such a model is converted from a copy
    with it off (the estimator check then compares the graph with the estimator as it was)."""
    from sklearn.ensemble import VotingClassifier
    from sklearn.pipeline import Pipeline

    def last(m: Any) -> Any:
        while isinstance(m, Pipeline):
            m = m.steps[-1][1]
        return m

    if not (isinstance(last(model), VotingClassifier) and last(model).flatten_transform):
        return model
    import copy

    convertible = copy.deepcopy(model)
    last(convertible).flatten_transform = False
    return convertible


def _takes_columns(model: Any) -> bool:
    """The model picks its own columns by name: a ColumnTransformer, or a pipeline that starts with one."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    while isinstance(model, Pipeline):
        model = model.steps[0][1]
    return isinstance(model, ColumnTransformer)


def _over_columns(model: Any, example_inputs: Any, columns: list[str]) -> Any:
    """An estimator fit on a DataFrame's columns as one matrix (what scikit-learn does with a frame), as a pipeline
    that first joins the columns (a ColumnTransformer passing them through, in the order the estimator was fit
    on): each column stays an input of its own, named and typed after it, and a DataFrame still answers by name."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    order = [str(c) for c in getattr(model, "feature_names_in_", columns)]
    if sorted(order) != sorted(columns):
        raise DataError(f"the example columns {', '.join(columns)} are not the ones {type(model).__name__} was fit on "
                        f"({', '.join(order)})")
    frame = example_inputs
    if not is_frame(frame):
        try:
            import pandas as pd
        except ImportError:
            raise ConversionError(f"{type(model).__name__} takes one matrix; give its example rows as an array (or a "
                                  "DataFrame), not a dict of columns") from None
        frame = pd.DataFrame({k: np.asarray(v).reshape(-1) for k, v in example_inputs.items()})
    try:
        joined = ColumnTransformer([("columns", "passthrough", order)]).fit(frame)
    except Exception as exc:  # noqa: BLE001 - scikit-learn's own words on the frame
        raise DataError(f"example_inputs: cannot pass the columns {', '.join(order)} through ({_why(exc)})") from None
    return Pipeline([("columns", joined), ("model", model)])


def _skl2onnx(to_onnx: Any, model: Any, *args: Any, target_opset: int | None, **kwargs: Any) -> Any:
    """``to_onnx``, at the ``ai.onnx.ml`` opset a converter asks for when it supports no later one (an
    IsolationForest's: 'You need to specify target_opset={'ai.onnx.ml': 3}')."""
    from .mends import mend

    mend()  # skl2onnx's tree converters (NaN routing, HistGradientBoosting), a LinearSVC in a pipeline
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return to_onnx(model, *args, target_opset=target_opset, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it names the opset it needs
            asked = re.search(r"target_opset=\{'ai\.onnx\.ml': (\d+)\}", str(exc))
            if asked is None:
                raise
            opsets = {"": target_opset or DEFAULT_OPSET, "ai.onnx.ml": int(asked.group(1))}
            return to_onnx(model, *args, target_opset=opsets, **kwargs)


SKLEARN_NAMES = {"output_label": "label", "output_probability": "probabilities"}
"""skl2onnx's names for a classifier's outputs behind a ZipMap, and the ones it gives them without (``zipmap``
off, as every classifier with ``predict_proba`` is converted): one package's outputs are named as another's."""


def _rename_outputs(model: Any, names: Mapping[str, str]) -> None:
    """Rename graph outputs, in every node that makes or reads them; a value inside the graph that holds a new name
    already (skl2onnx calls the SVC's own label ``label``) is renamed out of the way first. A new name that is a
    graph input or output already is left alone."""
    outer = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    names = {old: new for old, new in names.items() if old in outer and new not in outer}
    if not names:
        return
    inner = {v for n in model.graph.node for v in (*n.input, *n.output)} | {t.name for t in model.graph.initializer}
    moved = {new: _free_name(f"{new}_inner", inner) for new in names.values() if new in inner}
    renames = {**moved, **names}
    for node in model.graph.node:
        for values in (node.input, node.output):
            for i, value in enumerate(values):
                if value in renames:
                    values[i] = renames[value]
    for init in model.graph.initializer:
        if init.name in moved:
            init.name = moved[init.name]
    for info in model.graph.value_info:
        if info.name in renames:
            info.name = renames[info.name]
    for out in model.graph.output:
        if out.name in names:
            out.name = names[out.name]


def _free_name(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _sklearn_source(model: Any, workdir: Path, onx: Any, examples: Any, feed: dict[str, np.ndarray]) -> SourceModel:
    import sklearn

    from .prepare import dedupe_opset_imports

    dedupe_opset_imports(onx)
    if unzipped_outputs(onx):  # NOTE: a classifier without predict_proba (an SVC, a hard vote) still gets a ZipMap
        unzip(onx)
        _rename_outputs(onx, SKLEARN_NAMES)
    locales = portable_locales(onx)
    check = _against_estimator(model, onx, examples, feed)
    if check is not None and check.get("repair") is not None:
        name, width = check["repair"]
        _rows_of(onx, name, width)
        log.warning("skl2onnx's %s answers %d values per row one below the other ([rows x %d, 1]); its output "
                    "'%s' is reshaped to [rows, %d], as the estimator answers", type(model).__name__, width, width,
                    name, width)
        check = {**(_against_estimator(model, onx, examples, feed) or {}), "reshaped": name}
    dst = workdir / "source.onnx"
    dst.write_bytes(onx.SerializeToString())
    return SourceModel(dst, {
        "framework": "sklearn", "sklearn": sklearn.__version__, "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "sha256": sha256_file(dst), **({"locales_replaced": locales} if locales else {}),
        **({"estimator_check": check} if check else {}),
    })


def _why(exc: BaseException) -> str:
    """A library's error and the one under it: skl2onnx's 'Unable to create node …' is followed by every attribute
    of the node, while the reason ('Expected an int, got a boolean') is in its cause."""
    cause = exc.__cause__ or exc.__context__
    return first_line(exc) if cause is None else f"{first_line(exc, 120)}… ({first_line(cause, 200)})"


def _against_estimator(model: Any, onx: Any, examples: Any, feed: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """The converted graph's answers to the example rows against the estimator's own (``predict_proba``, else
    ``predict``): skl2onnx cannot convert everything exactly (its text tokenizer's ``\\w`` is ASCII-only, so
    'été' is no word to it), and the converter's later checks compare against this graph, not the estimator. A
    difference is warned about and recorded; None when the check cannot run."""
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        answers = session.run(None, {n: feed[n].astype(object) if feed[n].dtype.kind == "U" else feed[n]
                                     for n in names})
        x = examples if not isinstance(examples, Mapping) else None
        if x is None:
            import pandas as pd  # a dict of columns: the estimator was fit on a DataFrame

            x = pd.DataFrame({k: np.asarray(v).reshape(-1) for k, v in examples.items()})
        elif isinstance(x, np.ndarray) and x.dtype.kind == "U" and x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0] if _takes_documents(model) else x
        proba = hasattr(model, "predict_proba")
        want = np.asarray(model.predict_proba(x) if proba else model.predict(x))
        got = next((a for a in answers if np.asarray(a).shape == want.shape and np.asarray(a).dtype.kind == "f"), None) \
            if proba else np.asarray(answers[0])
    except Exception as exc:  # noqa: BLE001 - a check that cannot run says so and lets the conversion go on
        log.debug("the converted graph was not compared with the estimator: %s", exc)
        return None
    if got is None:
        return None
    got = np.asarray(got)
    if want.ndim and got.ndim and got.shape[0] != want.shape[0]:  # the rows are not the estimator's rows
        result: dict[str, Any] = {"rows": len(want), "rows_answered": int(got.shape[0]), "ok": False}
        if want.ndim == 2 and got.shape == (want.shape[0] * want.shape[1], 1):  # every row's values stacked
            result["repair"] = (next(o.name for o, a in zip(onx.graph.output, answers) if a is got), want.shape[1])
        else:
            log.warning("the converted %s answers %d rows for the estimator's %d: check it on your data",
                        type(model).__name__, got.shape[0], want.shape[0])
        return result
    if want.dtype.kind in "fc":
        worst = float(np.max(np.abs(np.asarray(got, np.float64).reshape(want.shape) - want))) if want.size else 0.0
        ok = worst <= 1e-3 * max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
        result = {"rows": len(want), "max_abs_diff": worst, "ok": ok}
    else:
        agree = float(np.mean(np.asarray(got).reshape(-1).astype(str) == want.reshape(-1).astype(str))) if want.size else 1.0
        result = {"rows": len(want), "agreement": agree, "ok": agree == 1.0}
    if not result["ok"]:
        log.warning("the converted %s does not answer the example rows as the estimator does (%s over %d rows): "
                    "skl2onnx converts some steps only approximately (its text tokenizer knows ASCII words only); "
                    "the converter's checks compare with the converted graph, so check it on your data",
                    type(model).__name__, ", ".join(f"{k} {v:.4g}" for k, v in result.items()
                                                  if k in ("max_abs_diff", "agreement")), len(want))
    return result


def _rows_of(onx: Any, name: str, width: int) -> None:
    """Reshape graph output ``name`` from ``[rows x width, 1]`` to ``[rows, width]`` in place."""
    from onnx import TensorProto, helper, numpy_helper

    flat = f"{name}__stacked"
    for node in onx.graph.node:
        node.output[:] = [flat if o == name else o for o in node.output]
        node.input[:] = [flat if i == name else i for i in node.input]
    shape = f"{name}__shape"
    onx.graph.initializer.append(numpy_helper.from_array(np.array([-1, width], np.int64), shape))
    onx.graph.node.append(helper.make_node("Reshape", [flat, shape], [name], name=f"{name}__rows"))
    output = next(o for o in onx.graph.output if o.name == name)
    elem = output.type.tensor_type.elem_type or TensorProto.FLOAT
    output.CopyFrom(helper.make_tensor_value_info(name, elem, [None, width]))


def _takes_documents(model: Any) -> bool:
    """A pipeline that starts with a text vectoriser takes a 1-D array of documents, not a [rows, 1] column."""
    first = model.steps[0][1] if hasattr(model, "steps") else model
    return hasattr(first, "build_analyzer")


def _estimators(model: Any) -> list[Any]:
    """The estimator and every step nested in pipelines, unions and column transformers."""
    found = [model]
    for attr in ("steps", "transformer_list", "transformers"):
        for item in getattr(model, attr, None) or ():
            found.extend(_estimators(item[1]))
    return found
