"""Feature taps: where to read a model's intermediate features, and a context manager that reads them.

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

:class:`FeatureTaps` (in the style of torchdistill's ``ForwardHookManager``) registers forward hooks on the
modules named by path, fills a dict ``{path: output}`` while the model runs, and removes every hook on exit,
also when the step raises. Losses receive that dict (in :class:`ModelOutputs`) and never touch the models.

Example:
    >>> with FeatureTaps(model, ["layer2", "layer3"]) as feats:
    ...     logits = model(x)
    >>> feats["layer3"].shape
    torch.Size([8, 64, 7, 7])
    >>> tap_points(torchvision.models.resnet18())
    ['layer1', 'layer2', 'layer3', 'layer4']
    >>> tap_points(torchvision.models.mobilenet_v2())
    ['features.1', 'features.3', 'features.6', 'features.13', 'features.18']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekd.errors import InvalidInputError, suggest

__all__ = ["tap_points", "FeatureTaps", "ModelOutputs", "check_layers", "default_layer"]

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


def _first_tensor(output):
    """Modules may return tuples or lists (e.g. attention blocks); the first tensor is the feature."""
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return output


def check_layers(model: nn.Module, paths: Iterable[str], who: str = "model") -> None:
    """Raise :class:`~edgekd.errors.InvalidInputError` for a path that is not a module of ``model``.

    The hint lists the close module paths and the model's tap points (the stage outputs).

    Args:
        model: the network.
        paths: module paths, e.g. ``["layer3", "features.6"]``.
        who: ``"student"`` or ``"teacher ..."``, for the message.
    """
    paths = list(paths)
    modules = dict(model.named_modules()) if paths else {}
    for path in paths:
        if path and path in modules:
            continue
        close = suggest(path, [p for p in modules if p])
        taps = tap_points(model)
        hint = (f"did you mean {', '.join(close)}? " if close else "") + f"tap points of the {who}: {', '.join(taps)}"
        raise InvalidInputError(f"unknown layer {path!r} in the {who}", hint + " (all paths: `edgekd inspect`)")


def default_layer(model: nn.Module, who: str = "model") -> str:
    """The last tap point of ``model`` (the final feature map before pooling), for losses given no layer."""
    taps = tap_points(model)
    if not taps:
        raise InvalidInputError(f"the {who} has no tap points", "name the layers with s=PATH,t=PATH")
    return taps[-1]


class FeatureTaps:
    """Context manager capturing module outputs into a dict keyed by module path.

    Args:
        model: the network to tap.
        paths: module paths; an unknown path raises before any hook is registered.
        who: ``"student"`` / ``"teacher"`` for error messages.

    The dict is cleared on entry; hooks are removed on exit whatever happens inside the block.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], *, who: str = "model") -> None:
        self.paths = list(dict.fromkeys(paths))
        check_layers(model, self.paths, who)
        self.model = model
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> dict[str, torch.Tensor]:
        self.features.clear()
        if not self.paths:  # nothing to tap: no hooks, no module walk (the common logit-only case)
            return self.features
        modules = dict(self.model.named_modules())
        try:
            for path in self.paths:
                self._handles.append(modules[path].register_forward_hook(self._hook(path)))
        except BaseException:
            self.remove()
            raise
        return self.features

    def _hook(self, path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self.features[path] = _first_tensor(output)

        return hook

    def remove(self) -> None:
        """Remove every hook this object registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()


@dataclass
class ModelOutputs:
    """What one model produced for a batch.

    Attributes:
        logits: ``[N, C]`` classifier outputs (``None`` when a loss does not need them).
        features: tapped module outputs keyed by module path (``"layer3"``).
    """

    logits: torch.Tensor | None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
