"""Does `edgekd drift` separate held-out data from another scanner, and flag a 10 % mix of it?

A model trained on PneumoniaMNIST (domain A; the LwF benchmark's model when present, else trained here)
stores its drift reference on A's validation split. ``check_drift`` (what `edgekd drift` runs) then scores:

* ``test``: A's held-out test split (no drift);
* ``domain_b``: the same test images through the fixed "other scanner" shift of ``benchmarks/_shift.py``;
* ``mix_5``, ``mix_10``, ``mix_25``: A's test split with 5 / 10 / 25 % of its images replaced by their domain-B
  versions (a new scanner delivering part of the images).

The default threshold decides the verdicts. To see how often the verdict is right on smaller batches, the
per-image far/near decisions (penultimate features or image statistics) of A's test split and of domain B are
also resampled: ``--trials`` random batches
of ``--batch`` images each, without drift and with a 10 % mix, give the false-alarm and detection rates.

    python benchmarks/drift.py           # writes runs/bench/drift.json
    python benchmarks/drift.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402
from _shift import pneumonia_arrays, scanner_b, write_medmnist  # noqa: E402

from edgekd.data import ArrayDataset, load_data  # noqa: E402
from edgekd.distill import RunSettings, TrainConfig, train_model  # noqa: E402
from edgekd.modeldir import is_model_dir, load_model_dir  # noqa: E402
from edgekd.monitor import (  # noqa: E402
    DEFAULT_THRESHOLD,
    check_drift,
    far_images,
    model_outputs,
    read_reference,
    save_reference,
)


def model(args, out: Path) -> Path:
    shared = Path(args.model_dir)
    if is_model_dir(shared):
        return shared
    path = out / "model_a"
    if not is_model_dir(path):
        cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=2e-3, seed=0, max_steps_per_epoch=args.max_steps)
        train_model(RunSettings(student="small:resnet8", data="pneumoniamnist", train=cfg), path, progress=False)
    return path


def ensure_reference(model_dir: Path) -> None:
    """A model from an older edgekd gets its reference the way training writes it (on A's validation split)."""
    if read_reference(model_dir) is None:
        net, card = load_model_dir(model_dir)
        save_reference(net, card.preprocess, load_data("pneumoniamnist"), model_dir)


def far(model_dir: Path, images: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    """Per image: far from the reference in either space (the score's numerator); the share per space."""
    net, card = load_model_dir(model_dir)
    ds = ArrayDataset(images[:, None], np.zeros(len(images), np.int64))
    out = model_outputs(net, card.preprocess, ds, card.task, card.spec.num_classes)
    mask, by_space, _ = far_images(read_reference(model_dir), out)
    return mask, {k: float(v.mean()) for k, v in by_space.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/drift")
    p.add_argument("--json", default="runs/bench/drift.json")
    p.add_argument("--model-dir", default="runs/bench/lwf/model_a", help="reuse this model when it exists")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.max_steps, args.epochs, args.trials, args.model_dir = 2, 1, 50, ""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out, t0 = Path(args.out), time.perf_counter()
    model_dir = model(args, out)
    ensure_reference(model_dir)
    arrays = pneumonia_arrays()
    images, labels = arrays["test"]
    shifted = scanner_b(images, seed=2)
    specs = {
        "test": write_medmnist(out / "test.npz", {s: (images, labels) for s in ("train", "val", "test")}),
        "domain_b": write_medmnist(out / "b.npz", {s: (shifted, labels) for s in ("train", "val", "test")}),
    }
    rng = np.random.default_rng(0)
    for pct in (5, 10, 25):
        mixed = images.copy()
        pick = rng.choice(len(images), size=round(len(images) * pct / 100), replace=False)
        mixed[pick] = shifted[pick]
        specs[f"mix_{pct}"] = write_medmnist(
            out / f"mix_{pct}.npz", {s: (mixed, labels) for s in ("train", "val", "test")}
        )
    checks = {}
    for name, spec in specs.items():
        r = check_drift(model_dir, spec)
        checks[name] = {k: v for k, v in r.to_json().items() if k not in ("reference", "model", "data")}
        print(
            f"{name:8s}: {r.verdict:8s} score {r.score:.3f} (far {r.far_images}/{r.images}: {r.far_by_space}), "
            f"KS p {r.ks_pvalue:.2g}, max PSI {max(r.psi.values()):.3f}",
            flush=True,
        )
    (far_a, space_a), (far_b, space_b) = far(model_dir, images), far(model_dir, shifted)
    k_b = round(args.batch * 0.1)
    alarms = detections = 0
    for _ in range(args.trials):
        a = rng.choice(len(images), size=args.batch, replace=False)
        alarms += far_a[a].mean() > DEFAULT_THRESHOLD
        mix = np.concatenate([far_a[a[k_b:]], far_b[rng.choice(len(images), size=k_b, replace=False)]])
        detections += mix.mean() > DEFAULT_THRESHOLD
    resampled = {
        "batch": args.batch,
        "trials": args.trials,
        "false_alarm_rate": alarms / args.trials,
        "detection_rate_mix_10": detections / args.trials,
        "far_share_test": float(far_a.mean()),
        "far_share_domain_b": float(far_b.mean()),
        "far_share_by_space": {"test": space_a, "domain_b": space_b},
    }
    print(
        f"batches of {args.batch}: false alarms {resampled['false_alarm_rate']:.1%}, 10 % mix detected "
        f"{resampled['detection_rate_mix_10']:.1%}; far share test {far_a.mean():.3f}, domain B {far_b.mean():.3f}"
    )
    ok = (not checks["test"]["drift"]) and checks["domain_b"]["drift"] and checks["mix_10"]["drift"]
    result = {
        "benchmark": "drift",
        "args": vars(args),
        "model": str(model_dir),
        "threshold": DEFAULT_THRESHOLD,
        "checks": checks,
        "resampled": resampled,
        "acceptance": ok,
        "seconds": time.perf_counter() - t0,
        "environment": environment(),
    }
    write_json(args.json, result)
    print(f"test: no drift, domain B: drift, 10 % mix: drift -> {ok} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
