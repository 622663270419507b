"""`edgekd export`, `edgekd lint-onnx` and `edgekd verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekd._config import build_config
from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_EXPORT, app
from edgekd.cli._options import (
    ConfigOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    TargetSensitivityOpt,
    cli_config,
    console,
    default_text,
    emit_json,
)
from edgekd.errors import VerificationError
from edgekd.export import FORMATS, ExportConfig, export_bundle, lint_errors, lint_onnx, verify_bundle

E, T, C = "Export", "TensorRT", "Checks"
MinBatchOpt = Annotated[
    int | None,
    typer.Option(
        help=f"Smallest batch of the optimization profile {default_text(ExportConfig, 'min_batch')}.", rich_help_panel=T
    ),
]
OptBatchOpt = Annotated[
    int | None,
    typer.Option(help=f"Batch the engine is tuned for {default_text(ExportConfig, 'opt_batch')}.", rich_help_panel=T),
]
MaxBatchOpt = Annotated[
    int | None,
    typer.Option(
        help=f"Largest batch of the optimization profile {default_text(ExportConfig, 'max_batch')}.", rich_help_panel=T
    ),
]
_FORMAT_HELP = "Comma-separated: " + "; ".join(f"{f.name} ({f.description})" for f in FORMATS.values())


@app.command(rich_help_panel=PANEL_EXPORT)
def export(
    ctx: typer.Context,
    model_dir: Annotated[
        Path, typer.Argument(help="Model directory (trained, distilled, pruned or QAT), or a bundle.")
    ],
    out: OutOpt,
    format: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help=f"{_FORMAT_HELP} {default_text(ExportConfig, 'formats')}.", rich_help_panel=E
        ),
    ] = None,
    opset: Annotated[
        int | None,
        typer.Option(
            help=f"ONNX opset (TensorRT 10 parses 9..20) {default_text(ExportConfig, 'opset')}.", rich_help_panel=E
        ),
    ] = None,
    static: Annotated[
        bool | None,
        typer.Option("--static/--dynamic", help="Fix the batch to 1, or keep it dynamic (default).", rich_help_panel=E),
    ] = None,
    simplify: Annotated[
        bool | None,
        typer.Option(
            "--simplify/--no-simplify", help="Clean the graph with onnxslim (default: on).", rich_help_panel=E
        ),
    ] = None,
    exporter: Annotated[
        str | None,
        typer.Option(
            help="auto | torchscript | dynamo (auto: TorchScript for fake-quantized models and opset < 18) "
            f"{default_text(ExportConfig, 'exporter')}.",
            rich_help_panel=E,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Data for the parity samples (default: the model's training data, else synthetic).",
            rich_help_panel=C,
        ),
    ] = None,
    samples: Annotated[
        int | None, typer.Option(help=f"Parity samples {default_text(ExportConfig, 'n_samples')}.", rich_help_panel=C)
    ] = None,
    check: Annotated[
        list[str] | None, typer.Option(help="Extra checks: tensorrt (lint; errors fail the export).", rich_help_panel=C)
    ] = None,
    min_batch: MinBatchOpt = None,
    opt_batch: OptBatchOpt = None,
    max_batch: MaxBatchOpt = None,
    workspace_mb: Annotated[
        int | None,
        typer.Option(
            help=f"Builder workspace limit (MiB) {default_text(ExportConfig, 'workspace_mb')}.", rich_help_panel=T
        ),
    ] = None,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            help=f"Timing cache file reused across engine builds {default_text(ExportConfig, 'timing_cache')}.",
            rich_help_panel=T,
        ),
    ] = None,
    target_sensitivity: TargetSensitivityOpt = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Export a model directory to a verified bundle (ONNX, FP16 ONNX, TensorRT engine) with parity checks.

    Flags override the --config YAML file (its keys are the fields of edgekd.export.ExportConfig; an export:
    section is read when present), which overrides the defaults.

    Example: edgekd export runs/student --format onnx,onnx-fp16 --check tensorrt --out bundles/student
    """

    check_report_path(json_out, overwrite=overwrite)
    flags = {
        "format": format,
        "opset": opset,
        "static": static,
        "simplify": simplify,
        "exporter": exporter,
        "data": data,
        "samples": samples,
        "check": check,
        "min_batch": min_batch,
        "opt_batch": opt_batch,
        "max_batch": max_batch,
        "workspace_mb": workspace_mb,
        "timing_cache": timing_cache,
        "target_sensitivity": target_sensitivity,
    }
    cfg = cli_config(ctx, ExportConfig, config, flags, {"format": "formats", "samples": "n_samples"}, section="export")
    quiet = json_out == "-"
    manifest = export_bundle(
        model_dir, out, cfg, overwrite=overwrite, log=None if quiet else lambda line: console.print(escape(line))
    )
    if not quiet:
        files = ", ".join(f"{f.name} ({f.precision.value})" for f in manifest.model_files() if f.precision)
        console.print(f"exporter {manifest.exporter.get('exporter')}: {manifest.exporter.get('exporter_reason')}")
        console.print(f"[bold]{out}[/]: {files}")
    emit_json(manifest, json_out)


