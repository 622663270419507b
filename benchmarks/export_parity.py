"""Export + parity of every native student (issue 4): exporter, export time, FP32 and FP16 parity, file sizes.

Random-init students with BN statistics calibrated on noise (so logits are O(1) like a trained model's)
are exported with ``exporter=auto`` at opset 17 and, when onnxscript is installed, with the dynamo
exporter at opset 18; each file is parity-checked in ONNX Runtime at batch sizes 1 and 7.

    python benchmarks/export_parity.py --size 28 --out runs/bench/export_parity.json
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.export import export_onnx, make_samples, parity_check, to_fp16, torch_logits  # noqa: E402
from edgekd.export._types import Precision  # noqa: E402
from edgekd.modeldir import ModelCard, ModelSpec  # noqa: E402
from edgekd.specs import Preprocess, Task  # noqa: E402
from edgekd.students import build_model, list_models  # noqa: E402

NATIVE = (
    "tinycnn",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_2",
    "wrn_40_2",
    "mobilenetv2_x0_5",
)


@torch.no_grad()
def calibrated(spec: ModelSpec, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    model(torch.randn(32, spec.in_chans, size, size))
    return model.eval()


def one(name: str, size: int, exporter: str, opset: int) -> dict:
    spec = ModelSpec(name=name, num_classes=3, in_chans=1)
    pre = Preprocess(input_size=(size, size), data_channels=1, in_chans=1, mean=(0.5,), std=(0.25,))
    card = ModelCard(spec=spec, task=Task.MULTICLASS, label_names=["a", "b", "c"], preprocess=pre)
    model = calibrated(spec, size)
    samples = make_samples(card, n=64).inputs
    ref = torch_logits(model, samples)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        info = export_onnx(model, card, Path(tmp) / "m.onnx", opset=opset, exporter=exporter)
        seconds = time.perf_counter() - t0
        fp32 = parity_check(Path(tmp) / "m.onnx", None, card, samples=samples, reference_logits=ref)
        to_fp16(Path(tmp) / "m.onnx", Path(tmp) / "h.onnx")
        fp16 = parity_check(
            Path(tmp) / "h.onnx", None, card, samples=samples, reference_logits=ref, precision=Precision.FP16
        )
        sizes = {"fp32": (Path(tmp) / "m.onnx").stat().st_size, "fp16": (Path(tmp) / "h.onnx").stat().st_size}
    return {
        "model": name,
        "exporter": info["exporter"],
        "reason": info["exporter_reason"],
        "opset": info["opset"],
        "export_seconds": round(seconds, 3),
        "bytes": sizes,
        "fp32": fp32.model_dump(mode="json"),
        "fp16": fp16.model_dump(mode="json"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--models", nargs="*", default=[f"small:{n}" for n in NATIVE])
    ap.add_argument("--out", default="runs/bench/export_parity.json")
    args = ap.parse_args()
    known = set(list_models("small"))
    runs = [("auto", 17)] + ([("dynamo", 18)] if importlib.util.find_spec("onnxscript") else [])
    rows = []
    for name in (m for m in args.models if m in known):
        for exporter, opset in runs:
            row = one(name, args.size, exporter, opset)
            rows.append(row)
            print(
                f"{name:24s} {row['exporter']:11s} opset {row['opset']} {row['export_seconds']:6.2f}s "
                f"fp32 max_abs={row['fp32']['max_abs']:.1e} fp16 top1={row['fp16']['top1_agreement']:.3f}"
            )
    write_json(args.out, {"environment": environment(), "input_size": args.size, "results": rows})


if __name__ == "__main__":
    main()
