"""Quantization targets: the deployment target decides the INT8 scheme, because the right one differs.

Measured on an AVX-512 VNNI/AMX CPU, ONNX Runtime runs a ResNet-18 2.6-3.4x faster than FP32 with uint8
activations x int8 weights (U8S8), while the symmetric int8 x int8 scheme (S8S8) that TensorRT requires runs
*slower* than FP32 there. One registry, :data:`TARGETS`, maps a target name to its :class:`QuantScheme`:

=============  ==========================================================================================
target         scheme (all QDQ format, weights int8 symmetric per output channel)
=============  ==========================================================================================
``cpu-x86``    **U8S8**: activations uint8 *asymmetric*, weights int8 symmetric. ORT's x86 kernels
               multiply u8 x s8 with VPMADDUBSW / VNNI ``vpdpbusd``; ORT's guidance for x86-64 with
               AVX-512/VNNI is U8S8 without ``reduce_range`` (the 16-bit saturation of VPMADDUBSW
               only matters on AVX2/AVX-512 machines *without* VNNI).
``cpu-arm``    **S8S8**: activations int8 (asymmetric, per tensor), weights int8 symmetric. ORT's
               quantization guide makes "S8S8 with QDQ" the default "first choice" that "balances
               performance and accuracy", notes that the U8S8 saturation issue does not exist on ARM,
               and its ``quantize_static`` guidance for ARM CPUs (Cortex-A, Graviton, Apple) is
               ``QInt8`` activations and weights; MLAS has symmetric-weight int8 convolution kernels for
               ARM64 dot-product (``sdot``) CPUs. U8U8 is the documented fallback if accuracy drops.
``tensorrt``   **S8S8 symmetric**: activations and weights int8 with zero points 0, per-channel
               weights, bias left in float (TensorRT's explicit-quantization Q/DQ rules: INT8 only,
               symmetric, no int32 bias DQ, no QOperator ops). Checked with
               :func:`edgekd.export.lint_onnx`. FP16 (``--method fp16``) is a GPU method for this target.
=============  ==========================================================================================

Example:
    >>> TARGETS.get("cpu-x86").activation_type
    'uint8'
    >>> sorted(TARGETS)
    ['cpu-arm', 'cpu-x86', 'tensorrt']
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from edgekd.registry import Registry

__all__ = ["QuantScheme", "TARGETS", "get_target", "list_targets"]


class QuantScheme(BaseModel):
    """How a target wants INT8 tensors.

    Attributes:
        name: the target name.
        activation_type: ``"uint8"`` or ``"int8"``.
        activation_symmetric: activation zero points fixed at 0 (int8) instead of fitted to the range.
        weight_type: ``"int8"`` (weights are always symmetric: zero point 0).
        per_channel: one weight scale per output channel.
        reduce_range: 7-bit weights (only for AVX2/AVX-512 CPUs without VNNI).
        quantize_bias: quantize biases to int32 (TensorRT keeps them in float).
        gpu: the target runs on a GPU (FP16 is offered for it).
        summary: one line for reports.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    activation_type: str
    activation_symmetric: bool
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    quantize_bias: bool = True
    gpu: bool = False
    summary: str = ""

    def ort_options(self) -> dict[str, Any]:
        """Keyword arguments of ``onnxruntime.quantization.quantize_static`` for this scheme."""
        from onnxruntime.quantization import QuantFormat, QuantType

        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        return {
            "quant_format": QuantFormat.QDQ,
            "activation_type": types[self.activation_type],
            "weight_type": types[self.weight_type],
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "extra_options": {"ActivationSymmetric": self.activation_symmetric, "WeightSymmetric": True,
                              "QuantizeBias": self.quantize_bias},
        }  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for manifests and reports."""
        return self.model_dump()


TARGETS: Registry[QuantScheme] = Registry("quantization target")
TARGETS.add("cpu-x86", QuantScheme(
    name="cpu-x86", activation_type="uint8", activation_symmetric=False,
    summary="U8S8 QDQ: uint8 asymmetric activations, int8 symmetric per-channel weights (x86 VNNI)",
))  # fmt: skip
TARGETS.add("cpu-arm", QuantScheme(
    name="cpu-arm", activation_type="int8", activation_symmetric=False,
    summary="S8S8 QDQ: int8 activations, int8 symmetric per-channel weights (ORT's default for ARM64)",
))  # fmt: skip
TARGETS.add("tensorrt", QuantScheme(
    name="tensorrt", activation_type="int8", activation_symmetric=True, quantize_bias=False, gpu=True,
    summary="S8S8 symmetric QDQ: zero points 0, per-channel weights, float bias (TensorRT explicit INT8)",
))  # fmt: skip


def get_target(name: str) -> QuantScheme:
    """The scheme of a target.

    Raises:
        UnknownNameError: not a registered target (exit 3; the hint suggests close names).
    """
    return TARGETS.get(name)


def list_targets() -> list[str]:
    """Registered target names."""
    return TARGETS.names()
