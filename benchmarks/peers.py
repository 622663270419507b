"""edgekd side by side with the tools users would pick instead: torchdistill, NNCF, ONNX Runtime, Torch-Pruning.

One run, the same data (the bundled PneumoniaMNIST), the same models and this machine, reported as ratios. Needs the
peers: ``pip install 'edgekd[peers]'`` (torchdistill, nncf; Torch-Pruning and ONNX Runtime come with edgekd).

1. **Distillation vs torchdistill**: a teacher (``--teacher DIR``, or ``small:resnet8x4`` trained once for
   ``--teacher-epochs`` whole epochs) distilled into ``--student`` (default ``small:resnet8``, the student of
   ``examples/pneumonia.yaml``) for ``--epochs`` of ``--max-steps`` steps by
   `edgekd distill` (``ce:1`` + ``kd:1,T=4``, live teacher) and by torchdistill's ``DistillationBox`` with the
   same teacher weights (exported to a torchdistill checkpoint), student init, KD loss, epochs, batch, optimiser,
   schedule and data order (see ``_peers_kd.py``), for every ``--seeds``: test ACC/AUROC and training throughput
   (img/s of the training loop, validation excluded). Also edgekd's teacher-logit cache (``--cache-teacher``),
   which torchdistill lacks: img/s of the epochs after the first, when no teacher runs.
2. **INT8 PTQ vs NNCF and vs ONNX Runtime's quantize_static** on the FP32 ONNX of the seed-0 edgekd student, with
   the same calibration samples (see ``_peers_ptq.py``): test ACC/AUROC change vs FP32 and ONNX Runtime CPU
   latency at batch 1 and 32, timed back to back, and each INT8 file's fidelity to FP32 (test predictions equal to
   FP32's, relative logit error). Then mixed precision on ``--sensitive-model`` (default: the teacher, where a
   budget of no validation AUROC drop makes edgekd keep its first convolution in FP32) with a ``--max-drop``
   budget in ``--sensitivity-metric`` points: edgekd's sensitivity search vs
   ``nncf.quantize_with_accuracy_control`` with the same budget (ORT has no accuracy-aware search).
3. **Pruning vs Torch-Pruning alone** (its example recipe, see ``_peers_prune.py``) to ``--target-macs`` with the
   same importance (group L2), fine-tuned with CE for the same total epochs and steps, against `edgekd prune`
   (``--prune-steps`` steps, ``--recovery-epochs`` each, KD from the unpruned model, and with ``--no-kd``): test
   AUROC after recovery (mean over ``--prune-seeds``) and latency of the seed-0 models at batch 1 and 32.

Sizing: the defaults fit the 45 minutes the issue allows on 2 CPU cores (a small teacher trained once, 3 epochs
of 20 steps of 128 images per KD run, 2 recovery epochs of 20 steps per pruning run); every training setting is
the same on both sides of each comparison, so shorter training changes the figures of both alike.

The JSON (``runs/bench/peers.json``) holds every figure, the ratios, each peer's version and exact call, and the
environment; the markdown table (``runs/bench/peers.md``, also printed) says what edgekd gains or loses against
each peer and where a peer cannot do the task.

    python benchmarks/peers.py                  # full run (writes runs/bench/peers.json and peers.md)
    python benchmarks/peers.py --quick          # smoke run: a few steps per epoch, one seed
    python benchmarks/peers.py --teacher runs/demo/teacher
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, environment, write_json  # noqa: E402
from _peers_kd import run_torchdistill, torchdistill_call, torchdistill_version  # noqa: E402
from _peers_prune import TP_CALL, prune_torch_pruning_alone, torch_pruning_version  # noqa: E402
from _peers_ptq import (  # noqa: E402
    fp32_nodes,
    peer_versions,
    quantize_nncf,
    quantize_nncf_accuracy_control,
    quantize_ort_defaults,
)
from _peers_table import markdown_table  # noqa: E402

from edgekd.bench import onnx_latency_ms  # noqa: E402
from edgekd.data import load_data  # noqa: E402
from edgekd.distill import RunSettings, TrainConfig, distill_model, train_model  # noqa: E402
from edgekd.export import export_onnx, ort_session  # noqa: E402
from edgekd.modeldir import is_model_dir, load_model_dir, read_card  # noqa: E402
from edgekd.prune import PruneConfig, PruneTarget, prune_model_dir  # noqa: E402
from edgekd.quantize import QuantizeConfig, evaluate_onnx, onnx_logits, quantize_model_dir, split_inputs  # noqa: E402

SENSITIVITY_VAL_SAMPLES = 2000  # what `edgekd quantize --sensitivity` validates on (all of PneumoniaMNIST's 524)


def _cfg(args, epochs: int, lr: float, seed: int = 0, **kw: Any) -> TrainConfig:
    kw.setdefault("max_steps_per_epoch", args.max_steps or None)
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=lr, seed=seed, **kw)


def _mean_std(vals: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def _throughput(history: list[dict[str, Any]], skip_first: bool = False) -> float:
    """Images per second over the epochs' training loops (total images / total loop time)."""
    rows = history[1:] if skip_first and len(history) > 1 else history
    return sum(r["images_per_s"] * r["epoch_time_s"] for r in rows) / sum(r["epoch_time_s"] for r in rows)


