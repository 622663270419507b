"""Torchvision classification models, adapted for other input channels and for small images.

Every builder of ``torchvision.models.list_models(module=torchvision.models)`` is available as
``tv:NAME``. Three adaptations are applied on top of ``torchvision.models.get_model``:

* ``in_chans != 3``: the first convolution is replaced by one taking ``in_chans`` inputs. With
  pretrained weights its kernel is adapted as in timm's ``adapt_input_conv``: summed over the RGB
  channels for one input channel, otherwise repeated over the channels and rescaled by
  ``3 / in_chans`` so that the activation scale is preserved.
* ``small_input`` (inputs of at most 64 px), in the spirit of the CIFAR networks of He et al. 2016:

  - ResNet family (``resnet*``, ``resnext*``, ``wide_resnet*``): the 7x7 stride-2 stem becomes a 3x3
    stride-1 convolution (freshly initialised, also when pretrained) and the stem max-pool is removed;
  - MobileNetV2/V3, EfficientNet (V1 and V2), RegNet, ShuffleNetV2 and MNASNet: the first
    convolution gets stride 1 (its weights are kept) and ShuffleNetV2's stem max-pool is removed.

  Other families raise :class:`~edgekd.errors.InvalidInputError`.
* ``pretrained`` with ``num_classes`` different from the 1000 ImageNet classes: the ImageNet
  weights are loaded, then every classifier layer with 1000 outputs is replaced by a fresh one.

Inception-v3 and GoogLeNet are built without auxiliary heads unless ``aux_logits`` is passed, so that
every model returns one logits tensor.
"""

from __future__ import annotations

import inspect
import math
import re
import urllib.error
from typing import Any

import torch
import torchvision
from torch import nn

from edgekd.errors import DependencyError, InvalidInputError

__all__ = [
    "SMALL_INPUT_FAMILIES",
    "tv_names",
    "small_input_family",
    "build_torchvision",
    "adapt_input_conv",
    "set_input_channels",
    "make_small_input",
    "replace_classifier",
]

# name prefix -> how the stem is adapted for small inputs ("stem": new 3x3/s1 conv + no max-pool,
# "stride": first conv to stride 1 + no stem max-pool).
SMALL_INPUT_FAMILIES: dict[str, str] = {
    "resnet": "stem",
    "resnext": "stem",
    "wide_resnet": "stem",
    "mobilenet_v2": "stride",
    "mobilenet_v3": "stride",
    "efficientnet": "stride",
    "regnet": "stride",
    "shufflenet_v2": "stride",
    "mnasnet": "stride",
}

_DOWNLOAD_HINT = "run once with internet access, or pre-fill the torch hub cache (TORCH_HOME), or drop --pretrained"
_UNEXPECTED_KW = re.compile(r"unexpected keyword argument '(\w+)'")
# Builders whose model class swallows unknown **kwargs, so that a typo would pass silently (STYLE.md
# principle 4): family -> (model class, arguments the builder fills in, extra arguments of its config).
_SWALLOWING = {
    "mobilenet_v3": (
        "MobileNetV3",
        {"inverted_residual_setting", "last_channel"},
        {"width_mult", "reduced_tail", "dilated"},
    ),
    "convnext": ("ConvNeXt", {"block_setting"}, set()),
}


def tv_names() -> list[str]:
    """Names of all torchvision classification builders."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def small_input_family(name: str) -> str | None:
    """The small-input adaptation (``"stem"`` or ``"stride"``) of a torchvision name, or ``None``."""
    for prefix, kind in SMALL_INPUT_FAMILIES.items():
        if name.startswith(prefix):
            return kind
    return None


def build_torchvision(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    small_input: bool = False,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``tv:name`` with the adaptations described in the module docstring.

    Raises:
        InvalidInputError: unknown keyword argument, or ``small_input`` for an unsupported family.
        DependencyError: the pretrained weights could not be downloaded.
    """
    if small_input and small_input_family(name) is None:
        families = ", ".join(SMALL_INPUT_FAMILIES)
        raise InvalidInputError(
            f"small_input is not supported for tv:{name}", f"supported families: {families}; or use a small: model"
        )
    _check_swallowed_kwargs(name, kwargs)
    model = _construct(name, num_classes, pretrained, kwargs)
    if "aux_logits" not in kwargs:
        _drop_aux_heads(model)
    if in_chans != 3:
        set_input_channels(model, in_chans, adapt_weights=pretrained)
    if small_input:
        make_small_input(model, name)
    return model


