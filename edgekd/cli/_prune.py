"""`edgekd prune`: structural pruning with recovery fine-tuning (thin: parse, validate, call, render)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekd._config import validate
from edgekd._io import check_report_path
from edgekd.bench import model_latency_ms, width_multiple
from edgekd.cli._app import PANEL_COMPRESS, app
from edgekd.cli._options import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    SeedOpt,
    console,
    emit_json,
    resolve_config,
)  # fmt: skip
from edgekd.cli._render import fmt
from edgekd.distill import DeviceName, OptimizerName, TrainConfig
from edgekd.prune import LatencyBackend, PruneConfig, PruneTarget, parse_round_to, prune_model_dir

P, L, R, T = "Pruning", "Latency target", "Recovery", "Teacher"
# How each latency backend is measured (the bench layer's functions satisfy edgekd.prune.LatencyFn).
LATENCY_FNS = {LatencyBackend.ORT: model_latency_ms}


def _csv(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


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
    importance: Annotated[
        str, typer.Option(help="l1 | l2 | taylor | bn-scale | lamp | random.", rich_help_panel=P)
    ] = "l2",
    ratio: Annotated[
        float | None, typer.Option(help="Target: remove this fraction of the channels.", rich_help_panel=P)
    ] = None,
    target_macs: Annotated[
        float | None, typer.Option(help="Target: keep this fraction of the MACs (0.5 halves them).", rich_help_panel=P)
    ] = None,
    target_params: Annotated[
        float | None, typer.Option(help="Target: keep this fraction of the parameters.", rich_help_panel=P)
    ] = None,
    target_latency_ms: Annotated[
        float | None,
        typer.Option(
            help="Target: prune until the measured p50 latency of one batch is at most this many ms.",
            rich_help_panel=L,
        ),
    ] = None,
    batch: Annotated[
        int | None, typer.Option(help="Batch size the latency target is measured at [default: 32].", rich_help_panel=L)
    ] = None,
    backend: Annotated[
        LatencyBackend | None,
        typer.Option(
            help="Where the latency target is measured (ort: ONNX Runtime CPU) [default: ort].", rich_help_panel=L
        ),
    ] = None,
    latency_margin: Annotated[
        float, typer.Option(help="Aim this fraction under the budget (re-measurements vary).", rich_help_panel=L)
    ] = 0.05,
    short_term_epochs: Annotated[
        int,
        typer.Option(
            help="Fine-tuning epochs after each latency proposal (--recovery-epochs: at the end).", rich_help_panel=L
        ),
    ] = 0,
    steps: Annotated[
        int, typer.Option(help="Prune in this many steps, fine-tuning after each.", rich_help_panel=P)
    ] = 1,
    global_pruning: Annotated[
        bool,
        typer.Option(
            "--global/--per-layer",
            help="Rank channels across layers, or prune every layer by the same ratio.",
            rich_help_panel=P,
        ),
    ] = True,
    keep: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated module paths never pruned, e.g. layer3,fc "
            "(the classifier's outputs are always kept).",
            rich_help_panel=P,
        ),
    ] = None,
    round_to: Annotated[
        str,
        typer.Option(
            help="Channel counts are multiples of: auto (measured on this machine, cached) | N | none.",
            rich_help_panel=P,
        ),
    ] = "auto",
    max_layer_ratio: Annotated[
        float, typer.Option(help="No layer loses more than this fraction of its channels.", rich_help_panel=P)
    ] = 0.9,
    recovery_epochs: Annotated[
        int, typer.Option(help="Fine-tuning epochs after each step (0: none).", rich_help_panel=R)
    ] = 2,
    kd: Annotated[
        bool,
        typer.Option(
            "--kd/--no-kd",
            help="Recover by distilling from the teacher, or with cross-entropy only.",
            rich_help_panel=R,
        ),
    ] = True,
    teacher: Annotated[
        str | None, typer.Option(help="Teacher for recovery (default: the unpruned model).", rich_help_panel=T)
    ] = None,
    loss: Annotated[
        list[str] | None,
        typer.Option(help="Recovery loss terms with a teacher (default ce:1 and kd:1,T=4).", rich_help_panel=T),
    ] = None,
    batch_size: Annotated[int, typer.Option(rich_help_panel=R)] = 128,
    optimizer: Annotated[OptimizerName, typer.Option(rich_help_panel=R)] = OptimizerName.ADAMW,
    lr: Annotated[float, typer.Option(help="Peak fine-tuning learning rate.", rich_help_panel=R)] = 1e-3,
    weight_decay: Annotated[float, typer.Option(rich_help_panel=R)] = 5e-4,
    warmup_epochs: Annotated[float, typer.Option(rich_help_panel=R)] = 0.0,
    augment: Annotated[str, typer.Option(help="none | light | medical.", rich_help_panel=R)] = "none",
    select_metric: Annotated[
        str, typer.Option(help="Validation metric picking the best recovery epoch.", rich_help_panel=R)
    ] = "auroc",
    max_steps_per_epoch: Annotated[int | None, typer.Option(hidden=True)] = None,
    latency_batch: Annotated[
        int, typer.Option(help="Batch size of the ORT CPU latency measurement (0: skip).", rich_help_panel="Output")
    ] = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = DeviceName.AUTO,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Prune channels structurally (Torch-Pruning DepGraph), recovering accuracy with the teacher.

    Example: edgekd prune runs/student --target-macs 0.5 --steps 2 --importance lamp --out runs/student-pruned

    Example: edgekd prune runs/student --target-latency-ms 2.5 --batch 32 --out runs/student-fast
    """

    flags = {k: v for k, v in locals().items() if k in TrainConfig.model_fields}
    check_report_path(json_out)
    train_cfg = resolve_config(ctx, TrainConfig, config, flags, section="recovery")
    target = PruneTarget.from_options(ratio=ratio, target_macs=target_macs, target_params=target_params,
                                      target_latency_ms=target_latency_ms, batch=batch, backend=backend)  # fmt: skip
    cfg = validate(PruneConfig, dict(importance=importance, target=target, steps=steps, global_pruning=global_pruning,
                   keep=_csv(keep), round_to=parse_round_to(round_to), max_layer_ratio=max_layer_ratio,
                   recovery_epochs=recovery_epochs, kd=kd, teacher=teacher, latency_batch=latency_batch or None,
                   latency_margin=latency_margin, short_term_epochs=short_term_epochs, train=train_cfg,
                   **({"losses": loss} if loss else {})))  # fmt: skip
    report = prune_model_dir(model_dir, out, cfg, data=data, latency=LATENCY_FNS[target.backend or LatencyBackend.ORT],
                             width_probe=width_multiple, overwrite=overwrite, progress=not quiet)  # fmt: skip
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
        t.add_row(name, fmt(stats.params), fmt(stats.macs), fmt(stats.size_bytes), fmt(stats.latency_ms),
                  fmt(metrics["val"].get("auroc")), fmt(metrics["test"].get("auroc")))  # fmt: skip
    console.print(t)
    speed = f", latency speed-up {report.latency_speedup:.2f}x" if report.latency_speedup else ""
    console.print(f"MACs kept {report.after.macs / report.before.macs:.3f}{speed}; recovery: {report.recovery}"
                  + ("" if report.target_met else " [yellow](target not reached: raise --max-layer-ratio or "
                     "drop --keep)[/]"))  # fmt: skip
    w = report.round_to
    where = f", {w['fingerprint']['cpu_model']} {'/'.join(w['fingerprint']['isa'])}" if w.get("fingerprint") else ""
    console.print(f"widths rounded to multiples of {w.get('multiple') or 1} ({w.get('source')}{where})")
    if w.get("note"):
        console.print(f"[yellow]width probe: {w['note']}[/]")
    if (lat := report.latency_target) is not None:
        if lat["already_met"]:
            console.print(f"[yellow]the unpruned model already meets the budget ({lat['unpruned_ms']:.3g} ms <= "
                          f"{lat['aim_ms']:.3g} ms at batch {lat['batch']}): nothing pruned[/]")  # fmt: skip
        else:
            console.print(f"latency budget {lat['budget_ms']:g} ms at batch {lat['batch']} (aim {lat['aim_ms']:.3g}): "
                          f"{lat['unpruned_ms']:.3g} -> {report.steps[-1]['latency_ms']:.3g} ms in "
                          f"{len(report.steps)} measured proposals; re-measured {fmt(lat['final_ms'])} ms")  # fmt: skip
        if lat.get("final_met") is False:
            console.print(f"[yellow]re-measured after recovery at {fmt(lat['final_ms'])} ms, above the {lat['budget_ms']:g} "
                          "ms budget with the same widths: this machine's speed changed between the measurements; "
                          "check with `edgekd bench` on a quiet machine[/]")  # fmt: skip
