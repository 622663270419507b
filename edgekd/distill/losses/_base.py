"""The loss contract, the one loss registry and the ``NAME[:WEIGHT][,key=value...]`` term syntax.

Contract (STYLE.md point 10): a loss is an ``nn.Module`` called as
``loss(student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> Tensor`` (a scalar).
:class:`ModelOutputs` carries a model's logits and the features tapped from it (a dict keyed by module
path); :class:`LossBatch` carries the targets, the task and the epoch (for schedules such as DKD's
warm-up). Losses never reach into models: the objective runs the models under
:class:`~edgekd.distill.FeatureTaps` and hands the captured tensors over.

Three kinds of loss share the contract:

* ``task`` losses read the student's logits and the targets (``teacher`` is ``None``);
* ``logit`` losses compare student and teacher logits (with several teachers the objective calls them once
  per teacher and takes the weighted sum);
* ``feature`` losses compare tapped features; they name their layers with ``s=`` / ``t=`` (several paths
  joined by ``+``, paired in order) and are :meth:`FeatureLoss.bind`-ed to the feature shapes before
  training, which is where learned adapters are created.

Example:
    >>> term = parse_loss("kd:0.9,T=4")
    >>> term
    LossTerm(name='kd', weight=0.9, params={'T': 4.0})
    >>> loss = term.build()
    >>> value = loss(ModelOutputs(s_logits), ModelOutputs(t_logits), LossBatch(targets, Task.MULTICLASS))
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from edgekd.errors import InvalidInputError
from edgekd.registry import Registry
from edgekd.specs import Task
from edgekd.students import ModelOutputs

__all__ = [
    "LOSSES",
    "DistillLoss",
    "FeatureLoss",
    "LossBatch",
    "LossTerm",
    "ModelOutputs",
    "list_losses",
    "loss_params",
    "parse_loss",
    "parse_losses",
]

LOSSES: Registry[type[DistillLoss]] = Registry("loss")

_SYNTAX = "write losses as NAME[:WEIGHT][,key=value...], e.g. kd:0.9,T=4 or fitnet:1,s=layer3,t=layer3"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class LossBatch:
    """The batch-level context a loss may need.

    Attributes:
        targets: ``int64 [N]`` class indices, ``float [N, L]`` multi-hot labels for multi-label tasks, or
            ``int64 [N, H, W]`` masks for segmentation.
        task: the task of the data.
        epoch: 0-based epoch of the current step.
        total_epochs: length of the run in epochs (for warm-up schedules).
        indices: dataset indices of the samples (``None`` outside the training loop).
    """

    targets: torch.Tensor
    task: Task
    epoch: int = 0
    total_epochs: int = 1
    indices: torch.Tensor | None = None


class DistillLoss(nn.Module):
    """Base class of every registered loss; subclasses set :attr:`kind` and :attr:`tasks`.

    Constructor arguments are keyword-only with defaults; their names are the ``key=value`` parameters of
    the term syntax and the type of each default decides how a value is parsed.
    """

    kind: ClassVar[str] = "logit"  # "task" | "logit" | "feature"
    tasks: ClassVar[tuple[Task, ...]] = (Task.BINARY, Task.MULTICLASS, Task.MULTILABEL, Task.SEGMENTATION)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        raise NotImplementedError


class FeatureLoss(DistillLoss):
    """A loss on tapped features of one student/teacher layer pair or several.

    Args:
        s: student module paths joined by ``+`` (default: the student's last tap point).
        t: teacher module paths joined by ``+``, paired in order with ``s`` (default: the teacher's last tap point).
        teacher: which teacher (0-based) the features come from when several are given.
    """

    kind: ClassVar[str] = "feature"

    def __init__(self, *, s: str = "", t: str = "", teacher: int = 0) -> None:
        super().__init__()
        self.s_paths = [p for p in s.split("+") if p]
        self.t_paths = [p for p in t.split("+") if p]
        self.teacher = teacher
        if teacher < 0:
            raise InvalidInputError(f"teacher={teacher} must be >= 0", "teachers are numbered from 0")

    def resolve_layers(self, student_default: str, teacher_default: str) -> None:
        """Fill in the default layers and check that both sides name as many layers."""
        self.s_paths = self.s_paths or [student_default]
        self.t_paths = self.t_paths or [teacher_default]
        if len(self.s_paths) != len(self.t_paths):
            raise InvalidInputError(
                f"{type(self).__name__}: {len(self.s_paths)} student layers but {len(self.t_paths)} teacher layers",
                "pair the layers: s=layer2+layer3,t=layer2+layer3",
            )

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Create learned parts (adapters) from the feature shapes; called once before training."""

    def pairs(self, student: ModelOutputs, teacher: ModelOutputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(student.features[s], teacher.features[t]) for s, t in zip(self.s_paths, self.t_paths)]


@dataclass(frozen=True)
class LossTerm:
    """One weighted loss of an objective, as written on the command line.

    Attributes:
        name: registered loss name (see :func:`list_losses`).
        weight: multiplier of the loss in the total (>= 0).
        params: the explicitly given parameters, converted to the types of their defaults.
    """

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> DistillLoss:
        """A fresh loss module with these parameters."""
        return LOSSES.get(self.name)(**self.params)

    def __str__(self) -> str:
        extra = "".join(f",{k}={_fmt(v)}" for k, v in self.params.items())
        return f"{self.name}:{_fmt(self.weight)}{extra}"


def _fmt(v: Any) -> str:
    """Shortest text that reads back to the same value (``1`` for 1.0, ``0.9``, ``1e-05``): terms round-trip."""
    if isinstance(v, float):
        text = repr(v)
        return text[:-2] if text.endswith(".0") else text
    return str(v)


def loss_params(name: str) -> dict[str, Any]:
    """The parameters of a registered loss with their defaults.

    Example:
        >>> loss_params("dkd")
        {'alpha': 1.0, 'beta': 8.0, 'T': 4.0, 'warmup': 20.0, 'warmup_frac': 0.0833...}
    """
    cls = LOSSES.get(name)
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def list_losses() -> list[dict[str, Any]]:
    """One row per registered loss: name, kind, parameters with defaults, the first docstring line."""
    rows = []
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        rows.append({"name": name, "kind": cls.kind, "params": loss_params(name), "summary": doc[0] if doc else ""})
    return rows


def parse_loss(text: str) -> LossTerm:
    """Parse ``NAME[:WEIGHT][,key=value...]`` into a :class:`LossTerm`.

    Args:
        text: e.g. ``"ce"``, ``"kd:0.9,T=4"``, ``"dkd:1,beta=2,warmup=5"``, ``"fitnet:1,s=layer3,t=layer3"``.

    Raises:
        UnknownNameError: the loss is not registered (the hint suggests close names).
        InvalidInputError: a bad weight, an unknown or repeated parameter, a value of the wrong type.

    Example:
        >>> parse_loss("fitnet:1,s=layer2+layer3,t=layer2+layer3").params
        {'s': 'layer2+layer3', 't': 'layer2+layer3'}
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"empty loss {text!r}", _SYNTAX)
    head, *pieces = [p.strip() for p in text.strip().split(",")]
    name, _, weight_text = head.partition(":")
    name = name.strip().lower()
    if "=" in weight_text:  # "kd:T=4": no weight, the first parameter follows the colon
        pieces, weight_text = [weight_text, *pieces], ""
    if not _NAME.match(name):
        raise InvalidInputError(f"bad loss name {name!r} in {text!r}", _SYNTAX)
    weight = _parse_weight(text, weight_text)
    defaults = loss_params(name)
    params: dict[str, Any] = {}
    for piece in (p for p in pieces if p):
        key, eq, value = piece.partition("=")
        key = key.strip()
        if not eq or not key:
            raise InvalidInputError(f"bad piece {piece!r} in loss {text!r}: expected key=value", _SYNTAX)
        if key not in defaults:
            raise InvalidInputError(f"loss {name!r} has no parameter {key!r}", _valid_params(name, defaults))
        if key in params:
            raise InvalidInputError(f"parameter {key!r} given twice in loss {text!r}", _SYNTAX)
        params[key] = _convert(name, key, value.strip(), defaults[key])
    return LossTerm(name=name, weight=weight, params=params)


def parse_losses(texts: Sequence[str | LossTerm]) -> list[LossTerm]:
    """Parse several terms (a :class:`LossTerm` passes through); at least one is required."""
    terms = [t if isinstance(t, LossTerm) else parse_loss(t) for t in texts]
    if not terms:
        raise InvalidInputError("no loss given", "e.g. --loss ce:1 --loss kd:1,T=4")
    return terms


def _parse_weight(text: str, weight_text: str) -> float:
    if not weight_text.strip():
        return 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        raise InvalidInputError(f"bad weight {weight_text!r} in loss {text!r}", _SYNTAX) from None
    if not weight >= 0 or weight == float("inf"):
        raise InvalidInputError(f"loss weight must be a finite number >= 0, got {weight_text!r}", _SYNTAX)
    return weight


def _valid_params(name: str, defaults: dict[str, Any]) -> str:
    if not defaults:
        return f"{name} takes no parameters"
    return f"valid parameters of {name}: " + ", ".join(
        f"{k}={_fmt(v) if v != '' else '...'}" for k, v in defaults.items()
    )


def _convert(name: str, key: str, value: str, default: Any) -> Any:
    kind = type(default)
    try:
        if kind is bool:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if kind is int:
            return int(value)
        if kind is float:
            number = float(value)
            if number != number or abs(number) == float("inf"):
                raise ValueError(value)
            return number
    except ValueError:
        raise InvalidInputError(
            f"parameter {key}={value!r} of loss {name!r} is not a valid {kind.__name__}", f"e.g. {key}={_fmt(default)}"
        ) from None
    if not value:
        raise InvalidInputError(f"parameter {key} of loss {name!r} is empty", f"e.g. {key}=layer3")
    return value
