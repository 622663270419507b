"""`edgekd quantize`: INT8 (PTQ or QAT with distillation) or FP16 bundles for a deployment target."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.bench import onnx_latency_ms
from edgekd.cli._app import PANEL_COMPRESS, app
from edgekd.cli._options import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    TargetSensitivityOpt,
    console,
    emit_json,
    resolve_config,
)
from edgekd.cli._render import fmt
from edgekd.distill import DeviceName, OptimizerName, TrainConfig
from edgekd.quantize import TARGETS, Calibration, QuantizeConfig, QuantMethod, quantize_model_dir

Q, C, QA = "Quantization", "Calibration", "QAT"
TARGETS_EPILOG = "Targets (--target):\n\n" + "\n\n".join(f"{n}: {TARGETS.get(n).summary}" for n in TARGETS.names())


@app.command(rich_help_panel=PANEL_COMPRESS, epilog=TARGETS_EPILOG)
def quantize(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="Model directory to quantize.")],
    out: OutOpt,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data spec (default: the data the model was trained on).", rich_help_panel="Data"
        ),
    ] = None,
    method: Annotated[
        QuantMethod,
        typer.Option(
            help="ptq (calibrated static INT8), qat (training with the teacher) or fp16 (GPU targets).",
            rich_help_panel=Q,
        ),
    ] = QuantMethod.PTQ,
    target: Annotated[
        str,
        typer.Option(
            help="The device class: cpu-x86 (this x86 CPU) | cpu-x86-vnni | cpu-x86-avx2 | cpu-arm | tensorrt "
            "(one line each below).",
            rich_help_panel=Q,
        ),
    ] = "cpu-x86",
    calibration: Annotated[
        Calibration, typer.Option(help="Activation range estimator.", rich_help_panel=C)
    ] = Calibration.MINMAX,
    calib_samples: Annotated[int, typer.Option(help="Training samples for calibration.", rich_help_panel=C)] = 256,
    sensitivity: Annotated[
        bool,
        typer.Option(help="Keep the most sensitive layers in FP32 until --max-drop is met (PTQ).", rich_help_panel=C),
    ] = False,
    max_drop: Annotated[
        float, typer.Option(help="Allowed validation drop of --metric, in points.", rich_help_panel=C)
    ] = 0.5,
    metric: Annotated[
        str, typer.Option(help="Budget metric: acc | auroc | balanced_acc | f1_macro.", rich_help_panel=C)
    ] = "acc",
    max_fp32_nodes: Annotated[int | None, typer.Option(help="Most layers kept in FP32.", rich_help_panel=C)] = None,
    qat_backend: Annotated[str, typer.Option(help="auto | modelopt | torch.", rich_help_panel=QA)] = "auto",
    epochs: Annotated[int, typer.Option(help="QAT epochs.", rich_help_panel=QA)] = 2,
    kd: Annotated[
        bool,
        typer.Option("--kd/--no-kd", help="QAT distils from the teacher, or uses labels only.", rich_help_panel=QA),
    ] = True,
    teacher: Annotated[
        str | None, typer.Option(help="QAT teacher (default: the FP32 model).", rich_help_panel=QA)
    ] = None,
    loss: Annotated[
        list[str] | None, typer.Option(help="QAT loss terms (default ce:1 and kd:1,T=4).", rich_help_panel=QA)
    ] = None,
    batch_size: Annotated[int, typer.Option(rich_help_panel=QA)] = 128,
    optimizer: Annotated[OptimizerName, typer.Option(rich_help_panel=QA)] = OptimizerName.ADAMW,
    lr: Annotated[float, typer.Option(help="QAT peak learning rate.", rich_help_panel=QA)] = 1e-4,
    warmup_epochs: Annotated[float, typer.Option(rich_help_panel=QA)] = 0.0,
    max_steps_per_epoch: Annotated[int | None, typer.Option(hidden=True)] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.", rich_help_panel="Output")] = 17,
    seed: SeedOpt = 0,
    device: DeviceOpt = DeviceName.AUTO,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    target_sensitivity: TargetSensitivityOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Quantize for a target, evaluate FP32 vs INT8 in ONNX Runtime, and write a verified bundle.

    Example: edgekd quantize runs/student --method ptq --target cpu-x86 --calibration entropy --out bundles/int8
    """

    flags = {k: v for k, v in locals().items() if k in TrainConfig.model_fields}
    check_report_path(json_out)
    train_cfg = resolve_config(ctx, TrainConfig, config, flags, section="qat")
    cfg = QuantizeConfig(method=method, target=target, calibration=calibration, calib_samples=calib_samples,
                         sensitivity=sensitivity, max_drop=max_drop, metric=metric, max_fp32_nodes=max_fp32_nodes,
                         opset=opset, qat_backend=qat_backend, kd=kd, teacher=teacher, train=train_cfg,
                         **({"losses": loss} if loss else {}))  # fmt: skip
    result = quantize_model_dir(model_dir, out, cfg, data=data, latency=onnx_latency_ms, overwrite=overwrite,
                                progress=not quiet, target_sensitivity=target_sensitivity)  # fmt: skip
    if not quiet and json_out != "-":
        _render(result)
    emit_json(result, json_out)


def _render(result) -> None:
    low = result.precision
    t = Table(title=f"{result.source} -> {result.out} ({result.method.value}, {result.target}, "
                    f"ONNX Runtime on {result.split})")  # fmt: skip
    for col in ("metric", "fp32", low, "change (points)"):
        t.add_column(col, justify="right")
    for k in ("acc", "balanced_acc", "f1_macro", "auroc"):
        if k in result.metrics["fp32"]:
            t.add_row(k, fmt(result.metrics["fp32"][k]), fmt(result.metrics[low].get(k)),
                      f"{result.delta[k]:+.2f}" if k in result.delta else "n/a")  # fmt: skip
    console.print(t)
    console.print(f"size {result.sizes['fp32']:,} -> {result.sizes[low]:,} bytes; scheme: {result.scheme['summary']}")
    if result.scheme_choice:
        c = result.scheme_choice
        console.print(f"target {c['target']}: scheme {c['chosen']} ({c['reason']})")
    for p in result.parity:
        console.print(f"parity {p['file']} \\[{p['precision']}]: top-1 agreement {p['top1_agreement']:.4f}, "
                      f"max |dlogit| {p['max_abs']:.2e}")  # fmt: skip
    if result.sensitivity is not None:
        s = result.sensitivity
        console.print(f"sensitivity: {len(s.fp32_nodes)} node(s) kept in FP32 ({', '.join(s.fp32_nodes) or 'none'}); "
                      f"val {s.metric} drop {s.drop:.2f} points (budget {s.max_drop})")  # fmt: skip
