"""A tiny plain CNN (~50 k parameters) for tests, smoke runs and very small devices.

Four conv-BN-ReLU blocks (the VGG recipe of Simonyan and Zisserman, ICLR 2015, without pooling
layers: the last three blocks downsample with stride 2), global average pooling, dropout and a
linear classifier. At 28x28x1 it costs about 2 M MACs.

Example:
    >>> tinycnn(num_classes=2, in_chans=1)(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgekd.errors import InvalidInputError

__all__ = ["TinyCNN", "tinycnn"]


def _block(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """``features`` (conv-BN-ReLU blocks, the first at stride 1, the others at stride 2), pool, classifier.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        widths: output channels of the blocks.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        widths: Sequence[int] = (16, 32, 48, 64),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise InvalidInputError(f"tinycnn widths must be positive integers, got {widths}", "e.g. [16, 32, 48, 64]")
        chans = [in_chans, *widths]
        self.features = nn.Sequential(*(_block(chans[i], chans[i + 1], 1 if i == 0 else 2) for i in range(len(widths))))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(widths[-1], num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def tinycnn(
    *, num_classes: int, in_chans: int = 3, widths: Sequence[int] = (16, 32, 48, 64), drop_rate: float = 0.0
) -> TinyCNN:
    """Tiny 4-block CNN, ~48 k params: the model for tests and smoke runs."""
    return TinyCNN(num_classes=num_classes, in_chans=in_chans, widths=widths, drop_rate=drop_rate)
