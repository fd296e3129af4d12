"""Serving-runtime benchmarks, each against its baseline in the same run.

    pytest benchmarks/test_serving.py -s

1. 32 threads calling predict on a compute-bound MLP (512→2048→2048→10): dynamic batching vs none, interleaved
   rounds; batched p99 is compared with max_delay_ms + 3x the compute time of a full batch.
2. A response-cache hit for a 1 KB input, against a miss that runs the model.
3. A load from the optimised-graph cache against a first load of the same model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgeserve
from edgeserve import BatchConfig, CacheConfig, SessionConfig
from edgeserve.bench.measure import concurrent

_report: list[str] = []


def _big_mlp(path: Path, dims: tuple[int, ...] = (512, 2048, 2048, 10)) -> Path:
    """A compute-bound MLP x[batch, dims[0]] -> y[batch, dims[-1]] (MatMul+Add, Relu between)."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        prev = f"a{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", dims[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dims[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _big_mlp(tmp_path_factory.mktemp("serving") / "mlp512.onnx")


def test_batching_32_threads(big: Path) -> None:
    cfg = SessionConfig(cache_dir=None)
    batching = BatchConfig(max_batch_size=16, max_delay_ms=2.0)
    x = np.random.default_rng(1).standard_normal((1, 512)).astype(np.float32)
    with edgeserve.load(big, config=cfg) as plain, edgeserve.load(big, config=cfg, batching=batching) as batched:
        full = np.repeat(x, batching.max_batch_size, axis=0)
        for _ in range(5):
            plain.predict(full)
        t0 = time.perf_counter()
        for _ in range(20):
            plain.predict(full)
        full_batch_s = (time.perf_counter() - t0) / 20
        runs: dict[str, list[dict]] = {"unbatched": [], "batched": []}
        for r in range(3):
            for name, model in ([("unbatched", plain), ("batched", batched)] if r % 2 == 0 else
                                [("batched", batched), ("unbatched", plain)]):
                runs[name].append(concurrent(lambda m=model: m.predict(x), callers=32, duration_s=2.0))
    rate = {k: float(np.median([r["rows_per_s"] for r in v])) for k, v in runs.items()}
    p99 = {k: float(np.median([r["p99"] for r in v])) for k, v in runs.items()}
    bound = batching.max_delay_ms / 1000 + 3 * full_batch_s
    _report.append(
        f"batching, 32 threads, MLP 512-2048-2048-10: unbatched {rate['unbatched']:.0f} rows/s (p99 "
        f"{p99['unbatched'] * 1e3:.1f} ms), batched {rate['batched']:.0f} rows/s (p99 {p99['batched'] * 1e3:.1f} ms); "
        f"ratio {rate['batched'] / rate['unbatched']:.2f}x; p99 bound max_delay + 3 x full batch "
        f"({full_batch_s * 1e3:.2f} ms) = {bound * 1e3:.1f} ms"
    )
    assert rate["batched"] > 0 and rate["unbatched"] > 0


def test_cache_hit_1kb(tmp_path: Path) -> None:
    from tests.factories import mlp_model, save

    path = save(mlp_model(n_in=256, hidden=64, n_out=4), tmp_path / "m.onnx")  # 256 float32 = 1 KB input
    x = np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32)
    with edgeserve.load(path, config=SessionConfig(cache_dir=None), cache=CacheConfig()) as cached, \
            edgeserve.load(path, config=SessionConfig(cache_dir=None)) as plain:
        cached.predict(x)
        hits, misses = [], []
        for _ in range(2000):
            t0 = time.perf_counter()
            cached.predict(x)
            hits.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            plain.predict(x)
            misses.append(time.perf_counter() - t0)
    _report.append(f"response cache, 1 KB input: hit median {np.median(hits) * 1e6:.1f} µs (p99 "
                   f"{np.percentile(hits, 99) * 1e6:.1f} µs) vs running the model {np.median(misses) * 1e6:.1f} µs")
    assert cached.cache.stats()["hits"] == 2000


def test_graph_cache_load(big: Path, tmp_path: Path) -> None:
    first, cached = [], []
    for i in range(3):
        folder = tmp_path / f"cache{i}"
        t0 = time.perf_counter()
        edgeserve.load(big, config=SessionConfig(cache_dir=str(folder))).close()
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with edgeserve.load(big, config=SessionConfig(cache_dir=str(folder))) as m:
            assert m.from_cache
        cached.append(time.perf_counter() - t0)
    _report.append(f"graph cache, MLP 512-2048-2048-10 (21 MB): first load {np.median(first) * 1e3:.1f} ms, "
                   f"from cache {np.median(cached) * 1e3:.1f} ms")


def teardown_module() -> None:
    print("\n" + "\n".join(_report))
