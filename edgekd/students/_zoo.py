"""The model zoo: one registry of builders keyed by source-qualified names.

Sources (STYLE.md principle 3):

* ``tv:NAME``: every torchvision classification model (see :mod:`._torchvision`);
* ``timm:NAME``: every timm model, when timm is installed (see :mod:`._timm`);
* ``monai:bundle``: a MONAI network rebuilt from a bundle's ``network_def`` (``kwargs={"network_def": ...}``),
  when monai is installed (see :mod:`._monai`; made by ``edgekd import BUNDLE_DIR``);
* ``small:NAME``: compact networks for small images written in this package (CIFAR ResNets, WRNs,
  a small-image MobileNetV2, ``tinycnn``) plus ``small:<tv name>``, the torchvision model adapted for
  inputs of at most 64 px (``small:resnet18`` is ``tv:resnet18`` with ``small_input=True``).

Every registered builder has the keyword-only signature
``builder(*, num_classes, in_chans=3, small_input=False, pretrained=False, **kwargs)`` and rejects
unknown keyword arguments. The registry metadata of each name holds ``source``, ``small_input``,
``student``, ``base`` (the ``tv:`` name of a ``small:<tv>`` variant) and ``description``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgeKDError, InvalidInputError, suggest
from edgekd.registry import Registry
from edgekd.specs import ModelSpec
from edgekd.students import _cifar_resnet, _small_mobilenetv2, _tinycnn, _unet, _wrn
from edgekd.students._counting import count_macs, count_params
from edgekd.students._monai import build_monai
from edgekd.students._timm import build_timm, timm_available, timm_names
from edgekd.students._torchvision import build_torchvision, small_input_family, tv_names

__all__ = [
    "MODELS",
    "SOURCES",
    "MAX_INPUT_SIZE",
    "parse_model_name",
    "build_model",
    "check_input_size",
    "check_spec_input_size",
    "min_input_size",
    "MIN_INPUT_SIZE",
    "probe_forward",
    "list_models",
    "is_student",
    "zoo_rows",
    "model_task",
]

Builder = Callable[..., nn.Module]
MODELS: Registry[Builder] = Registry("model")
SOURCES = ("tv", "timm", "small", "monai")

_PREFIX_HINT = "prefix the source, e.g. tv:resnet18 or small:resnet8x4"
_RESERVED = {"num_classes", "in_chans", "small_input", "pretrained", "weights", "progress"}
_NATIVE: dict[str, Callable[..., nn.Module]] = {
    "resnet8": _cifar_resnet.resnet8,
    "resnet14": _cifar_resnet.resnet14,
    "resnet20": _cifar_resnet.resnet20,
    "resnet32": _cifar_resnet.resnet32,
    "resnet8x4": _cifar_resnet.resnet8x4,
    "resnet32x4": _cifar_resnet.resnet32x4,
    "wrn_16_2": _wrn.wrn_16_2,
    "wrn_40_2": _wrn.wrn_40_2,
    "mobilenetv2_x0_5": _small_mobilenetv2.mobilenetv2_x0_5,
    "tinycnn": _tinycnn.tinycnn,
}
# Mobile-regime architectures (by name) counted as students among tv:/timm: models.
_MOBILE_PREFIXES = ("mobilenet", "mobilevit", "mobileone", "shufflenet", "mnasnet", "squeezenet", "ghostnet", "lcnet")
_MOBILE_NAMES = {"efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf"}
_timm_state = {"registered": False}


def _is_mobile(bare: str) -> bool:
    return bare.startswith(_MOBILE_PREFIXES) or bare in _MOBILE_NAMES


def _reject_unknown_kwargs(full_name: str, kwargs: dict[str, Any], valid: list[str]) -> None:
    for key in kwargs:
        if key in valid:
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid arguments: {', '.join(valid) or 'none'}"
        raise InvalidInputError(f"{full_name} got an unknown keyword argument {key!r}", hint)


def _native_builder(name: str, fn: Callable[..., nn.Module]) -> Builder:
    valid = [p for p in inspect.signature(fn).parameters if p not in ("num_classes", "in_chans")]

    def build(
        *, num_classes: int, in_chans: int = 3, small_input: bool = False, pretrained: bool = False, **kwargs: Any
    ) -> nn.Module:
        # small_input is accepted and ignored: these networks are built for small images.
        if pretrained:
            raise InvalidInputError(f"small:{name} has no pretrained weights", "drop --pretrained: train or distil it")
        _reject_unknown_kwargs(f"small:{name}", kwargs, valid)
        return fn(num_classes=num_classes, in_chans=in_chans, **kwargs)

    build.__name__ = name
    build.__doc__ = fn.__doc__
    return build


def _small_tv_builder(name: str) -> Builder:
    def build(
        *, num_classes: int, in_chans: int = 3, small_input: bool = True, pretrained: bool = False, **kwargs: Any
    ) -> nn.Module:
        return build_torchvision(
            name, num_classes=num_classes, in_chans=in_chans, small_input=True, pretrained=pretrained, **kwargs
        )

    build.__name__ = f"small_{name}"
    return build


def _first_doc_line(fn: Callable[..., Any]) -> str:
    lines = (fn.__doc__ or "").strip().splitlines()
    return lines[0] if lines else ""


def _add(
    name: str,
    builder: Builder,
    *,
    student: bool,
    base: str | None = None,
    description: str = "",
    task: str | None = "classification",
) -> None:
    source = name.split(":", 1)[0]
    meta = dict(source=source, small_input=source == "small", student=student, base=base, description=description)
    MODELS.add(name, builder, **meta, task=task)


def _register_segmentation() -> None:
    """``small:unet_wN`` (U-Nets of base width N) and torchvision's segmentation heads (``task`` segmentation)."""
    for w in _unet.UNET_WIDTHS:
        desc = f"U-Net, base width {w} (Ronneberger et al. 2015), bilinear decoder"
        _add(
            f"small:unet_w{w}",
            _native_builder(f"unet_w{w}", partial(_unet.unet, width=w)),
            student=True,
            description=desc,
            task="segmentation",
        )
    for name in _unet.TV_SEG_NAMES:
        builder = partial(_unet.build_tv_segmentation, name)
        _add(
            f"tv:{name}",
            builder,
            student=name.startswith("lraspp"),
            description=f"torchvision {name}",
            task="segmentation",
        )


