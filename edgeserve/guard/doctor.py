"""Environment parity: does this machine run a package the way the machine that verified it did?

:func:`doctor` compares the library versions, the CPU's instruction-set flags and the engine with what the
manifest records, re-runs the golden samples, and says for each difference whether the outputs still match within
the recipe's tolerance. int8 and bf16 kernels differ between CPUs with and without VNNI/AMX/AVX512-BF16, so a
flag difference there is expected to move low-precision outputs; the golden run says whether it moved them past
the tolerance, or past the task's own metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SessionConfig
from ..environment import environment
from ..errors import EdgeserveError, first_line
from ..golden import TASK_SLACK, mismatches, task_agrees, tolerance_for

LIBRARIES = ("python", "onnx", "onnxruntime", "numpy", "edgeserve")
WATCHED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                 "amx_int8", "amx_tile", "asimddp", "i8mm", "bf16")
"""Flags that change which kernels onnxruntime and OpenVINO pick (and so the numbers a model produces)."""
LOW_PRECISION = ("dynamic", "static", "nncf", "int4", "fp16", "bf16")


@dataclass
class Parity:
    """What :func:`doctor` found for one package."""

    name: str
    version: str
    differences: list[dict[str, Any]] = field(default_factory=list)
    """One entry per difference: ``what`` (library, cpu flag, engine), ``recorded``, ``here``, ``note``."""
    golden: dict[str, Any] = field(default_factory=dict)
    """``checked`` rows, ``ok``, ``tolerance``, ``problems``, and ``task_metrics_hold`` when raw values differ."""
    integrity: str = "ok"
    served_as: str | None = None
    """``name@version`` in the repository it was checked in (the package's own name may be another)."""

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and self.golden.get("ok", True)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "ok": self.ok, "integrity": self.integrity,
                "differences": self.differences, "golden": self.golden,
                **({"served_as": self.served_as} if self.served_as else {})}

    def lines(self) -> list[str]:
        own = f"{self.name}@{self.version}"
        shown = own if self.served_as in (None, own) else f"{self.served_as} (package {own})"
        out = [f"{shown}: {'OK' if self.ok else 'PROBLEM'}",
               f"  files: {self.integrity}"]
        if not self.differences:
            out.append("  environment: same libraries, CPU flags and engine as when verified")
        for d in self.differences:
            note = f"  ({d['note']})" if d.get("note") else ""
            out.append(f"  {d['what']}: verified with {d['recorded']}, here {d['here']}{note}")
        g = self.golden
        if g.get("checked"):
            verdict = "match" if not g["problems"] else (
                "differ, but the task metrics hold" if g.get("task_metrics_hold") else "DIFFER")
            out.append(f"  golden samples: {g['checked']} rows re-run, outputs {verdict} (tolerance {g['tolerance']:g})")
            out.extend(f"    {p}" for p in g["problems"])
        else:
            out.append(f"  golden samples: {g.get('skipped', 'none recorded')}")
        return out


def environment_differences(manifest: Any, backend: str | None = None) -> list[dict[str, Any]]:
    """Library versions, CPU flags and engine that differ from what ``manifest`` was verified with."""
    recorded = manifest.environment or {}
    here = environment()
    mode = str(manifest.recipe.get("auto_choice", manifest.recipe.get("mode", "none")))
    precision = manifest.recipe.get("precision")
    low = mode in LOW_PRECISION or precision == "bf16"
    out: list[dict[str, Any]] = []
    for lib in LIBRARIES:
        if recorded.get(lib) is not None and recorded.get(lib) != here.get(lib):
            out.append({"what": lib, "recorded": recorded.get(lib), "here": here.get(lib), "note": ""})
    flags_then = set((recorded.get("cpu") or {}).get("flags") or [])
    flags_now = set((here.get("cpu") or {}).get("flags") or [])
    if recorded.get("cpu"):
        for flag in WATCHED_FLAGS:
            if (flag in flags_then) != (flag in flags_now):
                note = ("low-precision kernels differ with this flag: outputs may move" if low
                        else "fp32 kernels may round differently")
                out.append({"what": f"cpu flag {flag}", "recorded": "present" if flag in flags_then else "absent",
                            "here": "present" if flag in flags_now else "absent", "note": note})
    if backend is not None and backend != manifest.backend:
        out.append({"what": "engine", "recorded": manifest.backend, "here": backend,
                    "note": "the verified engine is not installed here"})
    return out


def doctor(path: str | Path, *, config: SessionConfig | None = None) -> Parity:
    """Check one package folder on this machine (see the module docstring)."""
    from ..package import read_golden, read_manifest, verify_files
    from ..runtime.model import choose_backend, load

    folder = Path(path)
    manifest = read_manifest(folder)
    parity = Parity(manifest.name, manifest.version)
    try:
        verify_files(folder, manifest)
    except EdgeserveError as exc:
        parity.integrity = first_line(exc)
        return parity
    try:
        backend, _ = choose_backend(manifest, config or SessionConfig())
    except EdgeserveError as exc:
        parity.differences = environment_differences(manifest)
        parity.golden = {"checked": 0, "ok": False, "skipped": first_line(exc)}
        return parity
    parity.differences = environment_differences(manifest, backend)
    if not manifest.golden.get("count"):
        parity.golden = {"checked": 0, "ok": True, "skipped": manifest.golden.get("skipped", "none recorded")}
        return parity
    inputs, expected = read_golden(folder, manifest)
    with load(folder, config=config, golden="off") as model:
        actual = model.predict(inputs)
    tol = float(manifest.golden.get("rel_tolerance", tolerance_for(manifest.recipe.get("mode", "none"))))
    problems = mismatches(actual, expected, tol)
    rows = next((len(v) for v in inputs.values() if getattr(v, "ndim", 0)), 1)
    parity.golden = {"checked": rows, "tolerance": tol, "problems": problems, "ok": not problems}
    if problems:
        holds = (not mismatches(actual, expected, TASK_SLACK * tol)
                 and task_agrees(actual, expected, inputs, list(manifest.golden.get("targets") or [])))
        parity.golden.update(task_metrics_hold=holds, ok=holds)
    return parity
