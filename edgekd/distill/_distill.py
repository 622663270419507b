"""Distillation: the objective that combines task, logit and feature losses, and `edgekd distill`.

:func:`build_distill_objective` turns a student, its preprocessing, teachers and loss terms into an
:class:`~edgekd.distill.Objective` for the shared training loop (:func:`~edgekd.distill.fit`); the
objective runs the student under feature taps, gets teacher outputs (live, or from a
:class:`~edgekd.distill.TeacherCache`) and returns the weighted total with every term for the progress
bar. The whole `edgekd distill` run is :func:`~edgekd.distill.distill_model`.

Several teachers: a logit loss is computed against each teacher and the results are combined with the
normalised teacher weights, ``L = sum_k w_k * loss(s, t_k)`` (for ``kd`` this has the gradient of KD towards
the weighted mean of the teachers' soft targets). A feature loss uses one teacher (``teacher=K``, default 0).

Teacher cache and feature losses: the cache holds logits only, and feature losses need the live teacher
every step, so a cache together with a feature loss is refused (it would save nothing).

Example:
    >>> objective = build_distill_objective(student, pre, Task.BINARY, [teacher], ["ce:1", "kd:1,T=4"])
    >>> result = fit(student, objective, data, cfg, "work", preprocess=pre)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgekd.distill._cache import TeacherCache
from edgekd.distill._objective import Objective
from edgekd.distill.losses import (
    CELoss,
    DistillLoss,
    FeatureLoss,
    LossBatch,
    LossTerm,
    ModelOutputs,
    parse_losses,
)
from edgekd.errors import InvalidInputError
from edgekd.specs import Preprocess, Task
from edgekd.students import FeatureTaps, check_layers, default_layer
from edgekd.teachers import Teacher

__all__ = ["DistillObjective", "build_distill_objective"]


class DistillObjective(Objective):
    """Weighted sum of loss terms over the student's and the teachers' outputs (see the module docstring).

    Teachers are kept outside the module tree: they are neither optimised nor saved in checkpoints. Loss
    modules (and FitNet adapters in them) are sub-modules, so the loop optimises and checkpoints them.

    Attributes:
        teacher_calls: teacher forward passes so far (a cache hit saves one).
    """

    def __init__(
        self,
        preprocess: Preprocess,
        task: Task,
        teachers: Sequence[Teacher],
        terms: Sequence[LossTerm],
        losses: Sequence[DistillLoss],
        *,
        teacher_weights: Sequence[float],
        cache: TeacherCache | None,
        student: nn.Module | None = None,
    ) -> None:
        super().__init__(preprocess)
        self.task, self.teachers, self.terms = task, list(teachers), list(terms)
        self.losses = nn.ModuleList(losses)
        self.teacher_weights, self.cache = list(teacher_weights), cache
        self.labels = _term_labels(self.terms)
        self.total_epochs = 1
        self.teacher_calls = 0
        feats = [m for m in losses if isinstance(m, FeatureLoss)]
        self._student_paths = list(dict.fromkeys(p for m in feats for p in m.s_paths))
        self._teacher_paths = {
            k: list(dict.fromkeys(p for m in feats if m.teacher == k for p in m.t_paths))
            for k in range(len(self.teachers))
        }
        self._needs_logits = any(m.kind == "logit" for m in losses)
        self._taps = FeatureTaps(student, self._student_paths, who="student") if student is not None else None

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.total_epochs = total_epochs
        for t in self.teachers:
            t.channels_last = self.channels_last
        if self.cache is not None:
            self.cache.flush()  # what the previous epoch computed is on disk before this one starts

    def augment_epoch(self, epoch: int) -> int:
        """With a cache of ``V`` views, epoch ``e`` replays the augmentation of view ``e % V``."""
        return self.cache.view_of(epoch) if self.cache is not None else epoch

    def forward(self, model, images, targets, indices=None, epoch: int = 0):
        # Teacher first: the student's activations are then still in cache when backward runs.
        teachers = self._teacher_outputs(images, indices, epoch)
        inner = model  # torch.compile and DistributedDataParallel wrap the student; the taps sit on the student
        for wrapper in ("_orig_mod", "module"):
            inner = getattr(inner, wrapper, inner)
        if self._taps is None or self._taps.model is not inner:
            self._taps = FeatureTaps(inner, self._student_paths, who="student")
        with self._taps as feats:
            logits = model(self.student_input(images))
        student = ModelOutputs(logits, dict(feats))
        batch = LossBatch(targets, self.task, epoch, self.total_epochs, indices)
        return self._combine(student, teachers, batch)

    def _combine(self, student: ModelOutputs, teachers: list[ModelOutputs], batch: LossBatch):
        total: torch.Tensor | float = 0.0
        terms: dict[str, torch.Tensor] = {}
        for label, term, loss in zip(self.labels, self.terms, self.losses):
            if loss.kind == "task":
                value = loss(student, None, batch)
            elif loss.kind == "logit":
                value = sum(w * loss(student, t, batch) for w, t in zip(self.teacher_weights, teachers) if w)
            else:
                value = loss(student, teachers[loss.teacher], batch)
            terms[label] = value.detach()
            total = total + term.weight * value
        return total, terms

    def _teacher_outputs(self, images: torch.Tensor, indices, epoch: int) -> list[ModelOutputs]:
        if self.cache is None or indices is None:
            return [self._run_teacher(k, images) for k in range(len(self.teachers))]
        if not self._needs_logits:
            return [ModelOutputs(None) for _ in self.teachers]
        view = self.cache.view_of(epoch)
        cached, hit = self.cache.lookup(view, indices)
        miss = ~hit
        n_miss = int(miss.sum())
        if n_miss == 0:  # the common case after the first pass: no teacher at all
            return [ModelOutputs(z.to(images.device)) for z in cached]
        computed = [
            self._run_teacher(k, images[miss.to(images.device)]).logits.float() for k in range(len(self.teachers))
        ]
        self.cache.store(view, torch.as_tensor(indices)[miss], computed)
        outs = []
        for z_hit, z_miss in zip(cached, computed):
            full = torch.empty(len(images), z_miss.shape[1], device=images.device, dtype=z_miss.dtype)
            full[miss.to(images.device)] = z_miss
            if n_miss < len(images):
                full[hit.to(images.device)] = z_hit.to(images.device)
            outs.append(ModelOutputs(full))
        return outs

    def _run_teacher(self, k: int, images: torch.Tensor) -> ModelOutputs:
        teacher = self.teachers[k]
        paths = self._teacher_paths.get(k, [])
        if not paths and not self._needs_logits:
            return ModelOutputs(None)
        self.teacher_calls += 1
        if teacher.kind == "onnx":
            return ModelOutputs(teacher.logits(images))
        return teacher.run(images, paths)


def _term_labels(terms: Sequence[LossTerm]) -> list[str]:
    """``kd``, ``fitnet``, ``fitnet_2``: one unique progress-bar label per term."""
    labels: list[str] = []
    for term in terms:
        label, n = term.name, 1
        while label in labels:
            n += 1
            label = f"{term.name}_{n}"
        labels.append(label)
    return labels


def _normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None or len(weights) == 0:
        return [1.0 / n] * n if n else []
    if len(weights) != n:
        raise InvalidInputError(
            f"{len(weights)} teacher weights for {n} teachers",
            "give one --teacher-weight per --teacher, in the same order",
        )
    if any(not w >= 0 for w in weights) or sum(weights) <= 0:
        raise InvalidInputError(f"teacher weights must be >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _check_terms(terms, modules, task: Task, teachers: Sequence[Teacher], cache: TeacherCache | None) -> None:
    for term, loss in zip(terms, modules):
        if task not in loss.tasks:
            other = {Task.MULTILABEL: "mlkd", Task.SEGMENTATION: "pixkd or cwd"}.get(task, "kd")
            raise InvalidInputError(f"loss {term.name!r} does not support {task.value} tasks", f"use {other} instead")
        if loss.kind != "task" and not teachers:
            raise InvalidInputError(f"loss {term.name!r} needs a teacher", "pass --teacher, or use only ce")
        if not isinstance(loss, FeatureLoss):
            continue
        if loss.teacher >= len(teachers):
            raise InvalidInputError(
                f"{term.name}: teacher={loss.teacher} but only {len(teachers)} teacher(s)",
                "teachers are numbered from 0 in --teacher order",
            )
        if teachers[loss.teacher].kind == "onnx":
            raise InvalidInputError(
                f"feature loss {term.name!r} needs a PyTorch teacher; "
                f"{teachers[loss.teacher].name} is ONNX (logits only)",
                "use logit losses (kd, dkd, dist, mlkd) with an ONNX teacher",
            )
        if cache is not None:
            raise InvalidInputError(
                f"feature loss {term.name!r} needs the live teacher every step, so the teacher "
                "cache (logits only) would save nothing",
                "drop --cache-teacher",
            )
    if cache is not None and cache.num_teachers != len(teachers):
        raise InvalidInputError(f"the teacher cache holds {cache.num_teachers} teacher(s), not {len(teachers)}")


@torch.no_grad()
def _feature_shapes(model: nn.Module, preprocess: Preprocess, paths: list[str], who: str) -> dict[str, torch.Size]:
    """Output shapes of the tapped modules on a dummy batch (eval mode: BN statistics stay untouched)."""
    if not paths:
        return {}
    was_training = model.training
    p = next(model.parameters(), None)
    x = torch.zeros(
        2,
        preprocess.data_channels,
        *preprocess.input_size,
        dtype=torch.uint8,
        device=p.device if p is not None else "cpu",
    )
    model.eval()
    try:
        with FeatureTaps(model, paths, who=who) as feats:
            model(preprocess(x))
    finally:
        model.train(was_training)
    return {k: v.shape for k, v in feats.items()}


def _bind_features(
    student: nn.Module, preprocess: Preprocess, teachers: Sequence[Teacher], modules: Sequence[DistillLoss]
) -> None:
    feats = [m for m in modules if isinstance(m, FeatureLoss)]
    for loss in feats:
        teacher = teachers[loss.teacher]
        loss.resolve_layers(default_layer(student, "student"), default_layer(teacher.model, f"teacher {teacher.name}"))
        check_layers(student, loss.s_paths, "student")
        check_layers(teacher.model, loss.t_paths, f"teacher {teacher.name}")
    for loss in feats:
        teacher = teachers[loss.teacher]
        s_shapes = _feature_shapes(student, preprocess, loss.s_paths, "student")
        t_shapes = _feature_shapes(teacher.model, teacher.preprocess, loss.t_paths, f"teacher {teacher.name}")
        loss.bind(s_shapes, t_shapes)


def build_distill_objective(
    student: nn.Module,
    preprocess: Preprocess,
    task: Task,
    teachers: Sequence[Teacher],
    losses: Sequence[LossTerm | str],
    *,
    teacher_weights: Sequence[float] | None = None,
    cache: TeacherCache | None = None,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> DistillObjective:
    """The distillation objective for :func:`~edgekd.distill.fit`.

    Args:
        student: the network being trained (any ``nn.Module``, e.g. a pruned model).
        preprocess: the student's preprocessing.
        task: the data's task (decides CE vs BCE and which losses apply).
        teachers: the teachers (see :func:`~edgekd.distill.load_teacher`).
        losses: terms as :class:`LossTerm` or strings (``"kd:0.9,T=4"``).
        teacher_weights: one weight per teacher (normalised to sum 1); default equal.
        cache: a teacher-output cache for logit losses.
        label_smoothing: for the ``ce`` term (unless it sets ``smoothing=``).
        class_weights: for the ``ce`` term.

    Raises:
        InvalidInputError: a loss that does not fit the task, a teacher-needing loss without teachers, a
            feature loss with an ONNX teacher or with a cache, an unknown layer (the hint lists tap points).

    Example:
        >>> objective = build_distill_objective(pruned, card.preprocess, card.task, [teacher],
        ...                                     [parse_loss("ce:1"), parse_loss("kd:1,T=4")])
        >>> result = fit(pruned, objective, data, cfg, out, preprocess=card.preprocess)
    """
    terms = parse_losses(losses)
    weights = _normalise_weights(teacher_weights, len(teachers))
    modules = [term.build() for term in terms]
    _check_terms(terms, modules, task, teachers, cache)
    for m in modules:
        if isinstance(m, CELoss):
            m.configure(label_smoothing=label_smoothing, class_weights=class_weights)
    _bind_features(student, preprocess, teachers, modules)
    return DistillObjective(
        preprocess, task, teachers, terms, modules, teacher_weights=weights, cache=cache, student=student
    )
