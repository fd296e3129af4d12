"""What machine and libraries a package was made and verified on."""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path
from typing import Any

from .config import available_cores

# Instruction-set features that change which kernels onnxruntime picks (and so the numbers a model produces).
INTERESTING_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
    "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "asimd", "asimddp", "i8mm", "bf16", "sve",
)


@functools.cache
def cpu_info() -> dict[str, Any]:
    """CPU model, architecture and the instruction-set flags that matter for inference."""
    model = ""  # NOTE: platform.processor() runs `uname -p` on Linux (~6 ms of every cold start): /proc first
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware") and not model:
                model = value.strip()
            elif key in ("flags", "features") and not flags:
                flags = set(value.split())
    return {
        "model": model or platform.processor() or "unknown",
        "arch": platform.machine(),
        "cores": available_cores(),
        "flags": sorted(flags.intersection(INTERESTING_FLAGS)),
    }


def has_vnni() -> bool:
    """True where 8-bit dot products accumulate without saturation (VNNI, or ARM's dot-product extension)."""
    flags = set(cpu_info()["flags"])
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


def is_arm() -> bool:
    return cpu_info()["arch"].lower() in ("aarch64", "arm64")


def _version(dist: str) -> str | None:
    from importlib import metadata  # NOTE: here: it costs ~20 ms, and loading a model never needs it

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Library versions and CPU facts, as recorded in manifests and benchmark results."""
    return {
        "python": platform.python_version(),
        "platform": sys.platform,
        "edgeserve": _version("edgeserve"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "cpu": cpu_info(),
    }
