"""Does INT8 pay on the CPU, and does QAT with the teacher beat PTQ? (issue 6)

On the bundled PneumoniaMNIST (28x28 chest X-rays), a ResNet-style student (``--student DIR``, or
``small:resnet8x4`` trained for ``--epochs``: 1.2 M parameters, 135 M MACs, wide enough for INT8 convolution
kernels to pay off):

1. ``edgekd quantize --method ptq --target cpu-x86`` (U8S8 QDQ, ``--calibration``) and
   ``--target tensorrt`` (symmetric S8S8, must pass the TensorRT lint);
2. ``--method qat --target cpu-x86`` with distillation from the FP32 model (``ce:1`` + ``kd:1,T=4``,
   ``--qat-epochs``);
3. ONNX Runtime CPU latency at batch 32 (``edgekd.bench``: warm-up, then a timed loop, median) of the FP32 ONNX,
   the cpu-x86 INT8 ONNX and, for reference, the TensorRT-scheme S8S8 ONNX, timed back to back;
4. test metrics of every file through ONNX Runtime.

Acceptance (issue 6): cpu-x86 INT8 >= 2x faster than FP32 at batch 32 with accuracy within 0.5 points; the
tensorrt file passes the lint; QAT with KD at least as accurate as PTQ. INT8 speed depends on the CPU's integer
dot-product instructions, so the JSON records the CPU flags (avx512_vnni, amx_int8, ...).

    python benchmarks/int8_speed.py                 # full run (writes runs/bench/int8_speed.json)
    python benchmarks/int8_speed.py --quick         # smoke run: a few training steps
    python benchmarks/int8_speed.py --student runs/demo/student
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_flags, environment, write_json  # noqa: E402

from edgekd.bench import onnx_latency_ms  # noqa: E402
from edgekd.data import load_data  # noqa: E402
from edgekd.distill import RunSettings, TrainConfig, train_model  # noqa: E402
from edgekd.errors import VerificationError  # noqa: E402
from edgekd.modeldir import is_model_dir, read_card  # noqa: E402
from edgekd.quantize import QuantizeConfig, quantize_model_dir  # noqa: E402


def get_student(args, data, out: Path) -> str:
    """Reuse ``--student``, or train one (a finished one in OUT/student is reused)."""
    path = Path(args.student) if args.student else out / "student"
    if not is_model_dir(path):
        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=128,
            lr=2e-3,
            augment="medical",
            seed=args.seed,
            max_steps_per_epoch=args.max_steps,
        )
        train_model(
            RunSettings(student=args.student_model, data=data.spec, train=cfg),
            path,
            data=data,
            progress=not args.no_progress,
        )
    return str(path)


def run_quantize(args, student: str, out: Path, name: str, **kw: Any) -> dict[str, Any]:
    """One `edgekd quantize` run; a failed check is recorded (not raised) so the other runs still report."""
    train = TrainConfig(
        epochs=args.qat_epochs,
        batch_size=128,
        lr=args.qat_lr,
        warmup_epochs=0.0,
        seed=args.seed,
        max_steps_per_epoch=args.max_steps,
    )
    cfg = QuantizeConfig(calibration=args.calibration, calib_samples=args.calib_samples, train=train, **kw)
    t0 = time.perf_counter()
    try:
        r = quantize_model_dir(student, out / name, cfg, overwrite=True, progress=not args.no_progress)
    except VerificationError as e:
        print(f"{name}: FAILED its checks: {e}")
        return {"name": name, "error": str(e), "seconds": time.perf_counter() - t0}
    row = {
        "name": name,
        "bundle": str(out / name),
        "metrics": {k: _scalars(v) for k, v in r.metrics.items()},
        "delta_points": r.delta,
        "sizes": r.sizes,
        "lint_errors": r.lint_errors,
        "qdq": r.qdq,
        "parity": r.parity,
        "qat": _qat(r.qat),
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"{name}: int8 acc {r.metrics['int8']['acc']:.4f} (fp32 {r.metrics['fp32']['acc']:.4f}, "
        f"{r.delta.get('acc', 0):+.2f} points), auroc {r.metrics['int8'].get('auroc', float('nan')):.4f} "
        f"({row['seconds']:.0f} s)"
    )
    return row


def _scalars(m: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in m.items() if isinstance(v, float)}


def _qat(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: v for k, v in record.items() if k != "history"}


def latencies(args, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """FP32, cpu-x86 INT8 and S8S8 ONNX files at batch 32, timed back to back with the same settings."""
    ptq = runs["ptq_cpu_x86"]
    files = {"fp32": Path(ptq["bundle"]) / "model.onnx", "int8_u8s8": Path(ptq["bundle"]) / "model.int8.onnx"}
    if "bundle" in runs["ptq_tensorrt"]:
        files["int8_s8s8_tensorrt_scheme"] = Path(runs["ptq_tensorrt"]["bundle"]) / "model.int8.onnx"
    timed = onnx_latency_ms(list(files.values()), batch=32, seconds=args.latency_s, threads=args.threads)
    out: dict[str, Any] = {name: ms for name, (ms, _) in zip(files, timed)}
    out["threads"] = timed[0][1]
    out["speedup_u8s8"] = out["fp32"] / out["int8_u8s8"]
    if "int8_s8s8_tensorrt_scheme" in out:
        out["speedup_s8s8"] = out["fp32"] / out["int8_s8s8_tensorrt_scheme"]
    return out


def acceptance(runs: dict[str, dict[str, Any]], lat: dict[str, Any] | None) -> dict[str, bool]:
    ptq, trt, qat = runs["ptq_cpu_x86"], runs["ptq_tensorrt"], runs["qat_cpu_x86"]
    ok = "error" not in ptq

    def acc(r: dict[str, Any]) -> float:
        return r["metrics"]["int8"]["acc"] if "error" not in r else float("-inf")

    return {
        "cpu_x86_int8_at_least_2x_faster": bool(lat) and lat["speedup_u8s8"] >= 2.0,
        "cpu_x86_int8_acc_within_0.5_points": ok and abs(ptq["delta_points"].get("acc", 99.0)) <= 0.5,
        "tensorrt_file_passes_lint": "error" not in trt and trt["lint_errors"] == [],
        "qat_kd_at_least_as_accurate_as_ptq": "error" not in qat and acc(qat) >= acc(ptq),
    }


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", help="reuse this model directory")
    ap.add_argument("--student-model", default="small:resnet8x4")
    ap.add_argument("--epochs", type=int, default=5, help="student training epochs")
    ap.add_argument("--calibration", default="minmax", choices=["minmax", "entropy", "percentile"])
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--qat-epochs", type=int, default=2)
    ap.add_argument("--qat-lr", type=float, default=1e-4)
    ap.add_argument("--qat-backend", default="auto", help="auto | modelopt | torch")
    ap.add_argument("--latency-s", type=float, default=5.0, help="timed seconds per latency measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch (smoke runs)")
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    ap.add_argument("--out", default="runs/bench/int8_speed")
    ap.add_argument("--json", default=None, help="default: OUT.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 training epoch of 10 steps, 1 QAT epoch")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.qat_epochs, args.max_steps, args.latency_s = 1, 1, 10, 1.0
        args.out += "_quick"
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    data = load_data("pneumoniamnist")
    student = get_student(args, data, out)
    runs = {
        "ptq_cpu_x86": run_quantize(args, student, out, "ptq_cpu_x86", method="ptq", target="cpu-x86"),
        "ptq_tensorrt": run_quantize(args, student, out, "ptq_tensorrt", method="ptq", target="tensorrt"),
        "qat_cpu_x86": run_quantize(
            args, student, out, "qat_cpu_x86", method="qat", target="cpu-x86", qat_backend=args.qat_backend
        ),
    }
    lat = latencies(args, runs) if "error" not in runs["ptq_cpu_x86"] else None
    checks = acceptance(runs, lat)
    card = read_card(student)
    payload = {
        "benchmark": "int8_speed",
        "quick": args.quick,
        "data": data.spec,
        "cpu": cpu_flags(),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "student": {"dir": student, "model": card.spec.name, "params": card.params, "macs": card.macs},
        "latency_ms_batch32": lat,
        "runs": runs,
        "acceptance": checks,
        "elapsed_s": time.perf_counter() - t0,
        "environment": environment(),
    }
    if lat:
        s8 = f", S8S8 (tensorrt scheme) {lat['speedup_s8s8']:.2f}x" if "speedup_s8s8" in lat else ""
        print(
            f"ORT CPU @32 ({lat['threads']} threads): FP32 {lat['fp32']:.2f} ms, U8S8 {lat['int8_u8s8']:.2f} ms "
            f"({lat['speedup_u8s8']:.2f}x){s8}; CPU flags {cpu_flags()['flags']}"
        )
    for name, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {name}")
    write_json(args.json or f"{args.out}.json", payload)


if __name__ == "__main__":
    main()
