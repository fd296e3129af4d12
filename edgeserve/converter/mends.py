"""Mends to skl2onnx (1.20), so that what it converts answers as the scikit-learn estimator does.

Its tree-ensemble converters:

- **Missing values.** scikit-learn (1.3 on) learns per split where a NaN goes (``tree_.missing_go_to_left``);
  skl2onnx writes every node's ``nodes_missing_value_tracks_true`` as 0, so onnxruntime sends every NaN right: a
  random forest fit on rows with 15% of values missing answered 445 of 569 of them otherwise than the estimator. The
  flag is now the tree's own (its "true" branch is the left child, ``x <= threshold``).
- **A bool among ints.** Its HistGradientBoosting converter gives a leaf's flag as the Python ``False`` beside the
  branches' numpy ``uint8``, and onnx refuses a bool among an attribute's ints ('Expected an int, got a boolean'):
  every HistGradientBoostingClassifier and Regressor failed to convert (onnx 1.23). Flags are written as ints.
- **Thresholds.** That converter rounds the float64 thresholds to float32, where scikit-learn compares a float32
  value with the float64 threshold: a value between the two took the other branch (a 100-tree regressor on the
  diabetes data: 18 of 442 rows off by up to 9.7). They are moved as skl2onnx does for every other tree ensemble
  (``adjust_threshold_for_sklearn``).

And a ``LinearSVC`` at the end of a pipeline: the pipeline's parser asks every classifier for its ``zipmap``
option, which skl2onnx's LinearSVC converter does not declare ("Option 'zipmap' not in ['nocl', …]"), so a
``make_pipeline(StandardScaler(), LinearSVC())`` or a TF-IDF + LinearSVC text classifier did not convert. The option
is declared (the converter answers a tensor of scores either way, as it does alone).

:func:`mend` installs them once, in skl2onnx's own modules (its converters look the functions up there by name).
Each leaves what skl2onnx already gets right as it was: an int flag stays what it is, a tree without
``missing_go_to_left`` keeps 0, and adjusted thresholds are what its other tree converters write.
"""

from __future__ import annotations

import importlib
import inspect
import threading
from typing import Any

_MENDED = "edgeserve_mended"
_CONVERTERS = ("random_forest", "gradient_boosting", "decision_tree", "isolation_forest")
"""skl2onnx's converter modules that import ``add_tree_to_attribute_pairs`` by name."""
_tree = threading.local()
"""The tree whose nodes are being added on this thread (its NaN routing is read per node)."""


def mend() -> None:
    """Install the mends (once; a no-op without skl2onnx, or where its functions are not as expected)."""
    try:
        from skl2onnx.common import tree_ensemble
    except ImportError:
        return
    add_node = getattr(tree_ensemble, "add_node", None)
    if add_node is not None and not getattr(add_node, _MENDED, False):
        tree_ensemble.add_node = _with_nan_routing(add_node)
    add_tree = getattr(tree_ensemble, "add_tree_to_attribute_pairs", None)
    if add_tree is not None and not getattr(add_tree, _MENDED, False):
        routed = _remembering_the_tree(add_tree)
        tree_ensemble.add_tree_to_attribute_pairs = routed
        for name in _CONVERTERS:
            module = _converter(name)
            if module is not None and getattr(module, "add_tree_to_attribute_pairs", None) is add_tree:
                module.add_tree_to_attribute_pairs = routed
    _declare_zipmap("SklearnLinearSVC")
    random_forest = _converter("random_forest")
    hist = getattr(random_forest, "add_tree_to_attribute_pairs_hist_gradient_boosting", None)
    if hist is not None and not getattr(hist, _MENDED, False):
        adjusted = _adjusting_thresholds(hist)
        if adjusted is not None:
            random_forest.add_tree_to_attribute_pairs_hist_gradient_boosting = adjusted  # type: ignore[union-attr]


def _converter(name: str) -> Any:
    try:
        return importlib.import_module(f"skl2onnx.operator_converters.{name}")
    except ImportError:
        return None


def _with_nan_routing(add_node: Any) -> Any:
    signature = inspect.signature(add_node)

    def add(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        given = bound.arguments.get("nodes_missing_value_tracks_true", 0)
        tree = getattr(_tree, "current", None)
        left = getattr(tree, "missing_go_to_left", None)
        if left is not None and bound.arguments.get("mode") == "BRANCH_LEQ" and not given:
            given = left[bound.arguments["node_id"]]
        bound.arguments["nodes_missing_value_tracks_true"] = int(given)
        return add_node(*bound.args, **bound.kwargs)

    setattr(add, _MENDED, True)
    return add


def _remembering_the_tree(add_tree: Any) -> Any:
    signature = inspect.signature(add_tree)

    def add(*args: Any, **kwargs: Any) -> Any:
        before = getattr(_tree, "current", None)
        _tree.current = signature.bind(*args, **kwargs).arguments.get("tree")
        try:
            return add_tree(*args, **kwargs)
        finally:
            _tree.current = before

    setattr(add, _MENDED, True)
    return add


def _adjusting_thresholds(add_tree: Any) -> Any:
    signature = inspect.signature(add_tree)
    if "adjust_threshold_for_sklearn" not in signature.parameters:
        return None

    def add(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.arguments["adjust_threshold_for_sklearn"] = True
        return add_tree(*bound.args, **bound.kwargs)

    setattr(add, _MENDED, True)
    return add


def _declare_zipmap(name: str) -> None:
    """Let the converter registered as ``name`` take the ``zipmap`` option a pipeline's parser gives it."""
    try:
        from skl2onnx.common._registration import _converter_pool, register_converter
    except ImportError:
        return
    registered = _converter_pool.get(name)
    allowed = getattr(registered, "get_allowed_options", lambda: None)()
    if registered is None or allowed is None or "zipmap" in allowed:
        return
    register_converter(name, registered._fct, overwrite=True,  # noqa: SLF001 - re-registered as it was, plus zipmap
                       options={**allowed, "zipmap": [True, False, "columns"]})
