"""The machine's own speed in a benchmark run: a fixed workload timed in the same interleaved rounds as the variants.

Two runs of ``edgeserve bench`` on a shared machine minutes apart can differ by a third in every timing (this
project's 2-core VM: the same model's p50 +34% and its throughput -33% between two runs of the same code), and
``--compare`` flagged that as a regression. A reference that never changes — an MLP 256-512-256 built here with
fixed weights, run by onnxruntime with the bench's threads — is timed beside the variants, round by round, so a
slow spell falls on it too; :func:`edgeserve.bench.report.compare` judges a variant's change against the change of
the reference (the ratio of ratios), as the rest of the project measures speed: against a baseline in the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

NAME = "(machine)"
"""The reference's key among the variants' calls while measuring (never a variant's name: variants are names
of recipes, without parentheses)."""
WIDTHS = (256, 512, 256)


def reference_model() -> bytes:
    """The reference MLP (fixed weights, float32, a variable batch) as ONNX bytes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32),
                                             f"w{i}"))
        nodes += [helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        previous = f"h{i}"
    graph = helper.make_graph(nodes, "machine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTHS[0]])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["batch", WIDTHS[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


class Reference:
    """The reference workload at a batch size: ``call(rows)`` runs it once."""

    def __init__(self, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        self._session = ort.InferenceSession(reference_model(), options, providers=["CPUExecutionProvider"])
        self._output = [self._session.get_outputs()[0].name]
        self._feeds: dict[int, dict[str, np.ndarray]] = {}

    def call(self, rows: int) -> Callable[[], Any]:
        feed = self._feeds.get(rows)
        if feed is None:
            x = np.random.default_rng(rows).standard_normal((rows, WIDTHS[0])).astype(np.float32)
            feed = self._feeds[rows] = {"x": x}
        session, output = self._session, self._output
        return lambda: session.run(output, feed)
