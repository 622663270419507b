"""Parameter and multiply-accumulate (MAC) counts.

MACs are measured with :class:`torch.utils.flop_counter.FlopCounterMode` during one forward pass on a
zero input: it counts the matrix products of convolutions (grouped and depthwise included), linear
layers, matmuls and attention, at 2 FLOPs per MAC. Normalisation, activations, pooling and
element-wise additions are not counted, which is the usual convention of papers (e.g. 1.82 GMACs for
ResNet-18 at 224x224).

Example:
    >>> count_macs(torchvision.models.resnet18(), (1, 3, 224, 224))
    1814073344
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgekd.errors import InvalidInputError

__all__ = ["count_params", "count_macs"]


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model`` (shared parameters counted once, buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass, per sample.

    The model is run in eval mode without gradients on ``torch.zeros(input_shape)`` (on the device
    and dtype of its parameters); the train/eval mode of every submodule is restored afterwards.

    Args:
        model: the network.
        input_shape: ``(N, C, H, W)`` (or any input shape the model takes); the total is divided by ``N``.

    Returns:
        MACs for a batch of one.

    Raises:
        InvalidInputError: ``input_shape`` is not a tuple of positive integers.
    """
    shape = tuple(input_shape)
    if len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InvalidInputError(f"input_shape must be positive integers like (1, 3, 224, 224), got {shape}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # batch statistics of 1x1 maps at batch 1 would fail in train mode
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for module, training in modes:
            module.training = training
    return int(counter.get_total_flops()) // 2 // shape[0]
