"""Structural channel pruning on Torch-Pruning's dependency graph, stepped towards a target.

Torch-Pruning (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023) traces the model once
and groups every coupled parameter: removing output channel ``c`` of a convolution also removes input
channel ``c`` of its consumers, the matching batch-norm entries, and, through residual additions, the same
channel in every layer that shares that tensor. A group is removed as a whole, so the pruned network is an
ordinary smaller network (no masks) that exports and runs faster everywhere.

:class:`ChannelPruner` adds what a pruning *run* needs around Torch-Pruning's ``BasePruner``:

* layers that are never pruned: the classifier's outputs (the classes) and user-named modules, which keep
  every channel, input and output (groups that touch them are skipped);
* MACs/params targets, reached by pruning small increments of the channel ratio and re-measuring until a
  step's goal is met (:mod:`._target`); a latency run moves in MACs proposals (:meth:`ChannelPruner.prune_to`)
  that its caller measures;
* channel counts rounded to a multiple (``round_to``): a layer whose kept channels round below one multiple
  keeps one multiple (not, as in Torch-Pruning, its unrounded width), one narrower than the multiple keeps its
  width;
* gradients for the ``taylor`` criterion before each step.

Example:
    >>> pruner = ChannelPruner(model, (1, 1, 28, 28), importance="lamp",
    ...                        target=PruneTarget.from_options(target_macs=0.5), steps=2)
    >>> for k in range(pruner.steps):
    ...     record = pruner.step()  # then fine-tune before the next step
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from edgekd.errors import InvalidInputError
from edgekd.prune._importance import build_importance, needs_gradients
from edgekd.prune._target import PruneTarget, TargetKind
from edgekd.students import count_macs, count_params

__all__ = ["ChannelPruner", "find_classifier", "resolve_modules"]

# Increments per MACs/params run: each prunes ~max_layer_ratio/INCREMENTS of the channels (about 0.5 %).
INCREMENTS = 200


class _KeepingPruner(tp.pruner.BasePruner):
    """``BasePruner`` that also skips every group touching a frozen module (its inputs or outputs)."""

    def __init__(self, *args: Any, frozen: frozenset[nn.Module] = frozenset(), **kwargs: Any) -> None:
        self._frozen = frozen
        super().__init__(*args, **kwargs)

    def _check_pruning_ratio(self, group) -> bool:
        if any(dep.target.module in self._frozen for dep, _ in group):
            return False
        return super()._check_pruning_ratio(group)

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        # Torch-Pruning rounds the kept channels down to the multiple, to 0 when fewer remain than one multiple; its
        # group check then refuses to empty the layer, so the layer is not pruned at all and keeps a width that is
        # no multiple (48 with round_to=32 stays 48). Keep one multiple instead (48 -> 32), or the whole layer
        # when it is narrower than the multiple (16 stays 16).
        kept = current_channels - n_pruned
        kept = max(kept - kept % round_to, min(round_to, current_channels))
        return current_channels - kept


def _build_pruner(model: nn.Module, example: torch.Tensor, importance: str, **kwargs: Any) -> _KeepingPruner:
    """Trace the dependency graph; an architecture Torch-Pruning cannot trace is a clear input error."""
    try:
        return _KeepingPruner(model, example, build_importance(importance), **kwargs)
    except Exception as e:  # Torch-Pruning raises assorted errors (ZeroDivisionError, KeyError) on untraceable ops
        raise InvalidInputError(
            f"Torch-Pruning cannot trace the channel dependencies of this model ({type(e).__name__}: {e})",
            "an operation of this model is one Torch-Pruning cannot follow (channel shuffles or reshapes of the "
            "channel axis as in ShuffleNet, or a layer type it does not know, as in MONAI's BasicUNet); keep the "
            "offending blocks with --keep, or prune another architecture",
        ) from e


def find_classifier(model: nn.Module, num_classes: int) -> str:
    """Module path of the classifier: the last Linear/Conv layer with ``num_classes`` outputs.

    Raises:
        InvalidInputError: no such layer (the model's head is not a Linear or Conv layer).
    """
    found = None
    for name, m in model.named_modules():
        out = getattr(m, "out_features", None) if isinstance(m, nn.Linear) else None
        if isinstance(m, nn.Conv2d):
            out = m.out_channels
        if out == num_classes:
            found = name
    if found is None:
        raise InvalidInputError(
            f"cannot find the classifier (a Linear/Conv layer with {num_classes} outputs)",
            "name it with --keep so it is never pruned",
        )
    return found


def resolve_modules(model: nn.Module, paths: Sequence[str]) -> list[nn.Module]:
    """The modules named by ``paths`` (``"layer3"``, ``"fc"``).

    Raises:
        InvalidInputError: an unknown path (the hint lists the model's top-level modules).
    """
    modules = dict(model.named_modules())
    out = []
    for path in paths:
        if path not in modules or not path:
            top = ", ".join(n for n, _ in model.named_children())
            raise InvalidInputError(
                f"--keep names {path!r}, which the model lacks",
                f"use module paths as `edgekd inspect` prints them, e.g. {top}",
            )
        out.append(modules[path])
    return out


class ChannelPruner:
    """Prunes ``model`` in place, one step per call of :meth:`step`, towards ``target``.

    Args:
        model: the network (pruned in place).
        input_shape: ``(1, C, H, W)`` of one preprocessed sample (for tracing and counting MACs).
        importance: a criterion of :data:`~edgekd.prune.IMPORTANCE`.
        target: what to reach after the last step.
        steps: pruning steps (the caller fine-tunes between them).
        global_pruning: rank channels of all layers together (else each layer loses the same ratio).
        round_to: keep channel counts multiples of this (the width probe finds the target's; a layer narrower
            than it keeps its width).
        keep: module paths never pruned (inputs and outputs); the classifier's outputs are always kept.
        classifier: the classifier's path (default: found by :func:`find_classifier` from ``num_classes``).
        num_classes: the classifier's outputs.
        max_layer_ratio: no layer loses more than this fraction of its channels.
        grad_fn: called before each step when the criterion needs gradients (fills ``.grad``).
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        importance: str,
        target: PruneTarget,
        steps: int = 1,
        global_pruning: bool = True,
        round_to: int | None = None,
        keep: Sequence[str] = (),
        classifier: str | None = None,
        num_classes: int | None = None,
        max_layer_ratio: float = 0.9,
        grad_fn: Callable[[nn.Module], Any] | None = None,
    ) -> None:
        if round_to is not None and round_to < 1:
            raise InvalidInputError(f"--round-to must be a positive integer, got {round_to}")
        if not 0.0 < max_layer_ratio <= 1.0:
            raise InvalidInputError(f"max layer ratio must lie in (0, 1], got {max_layer_ratio}")
        if target.kind is TargetKind.RATIO and target.value > max_layer_ratio:
            raise InvalidInputError(f"channel ratio {target.value} exceeds the per-layer limit {max_layer_ratio}")
        self.model, self.input_shape, self.target, self.steps = model, tuple(input_shape), target, steps
        self.importance_name, self.grad_fn, self.round_to = importance, grad_fn, round_to
        self.goals = target.goals(steps) if target.kind is not TargetKind.LATENCY else []
        self.classifier = classifier or find_classifier(model, int(num_classes or 0))
        self.keep = list(keep)
        frozen = frozenset(m for mod in resolve_modules(model, self.keep) for m in mod.modules())
        head = resolve_modules(model, [self.classifier])
        device = next(model.parameters()).device
        example = torch.zeros(self.input_shape, device=device)
        ratio_target = target.kind is TargetKind.RATIO
        model.eval()
        self._pruner = _build_pruner(
            model,
            example,
            importance,
            global_pruning=global_pruning,
            pruning_ratio=target.value if ratio_target else max_layer_ratio,
            iterative_steps=steps if ratio_target else INCREMENTS,
            max_pruning_ratio=max_layer_ratio,
            ignored_layers=[*head, *frozen],
            round_to=round_to,
            frozen=frozen,
        )
        self.base = self.measure()
        self.done = 0

    def measure(self) -> dict[str, int]:
        """Current parameters and MACs (per sample) of the model."""
        return {"params": count_params(self.model), "macs": count_macs(self.model, self.input_shape)}

    @property
    def _key(self) -> str:
        return "params" if self.target.kind is TargetKind.PARAMS else "macs"  # latency runs move in MACs

    @property
    def exhausted(self) -> bool:
        """True when every increment is used: no layer can lose more channels within ``max_layer_ratio``."""
        return self._pruner.current_step >= self._pruner.iterative_steps

    def _reached(self, goal: float, now: dict[str, int]) -> bool:
        return now[self._key] <= goal * self.base[self._key]

    def _approach(self, goal: float) -> tuple[int, dict[str, int]]:
        """Raise the channel ratio increment by increment until the MACs/params goal is met.

        To save re-measurements the pruner jumps over increments: after each move it estimates the
        measure's drop per increment and jumps half of the estimated remaining distance, but at most twice
        its previous jump (channels of different layers cost very different MACs, so one estimate can be
        far off); it closes in geometrically and the last moves are single increments.
        """
        key = self._key
        pruner, moves, jump = self._pruner, 0, 1
        now = self.measure()
        slope = None  # measure removed per increment, over the last move
        while not self._reached(goal, now) and pruner.current_step < pruner.iterative_steps:
            remaining = now[key] - goal * self.base[key]
            if slope:
                jump = min(2 * jump, max(1, int(0.5 * remaining / slope)))
            start = pruner.current_step
            pruner.current_step = min(pruner.iterative_steps, start + jump) - 1  # step() adds the last one
            pruner.step()
            before, now = now[key], self.measure()
            slope = (before - now[key]) / (pruner.current_step - start) or None
            moves += 1
        return moves, now

    def step(self) -> dict[str, Any]:
        """Prune one step (towards this step's goal); returns the measures after it.

        Raises:
            InvalidInputError: called more than ``steps`` times.
        """
        if self.target.kind is TargetKind.LATENCY:
            raise InvalidInputError("a latency target is pruned by measured proposals (prune_to), not by steps")
        if self.done >= self.steps:
            raise InvalidInputError(f"all {self.steps} pruning steps are done")
        goal = self.goals[self.done]
        self.model.eval()
        if needs_gradients(self.importance_name) and self.grad_fn is not None:
            self.grad_fn(self.model)
        if self.target.kind is TargetKind.RATIO:
            self._pruner.step()
            increments, now = 1, self.measure()
        else:
            increments, now = self._approach(goal)
        self.model.zero_grad(set_to_none=True)
        self.done += 1
        return {
            "step": self.done,
            "goal": goal,
            "increments": increments,
            **now,
            "macs_kept": now["macs"] / self.base["macs"],
            "params_kept": now["params"] / self.base["params"],
            "goal_met": self.target.kind is TargetKind.RATIO or self._reached(goal, now),
        }

    def prune_to(self, macs_kept: float) -> dict[str, Any]:
        """One proposal of a latency run: prune until at most ``macs_kept`` of the original MACs remain.

        The caller measures the latency afterwards and decides whether to propose again (NetAdapt). When the
        pruner is :attr:`exhausted` first, the record's ``goal_met`` is false.
        """
        if self.target.kind is not TargetKind.LATENCY:
            raise InvalidInputError("prune_to is for latency targets; use step() for ratio/MACs/params targets")
        self.model.eval()
        if needs_gradients(self.importance_name) and self.grad_fn is not None:
            self.grad_fn(self.model)
        increments, now = self._approach(macs_kept)
        self.model.zero_grad(set_to_none=True)
        self.done += 1
        return {
            "step": self.done,
            "goal": macs_kept,
            "increments": increments,
            **now,
            "macs_kept": now["macs"] / self.base["macs"],
            "params_kept": now["params"] / self.base["params"],
            "goal_met": self._reached(macs_kept, now),
        }
