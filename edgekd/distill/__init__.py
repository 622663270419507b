"""Distillation: losses, feature taps, teacher-output cache and the training loop shared by every stage."""

from edgekd.distill._config import ClassWeighting, DeviceName, OptimizerName, TrainConfig
from edgekd.distill._loop import FitResult, fit, lr_at, predict, resolve_device
from edgekd.distill._objective import Objective, SupervisedObjective, task_loss
from edgekd.distill._train import class_weights, evaluate_split, finish_run, resolve_student, train_model

__all__ = [
    "ClassWeighting", "DeviceName", "OptimizerName", "TrainConfig",
    "FitResult", "fit", "lr_at", "predict", "resolve_device",
    "Objective", "SupervisedObjective", "task_loss",
    "class_weights", "evaluate_split", "finish_run", "resolve_student", "train_model",
]  # fmt: skip

# Distillation (issue 3): losses, feature taps, teachers, the teacher-output cache and `edgekd distill`.
from edgekd.distill._cache import TeacherCache, cache_fingerprint, topk_reconstruct  # noqa: E402
from edgekd.distill._distill import (  # noqa: E402
    DEFAULT_LOSSES,
    DistillObjective,
    build_distill_objective,
    distill_model,
)
from edgekd.distill._taps import FeatureTaps, check_layers, default_layer  # noqa: E402
from edgekd.distill.losses import (  # noqa: E402
    LOSSES,
    DistillLoss,
    FeatureLoss,
    LossBatch,
    LossTerm,
    ModelOutputs,
    list_losses,
    loss_params,
    parse_loss,
    parse_losses,
)
from edgekd.teachers._teacher import Teacher, load_teacher  # noqa: E402

__all__ += [
    "LOSSES", "DistillLoss", "FeatureLoss", "LossBatch", "LossTerm", "ModelOutputs",
    "list_losses", "loss_params", "parse_loss", "parse_losses",
    "FeatureTaps", "check_layers", "default_layer",
    "Teacher", "load_teacher",
    "TeacherCache", "cache_fingerprint", "topk_reconstruct",
    "DEFAULT_LOSSES", "DistillObjective", "build_distill_objective", "distill_model",
]  # fmt: skip
