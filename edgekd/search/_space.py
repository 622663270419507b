"""The search space: zoo families x width multipliers x depth choices, x precisions x runtimes.

A *family* is a zoo student (``small:resnet8``) with the knobs its builder has: a width multiplier and a depth
choice. :data:`KNOBS` says how each knob becomes a registry name and builder arguments, so every candidate is an
ordinary :class:`~edgekd.specs.ModelSpec` that a model directory reloads without pickle:

* ``small:resnetN`` (CIFAR ResNets): depth 8 / 14 / 20 / 32 picks the name, the width multiplier is the
  builder's ``width_mult`` (channel counts in multiples of 8);
* ``small:tinycnn``: depth is the number of conv blocks (2..6), widths ``16, 32, 48, 64, 96, 128`` times the
  multiplier (multiples of 8);
* ``small:mobilenetv2_x0_5``: the multiplier scales its ``width_mult`` (0.5);
* any other zoo name: width 1 and its own depth only.

An *architecture* is trained once; a *candidate* is an architecture at one precision on one runtime, and has
one latency. :class:`SearchSpace` is the typed space (a YAML file narrows or extends it: ``families``,
``precisions``, ``runtimes``, ``prune``); :func:`default_space` is sized so that the whole search on the bundled
PneumoniaMNIST finishes within 30 minutes on 2 CPU cores.

Example:
    >>> space = SearchSpace.build("space.yaml")
    >>> [c.label for c in enumerate_candidates(space)][:2]
    ['resnet8-w0.5/fp32/ort', 'resnet8-w0.5/int8/ort']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekd._config import StageConfig
from edgekd.errors import InvalidInputError
from edgekd.students import MODELS

__all__ = [
    "Precision",
    "FamilySpace",
    "SearchSpace",
    "Architecture",
    "Candidate",
    "KNOBS",
    "default_space",
    "architectures",
    "enumerate_candidates",
]


class Precision(str, Enum):
    """The precision a candidate runs at (INT8: the quantization target's scheme)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


# How much a precision is trusted to keep the FP32 accuracy: among the variants of one architecture that fit the
# budget, the most precise one is deployed (INT8 is checked for parity when the winner is quantized).
PRECISION_ORDER = {Precision.FP32: 0, Precision.FP16: 1, Precision.INT8: 2}
RUNTIMES = ("ort", "openvino", "executorch")


def _mult8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def _resnet(width: float, depth: int | None) -> tuple[str, dict[str, Any]]:
    depth = depth or 8
    if depth not in (8, 14, 20, 32):
        raise InvalidInputError(f"small:resnet depth must be 8, 14, 20 or 32, got {depth}")
    return f"small:resnet{depth}", ({} if width == 1 else {"width_mult": float(width)})


_TINY = (16, 32, 48, 64, 96, 128)


def _tinycnn(width: float, depth: int | None) -> tuple[str, dict[str, Any]]:
    depth = depth or 4
    if not 2 <= depth <= len(_TINY):
        raise InvalidInputError(f"small:tinycnn depth (blocks) must be 2..{len(_TINY)}, got {depth}")
    return "small:tinycnn", {"widths": [_mult8(w * width) for w in _TINY[:depth]]}


def _mobilenetv2(width: float, depth: int | None) -> tuple[str, dict[str, Any]]:
    if depth is not None:
        raise InvalidInputError("small:mobilenetv2_x0_5 has no depth choice", "leave depths out for it")
    return "small:mobilenetv2_x0_5", ({} if width == 1 else {"width_mult": 0.5 * float(width)})


Knob = Callable[[float, "int | None"], tuple[str, dict[str, Any]]]
KNOBS: dict[str, Knob] = {
    "small:resnet8": _resnet,
    "small:resnet14": _resnet,
    "small:resnet20": _resnet,
    "small:resnet32": _resnet,
    "small:tinycnn": _tinycnn,
    "small:mobilenetv2_x0_5": _mobilenetv2,
}


def _fixed(name: str) -> Knob:
    def knob(width: float, depth: int | None) -> tuple[str, dict[str, Any]]:
        if width != 1 or depth is not None:
            raise InvalidInputError(
                f"{name} has no width or depth knob in the search",
                f"families with knobs: {', '.join(sorted(KNOBS))}",
            )
        return name, {}

    return knob


class FamilySpace(StageConfig):
    """One zoo family and its knobs.

    Attributes:
        model: the zoo name (``small:resnet8``; ``edgekd zoo`` lists them).
        widths: width multipliers (1: the zoo's own widths).
        depths: depth choices (None: the family's own depth; see :data:`KNOBS`).
    """

    model_config = ConfigDict(frozen=True)

    model: str = Field(min_length=1)
    widths: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    depths: list[int | None] = Field(default_factory=lambda: [None], min_length=1)

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        MODELS.get(v)  # an unknown name raises with the closest names
        return v

    @field_validator("widths")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(w <= 0 for w in v):
            raise ValueError(f"width multipliers must be positive, got {v}")
        return v

    def knob(self) -> Knob:
        return KNOBS.get(self.model) or _fixed(self.model)


class SearchSpace(StageConfig):
    """What the search may choose from (the ``space:`` of a search config, or a YAML file of its own).

    Attributes:
        families: zoo families with their width multipliers and depth choices.
        precisions: precisions to try (INT8 uses the search's quantization target; FP16 and INT8 run on
            ONNX Runtime only).
        runtimes: ``ort`` | ``openvino`` | ``executorch`` (FP32 on the last two).
        prune: prune the winner to the budget as a last step (NetAdapt-style, `edgekd prune
            --target-latency-ms`; FP32 ONNX Runtime winners, the precision that pruning measures).
    """

    model_config = ConfigDict(frozen=True)

    families: list[FamilySpace] = Field(default_factory=lambda: list(_DEFAULT_FAMILIES), min_length=1)
    precisions: list[Precision] = Field(default_factory=lambda: [Precision.FP32, Precision.INT8], min_length=1)
    runtimes: list[str] = Field(default_factory=lambda: ["ort"], min_length=1)
    prune: bool = True

    @field_validator("runtimes", mode="before")
    @classmethod
    def _comma(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("runtimes")
    @classmethod
    def _known_runtimes(cls, v: list[str]) -> list[str]:
        for r in v:
            if r not in RUNTIMES:
                raise ValueError(f"unknown runtime {r!r}; use {', '.join(RUNTIMES)}")
        return v


# Sized for the bundled PneumoniaMNIST on 2 cores: 13 architectures, from a 2-block tinycnn (~0.01 ms at batch 1)
# to a ResNet-14 at 1.5x (~4x the demo student's p50); a successive-halving schedule of 2 + 4 + 6 epochs on
# what fits stays within the 30-minute default (see benchmarks/search_budget.py).
_DEFAULT_FAMILIES = (
    FamilySpace(model="small:tinycnn", widths=[0.5, 1.0], depths=[2, 3, 4]),
    FamilySpace(model="small:resnet8", widths=[0.5, 1.0, 1.5], depths=[8, 14]),
    FamilySpace(model="small:mobilenetv2_x0_5", widths=[0.5, 1.0]),
)


def default_space() -> SearchSpace:
    """The default space (see the module docstring)."""
    return SearchSpace()


class Architecture(BaseModel):
    """A network of the space: a zoo name and builder arguments (trained once for all its candidates)."""

    model_config = ConfigDict(frozen=True)

    family: str
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    width: float = 1.0
    depth: int | None = None

    @property
    def label(self) -> str:
        depth = f"-d{self.depth}" if self.depth is not None and self.family == "small:tinycnn" else ""
        return f"{self.model.split(':', 1)[1]}{depth}-w{self.width:g}"

    @property
    def key(self) -> str:
        """Content hash of what builds it (name and arguments)."""
        text = json.dumps({"model": self.model, "kwargs": self.kwargs}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class Candidate(BaseModel):
    """An architecture at one precision on one runtime: what one latency measurement is about."""

    model_config = ConfigDict(frozen=True)

    arch: Architecture
    precision: Precision
    runtime: str

    @property
    def label(self) -> str:
        return f"{self.arch.label}/{self.precision.value}/{self.runtime}"

    @property
    def key(self) -> str:
        return f"{self.arch.key}-{self.precision.value}-{self.runtime}"


def architectures(space: SearchSpace) -> list[Architecture]:
    """Every architecture of ``space`` in order, each once (two knob settings may build the same network)."""
    out: dict[str, Architecture] = {}
    for fam in space.families:
        knob = fam.knob()
        for depth in fam.depths:
            for width in fam.widths:
                model, kwargs = knob(float(width), depth)
                arch = Architecture(family=fam.model, model=model, kwargs=kwargs, width=float(width), depth=depth)
                out.setdefault(arch.key, arch)
    return list(out.values())


def enumerate_candidates(space: SearchSpace) -> list[Candidate]:
    """Architectures x precisions x runtimes (FP16 and INT8 on ONNX Runtime only)."""
    out = []
    for arch in architectures(space):
        for runtime in space.runtimes:
            for precision in space.precisions:
                if precision is not Precision.FP32 and runtime != "ort":
                    continue
                out.append(Candidate(arch=arch, precision=precision, runtime=runtime))
    return out
