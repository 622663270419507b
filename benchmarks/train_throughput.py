"""Training throughput of `edgekd train`'s loop vs a minimal hand-written PyTorch loop (issue 2).

Same model, data (bundled PneumoniaMNIST), batch size, optimizer, preprocessing and number of steps.
The two are run alternately ``--repeats`` times and the medians compared; the acceptance criterion is an
edgekd overhead within 5 %.

    python benchmarks/train_throughput.py --model small:resnet18 --steps 30 --out runs/bench/train_throughput.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data import load_data, make_loader  # noqa: E402
from edgekd.distill import SupervisedObjective, TrainConfig, fit, resolve_student  # noqa: E402


def edgekd_loop(model_name: str, data, steps: int, batch: int, seed: int) -> float:
    """images/s of one epoch of edgekd's `fit` (progress bar on, as a user sees it)."""
    torch.manual_seed(seed)
    net, _, pre, _ = resolve_student(model_name, data)
    cfg = TrainConfig(epochs=1, batch_size=batch, max_steps_per_epoch=steps, seed=seed, warmup_epochs=0)
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(net, SupervisedObjective(pre, data.task), data, cfg, tmp, preprocess=pre, progress=True)
    return res.history[0]["images_per_s"]


def hand_loop(model_name: str, data, steps: int, batch: int, seed: int) -> float:
    """The minimal loop a user would write: loader, normalise, forward, CE, backward, AdamW step."""
    torch.manual_seed(seed)
    net, _, pre, _ = resolve_student(model_name, data)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    loader = make_loader(data.train, batch, shuffle=True, seed=seed)
    seen, t0 = 0, time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if i >= steps:
            break
        loss = torch.nn.functional.cross_entropy(net(pre(images)), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += images.shape[0]
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small:resnet18")
    ap.add_argument("--data", default="pneumoniamnist")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smoke run: small model, few steps")
    ap.add_argument("--out", default="runs/bench/train_throughput.json")
    args = ap.parse_args()
    if args.quick:
        args.model, args.steps, args.repeats = "small:resnet8", 5, 1
    data = load_data(args.data)
    # Warm-up run (allocator, kernels, first-touch of the data) not counted.
    hand_loop(args.model, data, 2, args.batch_size, 0)
    edk, hand = [], []
    for r in range(args.repeats):
        edk.append(edgekd_loop(args.model, data, args.steps, args.batch_size, r))
        hand.append(hand_loop(args.model, data, args.steps, args.batch_size, r))
        print(f"repeat {r + 1}: edgekd {edk[-1]:.1f} img/s, hand-written {hand[-1]:.1f} img/s", flush=True)
    e, h = statistics.median(edk), statistics.median(hand)
    overhead = (h - e) / h
    payload = {
        "benchmark": "train_throughput",
        "config": vars(args),
        "edgekd_images_per_s": edk,
        "hand_images_per_s": hand,
        "median_edgekd": e,
        "median_hand": h,
        "overhead": overhead,
        "criterion": "overhead <= 0.05",
        "passed": overhead <= 0.05,
        "environment": environment(),
    }
    print(f"median edgekd {e:.1f} img/s vs hand-written {h:.1f} img/s: overhead {overhead * 100:+.1f} %")
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
