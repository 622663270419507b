"""`edgekd export`, `edgekd lint-onnx` and `edgekd verify`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_EXPORT, app
from edgekd.cli._options import JsonOpt, OutOpt, OverwriteOpt, TargetSensitivityOpt, console, emit_json
from edgekd.errors import VerificationError
from edgekd.export import export_bundle, lint_errors, lint_onnx, verify_bundle

E, T, C = "Export", "TensorRT", "Checks"
DEFAULT_TIMING_CACHE = Path("~/.cache/edgekd/tensorrt-timing.cache")

MinBatchOpt = Annotated[int, typer.Option(help="Smallest batch of the optimization profile.", rich_help_panel=T)]
OptBatchOpt = Annotated[int, typer.Option(help="Batch the engine is tuned for.", rich_help_panel=T)]
MaxBatchOpt = Annotated[int, typer.Option(help="Largest batch of the optimization profile.", rich_help_panel=T)]


@app.command(rich_help_panel=PANEL_EXPORT)
def export(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (trained, distilled, pruned or QAT).")],
    out: OutOpt,
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="Comma-separated: onnx, onnx-fp16, engine (TensorRT, needs a GPU).",
            rich_help_panel=E,
        ),
    ] = "onnx",
    opset: Annotated[int, typer.Option(help="ONNX opset (TensorRT 10 parses 9..20).", rich_help_panel=E)] = 17,
    static: Annotated[
        bool, typer.Option("--static", help="Fix the batch to 1 (default: dynamic batch).", rich_help_panel=E)
    ] = False,
    simplify: Annotated[
        bool, typer.Option("--simplify/--no-simplify", help="Clean the graph with onnxslim.", rich_help_panel=E)
    ] = True,
    exporter: Annotated[
        str,
        typer.Option(
            help="auto | torchscript | dynamo (auto: TorchScript for fake-quantized models and opset < 18).",
            rich_help_panel=E,
        ),
    ] = "auto",
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Data for the parity samples (default: the model's training data, else synthetic).",
            rich_help_panel=C,
        ),
    ] = None,
    samples: Annotated[int, typer.Option(help="Parity samples.", rich_help_panel=C)] = 64,
    check: Annotated[
        list[str] | None, typer.Option(help="Extra checks: tensorrt (lint; errors fail the export).", rich_help_panel=C)
    ] = None,
    min_batch: MinBatchOpt = 1,
    opt_batch: OptBatchOpt = 8,
    max_batch: MaxBatchOpt = 32,
    workspace_mb: Annotated[int, typer.Option(help="Builder workspace limit (MiB).", rich_help_panel=T)] = 1024,
    timing_cache: Annotated[
        Path, typer.Option(help="Timing cache file reused across engine builds.", rich_help_panel=T)
    ] = DEFAULT_TIMING_CACHE,
    overwrite: OverwriteOpt = False,
    target_sensitivity: TargetSensitivityOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Export a model directory to a verified bundle (ONNX, FP16 ONNX, TensorRT engine) with parity checks.

    Example: edgekd export runs/student --format onnx,onnx-fp16 --check tensorrt --out bundles/student
    """

    quiet = json_out == "-"
    check_report_path(json_out)
    manifest = export_bundle(
        model_dir, out, formats=format, opset=opset, static=static, simplify=simplify, data=data, n_samples=samples,
        check=check or (), workspace_mb=workspace_mb, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        timing_cache=timing_cache, exporter=exporter, overwrite=overwrite, target_sensitivity=target_sensitivity,
        log=None if quiet else lambda line: console.print(escape(line)),
    )  # fmt: skip
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
    min_batch: MinBatchOpt = 1,
    opt_batch: OptBatchOpt = 8,
    max_batch: MaxBatchOpt = 32,
    json_out: JsonOpt = None,
) -> None:
    """Check an ONNX model for TensorRT compatibility without a GPU; exits 6 when errors are found.

    Rules: opset range, ops the TensorRT ONNX parser supports, no QOperator ops, symmetric INT8 Q/DQ with
    zero points 0, per-channel weight axes, dynamic dims covered by the min/opt/max batch profile.

    Example: edgekd lint-onnx bundles/student/model.onnx --target tensorrt --json lint.json
    """

    profile = {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch}
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
