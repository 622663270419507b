"""Distillation throughput: edgekd's loop vs a hand-written KD loop, and the teacher-cache speed-up (issue 3).

Part 1, overhead. Images/s of one epoch of :func:`edgekd.distill.fit` with the objective of
:func:`~edgekd.distill.build_distill_objective` (what `edgekd distill` runs; ``ce:1`` + ``kd:1,T=4``) against the
minimal loop a user would write: loader, teacher preprocess + forward under ``no_grad``, student preprocess +
forward, CE + KD, backward, AdamW step. Same models (teacher ``small:resnet20``, student ``small:resnet8``, random
weights: only timing matters), data (bundled PneumoniaMNIST, 28 px), batch size and steps; the two run
alternately ``--repeats`` times and the medians are compared. Criterion: overhead within 5 %.

Part 2, teacher cache. `edgekd distill` (:func:`~edgekd.distill.distill_model`) with a ResNet-50 teacher
(random weights, saved as a model directory) and a MobileNet-class student (``small:mobilenet_v3_small``,
i.e. ``tv:mobilenet_v3_small`` with the small-input stem) at the same 32 px input. The teacher is by default
``small:resnet50`` (``tv:resnet50`` with the small-input stem, as a teacher for 32 px images is built; 1.3 GMACs
per image); ``--cache-teacher-model tv:resnet50`` keeps the ImageNet stem, which shrinks a 32 px image to 1x1 and
costs only 83 MMACs, about as much as the MobileNet's training step on a CPU, so the cache can at most about
halve an epoch there. The data is synthetic (3 channels, 32 px), sized so that an epoch is ``--cache-steps`` full batches. With ``--cache-teacher`` the first epoch runs the teacher and fills the cache;
later epochs read it. Criterion: epochs after the first at least 2x faster than the first (images/s of the
training loop, from the run's history); the same run without the cache is reported for reference.

Part 3, mixed precision (``--device cuda``, issue 15). The same distillation through the one Trainer in FP32 and
with ``--amp-dtype`` (bf16 by default), alternating; criterion on a GPU: AMP at least 2x the FP32 images/s.

    python benchmarks/distill_throughput.py                 # writes runs/bench/distill_throughput.json
    python benchmarks/distill_throughput.py --device cuda --teacher small:resnet50 --student small:resnet18
    python benchmarks/distill_throughput.py --quick         # smoke run (a few steps)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data import load_data, make_loader  # noqa: E402
from edgekd.distill import (  # noqa: E402
    RunSettings,
    TrainConfig,
    build_distill_objective,
    distill_model,
    fit,
    resolve_student,
)
from edgekd.modeldir import ModelCard, ModelSpec, save_model_dir  # noqa: E402
from edgekd.students import build_model  # noqa: E402
from edgekd.teachers import Teacher  # noqa: E402

LOSSES = ["ce:1", "kd:1,T=4"]


def _models(args, data, seed: int):
    torch.manual_seed(seed)
    student, _, pre, _ = resolve_student(args.student, data)
    t_model = build_model(ModelSpec(name=args.teacher, num_classes=data.num_classes, in_chans=data.channels))
    return student, pre, Teacher.from_module(t_model, data.preprocess(), name=args.teacher)


def edgekd_loop(args, data, seed: int) -> float:
    """images/s of one epoch of `fit` with the distillation objective (progress bar on, as a user sees it)."""
    student, pre, teacher = _models(args, data, seed)
    objective = build_distill_objective(student, pre, data.task, [teacher], LOSSES)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, max_steps_per_epoch=args.steps, seed=seed, warmup_epochs=0)
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(student, objective, data, cfg, tmp, preprocess=pre, progress=not args.no_progress)
    return res.history[0]["images_per_s"]


def hand_loop(args, data, seed: int) -> float:
    """The minimal KD loop: both preprocessings, teacher under no_grad, CE + T^2 KL, AdamW."""
    student, pre, teacher = _models(args, data, seed)
    t_model, t_pre, temp = teacher.model, teacher.preprocess, 4.0
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3, weight_decay=5e-4)
    loader = make_loader(data.train, args.batch_size, shuffle=True, seed=seed)
    seen, t0 = 0, time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if i >= args.steps:
            break
        with torch.no_grad():
            t_logits = t_model(t_pre(images))
        s_logits = student(pre(images))
        kd = (
            F.kl_div(
                F.log_softmax(s_logits / temp, 1),
                F.log_softmax(t_logits / temp, 1),
                reduction="batchmean",
                log_target=True,
            )
            * temp
            * temp
        )
        loss = F.cross_entropy(s_logits, targets) + kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += images.shape[0]
    return seen / (time.perf_counter() - t0)


def overhead(args) -> dict[str, Any]:
    data = load_data("pneumoniamnist")
    warm = argparse.Namespace(**{**vars(args), "steps": 2})
    edgekd_loop(warm, data, 0)  # warm-up of both (allocator, kernels, first touch of the data): not counted
    hand_loop(warm, data, 0)
    edk, hand = [], []
    for r in range(args.repeats):
        order = (("edgekd", edgekd_loop), ("hand", hand_loop))
        for name, loop in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            (edk if name == "edgekd" else hand).append(loop(args, data, r))
        print(f"repeat {r + 1}: edgekd {edk[-1]:.1f} img/s, hand-written {hand[-1]:.1f} img/s", flush=True)
    e, h = statistics.median(edk), statistics.median(hand)
    ratio = (h - e) / h
    print(f"median edgekd {e:.1f} img/s vs hand-written {h:.1f} img/s: overhead {ratio * 100:+.1f} %")
    return {
        "teacher": args.teacher,
        "student": args.student,
        "losses": LOSSES,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "edgekd_images_per_s": edk,
        "hand_images_per_s": hand,
        "median_edgekd": e,
        "median_hand": h,
        "overhead": ratio,
        "criterion": "overhead <= 0.05",
        "passed": ratio <= 0.05,
    }


def amp_speedup(args) -> dict[str, Any]:
    """Distillation images/s with mixed precision vs FP32 on ``--device`` (issue 15: AMP >= 2x FP32 on a GPU).

    The same student, teacher, batch and steps through the one Trainer; only ``amp``/``amp_dtype`` differ.
    Medians over ``--repeats`` alternating runs (the first, compiling kernels, is a warm-up and not counted).
    """
    data = load_data(args.amp_data)
    runs: dict[str, list[float]] = {"fp32": [], args.amp_dtype: []}

    def one(amp: bool, seed: int) -> float:
        student, pre, teacher = _models(args, data, seed)
        objective = build_distill_objective(student, pre, data.task, [teacher], LOSSES)
        cfg = TrainConfig(
            epochs=1,
            batch_size=args.batch_size,
            max_steps_per_epoch=args.steps,
            seed=seed,
            warmup_epochs=0,
            device=args.device,
            amp=amp,
            amp_dtype=args.amp_dtype,
            channels_last=args.device == "cuda",
        )
        with tempfile.TemporaryDirectory() as tmp:
            res = fit(student, objective, data, cfg, tmp, preprocess=pre, progress=not args.no_progress)
        return res.history[0]["images_per_s"]

    one(True, 0), one(False, 0)  # warm-up: kernels, autotuning, allocator
    for r in range(args.repeats):
        for name, amp in (
            (("fp32", False), (args.amp_dtype, True)) if r % 2 == 0 else ((args.amp_dtype, True), ("fp32", False))
        ):
            runs[name].append(one(amp, r))
        print(
            f"repeat {r + 1}: fp32 {runs['fp32'][-1]:.1f} img/s, {args.amp_dtype} {runs[args.amp_dtype][-1]:.1f} img/s"
        )
    f, a = statistics.median(runs["fp32"]), statistics.median(runs[args.amp_dtype])
    print(f"median fp32 {f:.1f} vs {args.amp_dtype} {a:.1f} img/s on {args.device}: {a / f:.2f}x")
    return {
        "device": args.device,
        "amp_dtype": args.amp_dtype,
        "teacher": args.teacher,
        "student": args.student,
        "data": args.amp_data,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "images_per_s": runs,
        "median_fp32": f,
        "median_amp": a,
        "speedup": a / f,
        "criterion": "speedup >= 2 (on a GPU)",
        "passed": a / f >= 2,
    }


def _random_teacher_dir(name: str, data, root: Path) -> Path:
    """A teacher with random weights as a model directory (timing only: the weights do not matter)."""
    torch.manual_seed(0)
    spec = ModelSpec(name=name, num_classes=data.num_classes, in_chans=data.channels)
    card = ModelCard(spec=spec, task=data.task, label_names=list(data.label_names), preprocess=data.preprocess())
    return save_model_dir(build_model(spec), card, root / "teacher")


def cache_speedup(args) -> dict[str, Any]:
    n = args.cache_steps * args.cache_batch
    data = load_data(f"synthetic:classes=2,n={n},size=32,channels=3,seed=0")
    cfg = TrainConfig(epochs=args.cache_epochs, batch_size=args.cache_batch, warmup_epochs=0)
    result: dict[str, Any] = {
        "teacher": args.cache_teacher_model,
        "student": "small:mobilenet_v3_small",
        "input_size": 32,
        "train_samples": n,
        "batch_size": args.cache_batch,
        "epochs": args.cache_epochs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        teacher = _random_teacher_dir(args.cache_teacher_model, data, Path(tmp))
        for key, cached in (("cache", True), ("no_cache", False)):
            settings = RunSettings(
                student="small:mobilenet_v3_small",
                teachers=[str(teacher)],
                data=data.spec,
                train=cfg,
                losses=list(LOSSES),
                cache={} if cached else None,
            )
            card = distill_model(settings, Path(tmp) / key, data=data, progress=not args.no_progress)
            history = [json.loads(x) for x in (Path(tmp) / key / "history.jsonl").read_text().splitlines()]
            result[key] = {
                "images_per_s": [h["images_per_s"] for h in history],
                "teacher_calls": card.lineage.notes["teacher_calls"],
            }
    first, later = result["cache"]["images_per_s"][0], statistics.fmean(result["cache"]["images_per_s"][1:])
    no_cache_later = statistics.fmean(result["no_cache"]["images_per_s"][1:])
    # The first epoch of any run also pays warm-up costs; the same epochs without the cache show how much of
    # the speed-up is the cache's.
    result.update(
        speedup_after_first=later / first,
        criterion="speedup_after_first >= 2",
        passed=later / first >= 2.0,
        speedup_vs_no_cache=later / no_cache_later,
    )
    print(
        f"cache: epoch 1 {first:.1f} img/s, later epochs {later:.1f} img/s: x{later / first:.2f}; "
        f"same epochs without the cache {no_cache_later:.1f} img/s: x{later / no_cache_later:.2f}"
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="small:resnet20", help="overhead part: teacher architecture")
    ap.add_argument("--student", default="small:resnet8", help="overhead part: student architecture")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-teacher-model", default="small:resnet50", help="cache part: the ResNet-50 teacher")
    ap.add_argument("--cache-steps", type=int, default=8, help="cache part: steps (full batches) per epoch")
    ap.add_argument("--cache-batch", type=int, default=64)
    ap.add_argument("--cache-epochs", type=int, default=3)
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=("overhead", "cache", "amp"),
        default=None,
        help="default: overhead and cache on the CPU, amp with --device cuda",
    )
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the amp part's device")
    ap.add_argument("--amp-dtype", default="bf16", choices=("bf16", "fp16"), help="the amp part's precision")
    ap.add_argument(
        "--amp-data",
        default="pneumoniamnist",
        help="the amp part's data, e.g. synthetic:classes=2,n=2048,size=224,channels=3 for 224 px",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="smoke run: few steps, one repeat")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default="runs/bench/distill_throughput.json")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats, args.cache_steps, args.cache_batch, args.cache_epochs = 4, 1, 3, 32, 2
        args.out = args.out.replace(".json", "_quick.json")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    payload: dict[str, Any] = {"benchmark": "distill_throughput", "quick": args.quick, "config": vars(args)}
    if args.parts is None:
        args.parts = ["amp"] if args.device == "cuda" else ["overhead", "cache"]
    for part, fn in (("overhead", overhead), ("cache", cache_speedup), ("amp", amp_speedup)):
        if part in args.parts:
            payload[part] = fn(args)
    payload.update(elapsed_s=time.perf_counter() - t0, environment=environment())
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
