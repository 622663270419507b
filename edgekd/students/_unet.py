"""Segmentation networks: compact U-Nets (``small:unet_w4`` ... ``small:unet_w64``) and torchvision's mobile heads.

**U-Net** (Ronneberger, Fischer & Brox, MICCAI 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation"), in the common modern form: every level is two 3x3 conv-BN-ReLU layers, the encoder halves the
resolution with 2x2 max-pooling and doubles the width (``w, 2w, 4w, 8w`` and a ``16w`` bottleneck at four
levels), the decoder upsamples bilinearly to the skip's size, concatenates the skip and applies two conv layers;
a 1x1 convolution gives ``num_classes`` logits at the input resolution. Bilinear upsampling instead of
transposed convolutions keeps the network friendly to ONNX, INT8 and structural pruning (no checkerboard
weights to prune). The width ``w`` scales parameters by about ``w^2``: ``unet_w8`` has ~0.47 M, ``unet_w32``
~7.8 M (16x).

Tap points (``feature_info``, read by :func:`~edgekd.students.tap_points`): ``enc1`` .. ``enc4``, ``bottleneck``
and ``dec4`` .. ``dec1`` (encoder and decoder features for feature losses; ``dec1`` is the last, full
resolution).

**torchvision heads**: ``tv:lraspp_mobilenet_v3_large`` (Howard et al., ICCV 2019, "Searching for MobileNetV3":
Lite R-ASPP) and ``tv:deeplabv3_mobilenet_v3_large`` (Chen et al. 2017, DeepLabV3), built with
``num_classes`` and ``in_chans``, returning the ``out`` logits tensor (no auxiliary head). ``pretrained`` loads
the ImageNet backbone only (a download), never by default.

Example:
    >>> net = unet(num_classes=2, in_chans=1, width=8)
    >>> net(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from edgekd.errors import DependencyError, InvalidInputError
from edgekd.students._torchvision import adapt_input_conv

__all__ = ["UNet", "unet", "UNET_WIDTHS", "TVSegNet", "build_tv_segmentation", "TV_SEG_NAMES"]

UNET_WIDTHS = (4, 8, 16, 32, 64)
TV_SEG_NAMES = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` pooling levels and base width ``width`` (see the module docstring).

    Args:
        num_classes: output classes per pixel (background included).
        in_chans: input channels.
        width: channels of the first level (doubled at every level).
        depth: pooling levels (1..5); the input side should be at least ``2 ** depth`` pixels.
    """

    def __init__(self, *, num_classes: int, in_chans: int = 1, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        if width < 1 or not 1 <= depth <= 5:
            raise InvalidInputError(f"unet width={width}, depth={depth}: width >= 1, depth 1..5", "e.g. width=16")
        chans = [width * 2**i for i in range(depth + 1)]
        self.depth = depth
        cin = in_chans
        for i in range(depth):
            setattr(self, f"enc{i + 1}", _double_conv(cin, chans[i]))
            cin = chans[i]
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(chans[depth - 1], chans[depth])
        for i in reversed(range(depth)):
            setattr(self, f"dec{i + 1}", _double_conv(chans[i + 1] + chans[i], chans[i]))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        names = [f"enc{i + 1}" for i in range(depth)] + ["bottleneck"] + [f"dec{i}" for i in range(depth, 0, -1)]
        self.feature_info = [{"module": n} for n in names]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i in range(self.depth):
            x = getattr(self, f"enc{i + 1}")(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for i in reversed(range(self.depth)):
            skip = skips[i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = getattr(self, f"dec{i + 1}")(torch.cat([x, skip], dim=1))
        return self.head(x)


def unet(*, num_classes: int, in_chans: int = 1, width: int = 16, depth: int = 4) -> UNet:
    """U-Net (Ronneberger et al. 2015), conv-BN-ReLU levels, bilinear decoder; ``width`` channels at level 1."""
    return UNet(num_classes=num_classes, in_chans=in_chans, width=width, depth=depth)


class TVSegNet(nn.Module):
    """A torchvision segmentation model (LR-ASPP or DeepLabV3) returning its ``out`` logits as one tensor.

    The backbone (an ``IntermediateLayerGetter``) and the head are the torchvision modules; only the dict output
    and the auxiliary head are dropped, so exports and losses see a plain ``[N, C, H, W]`` tensor.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, *, lraspp: bool) -> None:
        super().__init__()
        self.backbone, self.classifier, self.lraspp = backbone, classifier, lraspp
        blocks = [n for n, _ in backbone.named_children()]
        down = [n for n, m in backbone.named_children() if any(_strided(c) for c in m.modules())]
        taps = [blocks[blocks.index(n) - 1] for n in down if blocks.index(n) > 0] + [blocks[-1]]
        head = ["classifier.cbr"] if lraspp else ["classifier.0"]
        self.feature_info = [{"module": f"backbone.{n}"} for n in dict.fromkeys(taps)] + [{"module": h} for h in head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        out = self.classifier(feats) if self.lraspp else self.classifier(feats["out"])
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _strided(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and max(m.stride) > 1


def build_tv_segmentation(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    small_input: bool = False,
    pretrained: bool = False,
    **kwargs: Any,
) -> TVSegNet:
    """``tv:lraspp_mobilenet_v3_large`` / ``tv:deeplabv3_mobilenet_v3_large`` as a :class:`TVSegNet`.

    Raises:
        InvalidInputError: unknown keyword arguments or ``small_input``.
        DependencyError: ``pretrained`` and the ImageNet backbone weights cannot be downloaded.
    """
    if kwargs:
        raise InvalidInputError(f"tv:{name} got an unknown keyword argument {sorted(kwargs)[0]!r}", "it takes none")
    if small_input:
        raise InvalidInputError(f"tv:{name} has no small-input variant", "drop --small-input")
    segm = torchvision.models.segmentation
    weights = "DEFAULT" if pretrained else None
    try:
        net = getattr(segm, name)(weights=None, weights_backbone=weights, num_classes=num_classes, aux_loss=False)
    except (OSError, RuntimeError) as e:
        raise DependencyError(f"cannot fetch the ImageNet backbone of tv:{name}: {e}", "drop --pretrained") from e
    if in_chans != 3:
        first = net.backbone["0"][0]
        conv = nn.Conv2d(in_chans, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
        if pretrained:
            with torch.no_grad():
                conv.weight.copy_(adapt_input_conv(first.weight, in_chans))
        net.backbone["0"][0] = conv
    return TVSegNet(net.backbone, net.classifier, lraspp=name.startswith("lraspp"))
