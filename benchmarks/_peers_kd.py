"""The torchdistill side of `peers.py`: the same KD run as `edgekd distill`, driven by torchdistill's DistillationBox.

torchdistill (Matsubara 2021) is configuration-driven: a ``train`` config names the teacher and student settings,
the criterion, optimiser and scheduler from its registries, and a ``DistillationBox`` runs them. This module builds
that config as the dict its YAML would load into, and drives the box with the loop of torchdistill's own
``examples/torchvision/image_classification.py`` (pre_epoch_process, forward_process, post_forward_process,
post_epoch_process). What is matched to `edgekd distill ... --loss ce:1 --loss kd:1,T=4` and why:

* teacher: the edgekd teacher directory's weights exported to a torchdistill checkpoint (``{"model": state_dict}``,
  loaded by the box through ``src_ckpt``) on the same architecture; put in eval mode by us (torchdistill never
  changes a model's mode, so a teacher left in train mode would distil with batch statistics and drift its
  running statistics);
* student: the same architecture built with the same seed, so both tools start from identical weights;
* loss: torchdistill's ``KDLoss`` with ``alpha=1, beta=1, temperature=T``: ``CE + T^2 * KL(batchmean)``, the same
  value as edgekd's ``ce:1`` + ``kd:1,T=T``;
* optimiser: AdamW with weight decay on weights only (not on norms and biases), as edgekd's trainer does, added to
  torchdistill's optimiser registry (``register_optimizer``), its documented extension point;
* schedule: ``LambdaLR`` stepped every iteration (``scheduling_step: 1``) with edgekd's warm-up + cosine factor;
* data: the same uint8 training tensors, batch size and one-process loader; both preprocess inside the step (here
  through a registered ``forward_proc``), so neither gets a precomputed float dataset;
* selection: the epoch with the best validation AUROC is kept, then evaluated on the test split with edgekd's
  metrics (torchdistill's example keeps the best validation top-1; the same rule for both isolates the engine);
* shuffle order: torchdistill's sampler config takes any sampler class; :class:`EpochSeededSampler` draws epoch
  ``e``'s order as edgekd's loader does (``RandomSampler`` with a generator seeded ``seed + e``).

With all of that equal the two runs compute the same thing, so their test metrics agree up to floating-point
summation order; a larger gap would be a defect of one engine. What differs is the engine around the step: that
is what the throughput ratio measures.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from edgekd.distill import TrainConfig, evaluate_split, lr_at, predict, resolve_student
from edgekd.metrics import compute_metrics
from edgekd.modeldir import WEIGHTS_FILE, read_card
from edgekd.students import build_model

__all__ = ["torchdistill_version", "run_torchdistill", "torchdistill_call"]

OPTIMIZER_KEY = "AdamWDecayOnWeights"


@dataclass(frozen=True)
class Steps:
    """Steps per epoch, in all, and of warm-up: what edgekd's trainer computes from the same config."""

    steps: int
    total: int
    warmup: int

    @classmethod
    def of(cls, n: int, cfg: TrainConfig) -> Steps:
        steps = math.ceil(n / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        return cls(steps, steps * cfg.epochs, int(round(cfg.warmup_epochs * steps)))


class EpochSeededSampler(torch.utils.data.Sampler):
    """Epoch ``e`` (the ``e``-th pass) is ``RandomSampler`` with a generator seeded ``seed + e``, as edgekd's loader."""

    def __init__(self, data_source, seed: int = 0) -> None:
        self.data_source, self.seed, self.epoch = data_source, seed, 0

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.utils.data.RandomSampler(self.data_source, generator=g))


def torchdistill_version() -> str | None:
    try:
        import torchdistill
    except ImportError:
        return None
    return str(torchdistill.__version__)


def _register(pre_s, pre_t) -> tuple[str, str]:
    """Register the optimiser and the two forward procs (preprocess inside the step) in torchdistill's registries."""
    from torchdistill.core.interfaces.registry import FORWARD_PROC_FUNC_DICT, register_forward_proc_func
    from torchdistill.optim.registry import OPTIM_DICT, register_optimizer

    if OPTIMIZER_KEY not in OPTIM_DICT:

        @register_optimizer(key=OPTIMIZER_KEY)
        def adamw_decay_on_weights(module, lr: float, weight_decay: float):
            decay = [p for p in module.parameters() if p.requires_grad and p.ndim > 1]
            no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim <= 1]
            groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
            return torch.optim.AdamW(groups, lr=lr)

    keys = ("edgekd_preprocess_student", "edgekd_preprocess_teacher")
    for key, pre in zip(keys, (pre_s, pre_t)):
        FORWARD_PROC_FUNC_DICT.pop(key, None)  # a new run may bring another preprocessing

        def forward(model, sample_batch, targets=None, supp_dict=None, _pre=pre, **kwargs):
            return model(_pre(sample_batch))

        register_forward_proc_func(key=key)(forward)
    return keys


