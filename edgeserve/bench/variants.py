"""The variants a benchmark compares, each a converter recipe applied to the same source model."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import QuantizeConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Variant:
    name: str
    recipe: QuantizeConfig
    needs_calibration: bool = False
    description: str = ""
    backend: str | None = None
    precision: str | None = None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", QuantizeConfig(mode="none", optimization="none"), description="the source graph as exported"),
        Variant("fp32-optimised", QuantizeConfig(mode="none", optimization="extended"),
                description="onnxruntime offline optimisation with CPU fusions"),
        Variant("int8-dynamic", QuantizeConfig(mode="dynamic"), description="dynamic int8 (weights int8, activations at run time)"),
        Variant("int8-static", QuantizeConfig(mode="static"), needs_calibration=True,
                description="static int8 QDQ, MinMax calibration"),
        Variant("fp16", QuantizeConfig(mode="fp16"), description="fp16 weights and compute, fp32 inputs and outputs"),
        Variant("int4", QuantizeConfig(mode="int4"), description="int4 weight-only MatMul (MatMulNBits)"),
        Variant("auto", QuantizeConfig(mode="auto"), description="the fastest recipe inside the default budget"),
        Variant("openvino-f32", QuantizeConfig(mode="none"), description="OpenVINO, fp32 arithmetic",
                backend="openvino", precision="f32"),
        Variant("openvino-bf16", QuantizeConfig(mode="none"), description="OpenVINO, bf16 (native bf16 CPUs)",
                backend="openvino", precision="bf16"),
        Variant("openvino-int8", QuantizeConfig(mode="static"), needs_calibration=True,
                description="the static int8 QDQ model on OpenVINO", backend="openvino", precision="f32"),
        Variant("openvino-nncf", QuantizeConfig(mode="nncf"), needs_calibration=True,
                description="NNCF int8 with its defaults, on OpenVINO", backend="openvino", precision="f32"),
    )
}
DEFAULT_VARIANTS = ("fp32", "fp32-optimised", "int8-dynamic", "int8-static", "fp16", "auto")
BASELINE = "fp32"


def openvino_defaults() -> list[str]:
    """OpenVINO joins the default variants where it is installed: f32, and bf16 on CPUs with native bf16."""
    from ..backends.base import available_backends

    if "openvino" not in available_backends():
        return []
    from ..backends.openvino import has_native_bf16

    return ["openvino-f32"] + (["openvino-bf16"] if has_native_bf16() else [])


def parse_variants(names: str | tuple[str, ...] | list[str] | None) -> tuple[Variant, ...]:
    """``"fp32,int8-dynamic"`` or a sequence of names; the fp32 baseline is always included, first."""
    if names is None:
        wanted = list(DEFAULT_VARIANTS) + openvino_defaults()
    elif isinstance(names, str):
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    else:
        wanted = list(names)
    unknown = [n for n in wanted if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    ordered = [BASELINE] + [n for n in dict.fromkeys(wanted) if n != BASELINE]
    return tuple(VARIANTS[n] for n in ordered)
