"""Feature tap points: the module paths whose outputs feature-distillation losses compare.

Feature distillation (FitNets, Romero et al. 2015; attention transfer, Zagoruyko & Komodakis 2017;
CRD, Tian et al. 2020) matches intermediate representations at the end of each resolution stage.
:func:`tap_points` finds those modules without running the model, by these rules in order:

1. a timm model's ``feature_info`` (its own list of stage outputs);
2. numbered stage children ``layer1..``, ``stage2..`` or ``block1..`` (ResNets, WRNs, ShuffleNetV2,
   RegNet's ``trunk_output``);
3. the blocks of the main sequential body (``features``, ``layers``, ``blocks``, ``encoder.layers``,
   or else the model's own children without the head): the block just before each block that
   downsamples (has a strided convolution or pooling), plus the last block that is not a pooling
   layer; when nothing in the body
   downsamples (vision transformers), four evenly spaced blocks.

Example:
    >>> tap_points(torchvision.models.resnet18())
    ['layer1', 'layer2', 'layer3', 'layer4']
    >>> tap_points(torchvision.models.mobilenet_v2())
    ['features.1', 'features.3', 'features.6', 'features.13', 'features.18']
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["tap_points"]

_STAGE = re.compile(r"^(layer|stage|block)\d+$")
_BODIES = ("features", "layers", "trunk_output", "blocks", "stages", "encoder.layers")
_HEAD_NAMES = {"fc", "classifier", "head", "heads", "avgpool", "global_pool", "pool", "dropout", "flatten"}
_HEAD_TYPES = (nn.Linear, nn.Dropout, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def tap_points(model: nn.Module) -> list[str]:
    """Module paths of stage/block outputs useful for feature distillation, in forward order.

    Args:
        model: any ``nn.Module``; the rules are described in the module docstring.

    Returns:
        Paths valid in ``dict(model.named_modules())``; empty only for a model without children.
    """
    return _timm_taps(model) or _numbered_stage_taps(model) or _body_taps(model)


def _timm_taps(model: nn.Module) -> list[str]:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list):
        return []
    paths = dict(model.named_modules())
    return [d["module"] for d in info if isinstance(d, dict) and d.get("module") in paths]


def _numbered_stage_taps(model: nn.Module) -> list[str]:
    for path, module in model.named_modules():
        if path.count(".") > 1:
            continue
        stages = [name for name, _ in module.named_children() if _STAGE.match(name)]
        if len(stages) >= 2:
            return [f"{path}.{name}" if path else name for name in stages]
    return []


def _body(model: nn.Module) -> tuple[str, list[tuple[str, nn.Module]]]:
    paths = dict(model.named_modules())
    for name in _BODIES:
        body = paths.get(name)
        if isinstance(body, (nn.Sequential, nn.ModuleList)) and len(body) >= 2:
            return name + ".", list(body.named_children())
    children = [(n, c) for n, c in model.named_children() if n not in _HEAD_NAMES and not isinstance(c, _HEAD_TYPES)]
    return "", children


def _downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, *_POOLS)):
            stride = m.stride if isinstance(m.stride, tuple) else (m.stride,)
            if max(stride) > 1:
                return True
    return False


def _body_taps(model: nn.Module) -> list[str]:
    prefix, children = _body(model)
    if not children:
        return []
    down = [_downsamples(c) for _, c in children]
    picks = [i - 1 for i in range(1, len(children)) if down[i] and not isinstance(children[i - 1][1], _POOLS)]
    if not picks and len(children) >= 4:
        picks = [round((k + 1) * len(children) / 4) - 1 for k in range(4)]
    last = [i for i, (_, c) in enumerate(children) if not isinstance(c, _POOLS)]
    picks.append(last[-1] if last else len(children) - 1)
    return [prefix + children[i][0] for i in sorted(set(picks))]