def _construct(name: str, num_classes: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    if not pretrained:
        return _call_builder(name, dict(kwargs, weights=None, num_classes=num_classes))
    categories = len(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
    try:
        model = _call_builder(name, dict(kwargs, weights="DEFAULT"))
    except urllib.error.URLError as e:
        raise _download_error(name, e.reason) from e
    except OSError as e:
        raise _download_error(name, e) from e
    except RuntimeError as e:
        if not re.search(r"https?://|hash|PytorchStreamReader", str(e)):
            raise
        raise _download_error(name, e) from e
    if num_classes != categories:
        replace_classifier(model, categories, num_classes)
    return model


def _download_error(name: str, reason: object) -> DependencyError:
    first_line = (str(reason).strip().splitlines() or ["unknown error"])[0]
    return DependencyError(f"could not download pretrained weights for tv:{name}: {first_line}", _DOWNLOAD_HINT)


def _call_builder(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return torchvision.models.get_model(name, **kwargs)
    except TypeError as e:
        match = _UNEXPECTED_KW.search(str(e))
        if match is None:
            raise
        raise _unknown_kwarg(name, match.group(1)) from e


def _unknown_kwarg(name: str, key: str) -> InvalidInputError:
    return InvalidInputError(
        f"tv:{name} got an unknown keyword argument {key!r}",
        f"see the torchvision documentation of {name} for its arguments",
    )


def _check_swallowed_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    for prefix, (class_name, filled, extra) in _SWALLOWING.items():
        if not name.startswith(prefix):
            continue
        params = inspect.signature(getattr(torchvision.models, class_name)).parameters
        valid = {p for p, v in params.items() if v.kind is not v.VAR_KEYWORD} - filled | extra
        for key in kwargs:
            if key not in valid:
                raise _unknown_kwarg(name, key)


def _drop_aux_heads(model: nn.Module) -> None:
    # Inception-v3 / GoogLeNet return a namedtuple with auxiliary logits in training mode; the
    # distillation losses expect one tensor.
    if not getattr(model, "aux_logits", False):
        return
    model.aux_logits = False
    for attr in ("AuxLogits", "aux1", "aux2"):
        if hasattr(model, attr):
            setattr(model, attr, None)


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_path, _, attr = path.rpartition(".")
            return model.get_submodule(parent_path), attr, module
    raise InvalidInputError(f"{type(model).__name__} has no Conv2d input layer", "in_chans/small_input need a CNN")


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt an RGB kernel ``(O, 3, kH, kW)`` to ``in_chans`` input channels (timm's recipe).

    One channel: the sum over RGB (a grey image then gives the response of the RGB network).
    Otherwise: the RGB kernel is tiled over the channels and scaled by ``3 / in_chans``.
    """
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (weight.shape[1] / in_chans)


def set_input_channels(model: nn.Module, in_chans: int, *, adapt_weights: bool) -> None:
    """Replace the first convolution of ``model`` by one taking ``in_chans`` channels, in place."""
    parent, attr, conv = _first_conv(model)
    if conv.groups != 1:
        raise InvalidInputError(f"the first conv of {type(model).__name__} is grouped", "keep in_chans=3")
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    if adapt_weights:
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv(conv.weight, in_chans))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    setattr(parent, attr, new)
    if getattr(model, "transform_input", False):
        model.transform_input = False  # Inception's input transform assumes RGB


def make_small_input(model: nn.Module, name: str) -> None:
    """Adapt the stem of ``model`` (built from torchvision ``name``) for inputs of at most 64 px, in place."""
    kind = small_input_family(name)
    if kind == "stem":
        old = model.conv1
        model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    elif kind == "stride":
        _, _, conv = _first_conv(model)
        conv.stride = (1, 1)
        if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            model.maxpool = nn.Identity()
    else:
        raise InvalidInputError(f"small_input is not supported for tv:{name}", "use a small: model")


def replace_classifier(model: nn.Module, old_classes: int, num_classes: int) -> None:
    """Replace every classifier layer with ``old_classes`` outputs (Linear or 1x1 Conv) by a fresh one."""
    targets = []
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.out_features == old_classes:
                targets.append((parent, attr, nn.Linear(child.in_features, num_classes, bias=child.bias is not None)))
            elif isinstance(child, nn.Conv2d) and child.out_channels == old_classes and child.kernel_size == (1, 1):
                targets.append((parent, attr, nn.Conv2d(child.in_channels, num_classes, 1)))
    if not targets:
        raise InvalidInputError(
            f"cannot find the {old_classes}-way classifier of {type(model).__name__}",
            "build without pretrained weights",
        )
    for parent, attr, new in targets:
        setattr(parent, attr, new)
