"""Distillation: losses, feature taps, teacher-output cache and the training loop shared by every stage."""

from edgekd.distill._config import ClassWeighting, DeviceName, OptimizerName, TrainConfig
from edgekd.distill._loop import FitResult, fit, lr_at, predict, resolve_device
from edgekd.distill._objective import Objective, SupervisedObjective, task_loss
from edgekd.distill._train import class_weights, evaluate_split, finish_run, resolve_student, train_model

__all__ = [
    "ClassWeighting",
    "DeviceName",
    "OptimizerName",
    "TrainConfig",
    "FitResult",
    "fit",
    "lr_at",
    "predict",
    "resolve_device",
    "Objective",
    "SupervisedObjective",
    "task_loss",
    "class_weights",
    "evaluate_split",
    "finish_run",
    "resolve_student",
    "train_model",
]
