"""The training loop behind `edgekd train`, `edgekd distill` and pruning recovery.

In the spirit of torchvision's ``train_one_epoch`` and nanoGPT: one :class:`Trainer` with one readable
method per part (set-up, epoch, step), an objective that owns the loss, and a checkpoint written atomically
every epoch (:mod:`._checkpoint`, never pickled).

A run that diverges stops before anything is saved (:class:`~edgekd.errors.TrainingDivergedError`, exit 8): a
non-finite loss, a loss above :data:`EXPLODE_FACTOR` times its first value (the loss of the first step, before
any update, and at least 1), or, after the last epoch, validation no better than a constant predictor while the
training loss never fell below that first value (:func:`check_learned`). The checkpoint of the last good epoch
stays for ``--resume``.
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
from torch.utils.data import DataLoader

from edgekd._progress import TrainProgress
from edgekd.data import Augment, AugmentedDataset, DataBundle
from edgekd.distill._checkpoint import CKPT_DIR, TrainState, load_best, load_checkpoint, save_checkpoint
from edgekd.distill._config import AmpDtype, DeviceName, OptimizerName, TrainConfig
from edgekd.distill._dist import (
    DistContext,
    eval_sampler,
    gather_rows,
    init_distributed,
    per_rank_batch,
    sync_batchnorm,
    train_sampler,
)
from edgekd.distill._objective import Objective
from edgekd.errors import DependencyError, Interrupted, InvalidInputError, TrainingDivergedError
from edgekd.metrics import compute_metrics, selection_value, task_select_metric
from edgekd.specs import Preprocess, Task

__all__ = [
    "fit",
    "Trainer",
    "Schedule",
    "FitResult",
    "predict",
    "resolve_device",
    "lr_at",
    "check_learned",
    "EXPLODE_FACTOR",
]

# A step loss above this many times the run's first loss (floored at 1: a fine-tuned model can start near 0)
# has diverged. Cross-entropy at chance is ln K (0.69 for two classes), so the limit is >= 100 and a legitimate
# run, whose loss falls or at worst wobbles around its start, stays orders of magnitude below it.
EXPLODE_FACTOR = 100.0


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
    runtime: dict[str, Any] = field(default_factory=dict)


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
    def of(cls, samples_per_rank: int, batch_per_rank: int, cfg: TrainConfig) -> Schedule:
        steps = math.ceil(samples_per_rank / batch_per_rank)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        return cls(steps, steps * cfg.epochs, int(round(cfg.warmup_epochs * steps)))

    def lr(self, step: int, cfg: TrainConfig) -> float:
        return lr_at(step, self.total, self.warmup, cfg.lr, cfg.min_lr_ratio)


class Trainer:
    """The one training runner behind `train`, `distill`, pruning recovery and QAT.

    It owns the device placement (AMP, channels-last), the data loaders, the schedule, the optimizer, the
    per-epoch checkpoint and, under ``torchrun``, the process group (DistributedDataParallel, see
    :mod:`._dist`); the :class:`~edgekd.distill.Objective` owns the loss. :meth:`fit` runs the epochs and keeps
    the best one by ``cfg.select_metric``.

    Args:
        record_steps: keep every step's loss (averaged over ranks) in :attr:`step_losses` (a sync per step).

    Example:
        >>> result = Trainer(model, objective, data, cfg, "runs/x", preprocess=pre).fit()
        >>> model.load_state_dict(result.best_state)
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        data: DataBundle,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        preprocess: Preprocess,
        progress: bool = True,
        on_epoch_end: Callable[[int, dict], None] | None = None,
        record_steps: bool = False,
    ) -> None:
        # the best epoch by a metric of the task (segmentation: Dice unless a segmentation metric is named)
        metric = task_select_metric(cfg.select_metric, data.task)
        cfg = cfg if metric == cfg.select_metric else cfg.model_copy(update={"select_metric": metric})
        self.model, self.objective, self.data, self.cfg = model, objective, data, cfg
        self.out_dir, self.preprocess, self.on_epoch_end = Path(out_dir), preprocess, on_epoch_end
        self.dist = init_distributed(resolve_device(cfg.device).type)
        self.device = _device(cfg, self.dist)
        self.progress = progress and self.dist.is_main
        self.step_losses: list[float] | None = [] if record_steps else None
        cuda = self.device.type == "cuda"
        self.amp = cfg.amp if cfg.amp is not None else cuda
        self.amp_dtype = _amp_dtype(cfg.amp_dtype, cuda)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
        self.net = self._place()
        self.train_ds = data.train
        if cfg.augment != "none":
            self.train_ds = AugmentedDataset(self.train_ds, Augment.preset(cfg.augment), seed=cfg.seed)
        self.batch = per_rank_batch(cfg.batch_size, self.dist)
        self.sampler = train_sampler(self.train_ds, self.dist, seed=cfg.seed)
        self.schedule = Schedule.of(len(self.sampler), self.batch, cfg)
        self.val_sampler = eval_sampler(data.val, self.dist)
        # Pinned host memory on CUDA: the non_blocking copies of a step overlap the previous step's kernels.
        self.val_loader = DataLoader(
            data.val,
            batch_size=self.batch * 2,
            shuffle=False,
            sampler=self.val_sampler,
            num_workers=cfg.num_workers,
            pin_memory=cuda,
        )
        params = list(model.parameters()) + [p for p in objective.parameters() if p.requires_grad]
        self.optimizer = _make_optimizer(cfg, params)
        # A gradient scaler only for fp16: bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and cuda and self.amp_dtype is torch.float16)

    def _place(self) -> nn.Module:
        """Move model and objective to the device; under torchrun wrap the model for DDP (the forward module)."""
        self.objective.channels_last = self.channels_last
        if self.dist.enabled:  # batch statistics of the global batch, as one process would compute them
            self.model = sync_batchnorm(self.model, self.device.type)
        self.model.to(self.device)
        self.objective.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        net = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        return torch.compile(net) if self.cfg.compile else net

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
        self.state = state
        for epoch in range(state.epoch, cfg.epochs):
            try:
                record = self._epoch(epoch, state)
            except KeyboardInterrupt:
                raise _interrupted(self.out_dir, state.epoch, cfg.epochs) from None
            if self.dist.is_main:  # one writer; the other ranks hold the same state
                save_checkpoint(self.out_dir, self.model, self.objective, self.optimizer, self.scaler, state)
            self.dist.barrier()
            if self.on_epoch_end:
                self.on_epoch_end(epoch + 1, record)
        check_learned(state, self.data.labels("val") if len(self.data.val) else None, self.data.task, lr=cfg.lr)
        if state.best_state is None:  # resumed a finished run
            state.best_state = load_best(self.out_dir)
        return FitResult(
            state.best_epoch,
            state.best_metric,
            cfg.select_metric,
            state.history,
            state.best_state,
            state.best_val,
            self.runtime(),
        )

    def runtime(self) -> dict[str, Any]:
        """What the run resolved ``auto`` to: device (and GPU name), mixed precision, memory format, processes."""
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        amp = str(self.amp_dtype).removeprefix("torch.") if self.amp else None
        return {
            "device": self.device.type,
            "gpu": gpu,
            "amp": amp,
            "channels_last": self.channels_last,
            "world_size": self.dist.world,
        }

    def _epoch(self, epoch: int, state: TrainState) -> dict[str, Any]:
        """Train one epoch, validate, and fold the result into ``state``; returns the history record."""
        if isinstance(self.train_ds, AugmentedDataset):
            self.train_ds.set_epoch(self.objective.augment_epoch(epoch))  # a teacher cache may replay earlier views
        self.objective.on_epoch_start(epoch, self.cfg.epochs)
        self.sampler.set_epoch(epoch)
        loader = DataLoader(
            _Indexed(self.train_ds),
            batch_size=self.batch,
            sampler=self.sampler,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        stats = self._train_one_epoch(loader, epoch)
        val = compute_metrics(*self._validate(), self.data.task)
        record = {"epoch": epoch + 1, **stats, **{f"val_{k}": v for k, v in val.items() if k != "confusion_matrix"}}
        state.history.append(record)
        score = _score(val, self.cfg.select_metric)
        if state.is_better(score):
            state.best_metric, state.best_epoch, state.best_val = score, epoch + 1, val
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        state.epoch = epoch + 1
        return record

    def _validate(self) -> tuple[np.ndarray, np.ndarray]:
        """Validation logits and targets of the whole split (gathered from every rank, in split order)."""
        logits, targets = predict(self.model, self.preprocess, self.val_loader, self.device, self.channels_last)
        if not self.dist.enabled:
            return logits, targets
        rows = np.fromiter(iter(self.val_sampler), dtype=np.int64)
        logits, targets = gather_rows(rows, [logits, targets], len(self.data.val), self.dist)
        return logits, targets

    def _train_one_epoch(self, loader, epoch: int) -> dict[str, float]:
        self.net.train()
        self.objective.train()
        sums: dict[str, torch.Tensor] = {}
        seen, lr = 0, self.cfg.lr
        t0 = time.perf_counter()
        steps = self.schedule.steps
        with TrainProgress(enabled=self.progress, epoch=epoch, epochs=self.cfg.epochs, steps=steps) as bar:
            for i, (images, targets, indices) in enumerate(loader):
                if i >= steps:
                    break
                lr = self.schedule.lr(epoch * steps + i, self.cfg)
                loss, terms = self._step(images, targets, indices, epoch, lr, where=(epoch, i))
                if self.state.loss_reference is None:  # the loss before any update: the scale divergence is read on
                    self.state.loss_reference = _mean_over_ranks(loss, self.dist)
                n = images.shape[0]
                seen += n
                for k, v in {"loss": loss, **terms}.items():
                    sums[k] = sums.get(k, 0) + v.float() * n  # stays on device: no sync per step
                bar.advance(n, sums, seen, lr)
        elapsed = time.perf_counter() - t0
        out = _epoch_means(sums, seen, self.dist)  # one sync per epoch
        out.update(lr=lr, images_per_s=seen * self.dist.world / elapsed, epoch_time_s=elapsed)
        return out

    def _step(self, images, targets, indices, epoch: int, lr: float, *, where: tuple[int, int]):
        """One optimisation step; returns the detached loss and its terms."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            loss, terms = self.objective(self.net, images, targets, indices, epoch)
        # A sync point (and with several processes a collective), but a diverged run must stop on every rank
        # before anything is saved.
        limit = self._loss_limit()
        if not self.dist.all_min(bool(torch.isfinite(loss) & (loss.detach().float() <= limit))):
            raise self._diverged(float(loss.detach().float().item()), limit, where)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._sync_objective_grads()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.step_losses is not None:
            self.step_losses.append(_mean_over_ranks(loss.detach(), self.dist))
        return loss.detach(), terms

    def _loss_limit(self) -> float:
        """The loss above which the run has diverged (no limit before the first step has set the scale)."""
        ref = getattr(self, "state", None) and self.state.loss_reference
        return math.inf if ref is None else EXPLODE_FACTOR * max(1.0, ref)

    def _diverged(self, value: float, limit: float, where: tuple[int, int]) -> TrainingDivergedError:
        at = f"at epoch {where[0] + 1}, step {where[1] + 1}"
        if math.isfinite(value):
            ref = self.state.loss_reference
            what = f"the loss became {value:.3g} {at}, over {EXPLODE_FACTOR:g}x its first value ({ref:.3g})"
        else:
            what = f"the loss became {value} {at}"
        err = TrainingDivergedError(f"training diverged: {what}", _diverged_hint(self.cfg.lr))
        err.epochs_done = self.state.epoch  # the checkpoint of the last good epoch (a resumable caller says so)
        return err

    def _sync_objective_grads(self) -> None:
        """DDP averages the student's gradients; the objective's own parameters (FitNet adapters) here."""
        if not self.dist.enabled:
            return
        for p in self.objective.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.dist.world


def _amp_dtype(name: AmpDtype, cuda: bool) -> torch.dtype:
    if name is AmpDtype.AUTO:
        return torch.float16 if cuda else torch.bfloat16
    return torch.bfloat16 if name is AmpDtype.BF16 else torch.float16


def _device(cfg: TrainConfig, ctx: DistContext) -> torch.device:
    device = resolve_device(cfg.device)
    return torch.device("cuda", ctx.local_rank) if device.type == "cuda" and ctx.enabled else device


def _epoch_means(sums: dict[str, torch.Tensor], seen: int, ctx: DistContext) -> dict[str, float]:
    if ctx.enabled:  # the epoch's loss terms over every rank's samples
        keys = sorted(sums)
        t = torch.stack(
            [torch.as_tensor(sums[k], dtype=torch.float32).reshape(()).cpu() for k in keys]
            + [torch.tensor(float(seen))]
        )
        torch.distributed.all_reduce(t)
        sums, seen = dict(zip(keys, t[:-1])), int(t[-1].item())
    return {k: float(v) / max(seen, 1) for k, v in sums.items()}


def _mean_over_ranks(value: torch.Tensor, ctx: DistContext) -> float:
    if not ctx.enabled:
        return float(value)
    t = value.float().reshape(1).clone()
    torch.distributed.all_reduce(t)
    return float(t.item()) / ctx.world


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
    trainer = Trainer(
        model, objective, data, cfg, out_dir, preprocess=preprocess, progress=progress, on_epoch_end=on_epoch_end
    )
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
        return Interrupted(
            f"interrupted during epoch {done + 1} of {epochs}; the checkpoint after epoch {done} is "
            f"kept in {out_dir / CKPT_DIR}",
            "run the same command again with --resume to continue",
        )
    return Interrupted(f"interrupted during epoch 1 of {epochs}, before any checkpoint", "run the command again")


def _diverged_hint(lr: float) -> str:
    return (
        f"the learning rate is the likely cause: lower --lr (now {lr:g}; e.g. {lr / 10:g}) or add --grad-clip; "
        "otherwise check the data and the loss weights; no model was written"
    )


def check_learned(state: TrainState, val_targets: np.ndarray | None, task: Task, *, lr: float) -> None:
    """Refuse a finished run that learned nothing: validation at chance *and* a training loss that never fell.

    Both must hold, so a hard dataset that a small model cannot separate yet (validation at chance, loss falling)
    passes, and so does a model whose loss is flat because it starts trained (validation above chance). Chance:
    the validation accuracy of every epoch at most the share of the most frequent class (what always predicting
    it scores), and the AUROC, where defined, at most 0.5. Multi-label tasks are not checked.

    Raises:
        TrainingDivergedError: the run did not learn (exit 8).
    """
    hist = state.history
    if task is Task.MULTILABEL or not hist or val_targets is None or state.loss_reference is None:
        return
    y = np.asarray(val_targets).reshape(-1).astype(np.int64)
    if not len(y):
        return
    majority = float(np.bincount(y).max()) / len(y)
    accs = [float(h["val_acc"]) for h in hist if "val_acc" in h]
    aurocs = [
        float(h["val_auroc"])
        for h in hist
        if isinstance(h.get("val_auroc"), float) and h["val_auroc"] == h["val_auroc"]
    ]
    losses = [float(h["loss"]) for h in hist if "loss" in h]
    at_chance = bool(accs) and max(accs) <= majority + 1e-9 and (not aurocs or max(aurocs) <= 0.5 + 1e-9)
    if not at_chance or not losses or min(losses) < state.loss_reference:
        return
    msg = (
        f"training did not learn: after {len(hist)} epoch(s) the best validation accuracy {max(accs):.3f} is no "
        f"better than always predicting the most frequent class ({majority:.3f})"
        + (f", AUROC {max(aurocs):.3f}" if aurocs else "")
        + f", and the training loss never fell below its first value ({state.loss_reference:.3g})"
    )
    hint = (
        f"the learning rate is the likely cause: try another --lr (now {lr:g}; too high stalls as surely as too "
        "low) or check that the labels match the images; no model was written"
    )
    raise TrainingDivergedError(msg, hint)


def _score(val: dict, metric: str) -> float:
    if metric not in val:
        raise InvalidInputError(
            f"unknown selection metric {metric!r}",
            f"choose one of {', '.join(k for k in val if isinstance(val[k], float))}",
        )
    return selection_value(val, metric)
