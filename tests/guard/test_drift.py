"""Drift detection on real shifted data (digits), its false-alarm rate over 10^6 in-distribution requests, and
the retraining trigger firing once per episode."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgeserve
from edgeserve import GuardConfig, TriggerConfig, held
from edgeserve.guard.drift import Cusum, FeatureRanks, expected_scores
from edgeserve.guard.monitor import _FOLDER, _raw_features
from edgeserve.guard.reference import Layout, feature_reference, row_features
from tests.factories import mlp_model, save

REQUEST_ROWS = 1  # one digit per request, as a client sends them; the monitor folds 32 at a time


def _delay(model, stream: np.ndarray, shift, rng: np.random.Generator, limit: int = 5000) -> int:
    """Requests until the model's monitor raises an alarm on ``shift(rows)`` of in-distribution rows."""
    monitor = model.monitor
    start = monitor.alarms
    sent = 0
    while monitor.alarms == start and sent < limit:
        rows = shift(stream[rng.integers(0, len(stream), 32)], rng)
        for row in rows:
            model.predict(row[None, :])
        sent += len(rows)
    return sent


def _fresh(model) -> None:
    model.monitor.detector.reset()
    model.monitor.drifting = False


@pytest.mark.parametrize("name, shift, median_max", [
    ("0.5 sd mean shift on one feature of 64", lambda x, rng: x + np.eye(64, dtype=np.float32)[36] * 0.5 * 5.85, 400),
    ("gaussian noise, sd 2", lambda x, rng: x + rng.normal(0, 2, x.shape).astype(np.float32), 200),
    ("brightness x1.3", lambda x, rng: np.clip(x * 1.3, 0, 20).astype(np.float32), 200),
])
def test_shift_is_detected_within_the_stated_number_of_requests(digits_package: Path, digits, name, shift,
                                                                 median_max) -> None:
    _, stream, _ = digits
    rng = np.random.default_rng(7)
    with edgeserve.load(digits_package, guard=GuardConfig()) as model:
        assert abs(stream[:, 36].std() - 5.85) < 0.5  # the shift above is 0.5 of this feature's sd
        delays = []
        for _ in range(12):
            _fresh(model)
            delays.append(_delay(model, stream, shift, rng))
    assert np.median(delays) <= median_max, (name, delays)
    assert np.percentile(delays, 95) <= 1000, (name, delays)


def test_class_mix_change_is_detected(digits_package: Path, digits) -> None:
    _, stream, labels = digits
    only = stream[np.isin(labels, (0, 1))]  # traffic from two classes of ten
    rng = np.random.default_rng(3)
    with edgeserve.load(digits_package, guard=GuardConfig()) as model:
        assert _delay(model, only, lambda x, r: x, rng) <= 200