def _register_builtin() -> None:
    for name, fn in _NATIVE.items():
        _add(f"small:{name}", _native_builder(name, fn), student=True, description=_first_doc_line(fn))
    for name in tv_names():
        _add(
            f"tv:{name}", partial(build_torchvision, name), student=_is_mobile(name), description=f"torchvision {name}"
        )
        if small_input_family(name) and f"small:{name}" not in MODELS:
            desc = f"torchvision {name} with a small-input stem"
            _add(f"small:{name}", _small_tv_builder(name), student=True, base=f"tv:{name}", description=desc)
    _register_segmentation()


def _register_timm() -> None:
    """Register every timm architecture (raises DependencyError when timm is missing)."""
    if _timm_state["registered"]:
        return
    for name in timm_names():
        _add(f"timm:{name}", partial(build_timm, name), student=_is_mobile(name), description=f"timm {name}")
    _timm_state["registered"] = True


def _register_monai() -> None:
    """Register ``monai:bundle`` (its builder imports monai lazily; not a student, never in the zoo listing)."""
    if "monai:bundle" not in MODELS:
        desc = "MONAI bundle network_def"  # any task: the data decides
        _add("monai:bundle", partial(build_monai, "bundle"), student=False, description=desc, task=None)


_register_builtin()


def parse_model_name(name: str) -> tuple[str, str]:
    """Split a source-qualified model name: ``"tv:resnet18"`` -> ``("tv", "resnet18")``.

    Raises:
        InvalidInputError: no ``source:`` prefix (the message suggests full names), an unknown
            source, or nothing after the prefix.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError(f"empty model name {name!r}", _PREFIX_HINT)
    if ":" not in name:
        close = suggest(name, MODELS.names())
        extra = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InvalidInputError(f"model name {name!r} has no source prefix{extra}", _PREFIX_HINT)
    source, bare = name.split(":", 1)
    source, bare = source.strip().lower(), bare.strip()
    if source not in SOURCES:
        raise InvalidInputError(
            f"unknown model source {source!r} in {name!r}", "use one of tv, timm, small, monai, e.g. tv:resnet18"
        )
    if not bare:
        raise InvalidInputError(f"model name {name!r} has nothing after the prefix", _PREFIX_HINT)
    return source, bare


def build_model(spec: ModelSpec, *, pretrained: bool = False) -> nn.Module:
    """Build the network described by ``spec`` (in training mode, on the CPU).

    Args:
        spec: name, ``num_classes``, ``in_chans``, ``small_input`` and extra builder ``kwargs``.
        pretrained: load the source's default pretrained weights (needs internet or a filled cache).

    Raises:
        InvalidInputError: bad name or prefix, unknown or reserved kwargs, pretrained ``small:`` student,
            unsupported ``small_input``.
        UnknownNameError: the name is not registered (the hint suggests the closest names).
        DependencyError: timm is missing, or the pretrained weights cannot be downloaded.

    Example:
        >>> build_model(ModelSpec(name="small:resnet8x4", num_classes=10))
    """
    source, bare = parse_model_name(spec.name)
    reserved = sorted(_RESERVED & set(spec.kwargs))
    if reserved:
        raise InvalidInputError(
            f"kwargs of {spec.name} may not set {reserved[0]!r}",
            "use the ModelSpec fields num_classes, in_chans, small_input and the pretrained flag",
        )
    common = dict(num_classes=spec.num_classes, in_chans=spec.in_chans, small_input=spec.small_input)
    if source == "timm":
        _register_timm()
        MODELS.get(f"timm:{bare.split('.', 1)[0]}")  # a pretrained tag may follow the architecture
        builder: Builder = partial(build_timm, bare)
    elif source == "monai":
        _register_monai()
        builder = partial(build_monai, bare)
    else:
        builder = MODELS.get(f"{source}:{bare}")
    try:
        return builder(pretrained=pretrained, **common, **spec.kwargs)
    except (EdgeKDError, NotImplementedError):
        raise  # NotImplementedError: an op without meta-device support (zoo_rows falls back to the CPU)
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError, IndexError, KeyError) as e:
        # A builder that chokes on a value (a string width, a dropout of 2, an impossible group count):
        # the arguments are the user's, so this is invalid input, not a bug.
        given = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items()) or f"num_classes={spec.num_classes}"
        raise InvalidInputError(
            f"cannot build {spec.name} with {given}: {_first_line(e)}",
            "check the model's keyword arguments and their types",
        ) from e


MAX_INPUT_SIZE = 4096  # pixels per side: larger is a typo, not an edge model's input
# edgekd's own floor: the drift reference of every model directory takes image statistics with a 3x3 Laplacian
# on reflect padding, which needs 2 pixels per side.
MIN_INPUT_SIZE = 2
_PROBE_SIZES = (8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)
_STRIDED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def probe_forward(model: nn.Module, shape: tuple[int, ...]) -> str | None:
    """Run one forward pass on zeros of ``shape`` (eval mode, no grad, mode restored); the failure, or None.

    Example:
        >>> probe_forward(build_model(ModelSpec(name="tv:resnet18", num_classes=2)), (1, 3, 224, 224)) is None
        True
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=device))
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError, ZeroDivisionError) as e:
        return _first_line(e)
    finally:
        model.train(training)
    return None


