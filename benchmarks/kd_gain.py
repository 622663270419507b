"""Does distillation help? A compact student with `kd` and `dkd` vs the same student without a teacher (issue 3).

On the bundled PneumoniaMNIST (28x28 chest X-rays): train (or reuse with ``--teacher DIR``) a ``small:resnet18``
teacher (ResNet-18 with a small-input stem, 11.2 M parameters), then train the student (default
``small:resnet8``, 0.08 M parameters, 1/145 of the teacher) three ways with the same settings and epochs:

* ``scratch``: ``ce`` only (no teacher);
* ``kd``: ``ce:1`` + ``kd:1,T=4`` (Hinton et al. 2015);
* ``dkd``: ``ce:1`` + ``dkd:1`` (Zhao et al. 2022: alpha=1, beta=8, T=4; with two classes the non-target term
  vanishes, so DKD reduces to its target-class term).

Each for ``--seeds`` (default 0 1 2). The teacher runs once: the students train without augmentation, so the
teacher-logit cache (``--cache-teacher``) has one view and its fingerprint does not depend on the seed: every
distilled run after the first reads the logits from disk. The JSON holds every run's test ACC / AUROC, the mean
and standard deviation (``ddof=1``) per method, the teacher's metrics, timings and the environment.

Acceptance (issue 3): the KD student's mean beats the scratch student's, KD mean AUROC >= 0.95, and the whole
script finishes in under 30 minutes on 2 CPU cores. Default epochs: teacher 6, students 6.

    python benchmarks/kd_gain.py                       # full run (writes runs/bench/kd_gain.json)
    python benchmarks/kd_gain.py --quick               # smoke run: a few steps per epoch, 2 seeds
    python benchmarks/kd_gain.py --teacher runs/demo/teacher
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data import load_data  # noqa: E402
from edgekd.distill import RunSettings, TrainConfig, distill_model, train_model  # noqa: E402
from edgekd.modeldir import is_model_dir, read_card  # noqa: E402

METHODS = {"scratch": None, "kd": ["ce:1", "kd:1,T=4"], "dkd": ["ce:1", "dkd:1"]}


def get_teacher(args, data, out: Path) -> tuple[str, dict[str, Any]]:
    """Reuse ``--teacher``, or train the teacher once (a finished one in OUT/teacher is reused)."""
    path = Path(args.teacher) if args.teacher else out / "teacher"
    t0 = time.perf_counter()
    if not is_model_dir(path):
        cfg = TrainConfig(
            epochs=args.teacher_epochs,
            batch_size=128,
            lr=2e-3,
            augment="medical",
            seed=0,
            max_steps_per_epoch=args.max_steps,
        )
        train_model(
            RunSettings(student=args.teacher_model, data=data.spec, train=cfg),
            path,
            data=data,
            progress=not args.no_progress,
        )
    card = read_card(path)
    return str(path), {
        "dir": str(path),
        "model": card.spec.name,
        "params": card.params,
        "test": _metrics(card),
        "seconds": time.perf_counter() - t0,
    }


def _metrics(card) -> dict[str, float]:
    test = card.metrics["test"]
    return {"acc": float(test["acc"]), "auroc": float(test["auroc"])}


def run_one(args, method: str, seed: int, teacher: str, data, out: Path) -> dict[str, Any]:
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, max_steps_per_epoch=args.max_steps
    )
    run_dir = out / f"{method}_seed{seed}"
    t0 = time.perf_counter()
    if METHODS[method] is None:
        card = train_model(
            RunSettings(student=args.student, data=data.spec, train=cfg),
            run_dir,
            data=data,
            overwrite=True,
            progress=not args.no_progress,
        )
    else:
        settings = RunSettings(
            student=args.student,
            teachers=[teacher],
            data=data.spec,
            train=cfg,
            losses=list(METHODS[method]),
            cache={"dir": str(out / "teacher_cache")},
        )
        card = distill_model(settings, run_dir, data=data, overwrite=True, progress=not args.no_progress)
    row = {
        "method": method,
        "seed": seed,
        **_metrics(card),
        "params": read_card(run_dir).params,
        "best_epoch": card.metrics["best_epoch"]["epoch"],
        "seconds": time.perf_counter() - t0,
    }
    if "cache" in card.lineage.notes:
        row["teacher_calls"] = card.lineage.notes["teacher_calls"]
        row["cache"] = card.lineage.notes["cache"]["status"]
    print(f"{method:8s} seed {seed}: acc {row['acc']:.4f} auroc {row['auroc']:.4f} ({row['seconds']:.0f} s)")
    return row


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for method in METHODS:
        rows = [r for r in runs if r["method"] == method]
        out[method] = {"n": len(rows)}
        for key in ("acc", "auroc"):
            vals = [r[key] for r in rows]
            out[method][f"{key}_mean"] = statistics.fmean(vals)
            out[method][f"{key}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def acceptance(summary: dict[str, dict[str, float]], params: dict[str, int], elapsed: float) -> dict[str, Any]:
    kd, scratch = summary["kd"], summary["scratch"]
    return {
        "kd_beats_scratch_acc": kd["acc_mean"] > scratch["acc_mean"],
        "kd_beats_scratch_auroc": kd["auroc_mean"] > scratch["auroc_mean"],
        "kd_auroc_at_least_0.95": kd["auroc_mean"] >= 0.95,
        "student_params_at_most_teacher_over_10": params["student"] * 10 <= params["teacher"],
        "under_30_min": elapsed < 1800,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="reuse this teacher model directory instead of training one")
    ap.add_argument("--teacher-model", default="small:resnet18")
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--student", default="small:resnet8")
    ap.add_argument("--epochs", type=int, default=6, help="student epochs (all methods)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench/kd_gain")
    ap.add_argument("--json", default=None, help="default: OUT.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 teacher epoch, 1 student epoch, 3 steps each")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.teacher_epochs, args.epochs, args.max_steps, args.seeds = 1, 1, 3, args.seeds[:2]
        args.out = args.out + "_quick"
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    data = load_data("pneumoniamnist")
    teacher, teacher_info = get_teacher(args, data, out)
    runs = [run_one(args, method, seed, teacher, data, out) for seed in args.seeds for method in METHODS]
    elapsed = time.perf_counter() - t0
    summary = summarise(runs)
    params = {"teacher": teacher_info["params"], "student": runs[0]["params"]}
    payload = {
        "benchmark": "kd_gain",
        "quick": args.quick,
        "data": data.spec,
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "teacher": teacher_info,
        "params": params,
        "runs": runs,
        "summary": summary,
        "acceptance": acceptance(summary, params, elapsed),
        "elapsed_s": elapsed,
        "environment": environment(),
        "note": "smoke run: the teacher trains 3 steps, so the acceptance is not meaningful" if args.quick else "",
    }
    for method, s in summary.items():
        print(
            f"{method:8s} acc {s['acc_mean']:.4f} ± {s['acc_std']:.4f}   auroc {s['auroc_mean']:.4f} ± "
            f"{s['auroc_std']:.4f}"
        )
    print(
        f"teacher acc {teacher_info['test']['acc']:.4f} auroc {teacher_info['test']['auroc']:.4f}; "
        f"total {elapsed / 60:.1f} min; acceptance {payload['acceptance']}"
    )
    write_json(args.json or f"{args.out}.json", payload)


if __name__ == "__main__":
    main()
