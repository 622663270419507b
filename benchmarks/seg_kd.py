"""Segmentation distillation on the bundled lung masks (issue 26, training acceptance).

A wide U-Net teacher (default ``unet_w32``, 7.8 M parameters) is trained on ``lungseg`` (84 chest X-rays of 43
patients, 256 px; the patient-grouped split of :func:`edgekd.data.patient_split`, seed 0: train 50 / val 13 / test
21 images, no patient in two splits), then a student with >= 10x fewer parameters (default ``unet_w8``, 16x fewer)
is distilled from it (``ce + dice + pixkd`` by default) and, with the same seed, schedule and augmentation
(``seg-strong``: shifts, rotation, zoom, gamma), trained without it (``ce + dice``), over several seeds. Models read the 256 px images at
``--input-size`` (default 128: a quarter of the compute) and are scored on the 256 px masks (their logits
upsampled), so the resolution of the model does not change what is measured.

The JSON (``benchmarks/results/seg_kd.json``) holds the teacher's val/test Dice, IoU and HD95, every seed's
distilled and baseline train/val/test metrics, the means and standard deviations over seeds, the paired-bootstrap
95 % interval of the distilled-minus-baseline Dice (per image, averaged over seeds, 2000 resamples) on val and
test, the parameter ratio, the gap to the teacher, a one-sentence ``verdict`` (distillation helps, or why not: the
student cannot fit the training images as well as the teacher, a capacity limit, or it fits them and the gap is
generalisation from few images), the wall time of every stage and the environment.

    python benchmarks/seg_kd.py                       # the acceptance run (~35-45 min on 2 idle CPU cores)
    python benchmarks/seg_kd.py --quick               # a smoke run: 32 px, 2 epochs, 1 seed (~1 min)
    python benchmarks/seg_kd.py --teacher-dir runs/seg/teacher   # reuse a trained teacher
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data import load_data  # noqa: E402
from edgekd.distill import RunSettings, TrainConfig, distill_model, train_model  # noqa: E402
from edgekd.evaluate import evaluate_model_dir  # noqa: E402
from edgekd.modeldir import read_card  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = ("dice", "iou", "hd95", "acc")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="lungseg")
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--teacher", default="small:unet_w32")
    p.add_argument("--student", default="small:unet_w8")
    p.add_argument("--teacher-dir", default=None, help="a trained teacher to reuse (skips its training)")
    p.add_argument("--teacher-epochs", type=int, default=80)
    p.add_argument("--student-epochs", type=int, default=40)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--loss", action="append", default=None, help="distillation terms (default ce, dice, pixkd)")
    p.add_argument("--augment", default="seg-strong")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--work", default="runs/seg_kd")
    p.add_argument("--json", default=None, help="default benchmarks/results/seg_kd.json (seg_kd_quick.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px data, 2 epochs, 1 seed")
    a = p.parse_args()
    if a.quick:
        a.data, a.input_size, a.teacher_epochs, a.student_epochs, a.seeds = "lungseg:size=32", 32, 2, 2, 1
        a.augment = "none"
    a.json = a.json or str(REPO / f"benchmarks/results/seg_kd{'_quick' if a.quick else ''}.json")
    return a


def _cfg(a: argparse.Namespace, epochs: int, seed: int) -> TrainConfig:
    return TrainConfig(
        epochs=epochs, batch_size=a.batch_size, lr=a.lr, warmup_epochs=1.0, augment=a.augment, seed=seed, device="cpu"
    )


def _metrics(model_dir: Path) -> dict[str, Any]:
    """Train, val and test metrics of a model directory (train: how well it fits; test is never used to choose)."""
    out = {}
    for split in ("train", "val", "test"):
        m = evaluate_model_dir(model_dir, split=split, device="cpu")["metrics"]
        out[split] = {k: m[k] for k in (*KEYS, "dice_per_image")}
    return out


def _timed(fn, *args, **kw) -> tuple[Any, float]:
    t0 = time.perf_counter()
    res = fn(*args, **kw)
    return res, time.perf_counter() - t0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean of ``a - b`` over images and its 95 % percentile interval over ``n`` paired resamples of the images."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(1)
    return {"mean": float(d.mean()), "lo": float(np.percentile(means, 2.5)), "hi": float(np.percentile(means, 97.5))}


def _teacher(a: argparse.Namespace, work: Path) -> tuple[Path, float]:
    if a.teacher_dir:
        return Path(a.teacher_dir), 0.0
    out = work / "teacher"
    s = RunSettings(student=a.teacher, data=a.data, input_size=a.input_size, train=_cfg(a, a.teacher_epochs, 0))
    _, dt = _timed(train_model, s, out, overwrite=True, progress=False)
    return out, dt


def _student_pair(a: argparse.Namespace, work: Path, teacher: Path, seed: int) -> dict[str, Any]:
    """The distilled student and the same student without the teacher, one seed."""
    common = dict(student=a.student, data=a.data, input_size=a.input_size, train=_cfg(a, a.student_epochs, seed))
    losses = a.loss or ["ce:1", "dice:1", "pixkd:1,T=1"]
    kd = RunSettings(**common, teachers=[str(teacher)], losses=losses)
    base = RunSettings(**common)  # ce + dice, no teacher
    row: dict[str, Any] = {"seed": seed, "losses": losses}
    for name, settings, fn in (("distilled", kd, distill_model), ("baseline", base, train_model)):
        out = work / f"{name}-s{seed}"
        _, dt = _timed(fn, settings, out, overwrite=True, progress=False)
        row[name] = {**_metrics(out), "train_s": dt, "params": read_card(out).params}
    return row


FIT_MARGIN = 0.005  # a student whose training Dice is this far below the teacher's cannot fit what it fits


def verdict(out: dict[str, Any], teacher: dict, n_train: int) -> str:
    """One sentence: whether distillation helped on validation beyond noise, and if not, the likelier reason."""
    g = out["gain_val_dice"]
    t_fit, s_fit = teacher["train"]["dice"], out["distilled_train_dice"]["mean"]
    b_fit = out["baseline_train_dice"]["mean"]
    fit = f"train Dice teacher {t_fit:.4f}, distilled {s_fit:.4f}, no-teacher {b_fit:.4f}"
    if g["lo"] > 0:
        return f"distillation helps: val Dice {g['mean']:+.4f} (95% CI {g['lo']:+.4f} to {g['hi']:+.4f}); {fit}"
    head = (
        f"distillation does not help beyond noise: val Dice {g['mean']:+.4f} (95% CI {g['lo']:+.4f} to {g['hi']:+.4f})"
    )
    if s_fit < t_fit - FIT_MARGIN:
        return (
            f"{head}; capacity: the student fits the training images less well than the teacher ({fit}), so the "
            "teacher's soft masks ask for more than it can represent; a wider student would close more of the gap"
        )
    return (
        f"{head}; generalisation: the student fits the training images as well as the teacher ({fit}), so the "
        f"teacher's soft masks add little to the hard masks of {n_train} training images; the gap to the teacher "
        "is held-out error that more (or more varied) training images, not a teacher, would reduce"
    )


def _summary(teacher: dict, rows: list[dict], t_params: int, n_train: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("distilled", "baseline"):
        for split in ("train", "val", "test"):
            for k in KEYS:
                v = np.array([r[name][split][k] for r in rows], np.float64)
                out[f"{name}_{split}_{k}"] = {
                    "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                }
    for split in ("val", "test"):
        per = {n: np.mean([r[n][split]["dice_per_image"] for r in rows], axis=0) for n in ("distilled", "baseline")}
        out[f"gain_{split}_dice"] = paired_bootstrap(per["distilled"], per["baseline"])
    s_params = rows[0]["distilled"]["params"]
    gap = teacher["test"]["dice"] - out["distilled_test_dice"]["mean"]
    out.update(
        param_ratio=t_params / s_params,
        teacher_test_dice=teacher["test"]["dice"],
        distilled_gap_to_teacher=gap,
        teacher_reaches_095=teacher["test"]["dice"] >= 0.95,
        distilled_within_001_of_teacher=gap <= 0.01,
    )
    out["verdict"] = verdict(out, teacher, n_train)
    return out


def main() -> None:
    a = _args()
    work = Path(a.work)
    marker = work / ".seg_kd"  # only a folder this script made is ever cleared
    if work.exists() and any(work.iterdir()) and not marker.exists():
        sys.exit(f"{work} exists and was not made by seg_kd.py: choose another --work")
    if not a.teacher_dir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    marker.touch()
    bundle = load_data(a.data)
    sizes = {s: len(bundle.split(s)) for s in ("train", "val", "test")}
    split = f"train {sizes['train']} / val {sizes['val']} / test {sizes['test']} images"
    t0 = time.perf_counter()
    teacher_dir, t_train = _teacher(a, work)
    teacher = {**_metrics(teacher_dir), "train_s": t_train, "params": read_card(teacher_dir).params}
    print(f"teacher {a.teacher}: test dice {teacher['test']['dice']:.4f} ({t_train:.0f} s)", flush=True)
    rows = []
    for seed in range(a.seeds):
        rows.append(_student_pair(a, work, teacher_dir, seed))
        d, b = rows[-1]["distilled"]["test"]["dice"], rows[-1]["baseline"]["test"]["dice"]
        print(f"seed {seed}: distilled test dice {d:.4f}, baseline {b:.4f}", flush=True)
    result = {
        "benchmark": "seg_kd",
        "settings": {k: v for k, v in vars(a).items() if k != "json"},
        "split": f"patient-grouped (edgekd.data.patient_split, seed 0): {split}",
        "teacher": teacher,
        "seeds": rows,
        "summary": _summary(teacher, rows, teacher["params"], sizes["train"]),
        "wall_s": time.perf_counter() - t0,
        "environment": environment(),
    }
    write_json(a.json, result)
    s = result["summary"]
    print(
        f"teacher test dice {s['teacher_test_dice']:.4f}; distilled {s['distilled_test_dice']['mean']:.4f} "
        f"+- {s['distilled_test_dice']['std']:.4f}, baseline {s['baseline_test_dice']['mean']:.4f}; "
        f"val gain {s['gain_val_dice']['mean']:+.4f} (95% CI {s['gain_val_dice']['lo']:+.4f} to "
        f"{s['gain_val_dice']['hi']:+.4f}); {s['param_ratio']:.1f}x fewer params; {result['wall_s']:.0f} s"
    )
    print(s["verdict"])


if __name__ == "__main__":
    main()