def _findings_table(path: Path, findings: list) -> None:
    t = Table(title=f"{path}: {len(findings)} finding(s)")
    for col in ("severity", "rule", "node", "op", "message"):
        t.add_column(col, overflow="fold")
    for f in findings:
        color = "red" if f.severity == "error" else "yellow"
        t.add_row(f"[{color}]{f.severity}[/]", f.rule, escape(f.node), f.op_type, escape(f.message))
    console.print(t)


@app.command("lint-onnx", rich_help_panel=PANEL_EXPORT)
def lint_onnx_cmd(
    onnx_file: Annotated[Path, typer.Argument(help="ONNX model to check.")],
    target: Annotated[str, typer.Option(help="Deployment target.")] = "tensorrt",
    min_batch: MinBatchOpt = None,
    opt_batch: OptBatchOpt = None,
    max_batch: MaxBatchOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Check an ONNX model for TensorRT compatibility without a GPU; exits 6 when errors are found.

    Rules: opset range, ops the TensorRT ONNX parser supports, no QOperator ops, symmetric INT8 Q/DQ with
    zero points 0, per-channel weight axes, dynamic dims covered by the min/opt/max batch profile.

    Example: edgekd lint-onnx bundles/student/model.onnx --target tensorrt --json lint.json
    """

    given = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}
    profile = build_config(ExportConfig, None, {k: v for k, v in given.items() if v is not None}).profile()
    findings = lint_onnx(onnx_file, target=target, profile=profile)
    errors = lint_errors(findings)
    if json_out != "-":
        if findings:
            _findings_table(onnx_file, findings)
        else:
            console.print(f"{onnx_file}: no findings for {target}")
    emit_json({"file": str(onnx_file), "target": target, "ok": not errors, "findings": findings}, json_out)
    if errors:
        raise VerificationError(f"{onnx_file}: {len(errors)} {target} lint error(s); first: {errors[0]}")


@app.command(rich_help_panel=PANEL_EXPORT)
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by `edgekd export`.")],
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Also compare FP16/INT8 files with the FP32 one on real samples of this data."
        ),
    ] = None,
    json_out: JsonOpt = None,
) -> None:
    """Re-check every sha256 in the manifest and re-run parity from the stored reference outputs.

    Exits 6 when a file is missing or modified or parity fails.

    Example: edgekd verify bundles/student --json verify.json
    """

    res = verify_bundle(bundle, data=data)
    if json_out != "-":
        console.print(f"{len(res.files)} files match their sha256")
        for p in res.parity:
            console.print(escape(p.summary()))
        for s in res.skipped:
            console.print(f"[yellow]skipped:[/] {escape(s)}")
        if res.unlisted:
            console.print(f"[yellow]files not in the manifest:[/] {', '.join(res.unlisted)}")
        console.print(f"[bold green]{bundle} verified[/]")
    emit_json(res, json_out)
