"""Is N-process distillation the same run as one process? Per-step losses and final weights compared (issue 15).

The same distillation (student small:tinycnn with batch norm, a fixed random small:tinycnn teacher, ``ce:1`` +
``kd:1,T=4``, SGD, synthetic data, seed 0, global batch 32) runs once in one process and once under
``torch.distributed.run`` with ``--nproc`` processes (gloo on CPU, nccl with ``--device cuda``), through the
one :class:`edgekd.distill.Trainer`. The script prints and writes (``runs/bench/ddp_equivalence.json``) the
largest per-step loss difference and the largest final-weight difference.

Why the two agree: both draw the same permutation per epoch (a ``DistributedSampler`` with one replica is the
single process's shuffle), so the ranks' step-k batches together are the single process's step-k batch;
DDP averages equal-sized per-rank gradients, which is the global-batch mean; ``SyncBatchNorm`` computes the
global batch's statistics. Why they are not bit-identical: the all-reduces sum gradients and batch-norm
moments in another order than one process does, so results differ in the last bits of float32 and the
difference grows slowly with the steps. The tolerances (``--loss-tol``, ``--weight-tol``) allow for that.

    python benchmarks/ddp_equivalence.py                 # 2 processes vs 1 on CPU (gloo)
    python benchmarks/ddp_equivalence.py --nproc 4 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd.data import load_data  # noqa: E402
from edgekd.distill import TrainConfig, Trainer, build_distill_objective  # noqa: E402
from edgekd.specs import ModelSpec  # noqa: E402
from edgekd.students import build_model  # noqa: E402
from edgekd.teachers import Teacher  # noqa: E402

DATA = "synthetic:classes=2,n=400,size=16,channels=1,seed=0"  # an even train split: no sampler padding


def worker(args) -> None:
    """One run (single process, or one rank under torchrun): writes step losses and final weights."""
    torch.set_num_threads(1)
    data = load_data(DATA, seed=0)
    torch.manual_seed(0)  # the same initial weights on every rank and in the single process
    student = build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1))
    teacher_net = build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1, kwargs={"widths": [8, 16]}))
    pre = data.preprocess()
    teacher = Teacher.from_module(teacher_net, pre, name="random-teacher")
    objective = build_distill_objective(student, pre, data.task, [teacher], ["ce:1", "kd:1,T=4"])
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch,
        optimizer="sgd",
        lr=0.05,
        warmup_epochs=0.0,
        weight_decay=0.0,
        seed=0,
        device=args.device,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(student, objective, data, cfg, tmp, preprocess=pre, progress=False, record_steps=True)
        trainer.fit()
    if trainer.dist.is_main:
        out = Path(args.worker_out)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
        save_file(state, str(out / "weights.safetensors"))
        (out / "steps.json").write_text(json.dumps({"world": trainer.dist.world, "losses": trainer.step_losses}))
    trainer.dist.barrier()  # rank 0 has written before any rank leaves the group
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _launch(args, out: Path, nproc: int) -> float:
    common = [
        "--worker-out",
        str(out),
        "--epochs",
        str(args.epochs),
        "--batch",
        str(args.batch),
        "--device",
        args.device,
    ]
    me = str(Path(__file__).resolve())
    if nproc == 1:
        cmd = [sys.executable, me, "--worker", *common]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            me,
            "--worker",
            *common,
        ]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**env, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def compare(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        single, multi = Path(tmp) / "single", Path(tmp) / "multi"
        t1 = _launch(args, single, 1)
        tn = _launch(args, multi, args.nproc)
        a, b = (json.loads((d / "steps.json").read_text()) for d in (single, multi))
        wa, wb = (load_file(str(d / "weights.safetensors")) for d in (single, multi))
    steps = [abs(x - y) for x, y in zip(a["losses"], b["losses"])]
    weights = {k: float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].is_floating_point()}
    result = {
        "benchmark": "ddp_equivalence",
        "data": DATA,
        "nproc": args.nproc,
        "device": args.device,
        "epochs": args.epochs,
        "global_batch": args.batch,
        "steps": len(a["losses"]),
        "steps_equal_count": len(a["losses"]) == len(b["losses"]),
        "max_step_loss_diff": max(steps),
        "first_step_loss_diff": steps[0],
        "max_weight_diff": max(weights.values()),
        "worst_tensor": max(weights, key=weights.get),
        "seconds": {"single": t1, "distributed": tn},
        "loss_tol": args.loss_tol,
        "weight_tol": args.weight_tol,
    }
    result["equivalent"] = bool(
        result["steps_equal_count"]
        and result["max_step_loss_diff"] <= args.loss_tol
        and result["max_weight_diff"] <= args.weight_tol
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="global batch (divisible by --nproc)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--loss-tol", type=float, default=1e-4)
    ap.add_argument("--weight-tol", type=float, default=1e-4)
    ap.add_argument("--json", default="runs/bench/ddp_equivalence.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    result = compare(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(
        f"{args.nproc} processes vs 1, {result['steps']} steps: max |loss diff| per step "
        f"{result['max_step_loss_diff']:.2e} (first step {result['first_step_loss_diff']:.2e}), max |weight diff| "
        f"{result['max_weight_diff']:.2e} ({result['worst_tensor']}); equivalent within tolerance: "
        f"{result['equivalent']}"
    )
    sys.exit(0 if result["equivalent"] else 1)


if __name__ == "__main__":
    main()
