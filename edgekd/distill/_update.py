"""Incremental updates (`edgekd update`): fine-tune a model directory on new data, Learning without Forgetting.

Li & Hoiem, "Learning without Forgetting" (ECCV 2016; TPAMI 2018): before the update, the old model's
responses on the *new* images are the targets that keep its old behaviour; the updated model minimises

    L = CE(s(x), y) + lambda * KL(softmax(t_old(x) / T) || softmax(s(x)[:, old] / T))

where ``s(x)[:, old]`` are the updated model's logits of the old classes, ``T = 2`` and ``lambda`` the
``--lwf-weight`` (1 by default), both as in the paper: its ``L_old`` is the cross-entropy between the softened
outputs, this KL plus the targets' entropy (a constant), with no ``T^2`` factor. (Hinton's ``T^2`` would make
``lambda = 1`` the paper's ``lambda_o = 4``: on PneumoniaMNIST through another scanner that kept slightly
more of the old domain but gave up much of the new one, B AUROC 0.84 instead of 0.91.) No old data is needed. The old model runs live (frozen, eval
mode) on every augmented batch instead of once up front: the same targets without augmentation, correct ones
with it. Without ``lwf`` the update is the plain fine-tune that LwF is compared against.

**Batch norm** (``freeze_norm``, on by default; FACIL's ``--fix-bn``): the old model gives its targets in eval
mode, with its running statistics (those of the old data). The updated model's batch-norm layers stay in eval
mode as well, while their affine weights train: both models start as the same function, so the LwF term
starts at 0 and measures only what the update changes, and the old domain is still normalised with its own
statistics afterwards. With ``freeze_norm=False`` the layers normalise with the new data's batch statistics and
overwrite the running ones: the LwF term compares two different functions from the first step (0.47 instead
of 0 on a first batch of PneumoniaMNIST through another scanner) and the old domain is later evaluated with the
new domain's statistics, which LwF cannot see: in ``benchmarks/lwf.py`` the old domain's AUROC after LwF fell
to 0.861 (plain fine-tune 0.860) instead of 0.958 with frozen statistics.

**Schedule**: an update is a fine-tune of a trained model, so without ``train`` it runs 5 epochs at
``lr = 5e-4`` (a quarter of training's default) without warm-up, as `edgekd update` does. With training's
``2e-3`` the first AdamW steps move the weights far from the old model and LwF no longer keeps it.

Two kinds of update:

* **domain-incremental** (a new site or scanner, same classes): the new data's label names equal the old
  ones (in any order; the head's rows follow the names);
* **class-incremental** (new classes): the new data names classes the model does not know. The classifier
  head is extended: the old classes' rows keep their weights, the new rows start fresh. When the new data
  holds every old class its label order is kept; otherwise the head is the old classes followed by the new
  ones and the data's targets are re-indexed to it.

Every update runs through the shared :class:`~edgekd.distill.Trainer` and writes a model directory whose
lineage has ``stage: update``, the parent's path and weights hash, and ``notes.update.chain``: every model
the update descends from, oldest first, with its data.

Example:
    >>> cfg = UpdateConfig(lwf=True, train=update_config(epochs=5))
    >>> card = update_model("runs/site_a", "imagefolder:/data/site_b", "runs/site_b", cfg)
    >>> [step["data"] for step in card.lineage.notes["update"]["chain"]]
    ['imagefolder:/data/site_a']
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from edgekd._config import StageConfig
from edgekd._io import MARKER_FILE, check_output, is_edgekd_artifact, replace_dir, sha256_file
from edgekd.data import DataBundle, load_data
from edgekd.distill._config import TrainConfig
from edgekd.distill._loop import fit
from edgekd.distill._objective import Objective, SupervisedObjective, task_loss
from edgekd.distill._run import work_dir
from edgekd.distill._train import class_weights, finish_run
from edgekd.distill.losses import kd_div
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.modeldir import WEIGHTS_FILE, load_model_dir
from edgekd.specs import Lineage, ModelCard, Preprocess, Task, current_command
from edgekd.students import apply_structure, build_model
from edgekd.teachers import Teacher

__all__ = [
    "LwFObjective",
    "FineTuneObjective",
    "update_model",
    "update_config",
    "freeze_norm_stats",
    "extend_head",
    "plan_classes",
]


def freeze_norm_stats(model: nn.Module) -> None:
    """Put every batch-norm layer of ``model`` in eval mode: it normalises with its stored running statistics.

    Called before each forward of an update (the loop puts the whole model in train mode every epoch): the
    running statistics stay the old model's, so the updated model and the old one compute the same function at
    the start (the LwF term starts at 0), and evaluation on the old domain does not use the new domain's
    statistics. The norms' affine weights still train.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class FineTuneObjective(SupervisedObjective):
    """The plain fine-tune of an update: the supervised loss, with ``freeze_norm`` as in :class:`LwFObjective`."""

    def __init__(self, preprocess: Preprocess, task: Task, *, freeze_norm: bool = True, **kwargs: Any) -> None:
        super().__init__(preprocess, task, **kwargs)
        self.freeze_norm = freeze_norm

    def forward(self, model, images, targets, indices=None, epoch: int = 0):
        if self.freeze_norm:
            freeze_norm_stats(model)
        return super().forward(model, images, targets, indices, epoch)


