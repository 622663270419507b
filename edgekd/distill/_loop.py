"""The training loop behind `edgekd train`, `edgekd distill` and pruning recovery.

In the spirit of torchvision's ``train_one_epoch`` and nanoGPT: one readable epoch function, an
objective that owns the loss, and checkpoints written atomically every epoch. Checkpoints never pickle:
tensors go to safetensors, everything else (optimizer hyper-parameters, history) to JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.data import DataBundle, make_loader
from edgekd.data.preprocess import Preprocess
from edgekd.distill._config import DeviceName, OptimizerName, TrainConfig
from edgekd.distill._objective import Objective
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.metrics import compute_metrics, higher_is_better
from edgekd.modeldir import atomic_write_bytes, atomic_write_text

__all__ = ["fit", "FitResult", "predict", "resolve_device", "lr_at"]

CKPT_DIR = "checkpoint"


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
    continues from it with the same optimizer state, data order and schedule.
    """
    from edgekd.data import Augment, AugmentedDataset

    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    amp = cfg.amp if cfg.amp is not None else cuda
    channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
    objective.channels_last = channels_last
    model.to(device)
    objective.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    train_ds = data.train
    if cfg.augment != "none":
        train_ds = AugmentedDataset(train_ds, Augment.preset(cfg.augment), seed=cfg.seed)
    val_loader = make_loader(data.val, cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total = steps_per_epoch * cfg.epochs
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    params = list(model.parameters()) + [p for p in objective.parameters() if p.requires_grad]
    optimizer = _make_optimizer(cfg, params)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)
    out_dir = Path(out_dir)
    state = _TrainState(select_metric=cfg.select_metric)
    if resume:
        state = _load_checkpoint(out_dir, model, objective, optimizer, scaler, cfg)

    for epoch in range(state.epoch, cfg.epochs):
        if isinstance(train_ds, AugmentedDataset):
            train_ds.set_epoch(objective.augment_epoch(epoch))  # a teacher cache may replay earlier views
        objective.on_epoch_start(epoch, cfg.epochs)
        loader = make_loader(
            _Indexed(train_ds),
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed + epoch,
            drop_last=False,
            num_workers=cfg.num_workers,
        )
        stats = _train_one_epoch(
            model,
            objective,
            optimizer,
            scaler,
            loader,
            device,
            cfg,
            epoch=epoch,
            step0=epoch * steps_per_epoch,
            steps=steps_per_epoch,
            total=total,
            warmup=warmup,
            amp=amp,
            progress=progress,
        )
        logits, targets = predict(model, preprocess, val_loader, device, channels_last)
        val = compute_metrics(logits, targets, data.task)
        record = {"epoch": epoch + 1, **stats, **{f"val_{k}": v for k, v in val.items() if k != "confusion_matrix"}}
        state.history.append(record)
        score = _score(val, cfg.select_metric)
        if state.is_better(score):
            state.best_metric, state.best_epoch, state.best_val = score, epoch + 1, val
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        state.epoch = epoch + 1
        _save_checkpoint(out_dir, model, objective, optimizer, scaler, state)
        if on_epoch_end:
            on_epoch_end(epoch + 1, record)
    if state.best_state is None:  # resumed a finished run
        state.best_state = _load_best(out_dir)
    return FitResult(
        state.best_epoch, state.best_metric, cfg.select_metric, state.history, state.best_state, state.best_val
    )


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


def _train_one_epoch(
    model, objective, optimizer, scaler, loader, device, cfg, *, epoch, step0, steps, total, warmup, amp, progress
) -> dict[str, float]:
    from edgekd._progress import TrainProgress

    model.train()
    objective.train()
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    t0 = time.perf_counter()
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with TrainProgress(enabled=progress, epoch=epoch, epochs=cfg.epochs, steps=steps) as bar:
        for i, (images, targets, indices) in enumerate(loader):
            if i >= steps:
                break
            lr = lr_at(step0 + i, total, warmup, cfg.lr, cfg.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = lr
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss, terms = objective(model, images, targets, indices, epoch)
            if not torch.isfinite(loss):
                raise InvalidInputError(
                    f"the loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}",
                    "lower --lr, or check the data and the loss weights",
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            n = images.shape[0]
            seen += n
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0) + v.float() * n  # stays on device: no sync per step
            bar.advance(n, sums, seen, lr)
    elapsed = time.perf_counter() - t0
    out = {k: float(v) / max(seen, 1) for k, v in sums.items()}  # one sync per epoch
    out.update(lr=lr, images_per_s=seen / elapsed, epoch_time_s=elapsed)
    return out


@dataclass
class _TrainState:
    select_metric: str
    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_val: dict = field(default_factory=dict)
    best_state: dict | None = None
    history: list = field(default_factory=list)

    def is_better(self, score: float) -> bool:
        if not higher_is_better(self.select_metric):
            score = -score
        return score > self.best_metric


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(out_dir: Path, model, objective, optimizer, scaler, st: _TrainState) -> None:
    from safetensors.torch import save as st_save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"objective.{k}": v.detach().cpu().contiguous() for k, v in objective.state_dict().items()})
    if st.best_state is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in st.best_state.items()})
    opt_t, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_t)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "epoch": st.epoch,
        "best_metric": st.best_metric,
        "best_epoch": st.best_epoch,
        "best_val": st.best_val,
        "select_metric": st.select_metric,
        "history": st.history,
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
    }
    ck = out_dir / CKPT_DIR
    # Tensors first, then the JSON that makes them a valid checkpoint: a crash between the two leaves
    # the previous JSON pointing at a complete (newer) tensor file of the same layout.
    atomic_write_bytes(ck / "last.safetensors", st_save(_unalias(tensors)))
    atomic_write_text(ck / "last.json", json.dumps(meta, indent=1, default=float))


def _unalias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen, out = set(), {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _load_checkpoint(out_dir, model, objective, optimizer, scaler, cfg) -> _TrainState:
    from safetensors.torch import load_file

    ck = out_dir / CKPT_DIR
    if not (ck / "last.json").is_file() or not (ck / "last.safetensors").is_file():
        raise ArtifactError(f"--resume: no checkpoint in {ck}", "start without --resume, or point --out at the run")
    meta = json.loads((ck / "last.json").read_text())
    tensors = load_file(str(ck / "last.safetensors"))
    device = next(model.parameters()).device

    def part(prefix):
        return {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}

    model.load_state_dict(part("model."))
    objective.load_state_dict(part("objective."), strict=False)
    optimizer.load_state_dict(_unflatten_optimizer(part(""), meta["optimizer"]))
    if meta.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return _TrainState(
        select_metric=meta["select_metric"],
        epoch=meta["epoch"],
        best_metric=meta["best_metric"],
        best_epoch=meta["best_epoch"],
        best_val=meta["best_val"],
        best_state=best,
        history=meta["history"],
    )


def _load_best(out_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(out_dir / CKPT_DIR / "last.safetensors"))
    return {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
