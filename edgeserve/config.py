"""Settings as frozen dataclasses, validated when they are made."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

OptimizationLevel = Literal["disable", "basic", "extended", "all"]
GoldenPolicy = Literal["error", "warn", "off"]
GuardPolicy = Literal["reject", "warn", "off"]
_POLICIES = ("reject", "warn", "off")


def available_cores() -> int:
    """Cores this process may run on (honours taskset/cgroup affinity where the OS exposes it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class SessionConfig:
    """How a backend session is created."""

    intra_op_threads: int | None = None
    """Threads used inside one operator. ``None`` means one per available core."""
    inter_op_threads: int = 1
    """Threads running independent operators in parallel; 1 (sequential) is fastest for most CPU models."""
    optimization_level: OptimizationLevel = "all"
    """Graph optimisation the backend applies when it loads the model."""
    backend: str | None = None
    """Which inference engine runs the model: ``onnxruntime`` or ``openvino`` (the optional extra). None: the one
    a package was verified with (falling back to the next verified one that is installed), else onnxruntime."""
    precision: str | None = None
    """Engine precision: for openvino ``f32`` or ``bf16`` (None: bf16 where the CPU has it natively, else f32);
    onnxruntime runs the graph's own precision and ignores it."""
    spin_wait: bool = True
    """Whether onnxruntime's worker threads spin between operators waiting for the next one (its
    ``session.intra_op.allow_spinning``) rather than sleep. Spinning answers a lone caller sooner (wide MLP, batch 1,
    2 threads, measured: 7.4k against 5.1k runs/s) but keeps the cores busy: turn it off where other work in the
    process needs them and cannot outrank the workers (``nice`` does that for a server's event loop). OpenVINO
    manages its own threads and ignores it."""
    nice: int = 0
    """How many steps below this process's CPU priority the engine's worker threads run (Linux nice, 0-19;
    onnxruntime; ignored where priorities are per process). ``edgeserve serve`` sets 10, so its event loop gets a
    core whenever it has work while the workers still use every core when it does not."""
    turn_threads: int | None = None
    """Intra-op threads of a second session a batched model answers event-loop turns with (the batches a server
    gathers from requests read together, see ``Batcher.call_in_turn``); None: its own session. Only for a model
    file up to ``TURN_MAX_BYTES``: a model quick enough for the loop is small. ``edgeserve serve`` sets 1: a turn
    holds the loop, and a second thread's share of a run that short arrives late when the load generator or
    other work holds the other core. Digits MLP, wrk at 32 connections: p99 4.5-4.9 -> 2.5-2.6 ms, requests/s
    13.3-13.7k -> 14.8-15.2k; a lone request still runs on every core."""
    cache_dir: str | None = "default"
    """Where optimised graphs are cached so a restart skips re-optimisation: ``"default"`` (``$EDGESERVE_CACHE_DIR``,
    else the per-user cache folder), a folder path, or ``None`` to turn the cache off."""

    def __post_init__(self) -> None:
        if self.intra_op_threads is not None and not (1 <= self.intra_op_threads <= 1024):
            raise ConfigError(f"intra_op_threads must be between 1 and 1024 (or None for all cores), got {self.intra_op_threads}")
        if not (1 <= self.inter_op_threads <= 1024):
            raise ConfigError(f"inter_op_threads must be between 1 and 1024, got {self.inter_op_threads}")
        if self.optimization_level not in ("disable", "basic", "extended", "all"):
            raise ConfigError(
                f"optimization_level must be one of disable, basic, extended, all; got {self.optimization_level!r}"
            )
        if self.turn_threads is not None and not (1 <= self.turn_threads <= 1024):
            raise ConfigError(f"turn_threads must be between 1 and 1024 (or None), got {self.turn_threads}")
        if not 0 <= self.nice <= 19:
            raise ConfigError(f"nice must be between 0 and 19, got {self.nice}")
        if self.backend not in (None, "onnxruntime", "openvino"):
            raise ConfigError(f"backend must be 'onnxruntime' or 'openvino', got {self.backend!r}")
        if self.precision not in (None, "f32", "bf16"):
            raise ConfigError(f"precision must be 'f32', 'bf16' or None, got {self.precision!r}")

    @property
    def threads(self) -> int:
        """The intra-op thread count actually used."""
        return self.intra_op_threads or available_cores()

    @property
    def cache_path(self) -> Path | None:
        """The graph cache folder actually used, or None when caching is off."""
        if self.cache_dir is None:
            return None
        if self.cache_dir != "default":
            return Path(self.cache_dir)
        env = os.environ.get("EDGESERVE_CACHE_DIR")
        if env:
            return Path(env)
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "edgeserve" / "graphs"


QuantizeMode = Literal["none", "dynamic", "static", "fp16", "int4", "nncf", "auto"]
CalibrationMethod = Literal["minmax", "entropy", "percentile"]
QUANTIZE_MODES = ("none", "dynamic", "static", "fp16", "int4", "nncf", "auto")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class QuantizeConfig:
    """What the converter does to the fp32 graph."""

    mode: QuantizeMode = "none"
    """``none`` (optimised fp32), ``dynamic`` int8, ``static`` int8 QDQ with calibration, ``fp16``, ``int4``
    weight-only (MatMulNBits), ``nncf`` int8 (OpenVINO's quantiser, an optional extra), or ``auto``: the fastest
    measured recipe inside the fidelity budget."""
    per_channel: bool = False
    """Quantise weights per output channel: better accuracy on convolutions, a little slower."""
    calibration_method: CalibrationMethod = "minmax"
    """How static quantisation picks activation ranges from the calibration data."""
    activation_type: Literal["uint8", "int8"] | None = None
    """Activation type for static int8; ``None`` follows the CPU (uint8 on x86, int8 on ARM)."""
    reduce_range: bool | None = None
    """Quantise weights to 7 bits; ``None`` turns it on only where the CPU lacks VNNI (avoids saturation)."""
    nodes_to_exclude: tuple[str, ...] = ()
    """Node names kept in floating point."""
    calibration_batch_size: int = 16
    """Rows per calibration run: bounds the memory the calibrator's intermediate outputs take."""
    int4_block_size: int = 32
    """Weights per scale for int4 (a power of two, 16 to 256)."""
    optimization: Literal["none", "basic", "extended"] = "basic"
    """Offline graph optimisation for ``none`` and ``fp16``: ``basic`` is portable, ``extended`` adds onnxruntime's
    CPU fusions, ``none`` keeps the graph as exported. (int8 modes use the quantiser's own pre-processing.)"""

    def __post_init__(self) -> None:
        if self.mode not in QUANTIZE_MODES:
            raise ConfigError(f"quantize mode must be one of {', '.join(QUANTIZE_MODES)}; got {self.mode!r}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"calibration_method must be one of {', '.join(CALIBRATION_METHODS)}; got {self.calibration_method!r}"
            )
        if self.activation_type not in (None, "uint8", "int8"):
            raise ConfigError(f"activation_type must be 'uint8', 'int8' or None; got {self.activation_type!r}")
        if not (1 <= self.calibration_batch_size <= 4096):
            raise ConfigError(f"calibration_batch_size must be between 1 and 4096, got {self.calibration_batch_size}")
        if self.int4_block_size not in (16, 32, 64, 128, 256):
            raise ConfigError(f"int4_block_size must be 16, 32, 64, 128 or 256; got {self.int4_block_size}")
        if self.optimization not in ("none", "basic", "extended"):
            raise ConfigError(f"optimization must be one of none, basic, extended; got {self.optimization!r}")
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic batching for one model: a request at an idle engine runs at once; requests that arrive while the
    engine runs are gathered into the next batch (see :mod:`edgeserve.runtime.batcher`)."""

    max_batch_size: int = 32
    """Rows per batch at most (one request larger than this runs alone)."""
    max_delay_ms: float = 0.0
    """How long an idle engine may wait for company before running a partial batch. 0 (the default): never — a
    lone request runs at once, and batches form from what arrives while the engine is busy. Raise it only for
    bulk traffic that prefers rows per second to latency."""
    max_queue: int = 1024
    """Requests waiting at most; the next one is rejected at once with QueueFull."""
    timeout_ms: float | None = 30_000.0
    """Default deadline per request (from submission); an expired request fails with Timeout and is not run."""
    max_wait_ms: float | None = None
    """Refuse a request at once (QueueFull: a server's 503 with Retry-After) when it would wait longer than this
    for its answer: the rest of the run in progress, the full batches queued ahead of it and the run of the batch
    it joins (as full as the rows arriving meanwhile will make it), at the engine's run times measured as a fixed
    cost plus a cost per row. Bounds the latency of accepted requests under overload; None: only ``max_queue``
    bounds it."""
    adaptive: bool = True
    """Measure, under the load of the moment, whether batching answers more rows per second than letting each
    caller run its own request, and do whichever does (a model faster than a thread wake-up is not batched).
    False: always batch. Ignored (always batch) when ``max_delay_ms`` > 0."""
    batch_dependent: bool = True
    """Batch a model whose answers move with the rows batched beside them too (dynamic int8 quantises a whole run
    with one scale; the converter measures it and ``inspect`` shows it), as Triton does. False: such a model runs
    each request alone, so that no caller's answer depends on what other callers sent (a 2-layer GPT-2 in dynamic
    int8 served to 8 clients: 10 of 80 requests answered otherwise than alone, and 1 of 220 next tokens
    changed with the request batched beside it). Models whose answers do not move are batched either way."""

    def __post_init__(self) -> None:
        if not (1 <= self.max_batch_size <= 65536):
            raise ConfigError(f"max_batch_size must be between 1 and 65536, got {self.max_batch_size}")
        if not (0 <= self.max_delay_ms <= 60_000):
            raise ConfigError(f"max_delay_ms must be between 0 and 60000, got {self.max_delay_ms}")
        if not (1 <= self.max_queue <= 10_000_000):
            raise ConfigError(f"max_queue must be between 1 and 10000000, got {self.max_queue}")
        if self.max_wait_ms is not None and not 0 < self.max_wait_ms <= 3_600_000:
            raise ConfigError(f"max_wait_ms must be positive (or None), got {self.max_wait_ms}")
        if self.timeout_ms is not None and self.timeout_ms <= 0:
            raise ConfigError(f"timeout_ms must be positive (or None for no deadline), got {self.timeout_ms}")
        for name in ("adaptive", "batch_dependent"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def low_latency(cls) -> BatchConfig:
        """Small batches, no waiting: for interactive traffic."""
        return cls(max_batch_size=8, max_delay_ms=0.0)

    @classmethod
    def throughput(cls) -> BatchConfig:
        """Large batches, longer waits: for bulk traffic where p99 matters less than rows per second."""
        return cls(max_batch_size=128, max_delay_ms=10.0)


@dataclass(frozen=True)
class CacheConfig:
    """The response cache for one model (or one runtime)."""

    max_bytes: int = 64 * 1024 * 1024
    """Total bytes of cached outputs; least recently used entries are evicted beyond it."""
    ttl_s: float | None = None
    """Seconds an entry stays valid; None keeps it until evicted or the model version changes."""

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ConfigError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ConfigError(f"ttl_s must be positive seconds (or None), got {self.ttl_s}")


@dataclass(frozen=True)
class TriggerConfig:
    """The retraining trigger: what runs when drift holds, once per drift episode (see :mod:`edgeserve.guard`).

    Give any of ``callback`` (a Python callable taking the event dict; embedded use), ``command`` (an argument
    list run without a shell; the event arrives as JSON on its stdin) and ``webhook`` (an http(s) URL the event is
    POSTed to as JSON). They run on a background thread, never on a request's."""

    span: int = 256
    """Requests (rows) drift must hold, from its onset, before the trigger fires."""
    rearm: int = 1024
    """Requests (rows) the drift score must stay under ``exit_level`` before the episode ends and the trigger
    can fire again."""
    exit_level: float = 0.5
    """The score (1.0 = the alarm threshold) under which drift counts as gone."""
    callback: Callable[[dict[str, Any]], Any] | None = None
    command: tuple[str, ...] = ()
    webhook: str | None = None
    timeout_s: float = 10.0
    """Per attempt, for the command and the webhook."""
    retries: int = 3
    """Extra attempts of a failed webhook or command, 0.5 s, 1 s, 2 s … apart."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(str(a) for a in self.command))
        if self.span < 0 or self.rearm < 1:
            raise ConfigError(f"trigger span must be >= 0 and rearm >= 1, got {self.span} and {self.rearm}")
        if not 0 < self.exit_level <= 1:
            raise ConfigError(f"trigger exit_level must be in (0, 1], got {self.exit_level}")
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ConfigError(f"trigger webhook must be an http:// or https:// URL, got {self.webhook!r}")
        if self.timeout_s <= 0 or self.retries < 0:
            raise ConfigError("trigger timeout_s must be positive and retries 0 or more")


@dataclass(frozen=True)
class GuardConfig:
    """What a model checks on every request: the envelope (per-check policy ``reject``, ``warn`` or ``off``) and
    streaming drift detection against the package's reference statistics."""

    non_finite: GuardPolicy = "reject"
    """NaN or ±inf in a float input."""
    range: GuardPolicy = "warn"
    """A value outside the reference's range for its feature (or channel), widened by ``range_margin``."""
    vocabulary: GuardPolicy = "reject"
    """A token id outside the model's embedding table."""
    category: GuardPolicy = "warn"
    """A text value in a categorical input (a DataFrame's column) that the reference never held: an encoder that
    ignores unknown categories answers for it silently, as if the column were empty."""
    range_margin: float = 0.1
    """How far outside the reference range a value may go, as a fraction of the feature's span."""
    drift: bool = True
    """Watch every feature (and output confidence) for drift; needs a package with reference statistics."""
    shift: float = 0.5
    """The shift, in reference standard deviations, the drift detectors are tuned to find fastest."""
    false_alarm_requests: float = 1e6
    """The false-alarm budget: on data like the reference, at most one alarm (across all features) per this
    many requests."""
    chunk: int = 64
    """Rows folded into the detectors at once: a fold's fixed cost is shared by this many rows, and an alarm comes
    at the end of a chunk."""
    sample: float = 1.0
    """The share of requests the drift detectors see (drawn at random). Below 1 the detectors cost that much less
    and detect correspondingly later in requests (the false-alarm budget, counted in the requests they see, holds):
    for models so fast that watching every row costs more than answering it."""
    trigger: TriggerConfig | None = None

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise ConfigError(f"guard sample must be in (0, 1], got {self.sample}")
        for name in ("non_finite", "range", "vocabulary", "category"):
            if getattr(self, name) not in _POLICIES:
                raise ConfigError(f"guard {name} must be one of {', '.join(_POLICIES)}, got {getattr(self, name)!r}")
        if not 0 <= self.range_margin <= 100:
            raise ConfigError(f"guard range_margin must be between 0 and 100, got {self.range_margin}")
        if not 0.05 <= self.shift <= 10:
            raise ConfigError(f"guard shift must be between 0.05 and 10 standard deviations, got {self.shift}")
        if self.false_alarm_requests < 100:
            raise ConfigError(f"guard false_alarm_requests must be at least 100, got {self.false_alarm_requests}")
        if not 1 <= self.chunk <= 65536:
            raise ConfigError(f"guard chunk must be between 1 and 65536, got {self.chunk}")
        if isinstance(self.trigger, dict):
            object.__setattr__(self, "trigger", TriggerConfig(**self.trigger))

    @classmethod
    def off(cls) -> GuardConfig:
        return cls(non_finite="off", range="off", vocabulary="off", category="off", drift=False)