class LwFObjective(Objective):
    """Task loss on the new labels plus ``weight * KL(t_old / T || s[:, old] / T)`` (see the module docstring).

    Attributes:
        old: the frozen previous model (a :class:`~edgekd.teachers.Teacher`).
        old_index: the updated head's index of each old class.
        freeze_norm: batch-norm layers of the updated model normalise with the old model's running statistics
            (:func:`freeze_norm_stats`); otherwise they use batch statistics of the new data and replace the
            running ones.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        task: Task,
        old: Teacher,
        old_index: Sequence[int],
        *,
        weight: float = 1.0,
        T: float = 2.0,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        freeze_norm: bool = True,
    ) -> None:
        super().__init__(preprocess)
        if not weight >= 0 or not T > 0:
            raise InvalidInputError(f"LwF weight {weight} must be >= 0 and T {T} > 0", "e.g. --lwf-weight 1")
        self.task, self.old, self.weight, self.T = task, old, float(weight), float(T)
        self.label_smoothing, self.freeze_norm = label_smoothing, freeze_norm
        self.register_buffer("old_index", torch.as_tensor(list(old_index), dtype=torch.long), persistent=False)
        self.register_buffer("class_weights", class_weights, persistent=False)

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.old.channels_last = self.channels_last

    def forward(self, model, images, targets, indices=None, epoch: int = 0):
        if self.freeze_norm:
            freeze_norm_stats(model)
        old = self.old.logits(images).float()  # before the student: its activations stay warm for backward
        logits = model(self.student_input(images))
        ce = task_loss(
            logits, targets, self.task, label_smoothing=self.label_smoothing, class_weights=self.class_weights
        )
        # kd_div carries Hinton's T^2; the paper's L_old does not (see the module docstring)
        lwf = kd_div(logits.float().index_select(1, self.old_index), old, T=self.T) / (self.T * self.T)
        return ce + self.weight * lwf, {"ce": ce.detach(), "lwf": lwf.detach()}


class _Remapped(Dataset):
    """A dataset whose class indices go through ``lut`` (the updated head's order)."""

    def __init__(self, base: Dataset, lut: np.ndarray) -> None:
        self.base, self.lut = base, lut
        self.targets = lut[np.asarray(base.targets)]
        self.channels, self.image_size = base.channels, base.image_size
        if hasattr(base, "paths"):
            self.paths = base.paths

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        return image, torch.tensor(int(self.lut[int(target)]), dtype=torch.int64)


def plan_classes(old: Sequence[str], new: Sequence[str]) -> tuple[list[str], list[int] | None]:
    """The updated head's class names, and the re-indexing of the new data's classes (None: keep its order).

    Example:
        >>> plan_classes(["normal", "pneumonia"], ["covid", "normal", "pneumonia"])
        (['covid', 'normal', 'pneumonia'], None)
        >>> plan_classes(["normal", "pneumonia"], ["covid", "tb"])
        (['normal', 'pneumonia', 'covid', 'tb'], [2, 3])
    """
    if set(old) <= set(new):
        return list(new), None
    names = list(old) + [n for n in new if n not in old]
    return names, [names.index(n) for n in new]


def _remap(bundle: DataBundle, names: list[str], lut: list[int]) -> DataBundle:
    table = np.asarray(lut, dtype=np.int64)
    parts = {s: _Remapped(bundle.split(s), table) for s in ("train", "val", "test")}
    return DataBundle(
        spec=bundle.spec,
        **parts,
        task=Task.MULTICLASS,
        label_names=names,
        num_classes=len(names),
        channels=bundle.channels,
        image_size=bundle.image_size,
        mean=bundle.mean,
        std=bundle.std,
    )


def _head(model: nn.Module, classes: int) -> str:
    """Name of the classifier: the last ``nn.Linear`` with ``classes`` outputs."""
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    if not heads:
        raise InvalidInputError(
            f"no linear classifier with {classes} outputs found",
            "class-incremental updates need a model whose head is an nn.Linear",
        )
    return heads[-1]


def extend_head(old: nn.Module, new: nn.Module, old_index: Sequence[int]) -> None:
    """Copy every weight of ``old`` into ``new``; the head's row of old class ``i`` goes to ``old_index[i]``.

    Rows of new classes keep ``new``'s fresh initialisation.
    """
    head = _head(old, len(old_index))
    if not isinstance(dict(new.named_modules()).get(head), nn.Linear):
        raise InvalidInputError(f"the extended model has no linear head {head!r}")
    state, fresh = old.state_dict(), new.state_dict()
    idx = torch.as_tensor(list(old_index), dtype=torch.long)
    out = {}
    for key, value in fresh.items():
        if key.startswith(head + "."):
            merged = value.clone()
            merged[idx] = state[key].to(merged.dtype)
            out[key] = merged
        elif key in state and state[key].shape == value.shape:
            out[key] = state[key]
        else:
            raise ArtifactError(
                f"cannot carry weight {key!r} into the extended model",
                "update a model directory written by edgekd train or distill",
            )
    new.load_state_dict(out)


def _chain(model_dir: Path, card: ModelCard, parent_sha: str) -> list[dict[str, Any]]:
    earlier = list((card.lineage.notes.get("update") or {}).get("chain") or [])
    return earlier + [
        {
            "model": str(model_dir),
            "sha256": parent_sha,
            "data": card.lineage.data,
            "stage": card.lineage.stage,
            "label_names": list(card.label_names),
        }
    ]


def _student(model_dir: Path, card: ModelCard, names: list[str], old_index: list[int]) -> nn.Module:
    net, _ = load_model_dir(model_dir)
    if list(names) == list(card.label_names):
        return net
    if card.structure and len(names) != len(card.label_names):
        raise InvalidInputError(
            f"{model_dir} is pruned: its head cannot be extended here",
            "update the unpruned model, then prune the update",
        )
    fresh = build_model(card.spec.model_copy(update={"num_classes": len(names)}))
    if card.structure:  # same classes in another order: the pruned widths apply unchanged
        apply_structure(fresh, card.structure)
    extend_head(net, fresh, old_index)
    return fresh


def update_config(**overrides: Any) -> TrainConfig:
    """The default schedule of an update (see the module docstring): 5 epochs, lr 5e-4, no warm-up."""
    return TrainConfig(**{"epochs": 5, "lr": 5e-4, "warmup_epochs": 0.0, **overrides})


class UpdateConfig(StageConfig):
    """The settings of `edgekd update`, the single source of their defaults (the CLI, ``--config`` and Python).

    Attributes:
        lwf: Learning without Forgetting; None (not said): LwF exactly when ``lwf_weight`` was set.
        lwf_weight: Li & Hoiem's ``lambda_o``.
        lwf_temperature: the LwF temperature (the paper's 2).
        freeze_norm: keep the old model's batch-norm running statistics (see the module docstring).
        train: the schedule, :func:`update_config`'s defaults (5 epochs, lr 5e-4, no warm-up); a file may
            write its keys flat (``epochs: 3``).
    """

    flat_keys: ClassVar = {name: f"train.{name}" for name in TrainConfig.model_fields}

    lwf: bool | None = None
    lwf_weight: float = Field(1.0, gt=0)
    lwf_temperature: float = Field(2.0, gt=0)
    freeze_norm: bool = True
    train: TrainConfig = Field(default_factory=update_config)

    @property
    def lwf_term(self) -> float | None:
        """The LwF weight :func:`update_model` takes, or None for a plain fine-tune."""
        on = self.lwf if self.lwf is not None else "lwf_weight" in self.model_fields_set
        return self.lwf_weight if on else None


def update_model(
    model_dir: str | Path,
    data: str | DataBundle,
    out: str | Path,
    config: UpdateConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    download: bool = False,
) -> ModelCard:
    """Update ``model_dir`` on ``data`` as ``config`` says (LwF or a plain fine-tune); write ``out``.

    Args:
        config: the LwF settings and the schedule; default :class:`UpdateConfig` (a plain fine-tune, 5 epochs,
            lr 5e-4, no warm-up, frozen batch-norm statistics).

    Raises:
        InvalidInputError: multi-label data, other image channels, an existing ``out`` (exit 3).
        ArtifactError: an unreadable model directory or data (exit 4).
    """
    config = config or UpdateConfig()
    lwf, temperature, freeze_norm = config.lwf_term, config.lwf_temperature, config.freeze_norm
    model_dir, out, cfg = Path(model_dir), Path(out), config.train
    old_net, card = load_model_dir(model_dir)
    bundle = data if isinstance(data, DataBundle) else load_data(data, seed=cfg.seed, download=download)
    if Task.MULTILABEL in (bundle.task, card.task):
        raise InvalidInputError("edgekd update handles single-label tasks", "multi-label LwF is not implemented")
    if bundle.channels != card.preprocess.data_channels:
        raise InvalidInputError(
            f"{model_dir} reads {card.preprocess.data_channels}-channel images, the data has {bundle.channels}",
            "update with data of the same kind of images",
        )
    names, lut = plan_classes(card.label_names, bundle.label_names)
    if lut is not None:
        bundle = _remap(bundle, names, lut)
    old_index = [names.index(n) for n in card.label_names]
    student = _student(model_dir, card, names, old_index)
    spec = card.spec.model_copy(update={"num_classes": len(names)})
    pre, parent_sha = card.preprocess, sha256_file(model_dir / WEIGHTS_FILE)
    old = Teacher.from_module(old_net, pre, name=str(model_dir), num_classes=len(card.label_names))
    weights = class_weights(bundle, cfg.class_weighting)
    objective: Objective = (
        FineTuneObjective(
            pre, bundle.task, label_smoothing=cfg.label_smoothing, class_weights=weights, freeze_norm=freeze_norm
        )
        if lwf is None
        else LwFObjective(
            pre,
            bundle.task,
            old,
            old_index,
            weight=lwf,
            T=temperature,
            label_smoothing=cfg.label_smoothing,
            class_weights=weights,
            freeze_norm=freeze_norm,
        )
    )
    check_output(out, overwrite=overwrite, inputs=(model_dir,))
    work = work_dir(out)
    if work.exists() and not is_edgekd_artifact(work):
        raise InvalidInputError(f"{work} exists and was not written by edgekd", "remove it or choose another --out")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / MARKER_FILE).write_text("edgekd update in progress\n")
    try:  # update has no --resume: a failed run leaves nothing beside OUT (a diverged one included)
        result = fit(student, objective, bundle, cfg, work, preprocess=pre, progress=progress)
        new_classes = [n for n in names if n not in card.label_names]
        notes = {
            "update": {
                "method": "finetune" if lwf is None else "lwf",
                "lwf_weight": lwf,
                "T": temperature,
                "freeze_norm": freeze_norm,
                "kind": "class-incremental" if new_classes else "domain-incremental",
                "new_classes": new_classes,
                "chain": _chain(model_dir, card, parent_sha),
            }
        }
        lineage = Lineage(
            command=command if command is not None else current_command(),
            parent=str(model_dir),
            parent_sha256=parent_sha,
            data=bundle.spec,
            stage="update",
            teachers=[] if lwf is None else [str(model_dir)],
            losses=["ce"] if lwf is None else ["ce", f"lwf:{lwf:g},T={temperature:g}"],
            notes=notes,
        )
        new_card = finish_run(
            student,
            result,
            spec=spec,
            preprocess=pre,
            data=bundle,
            out=work,
            lineage=lineage,
            intended_use=bundle.intended_use or card.intended_use,
        )
        (work / MARKER_FILE).unlink(missing_ok=True)
        replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return new_card
