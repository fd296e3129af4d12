"""Symbolic dimensions as exporters write them: plain names (``sequence_length``), expressions of others
(``past_sequence_length + sequence_length``, ``floor(W/4)``), and the sizes stand-in data takes for them."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence

from .tensors import TensorSpec

STAND_IN = 8
"""The size stand-in data gives a variable dimension."""


EXPRESSION = re.compile(r"[-+*/%()]")
"""What makes a dimension name an expression of others (``floor(W/4)``, ``past_sequence_length + sequence_length``);
a name that is only not an identifier (paddle2onnx's ``p2o.DynamicDimension.0``) is a plain name."""


def names_in(expr: str) -> set[str]:
    """The dimension names an expression uses (``floor(W/4)``: W; ``s53*2``: s53)."""
    try:
        return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}
    except SyntaxError:  # an exporter's expression Python cannot read: the words in it
        return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr))


_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


def evaluate(expr: str, values: Mapping[str, int]) -> int:
    """An exporter's dimension expression (``past_sequence_length + sequence_length``, ``2*s53``, ``floor(W/4)``,
    ``ceil(W/4)``) at these sizes; ValueError for anything else, a fraction, or a size below 1."""
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in values:
            return int(values[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("floor", "ceil") \
                and len(node.args) == 1:
            return float((math.floor if node.func.id == "floor" else math.ceil)(value(node.args[0])))
        raise ValueError(f"cannot evaluate {ast.dump(node)}")

    try:
        result = value(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ZeroDivisionError) as exc:
        raise ValueError(str(exc)) from None
    if result != int(result) or result < 1:
        raise ValueError(f"{expr} = {result}")
    return int(result)


def stand_in_shapes(specs: Sequence[TensorSpec], rows: int, size: int = STAND_IN) -> dict[str, list[int]]:
    """Each input's shape for stand-in data: fixed dims as declared, the batch axis ``rows``, every other variable
    dim ``size``, and a dim named by an expression of others (``past_sequence_length + sequence_length``, a
    decoder's attention mask over its cache and the new tokens) evaluated at those sizes, so the inputs agree as
    the model needs (``size`` where it cannot be evaluated)."""
    values: dict[str, int] = {}
    for spec in specs:
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, str) and not EXPRESSION.search(dim):
                values.setdefault(dim, rows if axis == spec.batch_axis else size)
    shapes = {}
    for spec in specs:
        shape = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                shape.append(dim)
            elif axis == spec.batch_axis:
                shape.append(rows)
            elif isinstance(dim, str) and dim in values:
                shape.append(values[dim])
            elif isinstance(dim, str):
                try:
                    shape.append(evaluate(dim, values))
                except ValueError:
                    shape.append(size)
            else:
                shape.append(size)
        shapes[spec.name] = shape
    return shapes