def train_config(cfg: TrainConfig, T: float, steps: Steps, seed: int, ckpt: Path, procs: tuple[str, str]):
    """The torchdistill ``train`` config (what its YAML would hold), with a Python lr lambda."""
    kd = {
        "key": "KDLoss",
        "kwargs": {
            "student_module_path": ".",
            "student_module_io": "output",
            "teacher_module_path": ".",
            "teacher_module_io": "output",
            "temperature": T,
            "alpha": 1.0,
            "beta": 1.0,
            "reduction": "batchmean",
        },
    }
    sampler = {"class_or_func": EpochSeededSampler, "kwargs": {"seed": seed}}
    return {
        "num_epochs": cfg.epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": sampler,
            "requires_supp": True,
            "kwargs": {"batch_size": cfg.batch_size, "num_workers": cfg.num_workers},
        },
        "teacher": {"src_ckpt": str(ckpt), "requires_grad": False, "forward_proc": procs[1]},
        "student": {"requires_grad": True, "forward_proc": procs[0]},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": 1.0}}}},
        "optimizer": {
            "key": OPTIMIZER_KEY,
            "filters_params": False,
            "kwargs": {"lr": cfg.lr, "weight_decay": cfg.weight_decay},
        },
        "scheduler": {
            "key": "LambdaLR",
            "scheduling_step": 1,
            "kwargs": {"lr_lambda": lambda s: lr_at(s, steps.total, steps.warmup, 1.0, cfg.min_lr_ratio)},
        },
    }


def torchdistill_call(cfg: TrainConfig, T: float) -> dict[str, Any]:
    """The config as JSON (for the record): the lr lambda and sampler written out in words."""
    steps = Steps(steps=0, total=0, warmup=0)
    conf = train_config(
        cfg, T, steps, cfg.seed, Path("teacher.pt"), ("edgekd_preprocess_student", "edgekd_preprocess_teacher")
    )
    conf["scheduler"]["kwargs"]["lr_lambda"] = (
        f"edgekd.distill.lr_at(step, total, warmup={cfg.warmup_epochs} epoch(s), min_ratio={cfg.min_lr_ratio}) / lr"
    )
    conf["train_data_loader"]["sampler"] = {"class_or_func": "EpochSeededSampler", "kwargs": {"seed": cfg.seed}}
    return {
        "api": "torchdistill.core.distillation.get_distillation_box(teacher, student, {'train': data.train}, "
        "train_config, torch.device('cpu'), None, False, 1)",
        "train_config": conf,
    }


def export_teacher(teacher_dir: str | Path, work: Path) -> tuple[torch.nn.Module, Any, Path]:
    """The teacher's architecture (untrained) and its weights as a torchdistill checkpoint file."""
    card = read_card(teacher_dir)
    ckpt = work / "teacher_torchdistill.pt"
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"model": load_file(str(Path(teacher_dir) / WEIGHTS_FILE))}, ckpt)
    return build_model(card.spec), card, ckpt


def _val_auroc(model, pre, data) -> dict[str, Any]:
    loader = torch.utils.data.DataLoader(data.val, batch_size=256, shuffle=False)
    logits, targets = predict(model, pre, loader, torch.device("cpu"))
    return compute_metrics(logits, targets, data.task)


def run_torchdistill(teacher_dir: str, student: str, data, cfg: TrainConfig, T: float, work: Path) -> dict[str, Any]:
    """One torchdistill KD run; returns test metrics of the best-validation epoch and per-epoch throughput."""
    from torchdistill.core.distillation import get_distillation_box

    teacher, t_card, ckpt = export_teacher(teacher_dir, work)
    torch.manual_seed(cfg.seed)  # as edgekd's run: the same seed, then the student is built
    net, _, pre, _ = resolve_student(student, data)
    procs = _register(pre, t_card.preprocess)
    steps = Steps.of(len(data.train), cfg)
    conf = train_config(cfg, T, steps, cfg.seed, ckpt, procs)
    box = get_distillation_box(teacher, net, {"train": data.train}, conf, torch.device("cpu"), None, False, 1)
    teacher.eval()  # see the module docstring
    best, history = (-1.0, None, 0), []
    for epoch in range(cfg.epochs):
        box.pre_epoch_process(epoch=epoch)
        seen, t0 = 0, time.perf_counter()
        for i, (images, targets, supp) in enumerate(box.train_data_loader):
            if i >= steps.steps:
                break
            loss = box.forward_process(images, targets, supp)
            box.post_forward_process(loss=loss)
            seen += images.shape[0]
        elapsed = time.perf_counter() - t0
        val = _val_auroc(net, pre, data)
        history.append(
            {
                "epoch": epoch + 1,
                "images_per_s": seen / elapsed,
                "epoch_time_s": elapsed,
                "val_auroc": float(val["auroc"]),
                "val_acc": float(val["acc"]),
            }
        )
        if val["auroc"] > best[0]:
            best = (float(val["auroc"]), copy.deepcopy(net.state_dict()), epoch + 1)
        box.post_epoch_process()
    box.clean_modules()
    net.load_state_dict(best[1])
    test = evaluate_split(net.eval(), pre, data, "test", device="cpu")
    return {"acc": float(test["acc"]), "auroc": float(test["auroc"]), "best_epoch": best[2], "history": history}
