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
    NOT_CONFIG,
    ConfigOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    TargetSensitivityOpt,
    cli_config,
    config_option,
    console,
    emit_json,
)
from edgekd.cli._render import fmt
from edgekd.distill import DeviceName, OptimizerName
from edgekd.quantize import TARGETS, Calibration, QuantizeConfig, QuantMethod, quantize_model_dir

Q, C, QA = "Quantization", "Calibration", "QAT"
TARGETS_EPILOG = "Targets (--target):\n\n" + "\n\n".join(f"{n}: {TARGETS.get(n).summary}" for n in TARGETS.names())
# Inputs of the run and the bundle's operating point, not keys of QuantizeConfig (the other options are fields or
# its flat keys).
QUANTIZE_NOT_CONFIG = NOT_CONFIG | {"model_dir", "data", "target_sensitivity"}


def _opt(path: str, help: str, panel: str, *decls: str, **kwargs: object) -> object:
    return config_option(*decls, model=QuantizeConfig, path=path, help=help, rich_help_panel=panel, **kwargs)


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
        QuantMethod | None,
        _opt("method", "ptq (calibrated static INT8), qat (training with the teacher) or fp16 (GPU targets).", Q),
    ] = None,
    target: Annotated[
        str | None,
        _opt(
            "target",
            "The device class: cpu-x86 (this x86 CPU) | cpu-x86-vnni | cpu-x86-avx2 | cpu-arm | tensorrt "
            "(one line each below).",
            Q,
        ),
    ] = None,
    calibration: Annotated[Calibration | None, _opt("calibration", "Activation range estimator.", C)] = None,
    calib_samples: Annotated[int | None, _opt("calib_samples", "Training samples for calibration.", C)] = None,
    sensitivity: Annotated[
        bool | None, _opt("sensitivity", "Keep the most sensitive layers in FP32 until --max-drop is met (PTQ).", C)
    ] = None,
    max_drop: Annotated[float | None, _opt("max_drop", "Allowed validation drop of --metric, in points.", C)] = None,
    metric: Annotated[str | None, _opt("metric", "Budget metric: acc | auroc | balanced_acc | f1_macro.", C)] = None,
    max_fp32_nodes: Annotated[int | None, _opt("max_fp32_nodes", "Most layers kept in FP32.", C)] = None,
    qat_backend: Annotated[str | None, _opt("qat_backend", "auto | modelopt | torch.", QA)] = None,
    epochs: Annotated[int | None, _opt("train.epochs", "QAT epochs.", QA)] = None,
    kd: Annotated[
        bool | None, _opt("kd", "QAT distils from the teacher, or uses labels only.", QA, "--kd/--no-kd")
    ] = None,
    teacher: Annotated[str | None, _opt("teacher", "QAT teacher (default: the FP32 model).", QA)] = None,
    loss: Annotated[list[str] | None, _opt("losses", "QAT loss terms.", QA)] = None,
    batch_size: Annotated[int | None, _opt("train.batch_size", "", QA)] = None,
    optimizer: Annotated[OptimizerName | None, _opt("train.optimizer", "", QA)] = None,
    lr: Annotated[float | None, _opt("train.lr", "QAT peak learning rate.", QA)] = None,
    warmup_epochs: Annotated[float | None, _opt("train.warmup_epochs", "", QA)] = None,
    max_steps_per_epoch: Annotated[int | None, _opt("train.max_steps_per_epoch", "", QA, hidden=True)] = None,
    opset: Annotated[int | None, _opt("opset", "ONNX opset.", "Output")] = None,
    seed: Annotated[int | None, _opt("train.seed", "Random seed (data order, init, splits).", "Run", "--seed")] = None,
    device: Annotated[
        DeviceName | None, _opt("train.device", "auto picks CUDA when present.", "Run", "--device")
    ] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    target_sensitivity: TargetSensitivityOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Quantize for a target, evaluate FP32 vs INT8 in ONNX Runtime, and write a verified bundle.

    Example: edgekd quantize runs/student --method ptq --target cpu-x86 --calibration entropy --out bundles/int8

    Example: edgekd quantize runs/student --config quantize.yaml --method qat --out bundles/int8-qat   (flags
    override the file; its keys are QuantizeConfig's: method, calibration, train: {lr: 0.0001}, ...)
    """
    check_report_path(json_out, overwrite=overwrite)
    flags = {k: v for k, v in locals().items() if k not in QUANTIZE_NOT_CONFIG | {"ctx"}}
    cfg = cli_config(ctx, QuantizeConfig, config, flags)
    result = quantize_model_dir(
        model_dir,
        out,
        cfg,
        data=data,
        latency=onnx_latency_ms,
        overwrite=overwrite,
        progress=not quiet,
        target_sensitivity=target_sensitivity,
    )
    if not quiet and json_out != "-":
        _render(result)
    emit_json(result, json_out)


def _render(result) -> None:
    low = result.precision
    t = Table(
        title=f"{result.source} -> {result.out} ({result.method.value}, {result.target}, "
        f"ONNX Runtime on {result.split})"
    )
    for col in ("metric", "fp32", low, "change (points)"):
        t.add_column(col, justify="right")
    for k in ("acc", "balanced_acc", "f1_macro", "auroc"):
        if k in result.metrics["fp32"]:
            t.add_row(
                k,
                fmt(result.metrics["fp32"][k]),
                fmt(result.metrics[low].get(k)),
                f"{result.delta[k]:+.2f}" if k in result.delta else "n/a",
            )
    console.print(t)
    console.print(f"size {result.sizes['fp32']:,} -> {result.sizes[low]:,} bytes; scheme: {result.scheme['summary']}")
    if result.scheme_choice:
        c = result.scheme_choice
        console.print(f"target {c['target']}: scheme {c['chosen']} ({c['reason']})")
    for p in result.parity:
        console.print(
            f"parity {p['file']} \\[{p['precision']}]: top-1 agreement {p['top1_agreement']:.4f}, "
            f"max |dlogit| {p['max_abs']:.2e}"
        )
    if result.sensitivity is not None:
        s = result.sensitivity
        console.print(
            f"sensitivity: {len(s.fp32_nodes)} node(s) kept in FP32 ({', '.join(s.fp32_nodes) or 'none'}); "
            f"val {s.metric} drop {s.drop:.2f} points (budget {s.max_drop})"
        )
