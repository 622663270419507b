"""The training engine: one runner for train, distil, pruning recovery and QAT; losses, taps, teacher cache.

* :class:`DistillConfig` (``RunSettings``; + :class:`TrainConfig`): one typed config per run; :func:`resolve_run_settings`
  applies defaults < YAML < flags for Python callers and the CLI alike;
* :func:`train_model` / :func:`distill_model` (:func:`run_training`): a whole run to a model directory;
* :class:`Trainer` / :func:`fit`: the loop itself, for any model and :class:`Objective`;
* :func:`finetune`: recovery fine-tuning of a compressed model (pruning recovery, QAT), with a teacher or not;
* :data:`LOSSES` and :func:`parse_loss`: the one loss registry; :class:`TeacherCache`: teacher logits on disk;
* hospital data: :func:`label_images` (teacher soft labels), ``RunSettings(unlabeled=...)`` (semi-supervised
  distillation, :class:`UnlabeledDistillObjective`), :func:`update_model` (incremental updates with LwF).

Example:
    >>> settings = resolve_run_settings({"student": "small:resnet8", "teacher": ["runs/teacher"], "epochs": 6})
    >>> card = distill_model(settings, "runs/student")
"""

from edgekd.distill._cache import TeacherCache, cache_fingerprint, topk_reconstruct
from edgekd.distill._checkpoint import CKPT_DIR, TrainState
from edgekd.distill._config import AmpDtype, ClassWeighting, DeviceName, OptimizerName, TrainConfig
from edgekd.distill._dist import DistContext, init_distributed, launch_nproc, per_rank_batch, under_launcher
from edgekd.distill._distill import DistillObjective, build_distill_objective
from edgekd.distill._finetune import finetune, finetune_objective
from edgekd.distill._label import LabelReport, label_images
from edgekd.distill._loop import FitResult, Schedule, Trainer, fit, lr_at, predict, resolve_device
from edgekd.distill._objective import Objective, SupervisedObjective, task_loss
from edgekd.distill._run import distill_model, is_resumable, run_training, train_model, work_dir
from edgekd.distill._settings import (
    DEFAULT_LOSSES,
    RUN_KEYS,
    CacheSettings,
    DistillConfig,
    LossTexts,
    RunSettings,
    TeacherText,
    check_losses,
    resolve_run_settings,
)
from edgekd.distill._train import class_weights, evaluate_split, finish_run, resolve_student
from edgekd.distill._unlabeled import UnlabeledDistillObjective
from edgekd.distill._update import LwFObjective, UpdateConfig, update_model
from edgekd.distill.losses import (
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

__all__ = [
    "ClassWeighting",
    "DeviceName",
    "OptimizerName",
    "TrainConfig",
    "AmpDtype",
    "DistContext",
    "init_distributed",
    "launch_nproc",
    "per_rank_batch",
    "under_launcher",
    "DistillConfig",
    "RunSettings",
    "CacheSettings",
    "check_losses",
    "LossTexts",
    "TeacherText",
    "resolve_run_settings",
    "RUN_KEYS",
    "DEFAULT_LOSSES",
    "run_training",
    "train_model",
    "distill_model",
    "work_dir",
    "is_resumable",
    "Trainer",
    "Schedule",
    "FitResult",
    "TrainState",
    "CKPT_DIR",
    "fit",
    "lr_at",
    "predict",
    "resolve_device",
    "Objective",
    "SupervisedObjective",
    "task_loss",
    "DistillObjective",
    "build_distill_objective",
    "finetune",
    "finetune_objective",
    "class_weights",
    "evaluate_split",
    "finish_run",
    "resolve_student",
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
    "TeacherCache",
    "cache_fingerprint",
    "topk_reconstruct",
    "label_images",
    "LabelReport",
    "UnlabeledDistillObjective",
    "UpdateConfig",
    "update_model",
    "LwFObjective",
]
