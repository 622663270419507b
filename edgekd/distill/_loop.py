"""The training loop behind `edgekd train`, `edgekd distill` and pruning recovery.

In the spirit of torchvision's ``train_one_epoch`` and nanoGPT: one :class:`Trainer` with one readable
method per part (set-up, epoch, step), an objective that owns the loss, and a checkpoint written atomically
every epoch (:mod:`._checkpoint`, never pickled).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd._progress import TrainProgress
from edgekd.data import Augment, AugmentedDataset, DataBundle, make_loader
from edgekd.distill._checkpoint import CKPT_DIR, TrainState, load_best, load_checkpoint, save_checkpoint
from edgekd.distill._config import DeviceName, OptimizerName, TrainConfig
from edgekd.distill._objective import Objective
from edgekd.errors import DependencyError, Interrupted, InvalidInputError, TrainingDivergedError
from edgekd.metrics import compute_metrics
from edgekd.specs import Preprocess

__all__ = ["fit", "Trainer", "Schedule", "FitResult", "predict", "resolve_device", "lr_at"]


def resolve_device(name: DeviceName | str) -> torch.device:
    name = DeviceName(name)
    if name is DeviceName.CUDA and not torch.cuda.is_available():
        raise DependencyError("--device cuda was asked for but no CUDA GPU is visible", "use --device cpu or auto")
    if name is DeviceName.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name.value)


def lr_at(step: int, total: int, warmup: int, base: float, min_ratio: float) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to ``base * min_ratio``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def predict(
    model: nn.Module, preprocess: Preprocess, loader, device: torch.device, channels_last: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets over a loader, in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    outs, tgts = [], []
    for batch in loader:
        images, targets = batch[0], batch[1]
        x = preprocess(images.to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs.append(model(x).float().cpu())
        tgts.append(targets)
    model.train(was_training)
    return torch.cat(outs).numpy(), torch.cat(tgts).numpy()


class _Indexed(torch.utils.data.Dataset):
    """Adds the sample index to each item (the teacher cache looks samples up by index)."""

    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, target = self.base[i]
        return image, target, i


@dataclass
class FitResult:
    best_epoch: int
    best_metric: float
    select_metric: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    val_metrics: dict[str, Any] = field(default_factory=dict)


def _make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    # No weight decay on norms and biases (standard practice, e.g. timm's param_groups_weight_decay).
    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


@dataclass(frozen=True)
class Schedule:
    """Steps of the run: ``steps`` per epoch, ``total`` in all, ``warmup`` before the cosine decay."""

    steps: int
    total: int
    warmup: int

    @classmethod
    def of(cls, train_size: int, cfg: TrainConfig) -> Schedule:
        steps = math.ceil(train_size / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        return cls(steps, steps * cfg.epochs, int(round(cfg.warmup_epochs * steps)))

    def lr(self, step: int, cfg: TrainConfig) -> float:
        return lr_at(step, self.total, self.warmup, cfg.lr, cfg.min_lr_ratio)


class Trainer:
    """The one training runner behind `train`, `distill`, pruning recovery and QAT.

    It owns the device placement (AMP, channels-last), the data loaders, the schedule, the optimizer and the
    per-epoch checkpoint; the :class:`~edgekd.distill.Objective` owns the loss. :meth:`fit` runs the epochs
    and keeps the best one by ``cfg.select_metric``.

    Example:
        >>> result = Trainer(model, objective, data, cfg, "runs/x", preprocess=pre).fit()
        >>> model.load_state_dict(result.best_state)
    """

    def __init__(self, model: nn.Module, objective: Objective, data: DataBundle, cfg: TrainConfig,
                 out_dir: str | Path, *, preprocess: Preprocess, progress: bool = True,
                 on_epoch_end: Callable[[int, dict], None] | None = None) -> None:  # fmt: skip
        self.model, self.objective, self.data, self.cfg = model, objective, data, cfg
        self.out_dir, self.preprocess, self.progress, self.on_epoch_end = (
            Path(out_dir),
            preprocess,
            progress,
            on_epoch_end,
        )
        self.device = resolve_device(cfg.device)
        cuda = self.device.type == "cuda"

        self.amp = cfg.amp if cfg.amp is not None else cuda
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
        self._place()
        self.train_ds = data.train
        if cfg.augment != "none":
            self.train_ds = AugmentedDataset(self.train_ds, Augment.preset(cfg.augment), seed=cfg.seed)
        self.val_loader = make_loader(data.val, cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
        self.schedule = Schedule.of(len(self.train_ds), cfg)
        params = list(model.parameters()) + [p for p in objective.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(cfg, params)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and cuda)

    def _place(self) -> None:
        self.objective.channels_last = self.channels_last
        self.model.to(self.device)
        self.objective.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def fit(self, *, resume: bool = False) -> FitResult:
        """Run the remaining epochs (all of them, or those after the checkpoint with ``resume``)."""
        before = torch.are_deterministic_algorithms_enabled()
        if self.cfg.deterministic:
            _make_deterministic(self.device.type == "cuda")
        try:
            return self._fit(resume)
        finally:
            torch.use_deterministic_algorithms(before)

    def _fit(self, resume: bool) -> FitResult:
        cfg = self.cfg
        state = TrainState(select_metric=cfg.select_metric)
        if resume:
            state = load_checkpoint(self.out_dir, self.model, self.objective, self.optimizer, self.scaler)
        for epoch in range(state.epoch, cfg.epochs):
            try:
                record = self._epoch(epoch, state)
            except KeyboardInterrupt:
                raise _interrupted(self.out_dir, state.epoch, cfg.epochs) from None
            save_checkpoint(self.out_dir, self.model, self.objective, self.optimizer, self.scaler, state)
            if self.on_epoch_end:
                self.on_epoch_end(epoch + 1, record)
        if state.best_state is None:  # resumed a finished run
            state.best_state = load_best(self.out_dir)
        return FitResult(state.best_epoch, state.best_metric, cfg.select_metric, state.history, state.best_state,
                         state.best_val)  # fmt: skip

    def _epoch(self, epoch: int, state: TrainState) -> dict[str, Any]:
        """Train one epoch, validate, and fold the result into ``state``; returns the history record."""
        if isinstance(self.train_ds, AugmentedDataset):
            self.train_ds.set_epoch(self.objective.augment_epoch(epoch))  # a teacher cache may replay earlier views
        self.objective.on_epoch_start(epoch, self.cfg.epochs)
        loader = make_loader(_Indexed(self.train_ds), self.cfg.batch_size, shuffle=True, seed=self.cfg.seed + epoch,
                             drop_last=False, num_workers=self.cfg.num_workers)  # fmt: skip
        stats = self._train_one_epoch(loader, epoch)
        logits, targets = predict(self.model, self.preprocess, self.val_loader, self.device, self.channels_last)
        val = compute_metrics(logits, targets, self.data.task)
        record = {"epoch": epoch + 1, **stats, **{f"val_{k}": v for k, v in val.items() if k != "confusion_matrix"}}
        state.history.append(record)
        score = _score(val, self.cfg.select_metric)
        if state.is_better(score):
            state.best_metric, state.best_epoch, state.best_val = score, epoch + 1, val
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        state.epoch = epoch + 1
        return record

    def _train_one_epoch(self, loader, epoch: int) -> dict[str, float]:
        self.model.train()
        self.objective.train()
        sums: dict[str, torch.Tensor] = {}
        seen, lr = 0, self.cfg.lr
        t0 = time.perf_counter()
        with TrainProgress(
            enabled=self.progress, epoch=epoch, epochs=self.cfg.epochs, steps=self.schedule.steps
        ) as bar:
            for i, (images, targets, indices) in enumerate(loader):
                if i >= self.schedule.steps:
                    break
                lr = self.schedule.lr(epoch * self.schedule.steps + i, self.cfg)
                loss, terms = self._step(images, targets, indices, epoch, lr, where=(epoch, i))
                n = images.shape[0]
                seen += n
                for k, v in {"loss": loss, **terms}.items():
                    sums[k] = sums.get(k, 0) + v.float() * n  # stays on device: no sync per step
                bar.advance(n, sums, seen, lr)
        elapsed = time.perf_counter() - t0
        out = {k: float(v) / max(seen, 1) for k, v in sums.items()}  # one sync per epoch
        out.update(lr=lr, images_per_s=seen / elapsed, epoch_time_s=elapsed)
        return out

    def _step(self, images, targets, indices, epoch: int, lr: float, *, where: tuple[int, int]):
        """One optimisation step; returns the detached loss and its terms."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=self.amp):
            loss, terms = self.objective(self.model, images, targets, indices, epoch)
        if not torch.isfinite(loss):  # a GPU sync point, but a diverged run must stop before it is saved
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at epoch {where[0] + 1}, step {where[1] + 1}",
                "lower --lr, add --grad-clip, or check the data and the loss weights; the last good epoch's "
                "checkpoint is kept and no model was written",
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), terms


