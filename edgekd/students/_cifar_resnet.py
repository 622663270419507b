"""CIFAR-style residual networks: ResNet-(6n+2) and the wider ``x4`` variants.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2:
a 3x3 stem convolution, then three stages of ``n`` basic blocks (two 3x3 convolutions each) working
on 32, 16 and 8 px maps, global average pooling and one linear layer; ``depth = 6n + 2``. The
``x4`` variants (``resnet8x4``, ``resnet32x4``) are the wider students and teachers used in the
distillation benchmark of Tian, Krishnan and Isola, "Contrastive Representation Distillation",
ICLR 2020: stem width 32 and stage widths 64/128/256 instead of 16 and 16/32/64.

When a block changes the width or the resolution, its shortcut is a 1x1 convolution followed by
batch norm (the paper's "option B"), which is what the distillation benchmarks use.

Example:
    >>> model = resnet8x4(num_classes=10)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgekd.errors import InvalidInputError

__all__ = [
    "CifarResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet8x4",
    "resnet32x4",
]

_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projection shortcut, ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A ResNet for small images: 3x3 stem, three stages (``layer1``..``layer3``), pool, linear.

    Args:
        depth: total depth ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        widths: stem width followed by the three stage widths.
        num_classes: classifier outputs.
        in_chans: input channels.
        zero_init_residual: start every block as the identity by zeroing its last BN scale
            (Goyal et al. 2017), which helps short schedules.
    """

    def __init__(
        self,
        depth: int,
        widths: Sequence[int],
        *,
        num_classes: int,
        in_chans: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise InvalidInputError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}", "use 8, 14, 20, 32, ..."
            )
        blocks = (depth - 2) // 6
        self.conv1 = _conv3x3(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(widths[0], widths[1], blocks, stride=1)
        self.layer2 = _stage(widths[1], widths[2], blocks, stride=2)
        self.layer3 = _stage(widths[2], widths[3], blocks, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_ch, out_ch, stride)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)


def _scaled(widths: Sequence[int], width_mult: float) -> tuple[int, ...]:
    """``widths`` times ``width_mult``, in multiples of 8 (at least 8): widths CPUs run fast (edgekd.bench
    width probes pick 8 on AVX2); ``width_mult=1`` keeps the paper's 16/16/32/64."""
    if width_mult <= 0:
        raise InvalidInputError(f"width_mult must be positive, got {width_mult}", "use e.g. 0.5, 1 or 2")
    return tuple(max(8, int(round(w * width_mult / 8)) * 8) for w in widths)


def resnet8(
    *, num_classes: int, in_chans: int = 3, zero_init_residual: bool = False, width_mult: float = 1.0
) -> CifarResNet:
    """ResNet-8 for small images (He et al. 2016), widths 16/32/64, ~0.08 M params."""
    return CifarResNet(
        8,
        _scaled(_NARROW, width_mult),
        num_classes=num_classes,
        in_chans=in_chans,
        zero_init_residual=zero_init_residual,
    )


def resnet14(
    *, num_classes: int, in_chans: int = 3, zero_init_residual: bool = False, width_mult: float = 1.0
) -> CifarResNet:
    """ResNet-14 for small images (He et al. 2016), widths 16/32/64, ~0.17 M params."""
    return CifarResNet(
        14,
        _scaled(_NARROW, width_mult),
        num_classes=num_classes,
        in_chans=in_chans,
        zero_init_residual=zero_init_residual,
    )


def resnet20(
    *, num_classes: int, in_chans: int = 3, zero_init_residual: bool = False, width_mult: float = 1.0
) -> CifarResNet:
    """ResNet-20 for small images (He et al. 2016), widths 16/32/64, ~0.27 M params."""
    return CifarResNet(
        20,
        _scaled(_NARROW, width_mult),
        num_classes=num_classes,
        in_chans=in_chans,
        zero_init_residual=zero_init_residual,
    )


def resnet32(
    *, num_classes: int, in_chans: int = 3, zero_init_residual: bool = False, width_mult: float = 1.0
) -> CifarResNet:
    """ResNet-32 for small images (He et al. 2016), widths 16/32/64, ~0.46 M params."""
    return CifarResNet(
        32,
        _scaled(_NARROW, width_mult),
        num_classes=num_classes,
        in_chans=in_chans,
        zero_init_residual=zero_init_residual,
    )


def resnet8x4(*, num_classes: int, in_chans: int = 3, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-8x4 (Tian et al. 2020, CRD), widths 32 -> 64/128/256, ~1.2 M params."""
    return CifarResNet(8, _WIDE, num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual)


def resnet32x4(*, num_classes: int, in_chans: int = 3, zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-32x4 (Tian et al. 2020, CRD; a common teacher), widths 32 -> 64/128/256, ~7.4 M params."""
    return CifarResNet(32, _WIDE, num_classes=num_classes, in_chans=in_chans, zero_init_residual=zero_init_residual)