def _history(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


def get_teacher(args, data, out: Path) -> str:
    """Reuse ``--teacher``, or train one (a finished one in OUT/teacher is reused)."""
    path = Path(args.teacher) if args.teacher else out / "teacher"
    if not is_model_dir(path):
        # whole epochs (a smoke run caps them too): the teacher is trained once, its quality serves every section
        cfg = _cfg(args, args.teacher_epochs, 2e-3, augment="medical", max_steps_per_epoch=3 if args.quick else None)
        train_model(
            RunSettings(student=args.teacher_model, data=data.spec, train=cfg),
            path,
            data=data,
            progress=not args.no_progress,
        )
    return str(path)


def _edgekd_kd(args, data, teacher: str, seed: int, out: Path, cache: dict | None = None) -> dict[str, Any]:
    settings = RunSettings(
        student=args.student,
        teachers=[teacher],
        data=data.spec,
        losses=["ce:1", f"kd:1,T={args.T}"],
        train=_cfg(args, args.epochs, args.lr, seed),
        cache=cache,
    )
    card = distill_model(settings, out, data=data, overwrite=True, progress=not args.no_progress)
    hist = _history(out)
    return {
        "acc": float(card.metrics["test"]["acc"]),
        "auroc": float(card.metrics["test"]["auroc"]),
        "best_epoch": card.metrics["best_epoch"]["epoch"],
        "dir": str(out),
        "history": [{k: h[k] for k in ("epoch", "images_per_s", "epoch_time_s", "val_auroc", "val_acc")} for h in hist],
    }


def _kd_pair(args, data, teacher: str, seed: int, out: Path, edgekd_first: bool) -> dict[str, dict[str, Any]]:
    """One seed with both tools; which runs first alternates with the seed, so machine drift favours neither."""
    rows = {}
    for tool in ("edgekd", "torchdistill") if edgekd_first else ("torchdistill", "edgekd"):
        t0 = time.perf_counter()
        if tool == "edgekd":
            r = _edgekd_kd(args, data, teacher, seed, out / f"kd_edgekd_seed{seed}")
        else:
            r = run_torchdistill(
                teacher,
                args.student,
                data,
                _cfg(args, args.epochs, args.lr, seed),
                args.T,
                out / f"kd_torchdistill_seed{seed}",
            )
        rows[tool] = {"seed": seed, **r, "seconds": time.perf_counter() - t0, "images_per_s": _throughput(r["history"])}
    for tool in ("edgekd", "torchdistill"):
        r = rows[tool]
        print(
            f"KD {tool:12s} seed {seed}: acc {r['acc']:.4f} auroc {r['auroc']:.4f}, {r['images_per_s']:.1f} img/s "
            f"({r['seconds']:.0f} s)"
        )
    return rows


def kd_section(args, data, teacher: str, out: Path) -> dict[str, Any]:
    """edgekd and torchdistill KD runs for every seed, then one edgekd run with the teacher-logit cache."""
    runs: dict[str, list[dict[str, Any]]] = {"edgekd": [], "torchdistill": []}
    for i, seed in enumerate(args.seeds):
        for tool, row in _kd_pair(args, data, teacher, seed, out, edgekd_first=i % 2 == 0).items():
            runs[tool].append(row)
    summary = {
        tool: {
            "acc": _mean_std([r["acc"] for r in rs]),
            "auroc": _mean_std([r["auroc"] for r in rs]),
            "images_per_s": _mean_std([r["images_per_s"] for r in rs]),
        }
        for tool, rs in runs.items()
    }
    e, t = summary["edgekd"], summary["torchdistill"]
    ratios = {
        "images_per_s": e["images_per_s"]["mean"] / t["images_per_s"]["mean"],
        "acc_points": 100 * (e["acc"]["mean"] - t["acc"]["mean"]),
        "auroc_points": 100 * (e["auroc"]["mean"] - t["auroc"]["mean"]),
    }
    cached = None
    if args.cache_run:
        r = _edgekd_kd(args, data, teacher, args.seeds[0], out / "kd_edgekd_cached", cache={"dir": str(out / "cache")})
        cached = {**r, "images_per_s_after_first_epoch": _throughput(r["history"], skip_first=True)}
        ratios["cached_vs_torchdistill_images_per_s"] = (
            cached["images_per_s_after_first_epoch"] / t["images_per_s"]["mean"]
        )
        print(f"KD edgekd --cache-teacher: {cached['images_per_s_after_first_epoch']:.1f} img/s after epoch 1")
    calls = {
        "edgekd": f"distill_model(RunSettings(student={args.student!r}, teachers=[teacher], losses=['ce:1', "
        f"'kd:1,T={args.T}'], train=TrainConfig(epochs={args.epochs}, batch_size={args.batch_size}, "
        f"lr={args.lr}, max_steps_per_epoch={args.max_steps or None}, seed=SEED)), out)  "
        f"# cache run: cache={{'dir': ...}}",
        "torchdistill": torchdistill_call(_cfg(args, args.epochs, args.lr), args.T),
    }
    return {"runs": runs, "summary": summary, "ratios": ratios, "edgekd_cached": cached, "calls": calls}


def _latencies(args, files: dict[str, Path]) -> dict[str, dict[str, float]]:
    """ORT CPU p50 latency (ms) of each file at batch 1 and 32.

    The files are timed back to back ``--latency-passes`` times, every other pass in reverse order, and each keeps
    its fastest pass: on a shared machine a slow spell then cannot fall on one file only (the JSON keeps every pass).
    """
    out: dict[str, dict[str, Any]] = {name: {} for name in files}
    names = list(files)
    for batch in (1, 32):
        passes = []
        for order in [names if i % 2 == 0 else names[::-1] for i in range(args.latency_passes)]:
            timed = onnx_latency_ms(
                [files[n] for n in order], batch=batch, seconds=args.latency_s, threads=args.threads
            )
            passes.append({n: ms for n, (ms, _) in zip(order, timed)})
            threads = timed[0][1]
        for name in names:
            out[name][f"batch{batch}_ms"] = min(p[name] for p in passes)
            out[name][f"batch{batch}_passes_ms"] = [p[name] for p in passes]
            out[name]["threads"] = threads
    return out


def _onnx_metrics(path: Path, data, pre, threads: int) -> dict[str, float]:
    m = evaluate_onnx(path, data, "test", pre, threads=threads)
    return {"acc": float(m["acc"]), "auroc": float(m["auroc"])}


def _fidelity(files: dict[str, Path], data, pre, threads: int) -> dict[str, dict[str, float]]:
    """How closely each INT8 file reproduces the FP32 file on the test split.

    ACC at the fixed 0.5 threshold moves by whole points when a few borderline images flip (PneumoniaMNIST's test
    split is shifted from its validation split, so many sit near the threshold), in either direction; these two say
    which quantizer is the more faithful: the share of test images whose predicted class equals FP32's, and the
    relative logit error ``||z_int8 - z_fp32||^2 / ||z_fp32||^2``.
    """
    x, _ = split_inputs(data, "test", pre)
    logits = {k: onnx_logits(ort_session(p, threads=threads), x) for k, p in files.items()}
    z = logits["fp32"]
    return {
        k: {
            "agreement_pct": 100 * float(np.mean(v.argmax(1) == z.argmax(1))),
            "logit_rel_error": float(np.sum((v - z) ** 2) / np.sum(z**2)),
        }
        for k, v in logits.items()
        if k != "fp32"
    }


def _deltas(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Points (x100) of test ACC/AUROC of every INT8 file minus the FP32 file."""
    fp32 = metrics["fp32"]
    return {k: {m: 100 * (v[m] - fp32[m]) for m in ("acc", "auroc")} for k, v in metrics.items() if k != "fp32"}


def ptq_section(args, data, student: str, out: Path) -> dict[str, Any]:
    """edgekd, NNCF and ORT-defaults INT8 of the same FP32 ONNX with the same calibration samples."""
    card = read_card(student)
    t0 = time.perf_counter()
    r = quantize_model_dir(
        student,
        out / "ptq_edgekd",
        QuantizeConfig(method="ptq", target="cpu-x86", calib_samples=args.calib_samples),
        data=data,
        latency=onnx_latency_ms,
        overwrite=True,
        progress=not args.no_progress,
    )
    fp32, calib = (
        out / "ptq_edgekd" / "model.onnx",
        split_inputs(data, "train", card.preprocess, n=args.calib_samples, seed=0)[0],
    )
    files = {
        "fp32": fp32,
        "edgekd": out / "ptq_edgekd" / "model.int8.onnx",
        "nncf": out / "ptq_nncf.int8.onnx",
        "onnxruntime": out / "ptq_ort_defaults.int8.onnx",
    }
    calls = {
        "edgekd": {
            "call": f"quantize_model_dir(student, out, QuantizeConfig(method='ptq', target='cpu-x86', "
            f"calib_samples={args.calib_samples}))",
            "seconds": time.perf_counter() - t0,
            "qdq": r.qdq,
        },
        "nncf": quantize_nncf(fp32, files["nncf"], calib),
        "onnxruntime": quantize_ort_defaults(fp32, files["onnxruntime"], calib),
    }
    metrics = {k: _onnx_metrics(p, data, card.preprocess, args.threads) for k, p in files.items()}
    lat = _latencies(args, files)
    ratios = {
        peer: {f"batch{b}_speedup": lat[peer][f"batch{b}_ms"] / lat["edgekd"][f"batch{b}_ms"] for b in (1, 32)}
        for peer in ("nncf", "onnxruntime")
    }
    deltas, fidelity = _deltas(metrics), _fidelity(files, data, card.preprocess, args.threads)
    for name in files:
        print(
            f"PTQ {name:12s} acc {metrics[name]['acc']:.4f} auroc {metrics[name]['auroc']:.4f}  "
            f"b1 {lat[name]['batch1_ms']:.3f} ms  b32 {lat[name]['batch32_ms']:.2f} ms"
        )
    return {
        "model": student,
        "arch": card.spec.name,
        "calib_samples": len(calib),
        "metrics": metrics,
        "delta_points_vs_fp32": deltas,
        "fidelity_vs_fp32": fidelity,
        "latency": lat,
        "edgekd_speedup_over": ratios,
        "calls": calls,
        "edgekd_reported_delta": r.delta,
    }


def sensitivity_section(args, data, model_dir: str, out: Path) -> dict[str, Any]:
    """Mixed precision under one budget: edgekd's sensitivity search vs NNCF's accuracy-controlled PTQ."""
    card = read_card(model_dir)
    cfg = QuantizeConfig(
        method="ptq",
        target="cpu-x86",
        calib_samples=args.calib_samples,
        sensitivity=True,
        max_drop=args.max_drop,
        metric=args.sensitivity_metric,
    )
    t0 = time.perf_counter()
    r = quantize_model_dir(
        model_dir,
        out / "mixed_edgekd",
        cfg,
        data=data,
        latency=onnx_latency_ms,
        overwrite=True,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t0
    fp32 = out / "mixed_edgekd" / "model.onnx"
    calib = split_inputs(data, "train", card.preprocess, n=args.calib_samples, seed=0)[0]
    x_val, y_val = split_inputs(data, "val", card.preprocess, n=SENSITIVITY_VAL_SAMPLES, spread=True)
    files = {"fp32": fp32, "edgekd": out / "mixed_edgekd" / "model.int8.onnx", "nncf": out / "mixed_nncf.int8.onnx"}
    nncf_call = quantize_nncf_accuracy_control(
        fp32, files["nncf"], calib, x_val, y_val, data.task, args.sensitivity_metric, args.max_drop
    )
    metrics = {k: _onnx_metrics(p, data, card.preprocess, args.threads) for k, p in files.items()}
    lat = _latencies(args, files)
    sens = r.sensitivity.model_dump() if r.sensitivity else {}
    print(
        f"mixed: edgekd keeps {len(sens.get('fp32_nodes', []))} node(s) in FP32, NNCF "
        f"{len(nncf_call['fp32_nodes'])}; test acc fp32 {metrics['fp32']['acc']:.4f} edgekd "
        f"{metrics['edgekd']['acc']:.4f} nncf {metrics['nncf']['acc']:.4f}"
    )
    return {
        "model": model_dir,
        "arch": card.spec.name,
        "budget": {"metric": args.sensitivity_metric, "max_drop_points": args.max_drop, "split": "val"},
        "metrics": metrics,
        "delta_points_vs_fp32": _deltas(metrics),
        "latency": lat,
        "fidelity_vs_fp32": _fidelity(files, data, card.preprocess, args.threads),
        "edgekd_speedup_over": {
            "nncf": {f"batch{b}_speedup": lat["nncf"][f"batch{b}_ms"] / lat["edgekd"][f"batch{b}_ms"] for b in (1, 32)}
        },
        "edgekd_fp32_nodes": sens.get("fp32_nodes", []),
        "edgekd_sensitivity": {k: v for k, v in sens.items() if k not in ("nodes",)},
        "nncf_fp32_nodes": nncf_call["fp32_nodes"],
        "edgekd_all_int8_weighted_nodes": fp32_nodes(files["edgekd"]),
        "calls": {
            "edgekd": {
                "call": f"quantize_model_dir(model, out, QuantizeConfig(method='ptq', "
                f"target='cpu-x86', calib_samples={args.calib_samples}, sensitivity=True, "
                f"max_drop={args.max_drop}, metric={args.sensitivity_metric!r}))",
                "seconds": seconds,
            },
            "nncf": nncf_call,
            "onnxruntime": "cannot: quantize_static has no accuracy-aware search",
        },
    }


def _edgekd_prune(args, student: str, data, out: Path, kd: bool, seed: int) -> dict[str, Any]:
    cfg = PruneConfig(
        importance="l2",
        target=PruneTarget.from_options(target_macs=args.target_macs),
        steps=args.prune_steps,
        round_to=args.round_to,
        recovery_epochs=args.recovery_epochs,
        kd=kd,
        latency_batch=None,
        train=_cfg(args, 1, args.recovery_lr, seed, warmup_epochs=0.0),
    )
    t0 = time.perf_counter()
    rep = prune_model_dir(student, out, cfg, data=data, overwrite=True, progress=not args.no_progress)
    return {
        "auroc": float(rep.metrics_after["test"]["auroc"]),
        "acc": float(rep.metrics_after["test"]["acc"]),
        "macs_kept": rep.after.macs / rep.before.macs,
        "params": rep.after.params,
        "dir": str(out),
        "unpruned_auroc": float(rep.metrics_before["test"]["auroc"]),
        "unpruned_acc": float(rep.metrics_before["test"]["acc"]),
        "seconds": time.perf_counter() - t0,
    }


def _prune_latency(args, student: str, runs: dict[str, list], tp_model, out: Path) -> dict[str, dict[str, float]]:
    """Latency of the unpruned and the first seed's pruned models, exported with edgekd's exporter alike."""
    unpruned, card = load_model_dir(student)
    models = {
        "unpruned": unpruned,
        "edgekd_kd": load_model_dir(runs["edgekd_kd"][0]["dir"])[0],
        "edgekd_ce": load_model_dir(runs["edgekd_ce"][0]["dir"])[0],
        "torch_pruning": tp_model,
    }
    files = {name: out / f"prune_latency_{name}.onnx" for name in models}
    for name, model in models.items():
        export_onnx(model, card, files[name])
    return _latencies(args, files)


def prune_section(args, data, student: str, out: Path) -> dict[str, Any]:
    """`edgekd prune` (KD and CE recovery) vs Torch-Pruning's own recipe, same target, importance and epochs."""
    runs: dict[str, list[dict[str, Any]]] = {"edgekd_kd": [], "edgekd_ce": [], "torch_pruning": []}
    epochs = args.prune_steps * args.recovery_epochs
    tp_models = {}
    for seed in args.prune_seeds:
        for name, kd in (("edgekd_kd", True), ("edgekd_ce", False)):
            runs[name].append(
                {"seed": seed, **_edgekd_prune(args, student, data, out / f"{name}_seed{seed}", kd, seed)}
            )
        model, rec = prune_torch_pruning_alone(
            student,
            data,
            target_macs=args.target_macs,
            round_to=args.round_to,
            epochs=epochs,
            lr=args.tp_lr,
            seed=seed,
            batch=args.batch_size,
            max_steps=args.max_steps or None,
        )
        tp_models[seed] = model
        runs["torch_pruning"].append({"seed": seed, **rec})
        for name in runs:
            r = runs[name][-1]
            print(
                f"prune {name:13s} seed {seed}: auroc {r['auroc']:.4f} acc {r['acc']:.4f} MACs kept "
                f"{r['macs_kept']:.3f}"
            )
    summary = {
        k: {
            "auroc": _mean_std([r["auroc"] for r in v]),
            "acc": _mean_std([r["acc"] for r in v]),
            "macs_kept": max(r["macs_kept"] for r in v),
        }
        for k, v in runs.items()
    }
    lat = _prune_latency(args, student, runs, tp_models[args.prune_seeds[0]], out)
    tp_sum = summary["torch_pruning"]
    per_epoch = math.ceil(len(data.train) / args.batch_size)
    total = epochs * (min(per_epoch, args.max_steps) if args.max_steps else per_epoch)
    ratios = {
        k: {
            "auroc_points": 100 * (summary[k]["auroc"]["mean"] - tp_sum["auroc"]["mean"]),
            **{f"batch{b}_speedup": lat["torch_pruning"][f"batch{b}_ms"] / lat[k][f"batch{b}_ms"] for b in (1, 32)},
        }
        for k in ("edgekd_kd", "edgekd_ce")
    }
    return {
        "model": student,
        "epochs": epochs,
        "runs": runs,
        "summary": summary,
        "latency": lat,
        "unpruned": {"auroc": runs["edgekd_kd"][0]["unpruned_auroc"], "acc": runs["edgekd_kd"][0]["unpruned_acc"]},
        "edgekd_vs_torch_pruning": ratios,
        "calls": {
            "edgekd": f"prune_model_dir(student, out, PruneConfig(importance='l2', target=PruneTarget."
            f"from_options(target_macs={args.target_macs}), steps={args.prune_steps}, "
            f"round_to={args.round_to}, recovery_epochs={args.recovery_epochs}, kd=True|False, "
            f"train=TrainConfig(lr={args.recovery_lr}, batch_size={args.batch_size}, "
            f"max_steps_per_epoch={args.max_steps or None}, warmup_epochs=0.0, seed=SEED)))",
            "torch_pruning": TP_CALL.replace("0.6S, 0.8S", f"{int(0.6 * total)}, {int(0.8 * total)}")
            + f"; {epochs} epochs of {total // epochs} steps, batch {args.batch_size}",
        },
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"torchdistill": torchdistill_version(), "torch-pruning": torch_pruning_version()}
    out.update(peer_versions())
    for name in ("edgekd", "torch", "onnx"):
        out[name] = importlib.metadata.version(name)
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="reuse this teacher model directory instead of training one")
    ap.add_argument("--teacher-model", default="small:resnet8x4", help="teacher trained once and reused")
    ap.add_argument("--teacher-epochs", type=int, default=2, help="teacher epochs (whole epochs, no --max-steps cap)")
    ap.add_argument("--student", default="small:resnet8", help="student architecture (KD; the demo's student)")
    ap.add_argument("--student-dir", help="model directory for PTQ and pruning (default: the seed-0 edgekd KD student)")
    ap.add_argument("--epochs", type=int, default=3, help="KD epochs (both tools)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--T", type=float, default=4.0, help="KD temperature")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="KD seeds")
    ap.add_argument(
        "--no-cache-run", dest="cache_run", action="store_false", help="skip the edgekd --cache-teacher run"
    )
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--sensitive-model", default="teacher", help="'teacher' or a model directory for mixed precision")
    ap.add_argument(
        "--max-drop",
        type=float,
        default=0.0,
        help="mixed-precision budget: allowed validation drop, in metric points (0: none)",
    )
    ap.add_argument("--sensitivity-metric", default="auroc", choices=["acc", "auroc", "balanced_acc", "f1_macro"])
    ap.add_argument("--target-macs", type=float, default=0.5)
    ap.add_argument("--prune-steps", type=int, default=2)
    ap.add_argument("--recovery-epochs", type=int, default=1, help="edgekd recovery epochs per step")
    ap.add_argument("--recovery-lr", type=float, default=1e-3, help="edgekd recovery lr (its default)")
    ap.add_argument("--tp-lr", type=float, default=0.01, help="Torch-Pruning recipe's SGD lr")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--prune-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--latency-s", type=float, default=2.0, help="timed seconds per latency measurement")
    ap.add_argument("--latency-passes", type=int, default=4, help="passes over the files; each keeps its fastest")
    ap.add_argument(
        "--max-steps",
        type=int,
        default=20,
        help="steps per epoch of KD and pruning recovery, both sides (0: whole epochs)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    ap.add_argument("--only", nargs="+", choices=["kd", "ptq", "sensitivity", "prune"], default=None)
    ap.add_argument("--out", default="runs/bench/peers")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 epoch of 3 steps everywhere, one seed")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the table (.md and JSON) from OUT.json")
    args = ap.parse_args()
    if args.quick:
        args.teacher_epochs = args.epochs = args.recovery_epochs = 1
        args.max_steps, args.latency_s, args.latency_passes, args.seeds, args.prune_seeds = 3, 0.5, 2, [0], [0]
        args.calib_samples, args.out = 64, args.out + "_quick"
    return args


