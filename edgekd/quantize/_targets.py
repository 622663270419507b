"""Quantization targets: the device that will run the model decides the INT8 scheme, by measurement.

An INT8 *scheme* (:class:`QuantScheme`, :data:`SCHEMES`) is how tensors are stored: activation type and
symmetry, 7-bit ``reduce_range`` weights, per-channel weights, float or int32 bias. A *target*
(:class:`QuantTarget`, :data:`TARGETS`) is a class of device, and lists the schemes that are exact there in
order of preference. Which one is fast is not assumed: on the device's own CPU class edgekd quantizes with
every candidate, checks each one's parity with ONNX Runtime's real kernels and times those that pass
(:func:`edgekd.quantize.quantize_model_dir`).

Why the CPU class matters (:mod:`edgekd._cpu`): without VNNI, x86 INT8 kernels add pairs of u8 x s8
products in a saturating int16, so plain U8S8 is exact on VNNI CPUs and wrong on AVX2 ones (measured on the
demo's student, AMD EPYC Zen 3, AVX2: top-1 agreement with FP32 0.44), while S8S8 is converted to U8S8
inside the kernel and saturates depending on the data (symmetric activations 0.70).

==================  =========================================================================================
target              schemes (first is the default; all QDQ, int8 symmetric per-channel weights unless noted)
==================  =========================================================================================
``cpu-x86``         *this* x86 CPU: resolves when quantizing to ``cpu-x86-vnni`` or ``cpu-x86-avx2`` by the
                    CPU's class
``cpu-x86-vnni``    ``u8s8``: uint8 asymmetric activations (ORT's guidance for AVX-512 VNNI / AMX x86)
``cpu-x86-avx2``    ``u8s8-rr`` (7-bit weights: no int16 overflow), ``u8u8`` (uint8 weights: 16-bit
                    ``vpmaddwd`` kernels, no overflow), ``s8s8`` (only when checked on an AVX2 CPU: it can
                    saturate); AVX2 and AVX-512-without-VNNI x86
``cpu-arm``         ``s8s8``: ORT's first choice for ARM64 (``sdot`` kernels; no saturation issue there)
``tensorrt``        ``s8s8-sym``: zero points 0, float bias (TensorRT explicit quantization)
==================  =========================================================================================

Building for another class than this CPU's (``--target cpu-x86-vnni`` on an AVX2 machine, ``cpu-arm`` or
``tensorrt`` anywhere) checks parity with *reference* kernels (ONNX Runtime with graph optimisations off
runs each Q/DQ pair as float operations: the exact integer result a non-saturating device computes), keeps
only the candidates that are exact by construction on the target (``safe_elsewhere``), and records that the
file still needs checking on its device (`edgekd verify` there; bench, predict and serve re-check it).

Example:
    >>> TARGETS.get("cpu-x86-vnni").schemes
    ['u8s8']
    >>> get_target("cpu-x86-avx2").name
    'u8s8-rr'
    >>> resolve_target("cpu-x86", "x86-avx2").name
    'cpu-x86-avx2'
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgekd._cpu import cpu_isa, native_target
from edgekd.errors import InvalidInputError
from edgekd.registry import Registry

__all__ = [
    "QuantScheme",
    "QuantTarget",
    "SCHEMES",
    "TARGETS",
    "get_target",
    "list_targets",
    "resolve_target",
    "target_for_isa",
]


class QuantScheme(BaseModel):
    """How INT8 tensors are stored.

    Attributes:
        name: the scheme name (``u8s8``, ``u8s8-rr``, ``u8u8``, ``s8s8``, ``s8s8-sym``).
        activation_type: ``"uint8"`` or ``"int8"``.
        activation_symmetric: activation zero points fixed (0 for int8) instead of fitted to the range.
        weight_type: ``"int8"`` or ``"uint8"`` (weights are symmetric either way).
        per_channel: one weight scale per output channel.
        reduce_range: 7-bit weights (no int16 overflow in ``vpmaddubsw`` on x86 CPUs without VNNI).
        quantize_bias: quantize biases to int32 (TensorRT keeps them in float).
        summary: one line for reports and ``--help``.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    activation_type: str
    activation_symmetric: bool
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    quantize_bias: bool = True
    summary: str = ""

    def ort_options(self) -> dict[str, Any]:
        """Keyword arguments of ``onnxruntime.quantization.quantize_static`` for this scheme."""
        from onnxruntime.quantization import QuantFormat, QuantType

        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        extra = {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": self.quantize_bias,
        }
        return {
            "quant_format": QuantFormat.QDQ,
            "activation_type": types[self.activation_type],
            "weight_type": types[self.weight_type],
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "extra_options": extra,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for manifests and reports."""
        return self.model_dump()


class QuantTarget(BaseModel):
    """A class of device and the INT8 schemes that are exact on it, in order of preference.

    Attributes:
        name: the target name.
        schemes: candidate schemes (:data:`SCHEMES`), the default first.
        isa: the CPU class that runs the target natively (None: a GPU or another architecture than x86/Arm).
        safe_elsewhere: the candidates that are exact on the target by construction, so that a check with
            reference kernels on another machine carries over (built on another class, only these are tried).
        gpu: the target is a GPU (``--method fp16`` is offered).
        auto: the target resolves to the matching target of this CPU's class when quantizing.
        summary: one line for ``--help`` and reports.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    schemes: list[str] = Field(default_factory=list)
    isa: str | None = None
    safe_elsewhere: list[str] = Field(default_factory=list)
    gpu: bool = False
    auto: bool = False
    summary: str = ""


SCHEMES: Registry[QuantScheme] = Registry("INT8 scheme")
for _scheme in (
    QuantScheme(
        name="u8s8",
        activation_type="uint8",
        activation_symmetric=False,
        summary="uint8 asymmetric activations, int8 symmetric per-channel weights",
    ),
    QuantScheme(
        name="u8s8-rr",
        activation_type="uint8",
        activation_symmetric=False,
        reduce_range=True,
        summary="u8s8 with 7-bit weights (reduce_range): no int16 overflow without VNNI",
    ),
    QuantScheme(
        name="u8u8",
        activation_type="uint8",
        activation_symmetric=False,
        weight_type="uint8",
        summary="uint8 activations and weights: 16-bit kernels, no overflow without VNNI",
    ),
    QuantScheme(
        name="s8s8",
        activation_type="int8",
        activation_symmetric=False,
        summary="int8 asymmetric activations, int8 symmetric per-channel weights",
    ),
    QuantScheme(
        name="s8s8-sym",
        activation_type="int8",
        activation_symmetric=True,
        quantize_bias=False,
        summary="int8 symmetric activations (zero points 0), per-channel weights, float bias",
    ),
):
    SCHEMES.add(_scheme.name, _scheme)

TARGETS: Registry[QuantTarget] = Registry("quantization target")
for _target in (
    QuantTarget(
        name="cpu-x86",
        auto=True,
        summary="this x86 CPU: resolves to cpu-x86-vnni or cpu-x86-avx2 by its instruction set",
    ),
    QuantTarget(
        name="cpu-x86-vnni",
        schemes=["u8s8"],
        isa="x86-vnni",
        safe_elsewhere=["u8s8"],
        summary="x86 with AVX-512 VNNI, AVX-VNNI or AMX (Cascade Lake+, Ice/Alder Lake+, Zen 4+): U8S8",
    ),
    QuantTarget(
        name="cpu-x86-avx2",
        schemes=["u8s8-rr", "u8u8", "s8s8"],
        isa="x86-avx2",
        safe_elsewhere=["u8s8-rr", "u8u8"],
        summary="x86 with AVX2 or AVX-512 but no VNNI (Haswell-Skylake, Zen 1-3): fastest exact of "
        "U8S8 7-bit, U8U8, S8S8, measured",
    ),
    QuantTarget(
        name="cpu-arm",
        schemes=["s8s8"],
        isa="arm64-dotprod",
        safe_elsewhere=["s8s8"],
        summary="64-bit Arm (Cortex-A, Graviton, Apple): S8S8, ORT's default for ARM64",
    ),
    QuantTarget(
        name="tensorrt",
        schemes=["s8s8-sym"],
        safe_elsewhere=["s8s8-sym"],
        gpu=True,
        summary="NVIDIA TensorRT explicit INT8: symmetric S8S8, float bias (FP16 with --method fp16)",
    ),
):
    TARGETS.add(_target.name, _target)


def target_for_isa(isa: str) -> str | None:
    """The target to build for a CPU of class ``isa`` (None: no CPU target fits it)."""
    return native_target(isa)


def resolve_target(name: str, isa: str | None = None) -> QuantTarget:
    """The concrete target ``name`` means on a CPU of class ``isa`` (default: this CPU).

    Raises:
        UnknownNameError: not a registered target (exit 3, close names suggested).
        InvalidInputError: ``cpu-x86`` on a CPU that is not x86 (name the target explicitly).
    """
    target = TARGETS.get(name)
    if not target.auto:
        return target
    isa = isa or cpu_isa().isa
    native = native_target(isa)
    if native is None or not isa.startswith("x86"):
        raise InvalidInputError(
            f"--target {name} means 'this x86 CPU', but this CPU is {isa}",
            "name the device's target: cpu-x86-vnni or cpu-x86-avx2 (x86), cpu-arm, tensorrt",
        )
    return TARGETS.get(native)


def native_on(target: QuantTarget, isa: str | None = None) -> bool:
    """Whether a CPU of class ``isa`` (default: this one) runs ``target``'s kernels itself."""
    isa = isa or cpu_isa().isa
    return target.isa is not None and native_target(isa) == target.name


def candidates(target: QuantTarget, isa: str | None = None) -> list[QuantScheme]:
    """The schemes to try for ``target`` here: all on its own CPU class, the safe ones elsewhere."""
    names = target.schemes if native_on(target, isa) else target.safe_elsewhere
    return [SCHEMES.get(n) for n in names]


def get_target(name: str) -> QuantScheme:
    """The default scheme of a target (``cpu-x86``: of this CPU's target).

    Raises:
        UnknownNameError: not a registered target (exit 3; the hint suggests close names).
    """
    return SCHEMES.get(resolve_target(name).schemes[0])


def list_targets() -> list[str]:
    """Registered target names."""
    return TARGETS.names()
