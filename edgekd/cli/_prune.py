"""`edgekd prune`: structural pruning with recovery fine-tuning (thin: parse, validate, call, render)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.bench import model_latency_ms, width_multiple
from edgekd.cli._app import PANEL_COMPRESS, app
from edgekd.cli._options import (
    NOT_CONFIG,
    ConfigOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    cli_config,
    config_option,
    console,
    emit_json,
)
from edgekd.cli._render import fmt
from edgekd.distill import DeviceName, OptimizerName
from edgekd.prune import LatencyBackend, PruneConfig, prune_model_dir

P, L, R, T = "Pruning", "Latency target", "Recovery", "Teacher"
# How each latency backend is measured (the bench layer's functions satisfy edgekd.prune.LatencyFn).
LATENCY_FNS = {LatencyBackend.ORT: model_latency_ms}
# Inputs of the run, not keys of PruneConfig (every other option is a field or one of its flat keys).
PRUNE_NOT_CONFIG = NOT_CONFIG | {"model_dir", "data"}


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [p.strip() for p in text.split(",") if p.strip()]


def _opt(path: str, help: str, panel: str, *decls: str, **kwargs: object) -> object:
    return config_option(*decls, model=PruneConfig, path=path, help=help, rich_help_panel=panel, **kwargs)


@app.command(rich_help_panel=PANEL_COMPRESS)
def prune(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="Model directory to prune.")],
    out: OutOpt,
    data: Annotated[
        str | None,
        typer.Option(
            "--data", "-d", help="Data spec (default: the data the model was trained on).", rich_help_panel="Data"
        ),
    ] = None,
    importance: Annotated[str | None, _opt("importance", "l1 | l2 | taylor | bn-scale | lamp | random.", P)] = None,
    ratio: Annotated[float | None, _opt("target.ratio", "Target: remove this fraction of the channels.", P)] = None,
    target_macs: Annotated[
        float | None, _opt("target.macs", "Target: keep this fraction of the MACs (0.5 halves them).", P)
    ] = None,
    target_params: Annotated[
        float | None, _opt("target.params", "Target: keep this fraction of the parameters.", P)
    ] = None,
    target_latency_ms: Annotated[
        float | None,
        _opt(
            "target.latency_ms", "Target: prune until the measured p50 latency of one batch is at most this many ms.", L
        ),
    ] = None,
    batch: Annotated[
        int | None, _opt("target.batch", "Batch size the latency target is measured at (default: 32).", L)
    ] = None,
    backend: Annotated[
        LatencyBackend | None,
        _opt("target.backend", "Where the latency target is measured (ort: ONNX Runtime CPU; default: ort).", L),
    ] = None,
    latency_margin: Annotated[
        float | None, _opt("latency_margin", "Aim this fraction under the budget (re-measurements vary).", L)
    ] = None,
    short_term_epochs: Annotated[
        int | None,
        _opt("short_term_epochs", "Fine-tuning epochs after each latency proposal (--recovery-epochs: at the end).", L),
    ] = None,
    steps: Annotated[int | None, _opt("steps", "Prune in this many steps, fine-tuning after each.", P)] = None,
    global_pruning: Annotated[
        bool | None,
        _opt(
            "global_pruning",
            "Rank channels across layers, or prune every layer by the same ratio.",
            P,
            "--global/--per-layer",
        ),
    ] = None,
    keep: Annotated[
        str | None,
        _opt(
            "keep",
            "Comma-separated module paths never pruned, e.g. layer3,fc (the classifier's outputs are always kept).",
            P,
        ),
    ] = None,
    round_to: Annotated[
        str | None,
        _opt("round_to", "Channel counts are multiples of: auto (measured on this machine, cached) | N | none.", P),
    ] = None,
    max_layer_ratio: Annotated[
        float | None, _opt("max_layer_ratio", "No layer loses more than this fraction of its channels.", P)
    ] = None,
    recovery_epochs: Annotated[
        int | None, _opt("recovery_epochs", "Fine-tuning epochs after each step (0: none).", R)
    ] = None,
    kd: Annotated[
        bool | None,
        _opt("kd", "Recover by distilling from the teacher, or with cross-entropy only.", T, "--kd/--no-kd"),
    ] = None,
    teacher: Annotated[str | None, _opt("teacher", "Teacher for recovery (default: the unpruned model).", T)] = None,
    loss: Annotated[list[str] | None, _opt("losses", "Recovery loss terms with a teacher.", T)] = None,
    batch_size: Annotated[int | None, _opt("train.batch_size", "", R)] = None,
    optimizer: Annotated[OptimizerName | None, _opt("train.optimizer", "", R)] = None,
    lr: Annotated[float | None, _opt("train.lr", "Peak fine-tuning learning rate.", R)] = None,
    weight_decay: Annotated[float | None, _opt("train.weight_decay", "", R)] = None,
    warmup_epochs: Annotated[float | None, _opt("train.warmup_epochs", "", R)] = None,
    augment: Annotated[str | None, _opt("train.augment", "none | light | medical | seg | seg-strong.", R)] = None,
    select_metric: Annotated[
        str | None, _opt("train.select_metric", "Validation metric picking the best recovery epoch.", R)
    ] = None,
    max_steps_per_epoch: Annotated[int | None, _opt("train.max_steps_per_epoch", "", R, hidden=True)] = None,
    latency_batch: Annotated[
        int | None, _opt("latency_batch", "Batch size of the ORT CPU latency measurement (0: skip).", "Output")
    ] = None,
    seed: Annotated[int | None, _opt("train.seed", "Random seed (data order, init, splits).", "Run", "--seed")] = None,
    device: Annotated[
        DeviceName | None, _opt("train.device", "auto picks CUDA when present.", "Run", "--device")
    ] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Prune channels structurally (Torch-Pruning DepGraph), recovering accuracy with the teacher.

    Example: edgekd prune runs/student --target-macs 0.5 --steps 2 --importance lamp --out runs/student-pruned

    Example: edgekd prune runs/student --target-latency-ms 2.5 --batch 32 --out runs/student-fast

    Example: edgekd prune runs/student --config prune.yaml --steps 3 --out runs/student-pruned   (flags override
    the file; its keys are PruneConfig's: importance, target: {macs: 0.5}, train: {lr: 0.001}, ...)
    """
    check_report_path(json_out, overwrite=overwrite)
    flags = {k: v for k, v in locals().items() if k not in PRUNE_NOT_CONFIG | {"ctx"}}
    cfg = cli_config(ctx, PruneConfig, config, {**flags, "keep": _csv(keep)}, section="prune")
    latency = LATENCY_FNS[cfg.target.backend or LatencyBackend.ORT]
    report = prune_model_dir(
        model_dir,
        out,
        cfg,
        data=data,
        latency=latency,
        width_probe=width_multiple,
        overwrite=overwrite,
        progress=not quiet,
    )
    if not quiet and json_out != "-":
        _render(report)
    emit_json(report, json_out)


