"""What the guardrails cost, measured side by side in one run on this machine.

    pytest benchmarks/test_guardrails.py -s -p no:randomly

1. Per request, single thread, the digits MLP: the envelope checks + drift monitoring added to ``Model.answer``
   at 1 row and at 32 rows per request (target: <= 5 us per request amortised at batch 32); and with the drift
   detectors seeing one request in 8 (``GuardConfig(sample=0.125)``).
2. ``Runtime.predict`` at 32 concurrent callers, one row (and 32 rows) each: everything off, the guard on, the guard + the audit
   log answering after commit (``ack``), the guard + the audit log in bounded-loss mode (target: everything on >=
   85% of everything off).
3. The audit log alone: prediction records per second sustained, 4 producer threads (target: >= 50,000/s).
4. Drift detection delay on digits: requests until an alarm, median and 95th percentile of 20 runs per shift.
5. Explanations: edgeserve's occlusion per explained row against what SHAP's KernelExplainer would run on the same
   model, ``(2M + 2048) x 100`` background rows, timed as rows through the same engine.

Numbers are printed as a table at the end; nothing here asserts on time (the machines are shared).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import edgeserve
from edgeserve import AuditLog, GuardConfig, Runtime
from edgeserve.bench.measure import concurrent
from edgeserve.runtime.repository import Repository
from edgeserve.timing import order
from tests.factories import mlp_model, save

_lines: list[str] = []
ROUNDS = 3
SECONDS = 1.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    tmp = tmp_path_factory.mktemp("guardrails")
    x = load_digits().data.astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    reference, stream = x[order[:900]], x[order[900:]]
    model = save(mlp_model(n_in=64, hidden=64, n_out=10, seed=1), tmp / "digits.onnx")
    pkg = edgeserve.convert(model, tmp / "pkg", quantize="none", calibration={"x": reference[:200]},
                            reference={"x": reference})
    repo = Repository(tmp / "repo", create=True)
    repo.publish("digits", pkg.path)
    return pkg.path, repo.root, stream


def _per_call(fn, calls: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def test_guard_cost_per_request(setup) -> None:
    pkg, _, stream = setup
    plain = edgeserve.load(pkg, guard=GuardConfig.off(), cache=None)
    plain._fast = False  # the same path as the guarded model, without the guard
    guarded = edgeserve.load(pkg, guard=GuardConfig())
    sampled = edgeserve.load(pkg, guard=GuardConfig(sample=0.125))
    for rows in (1, 32):
        x = stream[:rows]
        off = _per_call(lambda x=x: plain.answer(x), 3000)
        for label, model in (("envelope + drift", guarded), ("... drift on 1/8", sampled)):
            on = _per_call(lambda x=x, model=model: model.answer(x), 3000)
            _lines.append(f"{label:<17}, {rows:>2} rows/request {(on - off) * 1e6:7.2f} us/request "
                          f"({(on - off) * 1e6 / rows:5.2f} us/row)  [off {off * 1e6:.1f} us, on {on * 1e6:.1f} us]")
    for model in (plain, guarded, sampled):
        model.close()


@pytest.mark.parametrize("per_request", [1, 32])
def test_everything_on_against_everything_off_at_32_callers(setup, tmp_path: Path, per_request: int) -> None:
    _, repo, stream = setup
    rows = [stream[(i * per_request) % 800:(i * per_request) % 800 + per_request] for i in range(64)]
    setups = {
        "off": dict(guard=None),
        "guard": dict(guard=GuardConfig()),
        "guard, drift on 1/8": dict(guard=GuardConfig(sample=0.125)),
        "guard + audit (ack)": dict(guard=GuardConfig(), audit=AuditLog(tmp_path / "ack.sqlite3")),
        "guard + audit (bounded)": dict(guard=GuardConfig(),
                                        audit=AuditLog(tmp_path / "bounded.sqlite3", durability="bounded")),
    }
    rates: dict[str, list[float]] = {k: [] for k in setups}
    runtimes = {k: Runtime(repo, **v) for k, v in setups.items()}
    for r in range(ROUNDS):  # interleaved rounds: the machine's noise falls on every variant alike
        for name in order(list(runtimes), r):  # each at every place in turn (see edgeserve.timing.order)
            runtime = runtimes[name]
            counter = iter(range(1 << 62))

            def call(runtime: Runtime = runtime, counter=counter) -> None:
                runtime.predict("digits", rows[next(counter) % 64])

            rates[name].append(concurrent(call, callers=32, duration_s=SECONDS,
                                          rows_per_call=per_request)["rows_per_s"])
    base = float(np.median(rates["off"]))
    for name, values in rates.items():
        rate = float(np.median(values))
        watched = ""
        if setups[name].get("guard") is not None:  # a monitor that skipped requests would read as a faster runtime
            report = runtimes[name].drift("digits")
            watched = f"   (drift watched {report['requests']} rows, skipped {report['skipped']} requests)"
        _lines.append(f"32 callers x {per_request:>2} rows, {name:<24} {rate:9.0f} rows/s   {rate / base:5.2f}x off"
                      f"{watched}")
    for runtime in runtimes.values():
        runtime.close()
        if runtime.audit is not None:
            runtime.audit.close()


def test_audit_throughput(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "throughput.sqlite3", durability="bounded", max_queue=10_000_000)
    per_thread = 50_000

    def produce() -> None:
        for _ in range(per_thread):
            log.record(request_id=None, model="digits", version=1, digest="d" * 64, input_digest="i" * 32,
                       output='{"logits":{"shape":[1,10],"top":[[3,0.9]]}}', latency_s=0.0001, caller="bench",
                       outcome="ok")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.flush(None)
    elapsed = time.perf_counter() - t0
    _lines.append(f"audit log, 4 producers, {4 * per_thread} records   {4 * per_thread / elapsed:9.0f} records/s "
                  f"sustained (dropped {log.dropped})")
    log.close()


def test_detection_delays(setup) -> None:
    pkg, _, stream = setup
    rng = np.random.default_rng(4)
    sd = stream.std(axis=0)
    shifts = {
        "0.5 sd on feature 36 of 64": lambda b: b + np.eye(64, dtype=np.float32)[36] * 0.5 * sd[36],
        "noise sd 2": lambda b: b + rng.normal(0, 2, b.shape).astype(np.float32),
        "brightness x1.3": lambda b: np.clip(b * 1.3, 0, 20).astype(np.float32),
    }
    with edgeserve.load(pkg, guard=GuardConfig()) as model:
        for name, shift in shifts.items():
            delays = []
            for _ in range(20):
                model.monitor.detector.reset()
                model.monitor.drifting = False
                start, sent = model.monitor.alarms, 0
                while model.monitor.alarms == start and sent < 20_000:
                    for row in shift(stream[rng.integers(0, len(stream), 32)]):
                        model.predict(row[None, :])
                    sent += 32
                delays.append(sent)
            _lines.append(f"drift: {name:<28} median {np.median(delays):5.0f}, p95 {np.percentile(delays, 95):5.0f} "
                          "requests to an alarm")


def test_explanation_cost_against_kernel_shap(setup) -> None:
    pkg, _, stream = setup
    with edgeserve.load(pkg) as model:
        x = stream[:1]
        per_row = _per_call(lambda: model.explain(x), 200)
        m = x.shape[1]
        background = 100
        shap_rows = (2 * m + 2048) * background
        batch = stream[np.arange(4096) % len(stream)]
        per_4096 = _per_call(lambda: model.predict(batch), 20)
        shap_s = shap_rows / 4096 * per_4096
    _lines.append(f"explain one row (M={m}): occlusion {per_row * 1e3:.2f} ms ({m + 1} rows); KernelExplainer's "
                  f"{shap_rows} rows would take {shap_s * 1e3:.0f} ms on the same engine ({shap_s / per_row:.0f}x)")


def test_zz_report() -> None:
    print("\n\nguardrails — digits MLP 64-64-10, this machine\n" + "\n".join(_lines))
