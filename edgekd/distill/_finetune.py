"""Recovery fine-tuning of a compressed model, with the teacher or with labels only.

Pruning (and quantization) remove capacity; a short fine-tuning recovers most of the accuracy. Distilling
from a teacher during recovery (by default the uncompressed model itself, as in Hinton et al. 2015 and the
"prune, then distill" recipe of e.g. Sanh et al. 2020) transfers the dark knowledge the labels lack and
recovers more than cross-entropy alone. Both go through the one training loop,
:class:`~edgekd.distill.Trainer`, so recovery has the same schedule, best-epoch selection and progress bar as
training.

Example:
    >>> teacher = load_teacher("runs/student", data=data)
    >>> history = finetune(pruned, card.preprocess, data, cfg, "work/step1", teacher=teacher)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.data import DataBundle
from edgekd.distill._cache import TeacherCache
from edgekd.distill._config import TrainConfig
from edgekd.distill._distill import build_distill_objective
from edgekd.distill._loop import fit
from edgekd.distill._objective import Objective, SupervisedObjective
from edgekd.distill._settings import DEFAULT_LOSSES, SEG_DEFAULT_LOSSES, SEG_TRAIN_LOSSES
from edgekd.distill._train import class_weights
from edgekd.specs import Preprocess, Task
from edgekd.teachers import Teacher

__all__ = ["finetune", "finetune_objective", "task_objective"]


def task_objective(
    model: nn.Module,
    preprocess: Preprocess,
    data: DataBundle,
    cfg: TrainConfig,
    teachers: Sequence[Teacher],
    losses: Sequence[str],
    *,
    teacher_weights: Sequence[float] | None = None,
    cache: TeacherCache | None = None,
) -> Objective:
    """The objective of a training run: plain supervised CE without teachers and with losses ``ce:1``, else
    the distillation objective; either way the task term takes ``cfg``'s class weighting and label smoothing."""
    weights = class_weights(data, cfg.class_weighting)
    if not teachers and list(losses) == ["ce:1"]:
        return SupervisedObjective(preprocess, data.task, label_smoothing=cfg.label_smoothing, class_weights=weights)
    return build_distill_objective(
        model,
        preprocess,
        data.task,
        teachers,
        list(losses),
        teacher_weights=teacher_weights,
        cache=cache,
        label_smoothing=cfg.label_smoothing,
        class_weights=weights,
    )


def finetune_objective(
    model: nn.Module,
    preprocess: Preprocess,
    data: DataBundle,
    *,
    teacher: Teacher | None,
    losses: Sequence[str] = DEFAULT_LOSSES,
    cfg: TrainConfig | None = None,
) -> Objective:
    """``losses`` (default ``ce:1`` + ``kd:1,T=4``) against ``teacher``, or plain CE when ``teacher`` is None.

    For segmentation data the defaults are ``ce + dice + pixkd`` with a teacher and ``ce + dice`` without one.
    The task term takes ``cfg``'s ``class_weighting`` and ``label_smoothing``, as in training (:func:`task_objective`).
    """
    cfg = cfg if cfg is not None else TrainConfig()
    seg = data.task is Task.SEGMENTATION
    if teacher is None:
        return task_objective(model, preprocess, data, cfg, [], list(SEG_TRAIN_LOSSES) if seg else ["ce:1"])
    if seg and tuple(losses) == DEFAULT_LOSSES:
        losses = SEG_DEFAULT_LOSSES
    return task_objective(model, preprocess, data, cfg, [teacher], losses)


def finetune(
    model: nn.Module,
    preprocess: Preprocess,
    data: DataBundle,
    cfg: TrainConfig,
    work_dir: str | Path,
    *,
    teacher: Teacher | None = None,
    losses: Sequence[str] = DEFAULT_LOSSES,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Fine-tune ``model`` in place for ``cfg.epochs`` and keep its best epoch (by ``cfg.select_metric``).

    Args:
        model: the compressed network (changed in place).
        preprocess: its preprocessing.
        data: the training data.
        cfg: the fine-tuning hyper-parameters.
        work_dir: where the loop writes its per-epoch checkpoint.
        teacher: distil from this teacher; None trains with the task loss only.
        losses: the loss terms with a teacher.
        progress: show the progress bar.

    Returns:
        The per-epoch history (losses and validation metrics).
    """
    objective = finetune_objective(model, preprocess, data, teacher=teacher, losses=losses, cfg=cfg)
    result = fit(model, objective, data, cfg, work_dir, preprocess=preprocess, progress=progress)
    model.load_state_dict(result.best_state)
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return [{**h, "best_epoch": result.best_epoch} for h in result.history]