def test_in_distribution_stream_raises_no_alarm_in_a_million_requests(digits) -> None:
    reference, stream, _ = digits
    ref = feature_reference(reference.astype(np.float64))
    detector = Cusum(ref["knots"], shift=0.5, budget=1e6, rows=len(reference))
    rng = np.random.default_rng(12)
    alarms = 0
    for _ in range(1_000_000 // 32):  # requests of one row each, folded 32 at a time as the monitor does
        detector.update(stream[rng.integers(0, len(stream), 32)].astype(np.float64))
        if detector.score().max() >= 1.0:
            alarms += 1
            detector.reset()
    assert alarms <= 1  # the budget: at most one false alarm per 10^6 requests across all 64 features


def test_in_distribution_requests_through_a_model_raise_no_alarm(digits_package: Path, digits) -> None:
    _, stream, _ = digits
    rng = np.random.default_rng(5)
    with edgeserve.load(digits_package, guard=GuardConfig()) as model:
        for _ in range(600):
            model.predict(stream[rng.integers(0, len(stream), 16)])
        report = model.monitor.report()
    assert report["alarms"] == 0 and not report["drifting"] and report["requests"] == 9600


def test_trigger_fires_once_per_episode_and_rearms_after_recovery(digits_package: Path, digits) -> None:
    _, stream, _ = digits
    events: list[dict] = []
    trigger = TriggerConfig(callback=events.append, span=128, rearm=512)
    rng = np.random.default_rng(9)
    shifted = stream.copy()
    shifted[:, 20] += 6.0
    with edgeserve.load(digits_package, guard=GuardConfig(trigger=trigger)) as model:
        monitor = model.monitor

        def send(data: np.ndarray, requests: int) -> None:
            for _ in range(requests):
                model.predict(data[rng.integers(0, len(data), 8)])

        send(shifted, 300)  # 2400 drifted rows: one episode, however long it holds
        monitor.trigger.wait(10)
        assert [e["event"] for e in events] == ["retrain"] and monitor.fired == 1
        event = events[0]
        assert event["model"] == "digits" and event["digest"] and "input:x: feature 20" in event["scores"]
        assert event["window"]["request"] - event["window"]["onset_request"] >= 128
        send(stream, 400)  # back in distribution: the sums fall under the exit level and stay there
        assert not monitor.drifting
        send(shifted, 300)  # a second episode fires again
        monitor.trigger.wait(10)
        assert [e["event"] for e in events] == ["retrain", "retrain"] and monitor.alarms == 2


def test_trigger_runs_a_command_without_a_shell_and_records_failures(digits_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "event.json"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())"
    from edgeserve.guard.trigger import Trigger

    ran = Trigger(TriggerConfig(command=(sys.executable, "-c", script, str(out))))
    ran.fire({"event": "retrain", "model": "m; rm -rf /"})
    assert ran.wait(30)
    assert json.loads(out.read_text())["model"] == "m; rm -rf /"  # an argument list: nothing reached a shell
    assert ran.history[-1]["outcome"] == {"command": "ok"}
    failing = Trigger(TriggerConfig(command=(sys.executable, "-c", "raise SystemExit(3)"), retries=2),
                      sleep=lambda s: None)
    failing.fire({"event": "retrain"})
    assert failing.wait(30)
    assert failing.history[-1]["outcome"]["command"].startswith("failed: RuntimeError: exit status 3")
    ran.close()
    failing.close()


def test_float_rounding_on_a_near_constant_feature_is_not_drift() -> None:
    """A layer-normed output's norm is the same number to the sixth digit on every row; another CPU's kernels move
    the last digits. That is not drift."""
    rng = np.random.default_rng(0)
    reference = 64.0 + rng.normal(0, 1e-6, (500, 1))
    detector = Cusum(feature_reference(reference)["knots"], shift=0.5, budget=1e6, rows=500)
    for _ in range(200):
        detector.update(64.0 + 3e-5 + rng.normal(0, 1e-6, (32, 1)))  # 30 sd of the reference, 5e-7 relative
    assert detector.score().max() < 1.0
    for _ in range(20):
        detector.update(64.5 + rng.normal(0, 1e-6, (32, 1)))  # a real change of the value: found
    assert detector.score().max() >= 1.0


def test_webhook_is_retried_until_accepted_and_never_blocks_the_caller() -> None:
    import http.server
    import threading

    from edgeserve.guard.trigger import Trigger

    received: list[dict] = []
    release = threading.Event()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            release.wait(10)  # the first attempt hangs until the caller has shown it did not wait for it
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(body)
            self.send_response(500 if len(received) == 1 else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        trigger = Trigger(TriggerConfig(webhook=f"http://127.0.0.1:{server.server_address[1]}/retrain", retries=3),
                          sleep=lambda s: None)
        trigger.fire({"event": "retrain", "model": "digits"})  # returns at once: the POST hangs meanwhile
        assert not trigger.wait(0) and received == []
        release.set()
        assert trigger.wait(30)
        assert [r["model"] for r in received] == ["digits", "digits"]  # refused once (500), then accepted
        assert trigger.history[-1]["outcome"] == {"webhook": "ok after 2 attempts"}
        trigger.close()
    finally:
        server.shutdown()
        server.server_close()


def test_a_sampled_monitor_sees_its_share_of_requests_and_still_finds_a_shift(digits_package: Path, digits) -> None:
    _, stream, _ = digits
    rng = np.random.default_rng(8)
    shifted = stream.copy()
    shifted[:, 20] += 6.0
    with edgeserve.load(digits_package, guard=GuardConfig(sample=0.25)) as model:
        for _ in range(2000):
            model.predict(stream[rng.integers(0, len(stream), 1)])
        seen = model.monitor.report()["requests"]
        assert 400 <= seen <= 600 and model.monitor.alarms == 0  # ~a quarter, binomial spread
        sent = 0
        while not model.monitor.drifting and sent < 5000:
            model.predict(shifted[rng.integers(0, len(shifted), 1)])
            sent += 1
        assert model.monitor.drifting and sent < 5000
    with pytest.raises(edgeserve.ConfigError, match="sample"):
        GuardConfig(sample=0)


def test_sequences_of_other_lengths_never_fail_a_request(tmp_path: Path) -> None:
    """Real encoders get every sequence length: the envelope and the monitor must take them all."""
    from tests.factories import encoder_data, encoder_model, save

    data = encoder_data(rows=160, seq=12)
    pkg = edgeserve.convert(save(encoder_model(), tmp_path / "enc.onnx"), tmp_path / "pkg", quantize="none",
                            calibration=data)
    with edgeserve.load(pkg.path, guard=GuardConfig(chunk=8)) as model:
        for seq in (12, 5, 20, 12, 3, 12):
            batch = encoder_data(rows=4, seq=seq, seed=seq)
            out = model.predict(batch)
            assert out["last_hidden_state"].shape[:2] == (4, seq)
        report = model.monitor.report()
    # the token summaries (length, common-token share) and the mask's (mean and std over its steps) are the same
    # width for every length: every request is watched
    assert report["requests"] == 24 and report["skipped"] == 0
    assert {"input:attention_mask: mean", "input:attention_mask: std"} <= set(model.monitor.labels)


def test_closing_the_model_ends_its_trigger_thread(digits_package: Path, digits) -> None:
    import threading

    _, stream, _ = digits
    shifted = stream.copy()
    shifted[:, 20] += 6.0
    model = edgeserve.load(digits_package, guard=GuardConfig(trigger=TriggerConfig(callback=lambda e: None, span=0)))
    while not model.monitor.fired:
        model.predict(shifted[:64])
    assert model.monitor.trigger.wait(10)
    thread = model.monitor.trigger._thread
    assert thread is not None and thread in threading.enumerate()
    model.close()
    thread.join(10)
    assert not thread.is_alive()


def test_shorter_sequences_are_drift(tmp_path: Path) -> None:
    """Token inputs are watched through their length and the share of common tokens."""
    from tests.factories import encoder_data, encoder_model, save

    pkg = edgeserve.convert(save(encoder_model(), tmp_path / "enc.onnx"), tmp_path / "pkg", quantize="none",
                            calibration=encoder_data(rows=400, seq=12))
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        for i in range(25):  # like the reference: 3..12 real tokens of 12
            model.predict(encoder_data(rows=8, seq=12, seed=100 + i))
        assert model.monitor.report()["alarms"] == 0
        for i in range(40):  # every sequence cut to 3 tokens
            batch = encoder_data(rows=8, seq=12, seed=200 + i)
            batch["attention_mask"][:, 3:] = 0
            batch["input_ids"][:, 3:] = 0
            model.predict(batch)
        report = model.monitor.report()
    assert report["alarms"] >= 1 and "input:input_ids: length" in report["top"]


def test_the_share_of_common_tokens_is_measured_on_rows_that_did_not_choose_them(tmp_path: Path) -> None:
    """The reference's most frequent ids, chosen on its own rows, make up more of those rows than of any new ones
    (uniform ids: 0.91 against 0.86 in a T5's 300 rows), which read as drift on data from the reference's own
    population. Chosen on half the rows and measured on the other half, a long stream from the same source raises no
    alarm, while a stream of only the other ids still does."""
    from tests.factories import encoder_model, save

    rng = np.random.default_rng(0)
    vocab = 1000

    def rows(n: int, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        drawn = rng.integers(1, vocab, (n, 12)) if ids is None else rng.choice(ids, (n, 12))
        return {"input_ids": drawn.astype(np.int64), "attention_mask": np.ones((n, 12), np.int64)}

    pkg = edgeserve.convert(save(encoder_model(vocab=vocab), tmp_path / "enc.onnx"), tmp_path / "pkg",
                            quantize="none", calibration=rows(300))
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        for _ in range(3000):
            model.predict(rows(1))
        assert model.monitor.report()["alarms"] == 0, model.monitor.report()["top"]
        common = pkg.manifest.envelope["inputs"]["input_ids"]["layout"]["common"]
        rare = np.setdiff1d(np.arange(1, vocab), common)
        for _ in range(1000):
            model.predict(rows(1, rare))
        report = model.monitor.report()
    assert report["alarms"] == 1 and report["top"]["input:input_ids: common-token share"] >= 1.0
    assert pkg.manifest.envelope["drift_rows"] == 150  # the detectors' finite-sample margin is for the fewer rows


def test_a_token_reference_too_small_to_halve_is_used_whole(tmp_path: Path) -> None:
    """150 rows (the bundled tiny-bert has 128) cannot give two halves of the 100 a drift reference needs: they both
    choose the common ids and measure their share, as before the split, and the input is still watched."""
    from tests.factories import encoder_data, encoder_model, save

    pkg = edgeserve.convert(save(encoder_model(), tmp_path / "enc.onnx"), tmp_path / "pkg", quantize="none",
                            calibration=encoder_data(rows=150))
    envelope = pkg.manifest.envelope
    assert "drift" in envelope["inputs"]["input_ids"] and "drift_rows" not in envelope
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        assert "input:input_ids: common-token share" in model.monitor.labels


def test_an_export_fixed_at_batch_1_is_guarded_like_a_batched_one(tmp_path: Path) -> None:
    """Detectors and model-zoo classifiers are often exported at batch 1 ([1, ...]): the reference rows are the
    samples, and each request's one row is checked and watched (before, such a package had no reference
    statistics at all, so the guard silently did nothing)."""
    from tests.factories import kept_boxes_data, kept_boxes_model, save

    pkg = edgeserve.convert(save(kept_boxes_model(), tmp_path / "det.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"candidates": kept_boxes_data(samples=300)})
    reference = pkg.manifest.envelope["inputs"]["candidates"]
    assert pkg.manifest.envelope["rows"] == 300 and "drift" in reference
    stream = kept_boxes_data(samples=400, seed=7)
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        assert model.monitor is not None and model.envelope is not None
        for row in stream[:150]:
            model.predict(row[np.newaxis])
        assert model.monitor.report()["alarms"] == 0 and model.monitor.report()["requests"] == 150
        shifted = stream[150:].copy()
        shifted[..., :4] += 60.0  # every box 60 px further right and down
        for row in shifted:
            model.predict(row[np.newaxis])
            if model.monitor.drifting:
                break
        report = model.monitor.report()
        assert report["alarms"] >= 1, report
        x = stream[:1].copy()
        x[0, 3, 0] = np.inf
        with pytest.raises(edgeserve.EnvelopeError, match=r"\[0, 3, 0\]"):
            model.predict(x)


def test_expected_scores_are_the_randomised_scores_averaged_over_their_draw() -> None:
    m, v = expected_scores(np.array([0.25, 1.0, 0.0]), np.array([0.5, 0.0, 0.1]))
    assert m[0] == pytest.approx(0.0) and v[0] == pytest.approx((0.25 - 1.0) / math.sqrt(0.8))  # u ~ U[.25, .75]
    assert m[1] == pytest.approx(math.sqrt(3.0)) and v[1] == pytest.approx(2.0 / math.sqrt(0.8))  # an atom at u = 1
    draws = np.random.default_rng(0).uniform(0.0, 0.1, 200_000)  # the third bucket, by simulation
    simulated = math.sqrt(12.0) * (draws - 0.5)
    assert m[2] == pytest.approx(simulated.mean(), abs=2e-3)
    assert v[2] == pytest.approx(((simulated**2 - 1) / math.sqrt(0.8)).mean(), abs=2e-3)


def test_expected_scores_have_mean_zero_under_the_reference_for_every_feature(digits) -> None:
    """Weighted by each bucket's reference probability, both scores average to 0 on every feature — skewed, discrete
    and constant ones alike (digits has all three): the detectors drift only when the data does."""
    reference, _, _ = digits
    ranks = FeatureRanks(feature_reference(reference.astype(np.float64))["knots"], rows=len(reference))
    mass = ranks.mass.reshape(ranks.features, -1)
    assert np.allclose(mass.sum(axis=1), 1.0, atol=1e-9)
    assert np.abs((mass * ranks.m.reshape(mass.shape)).sum(axis=1)).max() < 1e-5
    assert np.abs((mass * ranks.v.reshape(mass.shape)).sum(axis=1)).max() < 1e-5


def test_a_batch_scores_each_value_by_its_own_buckets_location_and_scale(digits) -> None:
    """What the detectors fold per feature is, for each value, its bucket's expected location score summed, and its
    scale score summed — each from its own table (they share one gather), on every feature."""
    reference, stream, _ = digits
    ranks = FeatureRanks(feature_reference(reference.astype(np.float64))["knots"], rows=len(reference))
    x = (stream[:40] * np.linspace(0.5, 1.5, 64)).astype(np.float64)  # values across the buckets, some far out
    index = ranks.index(x)
    ms, vs = ranks.sums(x)
    # summed in float32 (a chunk of up to EXACT_ROWS rows): float32's rounding over 40 rows, no more
    assert np.allclose(ms, ranks.m[index].sum(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-5)
    assert np.allclose(vs, ranks.v[index].sum(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-5)
    assert not np.allclose(ms, vs)  # the two scores differ here, so a mix-up of the tables shows


def _fold_threads(monitor) -> list[threading.Thread]:
    """Spy on a monitor's scoring: the thread of each call."""
    calls: list[threading.Thread] = []
    ranks = monitor.detector.ranks
    sums = ranks.sums

    def spy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(threading.current_thread())
        return sums(x)

    ranks.sums = spy
    return calls


def test_an_event_loops_small_requests_are_folded_in_the_loop_a_chunk_at_a_time(digits_package: Path, digits) -> None:
    """predict_async folds one-row requests in the loop, one pass per chunk (not in pieces: the scores' gather gives
    the interpreter lock up at any size, so pieces only multiplied the calls), and the detectors end exactly where
    a plain caller's folds of the same rows leave them."""
    _, stream, _ = digits
    stream = np.clip(stream[:200] + 3.0, 0.0, 16.0).astype(stream.dtype)  # shifted, so the sums move off zero
    chunk = GuardConfig().chunk
    with edgeserve.load(digits_package, guard=GuardConfig()) as model, \
            edgeserve.load(digits_package, guard=GuardConfig()) as plain:
        calls = _fold_threads(model.monitor)

        async def go() -> threading.Thread:
            for i in range(200):
                await model.predict_async(stream[i:i + 1])
            return threading.current_thread()

        loop_thread = asyncio.run(go())
        assert len(calls) == 200 // chunk and all(thread is loop_thread for thread in calls)
        assert model.monitor.rows == 200 // chunk * chunk
        for i in range(200):
            plain.predict(stream[i:i + 1])
        assert plain.monitor.rows == model.monitor.rows
        assert model.monitor.detector.sums.max() > 1.0
        assert np.allclose(model.monitor.detector.sums, plain.monitor.detector.sums, rtol=1e-12, atol=1e-9)
        model.monitor.flush()
        assert model.monitor.rows == 200


def test_an_event_loops_big_requests_are_folded_on_the_monitors_thread(digits_package: Path, digits) -> None:
    """A request over ``held.NUMPY_HOLDS`` values cannot be scored without giving the lock up: its chunk is
    folded on the monitors' thread, and every row is still folded."""
    _, stream, _ = digits
    with edgeserve.load(digits_package, guard=GuardConfig()) as model:
        calls = _fold_threads(model.monitor)
        rows = 8  # 8 x 64 input values: over NUMPY_HOLDS
        assert rows * stream.shape[1] > held.NUMPY_HOLDS

        async def go() -> threading.Thread:
            for i in range(25):
                await model.predict_async(stream[i * rows:(i + 1) * rows])
            return threading.current_thread()

        loop_thread = asyncio.run(go())
        _FOLDER.submit(lambda: None).result()  # one thread, in order: every fold asked for so far has run
        assert calls and all(thread is not loop_thread for thread in calls)
        assert model.monitor.rows >= 200 - GuardConfig().chunk  # folded there, not left for a report to do
        model.monitor.flush()
        assert model.monitor.rows == 200


def _row_bytes(model, row: np.ndarray) -> int:
    """What one request leaves pending: copies of its input row and its outputs."""
    model.predict(row)
    size = model.monitor._pending_bytes
    model.monitor.flush()
    return size


def test_a_caller_that_outruns_its_monitor_waits_to_fold(digits_package: Path, digits,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``BACKLOG_BYTES`` of rows pending (someone else's fold holds the monitor), a plain caller waits for the
    fold and folds the backlog itself: memory stays bounded and every row is watched."""
    import edgeserve.guard.monitor as monitor_module

    _, stream, _ = digits
    with edgeserve.load(digits_package, guard=GuardConfig(chunk=16)) as model:
        monitor = model.monitor
        monkeypatch.setattr(monitor_module, "BACKLOG_BYTES", 32 * _row_bytes(model, stream[:1]))
        waited = threading.Event()
        inner = threading.Lock()

        class Watched:
            def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
                if blocking:
                    waited.set()
                return inner.acquire(blocking, timeout)

            def release(self) -> None:
                inner.release()

            __enter__ = acquire

            def __exit__(self, *exc: object) -> None:
                inner.release()

        monitor._lock = Watched()
        inner.acquire()  # a fold in progress elsewhere, until a caller has to wait for it

        def finish_the_fold() -> None:
            waited.wait(30)
            inner.release()

        holder = threading.Thread(target=finish_the_fold)
        holder.start()
        peak = 0
        for i in range(100):
            model.predict(stream[i:i + 1])
            peak = max(peak, monitor._pending_bytes)
        holder.join()
        assert waited.is_set() and monitor.skipped == 0
        assert peak <= monitor_module.BACKLOG_BYTES
        monitor.flush()
        assert monitor.rows == 101


def test_an_event_loop_that_outruns_its_monitor_stops_watching(digits_package: Path, digits,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """An event loop's request must not wait for a fold: past ``BACKLOG_BYTES`` pending it is answered but not
    watched, and counted; once the monitor catches up, every watched row is folded and watching resumes."""
    import edgeserve.guard.monitor as monitor_module

    _, stream, _ = digits
    with edgeserve.load(digits_package, guard=GuardConfig(chunk=16)) as model:
        monitor = model.monitor
        monkeypatch.setattr(monitor_module, "BACKLOG_BYTES", 32 * _row_bytes(model, stream[:1]))

        async def send(count: int) -> None:
            for i in range(count):
                await model.predict_async(stream[i:i + 1])

        with monitor._lock:  # the monitors' thread cannot fold until this is released
            asyncio.run(send(100))
            assert monitor.skipped == 100 - 32  # 32 requests pending, the rest not watched
        _FOLDER.submit(lambda: None).result()
        monitor.flush()
        assert monitor.rows == 1 + 32
        asyncio.run(send(1))  # watching again
        monitor.flush()
        assert monitor.rows == 34 and monitor.skipped == 68



def test_a_change_in_the_mix_of_a_categorical_input_is_detected_and_the_same_mix_is_not(tmp_path: Path) -> None:
    """Tabular skew that no range check sees: the same cities in other shares (60/30/10 -> 30/40/30). Each watched
    value's share feeds the detectors as a 0/1 feature; a long stream of the reference's own mix raises nothing."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(5)
    cities = np.array(["oslo", "lima", "pune"])

    def draw(n: int, p: list[float]) -> np.ndarray:
        return cities[rng.choice(3, (n, 1), p=p)]

    reference = draw(1000, [0.6, 0.3, 0.1])
    pipe = make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression())
    pipe.fit(reference, (reference[:, 0] == "lima").astype(int))
    pkg = edgeserve.convert(pipe, tmp_path / "pkg", example_inputs=reference[:4], calibration=reference,
                            quantize="none")
    layout = pkg.manifest.envelope["inputs"][pkg.manifest.inputs[0].name]["layout"]
    assert layout == {"kind": "categories", "axis": None, "values": ["oslo", "lima", "pune"]}
    alarms = {}
    for label, mix in (("same", [0.6, 0.3, 0.1]), ("changed", [0.3, 0.4, 0.3])):
        with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
            stream, sent = draw(4000, mix), 0
            while sent < len(stream) and not model.monitor.alarms:
                model.predict(stream[sent:sent + 1])
                sent += 1
            alarms[label] = sent if model.monitor.alarms else None
    assert alarms["same"] is None and alarms["changed"] is not None and alarms["changed"] <= 1000, alarms


def test_a_discrete_feature_at_float32_values_scores_zero_on_average_under_its_own_mix() -> None:
    """A classifier of few inputs has a few confidences (atoms). The reference's min and max sat on bucket edges,
    and a live value one float32 step off (the engine computes a batch of 1 with other kernels than the
    reference's batch) fell into the tail beside them, scoring like a far outlier: a 3-valued confidence alarmed
    after 128 requests of the reference's own mix."""
    from edgeserve.guard.reference import feature_reference

    rng = np.random.default_rng(0)
    atoms = np.array([0.6634297, 0.7312453, 0.9023417], dtype=np.float32)
    mix = [0.6, 0.3, 0.1]
    reference = atoms[rng.choice(3, 1000, p=mix)].astype(np.float64)[:, None]
    ranks = FeatureRanks(feature_reference(reference)["knots"], rows=1000)
    stream = atoms[rng.choice(3, 20000, p=mix)]
    step = rng.choice([-1, 0, 1], len(stream))  # one float32 step either way, or none
    stream = np.where(step < 0, np.nextafter(stream, np.float32(0)),
                      np.where(step > 0, np.nextafter(stream, np.float32(2)), stream))[:, None]
    location, scale = ranks.sums(stream)
    assert abs(location[0] / len(stream)) < 0.05 and abs(scale[0] / len(stream)) < 0.05, (location, scale)


def test_a_wide_input_beside_an_output_is_watched_and_a_shift_found(tmp_path: Path) -> None:
    """More than 256 features get 33 knots each, an output's summary 129 (``knots_for``): one detector holds
    both (a model with a wide input failed to load with the guard on), and still finds a shift of the input."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 300)).astype(np.float32)
    pkg = edgeserve.convert(save(mlp_model(n_in=300, hidden=8, n_out=4, seed=1), tmp_path / "wide.onnx"),
                            tmp_path / "pkg", quantize="none", calibration={"x": x[:64]}, reference={"x": x})
    knots = [len(k) for t in (*pkg.manifest.envelope["inputs"].values(), *pkg.manifest.envelope["outputs"].values())
             for k in t["drift"]["knots"]]
    assert set(knots) == {33, 129}  # the case this guards
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        for _ in range(60):
            model.predict(rng.standard_normal((8, 300)).astype(np.float32))
        assert model.monitor.report()["alarms"] == 0
        shifted = rng.standard_normal((8, 300)).astype(np.float32)
        for _ in range(60):
            shifted = rng.standard_normal((8, 300)).astype(np.float32)
            shifted[:, 7] += 1.5
            model.predict(shifted)
        report = model.monitor.report()
    assert report["alarms"] == 1 and next(iter(report["top"])) == "input:x: feature 7"


def test_a_time_major_input_is_watched_by_its_rows(tmp_path: Path) -> None:
    """``x [steps, batch, features]`` (PyTorch's RNN layout): the reference counts the rows along the batch axis
    (it held 30 "rows", the steps, and no drift reference), and the monitor reads requests the same way, so a
    shift of one feature is found and in-distribution streams raise nothing."""
    from tests.factories import gru_model

    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 400, 4)).astype(np.float32)
    pkg = edgeserve.convert(save(gru_model(time_major=True), tmp_path / "gru.onnx"), tmp_path / "pkg",
                            quantize="none", calibration={"x": x})
    env = pkg.manifest.envelope
    assert env["rows"] == 400 and len(env["inputs"]["x"]["drift"]["knots"]) == 4
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        for _ in range(80):
            model.predict(rng.standard_normal((30, 8, 4)).astype(np.float32))
        assert model.monitor.report()["alarms"] == 0 and model.monitor.report()["requests"] == 640
        for _ in range(80):
            shifted = rng.standard_normal((30, 8, 4)).astype(np.float32)
            shifted[:, :, 2] += 1.0
            model.predict(shifted)
        report = model.monitor.report()
    assert report["alarms"] == 1 and next(iter(report["top"])).startswith("input:x: ") and "2" in next(iter(report["top"]))


@pytest.mark.parametrize("layout", [Layout("tabular", 1), Layout("value"), Layout("confidence", 1),
                                    Layout("confidence", 1, probabilities=True)], ids=lambda lay: repr(lay.to_dict()))
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_the_hot_path_s_float32_features_are_the_reference_s(layout: Layout, dtype: str) -> None:
    """The monitor folds the kinds it keeps raw in float32 (``_raw_features``); the reference was built by
    ``row_features`` in float64: the two must agree to float32's rounding, or live rows are judged against
    statistics of something else."""
    rng = np.random.default_rng(3)
    if layout.kind == "value":
        x = rng.normal(5, 3, 50)
    elif layout.probabilities:
        logits = rng.normal(0, 2, (50, 7))
        x = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    else:
        x = rng.normal(0, 4, (50, 7))
    if dtype == "int64" and not layout.probabilities:
        x = np.round(x)
    x = x.astype(dtype) if not (dtype == "int64" and layout.probabilities) else x.astype(np.float32)
    hot = _raw_features(layout, x)
    reference = row_features(layout, x)
    assert hot.shape == reference.shape
    assert np.allclose(hot, reference, rtol=1e-6, atol=1e-6)
    assert not np.allclose(reference, 0)  # features that mean something, so a zeroed path shows


def _frames_model() -> Any:
    """Audio-like: ``x [batch, samples]`` cut into frames of 8 → per-frame scores ``[batch, frames, 4]`` and a
    per-frame value ``[batch, frames]`` (a recogniser's logits, a detector of speech per frame)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([0, -1, 8], np.int64), "shape")
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["frames"]),
         helper.make_node("MatMul", ["frames", "w"], ["scores"]),
         helper.make_node("ReduceMean", ["scores", "axes"], ["energy"], keepdims=0)],
        "frames", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "samples"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "frames", 4]),
         helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["batch", "frames"])],
        initializer=[w, shape, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _tones(rng: np.random.Generator, rows: int, samples: int, gain: float = 1.0) -> np.ndarray:
    """Clips of a tone of a random pitch in noise, each scaled to mean 0 and standard deviation 1 (wav2vec2's
    feature extractor does so): rows differ by their sound, not by their length."""
    t = np.arange(samples)
    x = np.sin(2 * np.pi * rng.uniform(0.02, 0.45, (rows, 1)) * t) + 0.3 * rng.standard_normal((rows, samples))
    x = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    return (gain * x).astype(np.float32)


def test_answers_of_another_length_are_not_drift_but_a_change_of_their_scale_is(tmp_path: Path) -> None:
    """A recogniser's frame scores for a shorter clip: a norm over the row shrinks with the frames and read as
    drift (wav2vec2 with 1 s of reference audio, 0.75 s and 0.5 s requests: an alarm within 100); their RMS does
    not, and still moves when the answers' scale does."""
    rng = np.random.default_rng(1)
    pkg = edgeserve.convert(save(_frames_model(), tmp_path / "frames.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": _tones(rng, 600, 256)})
    layouts = {k: v["layout"]["kind"] for k, v in pkg.manifest.envelope["outputs"].items()}
    assert layouts == {"scores": "rms", "energy": "rms"}
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        for samples in (192, 128, 320):
            for _ in range(100):
                model.predict(_tones(rng, 4, samples))
        report = model.monitor.report()
        assert report["alarms"] == 0, report["top"]
        for _ in range(100):
            model.predict(_tones(rng, 4, 256, gain=1.5))
        report = model.monitor.report(features=5)
    assert report["alarms"] == 1
    assert report["top"]["output:scores: rms"] >= 1 and report["top"]["output:energy: rms"] >= 1


def _map_model() -> Any:
    """A detector's head: ``x [batch, 3, h, w]`` → a zero-padded 3x3 convolution → ``heat [batch, 4, h, w]``."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.02,
                                "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["z"], ["heat"])],
        "map", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [helper.make_tensor_value_info("heat", TensorProto.FLOAT, ["batch", 4, "h", "w"])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_images_of_another_size_are_not_drift_but_a_change_of_their_brightness_is(tmp_path: Path) -> None:
    """The reference's images are 24x32; requests come at 48x64 and 12x16, from the same pixels. A channel's mean
    over four times the pixels spreads half as much (an alarm on the scale of every channel before), and a map of
    a quarter the cells holds twice the share of border cells: such rows are compared on the location of their
    inputs alone. Darker images of another size still alarm."""
    rng = np.random.default_rng(1)
    pkg = edgeserve.convert(save(_map_model(), tmp_path / "map.onnx"), tmp_path / "pkg", quantize="none",
                            calibration={"x": rng.uniform(0, 1, (600, 3, 24, 32)).astype(np.float32)})
    assert pkg.manifest.envelope["inputs"]["x"]["layout"] == {"kind": "channels", "axis": 1, "averaged": 24 * 32}
    assert pkg.manifest.envelope["outputs"]["heat"]["layout"]["averaged"] == 4 * 24 * 32
    with edgeserve.load(pkg.path, guard=GuardConfig()) as model:
        for h, w in ((48, 64), (12, 16), (26, 36)):  # the last within SIZE_TOLERANCE: compared in full
            for _ in range(100):
                model.predict(rng.uniform(0, 1, (4, 3, h, w)).astype(np.float32))
        report = model.monitor.report(features=7)
        assert report["alarms"] == 0, report["top"]
        assert report["resized"] == 200 * 4  # rows, as "requests" counts them
        for _ in range(100):
            model.predict(rng.uniform(0, 0.8, (4, 3, 48, 64)).astype(np.float32))
        report = model.monitor.report(features=7)
    assert report["alarms"] == 1
    assert all(report["top"][f"input:x: channel {c}"] >= 1 for c in range(3)), report["top"]
    assert report["top"]["output:heat: rms"] == 0  # not compared at another size
