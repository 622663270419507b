"""Torch-Pruning used alone, as its own examples do it, for `peers.py`.

The recipe of Torch-Pruning's README and ``benchmarks/main.py`` (``prune_to_target_macs`` / ``progressive_pruning``):

1. ``importance = tp.importance.GroupMagnitudeImportance(p=2)`` (its default, the group L2 norm edgekd's ``l2``
   also uses); the classifier in ``ignored_layers``;
2. a pruner with ``pruning_ratio=1.0`` and ``iterative_steps=400``, stepped until the MACs
   (``tp.utils.count_ops_and_params``) fall to the target, all at once (one-shot);
3. fine-tuning with cross-entropy: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), the learning rate divided by
   10 at 60 % and 80 % of the training (its 60/80 milestones of 100 epochs, scaled; counted in steps, so that a
   run of two epochs keeps the recipe's three phases).

The knobs both tools have are set alike, so the comparison is about the process: global ranking, channel counts
rounded to 8, no layer losing more than 90 % of its channels (edgekd's defaults; Torch-Pruning's own options).
The data (uint8 tensors preprocessed in the step, shuffled per epoch like edgekd's loader) and the evaluation
(edgekd's metrics, test split) are the same as for the edgekd runs.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from edgekd.data import make_loader
from edgekd.distill import evaluate_split
from edgekd.modeldir import load_model_dir
from edgekd.students import count_macs

__all__ = ["torch_pruning_version", "prune_torch_pruning_alone", "TP_CALL"]

ITERATIVE_STEPS = 400
TP_CALL = (
    "tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), "
    "global_pruning=True, pruning_ratio=1.0, iterative_steps=400, max_pruning_ratio=0.9, "
    "ignored_layers=[classifier], round_to=8); while MACs > target * base: pruner.step(); then CE "
    "fine-tuning: SGD(lr=0.01, momentum=0.9, weight_decay=5e-4), MultiStepLR(milestones=[0.6S, 0.8S], "
    "gamma=0.1) stepped every iteration (S: total steps)"
)


def torch_pruning_version() -> str:
    return importlib.metadata.version("torch-pruning")


def _prune(model: nn.Module, example: torch.Tensor, num_classes: int, target_macs: float, round_to: int) -> int:
    """Step the pruner until MACs <= target * base (Torch-Pruning's progressive_pruning); returns the steps."""
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=1.0,
        iterative_steps=ITERATIVE_STEPS,
        max_pruning_ratio=0.9,
        ignored_layers=ignored,
        round_to=round_to,
    )
    model.eval()
    base, _ = tp.utils.count_ops_and_params(model, example)
    macs = base
    while macs > target_macs * base and pruner.current_step < ITERATIVE_STEPS:
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, example)
    return pruner.current_step


def _finetune(model: nn.Module, pre, data, epochs: int, lr: float, seed: int, batch: int, max_steps: int | None):
    steps = math.ceil(len(data.train) / batch)
    total = epochs * (min(steps, max_steps) if max_steps else steps)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.6 * total), int(0.8 * total)], gamma=0.1)
    for epoch in range(epochs):
        model.train()
        loader = make_loader(data.train, batch, shuffle=True, seed=seed + epoch)
        for i, (images, targets) in enumerate(loader):
            if max_steps and i >= max_steps:
                break
            loss = F.cross_entropy(model(pre(images)), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


def prune_torch_pruning_alone(
    source: str | Path,
    data,
    *,
    target_macs: float,
    round_to: int,
    epochs: int,
    lr: float,
    seed: int,
    batch: int = 128,
    max_steps: int | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune the model directory ``source`` with Torch-Pruning's recipe; the pruned model and its record."""
    torch.manual_seed(seed)
    model, card = load_model_dir(source)
    pre = card.preprocess
    shape = (1, pre.in_chans, *pre.input_size)
    before = count_macs(model, shape)
    t0 = time.perf_counter()
    steps = _prune(model, torch.zeros(shape), card.spec.num_classes, target_macs, round_to)
    _finetune(model, pre, data, epochs, lr, seed, batch, max_steps)
    model.eval()
    test = evaluate_split(model, pre, data, "test", device="cpu")
    return model, {
        "auroc": float(test["auroc"]),
        "acc": float(test["acc"]),
        "macs_kept": count_macs(model, shape) / before,
        "params": sum(p.numel() for p in model.parameters()),
        "pruner_steps": steps,
        "seconds": time.perf_counter() - t0,
    }
