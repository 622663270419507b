"""Wide residual networks for small images (WRN-d-k).

Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016: a 3x3 stem with 16 filters, three
stages of ``n = (d - 4) / 6`` pre-activation basic blocks (BN-ReLU-conv3x3, BN-ReLU-[dropout]-conv3x3)
of widths ``16k``, ``32k`` and ``64k`` at 32, 16 and 8 px, a final BN-ReLU, global average pooling and
a linear classifier. A 1x1 convolution on the pre-activated input is the shortcut when the shape
changes. ``wrn_16_2`` (student) and ``wrn_40_2`` (teacher) are the pair used by the CRD benchmark
(Tian et al., ICLR 2020).

Example:
    >>> wrn_16_2(num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import InvalidInputError

__all__ = ["WideResNet", "wrn_16_2", "wrn_40_2"]


class WideBlock(nn.Module):
    """Pre-activation basic block: ``x + conv(relu(bn(dropout(relu(bn(conv(relu(bn(x))))))))``."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        return out + identity


class WideResNet(nn.Module):
    """WRN-``depth``-``widen`` with stages ``layer1``..``layer3``.

    Args:
        depth: total depth ``6n + 4`` (10, 16, 22, 28, 40, ...).
        widen: width multiplier ``k`` of the three stages.
        num_classes: classifier outputs.
        in_chans: input channels.
        drop_rate: dropout between the two convolutions of every block (the paper uses 0.3 on
            some datasets; 0 disables it).
    """

    def __init__(self, depth: int, widen: int, *, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise InvalidInputError(f"WRN depth must be 6n+4 with n >= 1, got {depth}", "use 16, 22, 28, 40, ...")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, padding=1, bias=False)
        self.layer1 = _stage(widths[0], widths[1], blocks, 1, drop_rate)
        self.layer2 = _stage(widths[1], widths[2], blocks, 2, drop_rate)
        self.layer3 = _stage(widths[2], widths[3], blocks, 2, drop_rate)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int, drop_rate: float) -> nn.Sequential:
    layers = [WideBlock(in_ch, out_ch, stride, drop_rate)]
    layers += [WideBlock(out_ch, out_ch, 1, drop_rate) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


def wrn_16_2(*, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-16-2 (Zagoruyko & Komodakis 2016), ~0.7 M params."""
    return WideResNet(16, 2, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)


def wrn_40_2(*, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0) -> WideResNet:
    """WRN-40-2 (Zagoruyko & Komodakis 2016), ~2.2 M params."""
    return WideResNet(40, 2, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