def _render(report) -> None:
    t = Table(title=f"{report.source} -> {report.out} ({report.importance}, {report.target.describe()})")
    for col in (
        "",
        "params",
        "MACs",
        "size (bytes)",
        f"ORT CPU ms (batch {report.after.latency_batch})",
        "val auroc",
        "test auroc",
    ):
        t.add_column(col, justify="right")
    for name, stats, metrics in (
        ("before", report.before, report.metrics_before),
        ("after", report.after, report.metrics_after),
    ):
        t.add_row(
            name,
            fmt(stats.params),
            fmt(stats.macs),
            fmt(stats.size_bytes),
            fmt(stats.latency_ms),
            fmt(metrics["val"].get("auroc")),
            fmt(metrics["test"].get("auroc")),
        )
    console.print(t)
    speed = f", latency speed-up {report.latency_speedup:.2f}x" if report.latency_speedup else ""
    console.print(
        f"MACs kept {report.after.macs / report.before.macs:.3f}{speed}; recovery: {report.recovery}"
        + ("" if report.target_met else " [yellow](target not reached: raise --max-layer-ratio or drop --keep)[/]")
    )
    w = report.round_to
    where = f", {w['fingerprint']['cpu_model']} {'/'.join(w['fingerprint']['isa'])}" if w.get("fingerprint") else ""
    console.print(f"widths rounded to multiples of {w.get('multiple') or 1} ({w.get('source')}{where})")
    if w.get("note"):
        console.print(f"[yellow]width probe: {w['note']}[/]")
    if (lat := report.latency_target) is not None:
        if lat["already_met"]:
            console.print(
                f"[yellow]the unpruned model already meets the budget ({lat['unpruned_ms']:.3g} ms <= "
                f"{lat['aim_ms']:.3g} ms at batch {lat['batch']}): nothing pruned[/]"
            )
        else:
            console.print(
                f"latency budget {lat['budget_ms']:g} ms at batch {lat['batch']} (aim {lat['aim_ms']:.3g}): "
                f"{lat['unpruned_ms']:.3g} -> {report.steps[-1]['latency_ms']:.3g} ms in "
                f"{len(report.steps)} measured proposals; re-measured {fmt(lat['final_ms'])} ms"
            )
        if lat.get("final_met") is False:
            console.print(
                f"[yellow]re-measured after recovery at {fmt(lat['final_ms'])} ms, above the {lat['budget_ms']:g} "
                "ms budget with the same widths: this machine's speed changed between the measurements; "
                "check with `edgekd bench` on a quiet machine[/]"
            )