def _start_payload(args, data, teacher: str, json_path: Path) -> dict[str, Any]:
    """A new payload, or with ``--only`` the earlier JSON, whose other sections are kept."""
    if args.only and json_path.exists():
        payload = json.loads(json_path.read_text())
        payload.setdefault("reruns", []).append({"sections": args.only, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return payload
    return {
        "benchmark": "peers",
        "quick": args.quick,
        "data": data.spec,
        "cpu": cpu_flags(),
        "config": vars(args),
        "versions": versions(),
        "teacher": teacher,
        "timings": {},
    }


def _finish(payload: dict[str, Any], json_path: Path) -> None:
    payload["environment"] = environment()
    payload["table"] = markdown_table(payload)
    write_json(json_path, payload)  # after every section: a late failure keeps the earlier figures
    json_path.with_suffix(".md").write_text(payload["table"] + "\n")


def main() -> None:
    args = parse_args()
    if args.table_only:
        json_path = Path(f"{args.out}.json")
        payload = json.loads(json_path.read_text())
        payload["table"] = markdown_table(payload)
        write_json(json_path, payload)
        json_path.with_suffix(".md").write_text(payload["table"] + "\n")
        print(payload["table"])
        return
    torch.set_num_threads(args.threads)
    out, json_path = Path(args.out), Path(f"{args.out}.json")
    t0 = time.perf_counter()
    data = load_data("pneumoniamnist")
    teacher = get_teacher(args, data, out)
    payload = _start_payload(args, data, teacher, json_path)
    payload["timings"]["teacher_s"] = time.perf_counter() - t0
    student = args.student_dir or str(out / f"kd_edgekd_seed{args.seeds[0]}")
    sensitive = teacher if args.sensitive_model == "teacher" else args.sensitive_model
    sections = {
        "kd": lambda: kd_section(args, data, teacher, out),
        "ptq": lambda: ptq_section(args, data, student, out),
        "sensitivity": lambda: sensitivity_section(args, data, sensitive, out),
        "prune": lambda: prune_section(args, data, student, out),
    }
    for name, run in sections.items():
        if args.only is None or name in args.only:
            t1 = time.perf_counter()
            payload[name] = run()
            payload["timings"][f"{name}_s"] = time.perf_counter() - t1
            payload["elapsed_s" if args.only is None else "rerun_elapsed_s"] = time.perf_counter() - t0
            _finish(payload, json_path)
    print(payload["table"])
    elapsed = payload["elapsed_s" if args.only is None else "rerun_elapsed_s"]
    print(
        f"wrote {json_path.with_suffix('.md')}; this run {elapsed / 60:.1f} min, load average "
        f"{payload['environment']['load_average']}"
    )


if __name__ == "__main__":
    main()
