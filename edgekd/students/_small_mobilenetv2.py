"""MobileNetV2 for small images (32-64 px).

Sandler, Howard, Zhu, Zhmoginov and Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018. Each bottleneck expands the channels ``t`` times with a 1x1 conv, filters them with a
3x3 depthwise conv, and projects back with a *linear* 1x1 conv; a residual connection is used when
stride is 1 and the width is unchanged. Table 2 of the paper gives the stages ``(t, c, n, s)``.

For small inputs the stem convolution and the second stage use stride 1 instead of 2 (as in the
CIFAR MobileNetV2 of the CRD benchmark, Tian et al. 2020), so a 32 px input is reduced to 4 px
instead of 1 px. Widths are scaled by ``width_mult`` and rounded to multiples of 8; the last 1x1
convolution keeps 1280 channels when ``width_mult <= 1`` as in the paper.

Example:
    >>> mobilenetv2_x0_5(num_classes=10)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import InvalidInputError

__all__ = ["SmallMobileNetV2", "mobilenetv2_x0_5"]

# (expansion t, output channels c, repeats n, stride s); strides of the stem and of the second
# stage are 1 here (2 in the ImageNet network) to keep resolution on small inputs.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without going below 90 % of ``value``."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3) -> linear project (1x1), with a residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn_relu6(in_ch, hidden, 1, 1)]
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class SmallMobileNetV2(nn.Module):
    """MobileNetV2 with a stride-1 stem: ``features`` (stem, 17 bottlenecks, last conv), pool, classifier.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width_mult: width multiplier of every layer but the last 1x1 conv.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, *, num_classes: int, in_chans: int = 3, width_mult: float = 1.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise InvalidInputError(f"width_mult must be positive, got {width_mult}", "use e.g. 0.5 or 1.0")
        width = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(in_chans, width, 3, 1)]
        for t, c, n, s in _SETTINGS:
            out = _divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(width, out, s if i == 0 else 1, t))
                width = out
        layers.append(_conv_bn_relu6(width, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(last, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def mobilenetv2_x0_5(
    *, num_classes: int, in_chans: int = 3, width_mult: float = 0.5, drop_rate: float = 0.0
) -> SmallMobileNetV2:
    """Small-image MobileNetV2 at width 0.5 (Sandler et al. 2018; CRD's ``MobileNetV2``), ~0.7 M params."""
    return SmallMobileNetV2(num_classes=num_classes, in_chans=in_chans, width_mult=width_mult, drop_rate=drop_rate)
