"""Built-in fake quantization for QAT: PyTorch's own fake-quant ops on Conv/Linear inputs and weights.

Quantization-aware training (Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018) simulates INT8 in the forward pass,
``x_q = (clamp(round(x / s) + z, q_min, q_max) - z) * s``, and passes gradients straight through the
rounding (the straight-through estimator, Bengio et al. 2013), so the weights learn to tolerate it.

Placement follows NVIDIA's recipe (pytorch-quantization / Model Optimizer ``INT8_DEFAULT_CFG``): every
Conv and Linear quantizes its *input* per tensor and its *weight* per output channel (symmetric int8,
``s_c = max|W_c| / 127``, recomputed from the current weights each step). Activation ranges are calibrated
with a min/max observer on a few batches and then frozen. The activation scheme follows the target
(uint8 asymmetric for ``cpu-x86``, int8 asymmetric for ``cpu-arm``, int8 symmetric for ``tensorrt``).

``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine`` are exported by the TorchScript
ONNX exporter as ``QuantizeLinear``/``DequantizeLinear`` pairs (opset >= 13), the QDQ form ONNX Runtime and
TensorRT read. Parameter names are unchanged (``conv1.weight``), so :func:`strip_fake_quant` recovers a plain
model.

Example:
    >>> qat = insert_fake_quant(model, get_target("tensorrt"))
    >>> calibrate(qat, batches)  # observe activation ranges, then freeze them
    >>> qat(x).shape
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.quantize._targets import QuantScheme

__all__ = ["ActFakeQuant", "QATConv2d", "QATLinear", "insert_fake_quant", "calibrate"]


class ActFakeQuant(nn.Module):
    """Per-tensor activation fake quantization with a min/max observer (frozen after calibration).

    Args:
        dtype: ``"uint8"`` (0..255) or ``"int8"`` (-128..127).
        symmetric: zero point 0 and ``s = max|x| / 127`` (int8 only).
    """

    def __init__(self, dtype: str = "uint8", symmetric: bool = False) -> None:
        super().__init__()
        self.qmin, self.qmax = (0, 255) if dtype == "uint8" else (-128, 127)
        self.symmetric = symmetric and dtype == "int8"
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.observing = False

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        self.min_val.copy_(torch.minimum(self.min_val, x.min()))
        self.max_val.copy_(torch.maximum(self.max_val, x.max()))

    @torch.no_grad()
    def freeze(self) -> None:
        """Turn the observed range into scale and zero point (0 must stay exactly representable)."""
        lo, hi = float(min(self.min_val, 0.0)), float(max(self.max_val, 0.0))
        if self.symmetric:
            scale, zp = max(abs(lo), abs(hi)) / 127.0, 0
        else:
            scale = (hi - lo) / (self.qmax - self.qmin)
            zp = int(round(self.qmin - lo / scale)) if scale > 0 else 0
        self.scale.fill_(max(scale, 1e-8))
        self.zero_point.fill_(min(max(zp, self.qmin), self.qmax))
        self.observing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x)
            return x
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.qmin, self.qmax)


def _fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel: ``s_c = max|W_c| / 127``, zero point 0."""
    scale = w.detach().abs().flatten(1).amax(dim=1).clamp(min=1e-8) / 127.0
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)


class QATConv2d(nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input and weight (same parameter names)."""

    input_quant: ActFakeQuant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), _fake_quant_weight(self.weight), self.bias)


class QATLinear(nn.Linear):
    """``nn.Linear`` with fake-quantized input and weight (same parameter names)."""

    input_quant: ActFakeQuant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), _fake_quant_weight(self.weight), self.bias)


def _convert(layer: nn.Module, scheme: QuantScheme) -> nn.Module:
    if type(layer) is nn.Conv2d:
        new: nn.Module = QATConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            layer.bias is not None,
            layer.padding_mode,
            device="meta",
        )
    elif type(layer) is nn.Linear:
        new = QATLinear(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    else:
        return layer
    new.weight, new.bias = layer.weight, layer.bias  # the same Parameter objects: nothing is copied
    new.input_quant = ActFakeQuant(scheme.activation_type, scheme.activation_symmetric).to(layer.weight.device)
    new.train(layer.training)
    return new


def insert_fake_quant(model: nn.Module, scheme: QuantScheme) -> nn.Module:
    """Replace every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` (in place) by its fake-quantized twin."""
    for name, child in list(model.named_children()):
        converted = _convert(child, scheme)
        if converted is child:
            insert_fake_quant(child, scheme)
        else:
            setattr(model, name, converted)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Observe activation ranges on preprocessed ``batches`` (eval mode, no fake quant), then freeze them.

    Returns:
        The number of samples observed.
    """
    quants = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    for q in quants:
        q.observing = True
    was_training, seen = model.training, 0
    model.eval()
    for x in batches:
        model(x)
        seen += len(x)
    for q in quants:
        q.freeze()
    model.train(was_training)
    return seen