def fit(
    model: nn.Module,
    objective: Objective,
    data: DataBundle,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    preprocess: Preprocess,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train ``model`` with ``objective`` and return the best epoch's weights (by ``cfg.select_metric``).

    A checkpoint of the last epoch is written to ``out_dir/checkpoint`` after every epoch; ``resume``
    continues from it with the same optimizer state, data order and schedule. See :class:`Trainer`.
    """
    trainer = Trainer(model, objective, data, cfg, out_dir, preprocess=preprocess, progress=progress,
                      on_epoch_end=on_epoch_end)  # fmt: skip
    return trainer.fit(resume=resume)


def _make_deterministic(cuda: bool) -> None:
    """Deterministic kernels only (an op without one raises): a rerun or a resume gives identical weights."""
    if cuda:  # cuBLAS needs a fixed workspace for deterministic matmuls (set before the first CUDA matmul)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def _interrupted(out_dir: Path, done: int, epochs: int) -> Interrupted:
    """Ctrl-C inside an epoch: the checkpoint of the last finished epoch is what a resume continues from."""
    if done:
        return Interrupted(f"interrupted during epoch {done + 1} of {epochs}; the checkpoint after epoch {done} is "
                           f"kept in {out_dir / CKPT_DIR}", "run the same command again with --resume to continue")  # fmt: skip
    return Interrupted(f"interrupted during epoch 1 of {epochs}, before any checkpoint", "run the command again")


def _score(val: dict, metric: str) -> float:
    if metric not in val:
        raise InvalidInputError(
            f"unknown selection metric {metric!r}",
            f"choose one of {', '.join(k for k in val if isinstance(val[k], float))}",
        )
    v = float(val[metric])
    if math.isnan(v):  # e.g. AUROC on a split with one class: fall back to accuracy
        return float(val.get("acc", 0.0))
    return v
