"""Do unlabelled images help distillation? PneumoniaMNIST with labels for 10 % of the training split.

The training split of the bundled PneumoniaMNIST (4708 chest X-rays) is divided once, stratified and seeded
(seed 0): ``--fraction`` (10 %) keeps its labels, the rest is used without labels. Validation and test splits
are the original ones (labels used only to pick the best epoch and to score). Then:

1. a teacher (``--teacher-model``, default ``small:resnet8x4``) is trained on the labelled 10 % only, with the
   ``medical`` augmentation;
2. for each seed, the same student (``--student``, default ``small:resnet8``) is distilled from it twice with
   the same losses (``ce:1`` + ``kd:1,T=4``), epochs, batch size and learning rate:

   * ``labeled``: on the labelled 10 % only;
   * ``unlabeled``: the same, plus ``--unlabeled`` on the other 90 % (``--unlabeled-ratio`` unlabelled images
     per labelled one in every step, KD only on them).

The teacher's logits are cached (no augmentation for the students, so one view, reused across seeds). The
``unlabeled`` run sees more images per epoch (that is the point), so the JSON also records images processed and
wall time. Acceptance (issue): the ``unlabeled`` mean test AUROC and ACC over 3 seeds are both higher.

    python benchmarks/unlabeled_kd.py             # writes runs/bench/unlabeled_kd.json
    python benchmarks/unlabeled_kd.py --quick     # smoke run
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
from _shift import pneumonia_arrays, write_medmnist  # noqa: E402

from edgekd.data._dataset import stratified_split  # noqa: E402
from edgekd.distill import CacheSettings, RunSettings, TrainConfig, distill_model, train_model  # noqa: E402
from edgekd.modeldir import is_model_dir, read_card  # noqa: E402


def make_splits(out: Path, fraction: float) -> tuple[str, str, dict[str, int]]:
    """labeled.npz (the labelled fraction + original val/test) and unlabeled.npz (the rest; labels ignored)."""
    arrays = pneumonia_arrays()
    images, labels = arrays["train"]
    unlabeled_idx, labeled_idx = stratified_split(labels, [1 - fraction], seed=0)[::-1]
    keep = {s: arrays[s] for s in ("val", "test")}
    labeled = write_medmnist(out / "labeled.npz", {"train": (images[labeled_idx], labels[labeled_idx]), **keep})
    unlabeled = write_medmnist(out / "unlabeled.npz", {"train": (images[unlabeled_idx], labels[unlabeled_idx]), **keep})
    return labeled, unlabeled, {"labeled": len(labeled_idx), "unlabeled": len(unlabeled_idx)}


def teacher(args, labeled: str, out: Path) -> tuple[str, dict[str, Any]]:
    path, t0 = out / "teacher", time.perf_counter()
    if not is_model_dir(path):
        cfg = TrainConfig(
            epochs=args.teacher_epochs,
            batch_size=64,
            lr=2e-3,
            augment="medical",
            seed=0,
            max_steps_per_epoch=args.max_steps,
        )
        train_model(RunSettings(student=args.teacher_model, data=labeled, train=cfg), path, progress=False)
    test = read_card(path).metrics["test"]
    return str(path), {
        "model": args.teacher_model,
        "acc": test["acc"],
        "auroc": test["auroc"],
        "seconds": time.perf_counter() - t0,
    }


def run(args, method: str, seed: int, labeled: str, unlabeled: str, teacher_dir: str, out: Path) -> dict[str, Any]:
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, max_steps_per_epoch=args.max_steps
    )
    settings = RunSettings(
        student=args.student,
        data=labeled,
        teachers=[teacher_dir],
        losses=["ce:1", "kd:1,T=4"],
        cache=CacheSettings(dir=str(out / "cache")),
        train=cfg,
        unlabeled=unlabeled if method == "unlabeled" else None,
        unlabeled_ratio=args.ratio,
    )
    t0 = time.perf_counter()
    card = distill_model(settings, out / f"{method}_s{seed}", overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    test, notes = card.metrics["test"], card.lineage.notes.get("unlabeled", {})
    row = {
        "method": method,
        "seed": seed,
        "acc": test["acc"],
        "auroc": test["auroc"],
        "seconds": seconds,
        "best_epoch": card.metrics["best_epoch"]["epoch"],
        "unlabeled_images_seen": notes.get("seen", 0),
    }
    print(f"{method:9s} seed {seed}: ACC {row['acc']:.4f} AUROC {row['auroc']:.4f} ({seconds:.0f} s)", flush=True)
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for method in ("labeled", "unlabeled"):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {
            k: {
                "mean": statistics.mean(r[k] for r in mine),
                "std": statistics.stdev(r[k] for r in mine) if len(mine) > 1 else 0.0,
            }
            for k in ("acc", "auroc", "seconds")
        }
    out["unlabeled_better"] = all(out["unlabeled"][k]["mean"] > out["labeled"][k]["mean"] for k in ("acc", "auroc"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/unlabeled_kd")
    p.add_argument("--json", default="runs/bench/unlabeled_kd.json")
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-model", default="small:resnet8x4")
    p.add_argument("--teacher-epochs", type=int, default=30)
    p.add_argument("--student", default="small:resnet8")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ratio", type=float, default=4.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps per epoch, 2 epochs, 1 seed")
    args = p.parse_args()
    if args.quick:
        args.max_steps, args.epochs, args.teacher_epochs, args.seeds = 2, 2, 2, [0]
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out, t0 = Path(args.out), time.perf_counter()
    labeled, unlabeled, sizes = make_splits(out, args.fraction)
    teacher_dir, teacher_info = teacher(args, labeled, out)
    print(
        f"teacher ({sizes['labeled']} labelled images): ACC {teacher_info['acc']:.4f} AUROC {teacher_info['auroc']:.4f}"
    )
    rows = [run(args, m, s, labeled, unlabeled, teacher_dir, out) for s in args.seeds for m in ("labeled", "unlabeled")]
    result = {
        "benchmark": "unlabeled_kd",
        "args": vars(args),
        "sizes": sizes,
        "teacher": teacher_info,
        "runs": rows,
        "summary": summary(rows),
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    write_json(args.json, result)
    s = result["summary"]
    for m in ("labeled", "unlabeled"):
        print(
            f"{m:9s}: ACC {s[m]['acc']['mean']:.4f} +- {s[m]['acc']['std']:.4f}, "
            f"AUROC {s[m]['auroc']['mean']:.4f} +- {s[m]['auroc']['std']:.4f}"
        )
    print(f"unlabeled better in mean ACC and AUROC: {s['unlabeled_better']} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
