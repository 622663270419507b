"""INT8 schemes on this CPU: parity with the real kernels and with exact arithmetic, and latency, per scheme.

For one model directory (default: the demo's pruned student, ``runs/pneumonia/pruned``) the FP32 ONNX export is
quantized with every scheme of ``edgekd.quantize.SCHEMES`` (same calibration: 256 training samples, minmax), and
each file is checked against PyTorch on 256 test samples with ONNX Runtime's *native* kernels (what this CPU
computes) and its *reference* kernels (graph optimisation off: exact Q/DQ arithmetic), then timed beside the FP32
file at batch 1 and 32 in alternating order. Then ``resolve_target("cpu-x86")`` says which target this CPU gets and
``choose_scheme`` what it picks. The JSON names the CPU (model, INT8 flags, class by CPUID).

    python benchmarks/isa_schemes.py --model runs/pneumonia/pruned --out benchmarks/results/cpu-2026-12-03/isa_schemes.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd._cpu import cpu_isa  # noqa: E402
from edgekd.bench import onnx_latency_ms  # noqa: E402
from edgekd.export import Precision, export_onnx, parity_check, torch_logits  # noqa: E402
from edgekd.modeldir import load_model_and_data  # noqa: E402
from edgekd.quantize import (  # noqa: E402
    SCHEMES,
    CalibrationReader,
    choose_scheme,
    prepare_onnx,
    quantize_onnx,
    resolve_target,
    split_inputs,
)
from edgekd.quantize._choose import _timings  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/pneumonia/pruned")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--out", default="runs/bench/isa_schemes.json")
    args = ap.parse_args()
    model, card, data = load_model_and_data(args.model, None, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = work / "model.onnx"
        export_onnx(model, card, fp32)
        pre = prepare_onnx(fp32, work / "model.pre.onnx")
        calib = split_inputs(data, "train", card.preprocess, n=256, seed=0)[0]
        x = split_inputs(data, "test", card.preprocess, n=args.samples, spread=True)[0]
        ref = torch_logits(model, x)
        rows, files = [], []
        for name in SCHEMES.names():
            path = quantize_onnx(
                pre, work / f"{name}.onnx", SCHEMES.get(name), CalibrationReader(calib), cache=work / "ranges.json"
            )
            row = {"scheme": name}
            for kernels in ("native", "reference"):
                p = parity_check(
                    path, None, card, samples=x, reference_logits=ref, precision=Precision.INT8, kernels=kernels
                )
                row[kernels] = {"top1_agreement": p.top1_agreement, "max_abs": p.max_abs, "passed": p.passed}
            rows.append(row)
            files.append(path)
        ms = _timings([*files, fp32], onnx_latency_ms, (1, 32))
        for row, m in zip(rows, ms):
            row["p50_ms"] = m
        target = resolve_target("cpu-x86")
        scratch = work / "choice"
        scratch.mkdir()
        _, choice = choose_scheme(
            pre, scratch, target, CalibrationReader(calib), x=x, ref=ref, card=card, latency=onnx_latency_ms, fp32=fp32
        )
    payload = {
        "benchmark": "isa_schemes",
        "environment": environment(),
        "cpu": cpu_isa().model_dump(),
        "model": args.model,
        "samples": len(x),
        "fp32_p50_ms": ms[-1],
        "schemes": rows,
        "cpu_x86_resolves_to": target.name,
        "choice": {k: v for k, v in choice.items() if k != "trials"},
    }
    write_json(args.out, payload)
    for row in rows:
        print(
            f"{row['scheme']:9s} native top-1 {row['native']['top1_agreement']:.3f}  reference "
            f"{row['reference']['top1_agreement']:.3f}  p50 b1 {row['p50_ms'][1]:.3f} b32 {row['p50_ms'][32]:.2f} ms"
        )
    print(
        f"fp32      p50 b1 {ms[-1][1]:.3f} b32 {ms[-1][32]:.2f} ms; cpu-x86 -> {target.name}: {choice['chosen']} "
        f"({choice['reason']}); {cpu_isa().describe()}"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