def _input_problem(model: nn.Module, shape: tuple[int, ...]) -> str | None:
    """Why ``model`` cannot take zeros of ``shape`` (NCHW): the forward fails, or a strided layer gets a map
    smaller than its stride (padding keeps such a network running on 1-pixel maps, downsampling nothing real), or
    the image is below :data:`MIN_INPUT_SIZE`. None when it can."""
    found: list[str] = []

    def pre_hook(name: str, module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        stride = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
        if found or not torch.is_tensor(x) or x.dim() != 4:
            return
        size = tuple(x.shape[-2:])
        if any(st > 1 and d < st for d, st in zip(size, stride)):
            found.append(f"its layer {name} (stride {stride[0]}) would get a {size[0]}x{size[1]} map")

    handles = [
        m.register_forward_pre_hook(partial(pre_hook, n))
        for n, m in model.named_modules()
        if isinstance(m, _STRIDED) and m.stride is not None
    ]
    try:
        reason = probe_forward(model, shape)
    finally:
        for h in handles:
            h.remove()
    if reason or found:
        return reason or found[0]
    if min(shape[2:]) < MIN_INPUT_SIZE:
        return f"edgekd needs at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} px (the drift reference's image statistics)"
    return None


def min_input_size(model: nn.Module, in_chans: int, *, above: int = 0) -> int | None:
    """The smallest square side above ``above`` that ``model`` takes (see :func:`check_input_size`), or None.

    The first working size among common ones (8, 16, ... 512), then a bisection below it: a network's floor is
    its downsampling (``tv:resnet18`` halves the image five times: 17 px, so that its last stride-2 stage still
    gets 2 px), or a fixed size (a ViT: its patch grid).

    Example:
        >>> min_input_size(build_model(ModelSpec(name="tv:resnet18", num_classes=2)), 3)
        17
    """

    def takes(side: int) -> bool:
        return _input_problem(model, (1, in_chans, side, side)) is None

    hi = next((s for s in _PROBE_SIZES if s > above and takes(s)), None)
    if hi is None:
        return None
    lo = max([above, *(s for s in _PROBE_SIZES if s < hi)])
    while hi - lo > 1:  # smallest working side in (lo, hi]: lo fails (or is `above`), hi works
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if takes(mid) else (mid, hi)
    return hi


def check_input_size(model: nn.Module, name: str, input_size: tuple[int, int], in_chans: int) -> None:
    """Refuse an input size the network cannot take, found by dry forward passes at batch 1.

    Every architecture has its own floor, so the check runs the model rather than keeping a table: the forward
    must run (``tv:inception_v3`` needs 75 px; a ViT wants exactly its image size) and every strided layer must
    get a map at least its stride wide (``tv:resnet18`` halves the image five times, so it needs 17 px for its
    last stride-2 stage to see 2 px; below, padding keeps it running on 1-pixel maps that carry nothing). On a
    model built on the ``meta`` device (:func:`check_spec_input_size`) the passes cost no memory or compute.

    Raises:
        InvalidInputError: a size outside 1..:data:`MAX_INPUT_SIZE`, or one the model cannot take; the hint
            names the smallest size it takes (exit 3).

    Example:
        >>> check_input_size(model, "tv:resnet18", (1, 1), 3)  # raises: its smallest input is 17x17 px
    """
    h, w = (int(v) for v in input_size)
    if min(h, w) < 1 or max(h, w) > MAX_INPUT_SIZE:
        raise InvalidInputError(f"input size {h}x{w} is outside 1..{MAX_INPUT_SIZE} px", "e.g. --input-size 224")
    reason = _input_problem(model, (1, in_chans, h, w))
    if reason is None:
        return
    least = min_input_size(model, in_chans, above=min(h, w))
    hint = (
        f"the smallest input {name} takes is {least}x{least} px: pass --input-size {least}"
        if least
        else "choose another input size or model"
    )
    raise InvalidInputError(f"{name} cannot run at input size {h}x{w}: {reason}", hint)


def check_spec_input_size(spec: ModelSpec, input_size: tuple[int, int]) -> None:
    """:func:`check_input_size` before building the model: on a copy built on the ``meta`` device (no memory, no
    weight initialisation; on the CPU where the builder or an op has no meta support).

    Raises:
        InvalidInputError: as :func:`check_input_size`, or as :func:`build_model` for a bad spec.
    """
    try:
        with torch.device("meta"):
            model = build_model(spec)
        check_input_size(model, spec.name, input_size, spec.in_chans)
    except NotImplementedError:  # e.g. an op without a meta kernel: the real thing at batch 1
        check_input_size(build_model(spec), spec.name, input_size, spec.in_chans)


def list_models(source: str | None = None) -> list[str]:
    """Sorted registered names, all or of one source (timm names only when timm is installed).

    Raises:
        InvalidInputError: unknown source.
        DependencyError: ``source="timm"`` and timm is not installed.
    """
    if source is None:
        if timm_available():
            _register_timm()
        return MODELS.names()
    if source not in SOURCES:
        raise InvalidInputError(f"unknown model source {source!r}", "use one of tv, timm, small")
    if source == "timm":
        _register_timm()
    return [n for n in MODELS.names() if n.startswith(f"{source}:")]


def is_student(name: str) -> bool:
    """Whether ``name`` is a compact student: any ``small:`` model, or a mobile-regime tv/timm network.

    Mobile-regime means MobileNet, ShuffleNet, MNASNet, SqueezeNet, EfficientNet-B0 and the 400 MF
    RegNets (and, for timm, also MobileViT, MobileOne, GhostNet and LCNet). Everything else is
    teacher-sized.

    Raises:
        InvalidInputError / UnknownNameError: as :func:`parse_model_name`; unknown tv/small names.
    """
    source, bare = parse_model_name(name)
    if source == "timm":
        return _is_mobile(bare.split(".", 1)[0])
    return bool(MODELS.meta(f"{source}:{bare}")["student"])


def model_task(name: str) -> str | None:
    """``"segmentation"`` or ``"classification"`` for a registered tv/small name; None when unknown (timm, monai).

    Example:
        >>> model_task("small:unet_w8"), model_task("small:resnet8")
        ('segmentation', 'classification')
    """
    source, bare = parse_model_name(name)
    full = f"{source}:{bare}"
    return MODELS.meta(full).get("task") if full in MODELS else None


def default_zoo_names() -> list[str]:
    """The models of ``edgekd zoo`` without names: the ``small:`` students and the tv mobile nets."""
    return [
        n for n in MODELS.names() if MODELS.meta(n)["student"] and MODELS.meta(n)["base"] is None and n[:3] != "tim"
    ]


def zoo_rows(names: list[str] | None, *, input_size: int, in_chans: int, num_classes: int) -> list[dict]:
    """One row per model for ``edgekd zoo``: name, source, params, MACs at the input size, flags.

    Models are built on the ``meta`` device when their builder allows it (no memory, no weight
    initialisation), so even the largest torchvision models are described in well under a second.

    Args:
        names: models to describe; ``None`` gives :func:`default_zoo_names`.
        input_size: square input side in pixels used for the MACs.
        in_chans: input channels.
        num_classes: classifier outputs.

    Returns:
        Dicts with ``name``, ``source``, ``params``, ``macs`` (per image; ``None`` when the model cannot
        run at this size, with the reason in ``note``), ``small_input``, ``student`` and ``note``.
    """
    rows = []
    for name in default_zoo_names() if names is None else names:
        source, bare = parse_model_name(name)
        spec = ModelSpec(name=name, num_classes=num_classes, in_chans=in_chans)
        shape = (1, in_chans, input_size, input_size)
        try:
            params, macs, note = _measure(spec, "meta", shape)
        except NotImplementedError:  # a builder or an op without meta support (e.g. RegNet's widths)
            params, macs, note = _measure(spec, "cpu", shape)
        small = source == "small" or bool(MODELS.meta(f"{source}:{bare.split('.', 1)[0]}")["small_input"])
        row = {"name": f"{source}:{bare}", "source": source, "params": params, "macs": macs}
        rows.append(row | {"small_input": small, "student": is_student(name), "note": note})
    return rows


def _measure(spec: ModelSpec, device: str, shape: tuple[int, ...]) -> tuple[int, int | None, str | None]:
    with torch.device(device):
        model = build_model(spec)
    try:
        return count_params(model), count_macs(model, shape), None
    except NotImplementedError:
        raise
    except (RuntimeError, ValueError, AssertionError) as e:  # the input is too small for this network
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return count_params(model), None, f"cannot run at {shape[-2]}x{shape[-1]}: {reason}"
