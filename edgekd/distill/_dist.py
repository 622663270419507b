"""Distributed training on PyTorch's own engine: ``torchrun`` + ``torch.distributed`` + DistributedDataParallel.

A run launched by ``torchrun --nproc-per-node N -m edgekd train|distill ...`` (or ``--nproc N``, which execs
``torch.distributed.run`` itself) finds ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in its environment and joins
the process group (``gloo`` on CPU, ``nccl`` on CUDA). The same code runs single-process with a
:class:`DistContext` of world size 1, so there is one loop, not two.

What makes N processes equivalent to one process with the same global batch and seed:

* the shuffle is a :class:`~torch.utils.data.DistributedSampler` in both cases (seed + epoch), so the union
  of the ranks' step-``k`` batches is exactly the single process's step-``k`` batch;
* gradients are averaged over ranks (DDP), which equals the single process's mean over the global batch when
  the per-rank batches have equal sizes (the global batch must divide by the world size);
* batch norm is synchronised (``SyncBatchNorm``), so batch statistics are those of the global batch;
* validation predictions are gathered from all ranks and the metrics (AUROC...) computed once on all of them.

Exact equality does not hold: floating-point sums are reduced in another order across processes (all-reduce
of gradients and of batch-norm moments), which changes results in the last bits; the tests allow for it.

Example:
    >>> ctx = init_distributed("cpu")   # world size 1 outside torchrun
    >>> sampler = train_sampler(dataset, ctx, seed=0)
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from edgekd.errors import InvalidInputError

__all__ = [
    "DistContext",
    "init_distributed",
    "train_sampler",
    "eval_sampler",
    "gather_rows",
    "launch_nproc",
    "per_rank_batch",
    "all_max",
    "under_launcher",
    "GlobalBatchNorm",
    "sync_batchnorm",
]

_TIMEOUT = _dt.timedelta(minutes=10)  # a rank that died leaves the others waiting at most this long


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (world size 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the model directory, logs and progress bars."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_min(self, flag: bool) -> bool:
        """True only when ``flag`` is true on every rank (e.g. "my loss is finite")."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)


def under_launcher() -> bool:
    """True inside a process started by ``torchrun`` (or SLURM through it)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            if local >= torch.cuda.device_count():
                raise InvalidInputError(
                    f"--nproc {os.environ.get('LOCAL_WORLD_SIZE', world)} on CUDA needs one GPU per process; "
                    f"this machine has {torch.cuda.device_count()}",
                    "lower --nproc to the number of GPUs, or use --device cpu",
                )
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=_TIMEOUT)
    return DistContext(rank=rank, world=world, local_rank=local)


def per_rank_batch(global_batch: int, ctx: DistContext) -> int:
    """The batch each rank loads: the global batch the user set, divided by the world size."""
    if global_batch % ctx.world:
        raise InvalidInputError(
            f"--batch-size {global_batch} does not divide by the {ctx.world} processes",
            f"use a multiple of {ctx.world}, e.g. {ctx.world * max(1, global_batch // ctx.world)}",
        )
    return global_batch // ctx.world


def train_sampler(dataset: Dataset, ctx: DistContext, *, seed: int) -> DistributedSampler:
    """The training shuffle: the same permutation on every rank, each rank taking every ``world``-th sample."""
    return DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=seed, drop_last=False)


def eval_sampler(dataset: Dataset, ctx: DistContext) -> DistributedSampler | None:
    """Each rank predicts its share of an evaluation split (None: one process reads it all in order)."""
    if not ctx.enabled:
        return None
    return DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=False, drop_last=False)


def gather_rows(rows: np.ndarray, values: list[np.ndarray], n: int, ctx: DistContext) -> list[np.ndarray]:
    """Put every rank's ``values`` (rows ``rows`` of a split of ``n`` samples) back in split order.

    The sampler pads the last rank with repeated samples; each row is kept once.
    """
    if not ctx.enabled:
        return values
    parts: list = [None] * ctx.world
    dist.all_gather_object(parts, (rows, values))
    out = [np.empty((n, *v.shape[1:]), dtype=v.dtype) for v in values]
    for r, vals in parts:
        for o, v in zip(out, vals):
            o[r] = v
    return out


def all_max(array: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Element-wise maximum of an integer array over ranks (e.g. which teacher-cache entries any rank filled)."""
    if not ctx.enabled:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int32))
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().numpy().astype(array.dtype)


def launch_nproc(nproc: int, argv: list[str]) -> None:
    """Re-run this command under ``torch.distributed.run`` with ``nproc`` local processes (does not return).

    ``argv`` is the command line (``sys.argv[1:]``); its ``--nproc`` is dropped. torch's own launcher starts,
    watches and stops the workers (one failing rank ends them all).
    """
    if nproc < 1:
        raise InvalidInputError(f"--nproc must be >= 1, got {nproc}")
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            rest.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "edgekd",
        *rest,
    ]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose gradient is the sum of the ranks' gradients (each rank's samples get theirs)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch over all ranks, on any backend.

    PyTorch's ``SyncBatchNorm`` runs on CUDA only; this one all-reduces the per-channel sum, sum of squares and
    count with a differentiable all-reduce (gradients flow to every rank's samples, as with one process), so
    CPU (gloo) runs are the single-process run too. Outside training,
    or without a process group, it is ordinary batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats is not None and dist.is_initialized()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        c = x.shape[1]
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_full((1,), x.numel() / c)])
        total = _AllReduceSum.apply(local)  # differentiable: the backward all-reduces the gradients too
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), n.item())
        shape = (1, c, *([1] * (x.dim() - 2)))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked += 1
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Batch norm over the global batch: torch's ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` on CPU."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            new = GlobalBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, device_type)
    return model
