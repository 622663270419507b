"""Does Learning without Forgetting keep domain A while adapting to domain B? Domain-incremental PneumoniaMNIST.

Domain A is the bundled PneumoniaMNIST; domain B is the same images through the fixed "other scanner" shift of
``benchmarks/_shift.py`` (lower contrast and a gamma, blur sigma 0.8 px, noise sigma 0.05), with B's own
train/val/test splits (the shifted A splits). Then:

1. a model (``--model``, default ``small:resnet8``) is trained on A once (seed 0);
2. for each seed it is updated on B's training split with `edgekd update` (``update_model``) twice, with the
   same schedule: the update defaults (``update_config``: 5 epochs, lr 5e-4, no warm-up) and the old model's
   batch-norm statistics kept (``freeze_norm``; ``--update-norm`` re-estimates them on B, the former behaviour):

   * ``finetune``: plain fine-tuning on B (cross-entropy only), the baseline of Li & Hoiem (2016);
   * ``lwf``: the same plus ``--lwf-weight`` times the KD term towards the original model's outputs on the B
     images (T = 2).

Both updated models are scored on A's and B's test splits (ACC at 0.5, AUROC, sensitivity, specificity); the
original model too. The updates select their best epoch on B's validation split (they never see A). About 6
minutes on one CPU core (the model on A is trained once and reused from ``--out``). Acceptance (issue): report,
over 3 seeds, the A accuracy kept by LwF vs plain fine-tuning, and the B accuracy of both.

    python benchmarks/lwf.py            # writes runs/bench/lwf.json
    python benchmarks/lwf.py --quick    # smoke run
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
from _shift import pneumonia_arrays, scanner_b, write_medmnist  # noqa: E402

from edgekd.distill import RunSettings, TrainConfig, UpdateConfig, train_model, update_model  # noqa: E402
from edgekd.evaluate import evaluate_model_dir  # noqa: E402
from edgekd.modeldir import is_model_dir  # noqa: E402

A = "pneumoniamnist"


def domain_b(out: Path) -> str:
    arrays = pneumonia_arrays()
    return write_medmnist(
        out / "domain_b.npz", {s: (scanner_b(im, seed=i), y) for i, (s, (im, y)) in enumerate(arrays.items())}
    )


METRICS = ("acc", "auroc", "sensitivity", "specificity")


def scores(model_dir: Path, b: str) -> dict[str, float]:
    out = {}
    for name, spec in (("a", A), ("b", b)):
        m = evaluate_model_dir(model_dir, data=spec, split="test", device="cpu")["metrics"]
        out.update({f"{name}_{k}": float(m[k]) for k in METRICS})
    return out


def base_model(args, out: Path) -> Path:
    path = out / "model_a"
    if not is_model_dir(path):
        cfg = TrainConfig(epochs=args.base_epochs, batch_size=128, lr=2e-3, seed=0, max_steps_per_epoch=args.max_steps)
        train_model(RunSettings(student=args.model, data=A, train=cfg), path, progress=False)
    return path


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in ("finetune", "lwf"):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {
            k: {
                "mean": statistics.mean(r[k] for r in mine),
                "std": statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0,
            }
            for k in (f"{d}_{m}" for d in "ab" for m in METRICS)
        }
    out["lwf_keeps_more_of_a"] = out["lwf"]["a_acc"]["mean"] > out["finetune"]["a_acc"]["mean"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/lwf")
    p.add_argument("--json", default="runs/bench/lwf.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model", default="small:resnet8")
    p.add_argument("--base-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)  # the update defaults (`edgekd update`, update_config)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lwf-weight", type=float, default=1.0)
    p.add_argument("--update-norm", action="store_true", help="re-estimate batch-norm statistics on B (ablation)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps per epoch, 1 seed")
    args = p.parse_args()
    if args.quick:
        args.max_steps, args.base_epochs, args.epochs, args.seeds = 2, 1, 1, [0]
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out, t0 = Path(args.out), time.perf_counter()
    b = domain_b(out)
    model_a = base_model(args, out)
    before = scores(model_a, b)
    print(f"model on A: A ACC {before['a_acc']:.4f}, B ACC {before['b_acc']:.4f} (before any update)", flush=True)
    rows = []
    for seed in args.seeds:
        for method, weight in (("finetune", None), ("lwf", args.lwf_weight)):
            cfg = TrainConfig(
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                warmup_epochs=0,
                seed=seed,
                max_steps_per_epoch=args.max_steps,
            )
            t1 = time.perf_counter()
            dest = out / f"{method}_s{seed}"
            update_model(
                model_a,
                b,
                dest,
                UpdateConfig(
                    lwf=weight is not None,
                    lwf_weight=weight or 1.0,
                    freeze_norm=not args.update_norm,
                    train=cfg,
                ),
                overwrite=True,
                progress=False,
            )
            row = {"method": method, "seed": seed, **scores(dest, b), "seconds": time.perf_counter() - t1}
            rows.append(row)
            print(
                f"{method:8s} seed {seed}: A ACC {row['a_acc']:.4f} AUROC {row['a_auroc']:.4f} | "
                f"B ACC {row['b_acc']:.4f} AUROC {row['b_auroc']:.4f}",
                flush=True,
            )
    result = {
        "benchmark": "lwf",
        "args": vars(args),
        "domain_b": "benchmarks/_shift.py scanner_b",
        "before_update": before,
        "runs": rows,
        "summary": summary(rows),
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    write_json(args.json, result)
    s = result["summary"]
    for m in ("finetune", "lwf"):
        print(
            f"{m:8s}: A ACC {s[m]['a_acc']['mean']:.4f} +- {s[m]['a_acc']['std']:.4f}, "
            f"B ACC {s[m]['b_acc']['mean']:.4f} +- {s[m]['b_acc']['std']:.4f}"
        )
    print(f"LwF keeps more of A: {s['lwf_keeps_more_of_a']} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
