"""`edgekd distill` and `edgekd losses`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_TRAIN, app
from edgekd.cli._options import (
    AmpDtypeOpt,
    AmpOpt,
    AugmentOpt,
    BatchSizeOpt,
    ChannelsLastOpt,
    ChannelsOpt,
    ClassWeightingOpt,
    CompileOpt,
    ConfigOpt,
    DataOpt,
    DeterministicOpt,
    DeviceOpt,
    DownloadOpt,
    EpochsOpt,
    GradClipOpt,
    InputSizeOpt,
    IntendedUseOpt,
    JsonOpt,
    LabelSmoothingOpt,
    LrOpt,
    MaxStepsOpt,
    MomentumOpt,
    NprocOpt,
    NumWorkersOpt,
    OptimizerOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    SelectMetricOpt,
    SmallInputOpt,
    WarmupEpochsOpt,
    WeightDecayOpt,
    console,
    emit_json,
    given_options,
)
from edgekd.cli._render import metrics_table
from edgekd.distill import (
    AmpDtype,
    ClassWeighting,
    DeviceName,
    OptimizerName,
    distill_model,
    launch_nproc,
    list_losses,
    resolve_run_settings,
    under_launcher,
)
from edgekd.pipeline import KDComparison, distill_with_baseline
from edgekd.specs import ChannelMode

D, C = "Distillation", "Teacher cache"


@app.command(rich_help_panel=PANEL_TRAIN)
def distill(
    ctx: typer.Context,
    out: OutOpt,
    student: Annotated[
        str,
        typer.Option(
            "--student",
            "-s",
            help="Registry name (small:resnet8x4, tv:mobilenet_v3_small) or a model directory.",
            rich_help_panel=D,
        ),
    ] = "",
    teacher: Annotated[
        list[str] | None,
        typer.Option(
            "--teacher",
            "-t",
            help="Model directory, onnx:FILE.onnx, ckpt:FILE@MODEL or a pretrained registry name; repeat for several.",
            rich_help_panel=D,
        ),
    ] = None,
    data: DataOpt = "pneumoniamnist",
    loss: Annotated[
        list[str] | None,
        typer.Option(
            "--loss",
            "-l",
            help="NAME[:WEIGHT][,key=value...], repeatable (default: ce:1 + kd:1,T=4). See `edgekd losses`.",
            rich_help_panel=D,
        ),
    ] = None,
    teacher_weight: Annotated[
        list[float] | None,
        typer.Option(help="One per --teacher, in order (normalised; default equal).", rich_help_panel=D),
    ] = None,
    pretrained: Annotated[
        bool, typer.Option(help="Start a registry student from pretrained weights (downloads once).", rich_help_panel=D)
    ] = False,
    pretrained_teacher: Annotated[
        bool, typer.Option(help="Allow a registry-name teacher with its pretrained weights.", rich_help_panel=D)
    ] = False,
    trust_pickle: Annotated[
        bool, typer.Option(help="Allow ckpt: teachers that are pickled models (runs code).", rich_help_panel=D)
    ] = False,
    cache_teacher: Annotated[
        bool,
        typer.Option(
            help="Compute teacher logits once per sample and view, store them memory-mapped (fp16).", rich_help_panel=C
        ),
    ] = False,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Cache folder (default OUT/teacher_cache); share it between runs.", rich_help_panel=C),
    ] = None,
    cache_topk: Annotated[
        int | None, typer.Option(help="Store only the top-k logits (the rest spread uniformly).", rich_help_panel=C)
    ] = None,
    cache_views: Annotated[
        int | None,
        typer.Option(
            help="Augmentation views to cache (default: --epochs); epoch e replays view e mod V.", rich_help_panel=C
        ),
    ] = None,
    cache_readonly: Annotated[
        bool, typer.Option(help="Never write the cache; error if it does not match.", rich_help_panel=C)
    ] = False,
    unlabeled: Annotated[
        str | None,
        typer.Option(
            help="Unlabelled images mixed into every step, KD and feature losses only: folder:DIR, dicom:DIR, or a "
            "data spec whose labels are ignored (its train split).",
            rich_help_panel="Unlabelled data",
        ),
    ] = None,
    unlabeled_ratio: Annotated[
        float, typer.Option(help="Unlabelled images per labelled image in a step.", rich_help_panel="Unlabelled data")
    ] = 1.0,
    small_input: SmallInputOpt = False,
    channels: ChannelsOpt = ChannelMode.ADAPT,
    input_size: InputSizeOpt = None,
    epochs: EpochsOpt = 10,
    batch_size: BatchSizeOpt = 128,
    optimizer: OptimizerOpt = OptimizerName.ADAMW,
    lr: LrOpt = 2e-3,
    momentum: MomentumOpt = 0.9,
    weight_decay: WeightDecayOpt = 5e-4,
    warmup_epochs: WarmupEpochsOpt = 1.0,
    label_smoothing: LabelSmoothingOpt = 0.0,
    class_weighting: ClassWeightingOpt = ClassWeighting.NONE,
    augment: AugmentOpt = "none",
    grad_clip: GradClipOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = DeviceName.AUTO,
    amp: AmpOpt = None,
    amp_dtype: AmpDtypeOpt = AmpDtype.AUTO,
    compile: CompileOpt = False,
    nproc: NprocOpt = 1,
    channels_last: ChannelsLastOpt = None,
    select_metric: SelectMetricOpt = "auroc",
    num_workers: NumWorkersOpt = 0,
    max_steps_per_epoch: MaxStepsOpt = None,
    resume: ResumeOpt = False,
    deterministic: DeterministicOpt = False,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    download: DownloadOpt = False,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="Also train the same student without the teacher (OUT-baseline) and say which is better on "
            "validation, with what to try when distillation does not help.",
            rich_help_panel=D,
        ),
    ] = False,
    intended_use: IntendedUseOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Distil one or more teachers into a compact student (soft-label and feature losses).

    Example: edgekd distill --student small:resnet8x4 --teacher runs/teacher --data pneumoniamnist --loss ce:1 --loss kd:1,T=4 --cache-teacher --out runs/student
    """
    flags = {k: v for k, v in locals().items() if k != "ctx"}
    if nproc > 1 and not under_launcher():
        launch_nproc(nproc, sys.argv[1:])  # re-runs this command under torch.distributed.run
    check_report_path(json_out)
    settings = resolve_run_settings(flags, config=config, given=given_options(ctx), require_teacher=True)
    if baseline:
        cmp = distill_with_baseline(settings, out, overwrite=overwrite, progress=not quiet)
        _render_comparison(cmp, quiet, json_out)
        return
    card = distill_model(settings, out, overwrite=overwrite, progress=not quiet)
    if not quiet and json_out != "-":
        notes = card.lineage.notes
        cache = f"; teacher cache {notes['cache']['status']}" if "cache" in notes else ""
        console.print(
            f"best epoch {card.metrics['best_epoch']['epoch']} by val {settings.train.select_metric}; losses "
            f"{' + '.join(card.lineage.losses)}{cache}; model directory: [bold]{out}[/]"
        )
        metrics_table("test metrics", card.metrics["test"], card.label_names)
    emit_json({"out": str(out), "metrics": card.metrics, "params": card.params, "lineage": card.lineage}, json_out)


def _render_comparison(cmp: KDComparison, quiet: bool, json_out: str | None) -> None:
    if not quiet and json_out != "-":
        t = Table(title=f"distilled vs the same student without the teacher ({cmp.metric})")
        for col in ("student", f"val {cmp.metric}", f"test {cmp.metric}", "val acc", "test acc"):
            t.add_column(col, justify="left" if col == "student" else "right")
        for name, s in (("distilled", cmp.distilled), ("no teacher", cmp.baseline)):
            t.add_row(name, *(f"{getattr(s, k)[0]:.4f}" for k in ("val", "test", "val_acc", "test_acc")))
        console.print(t)
        console.print(f"[{'green' if cmp.helps else 'yellow'}]{cmp.message}[/]")
        for tip in cmp.suggestions:
            console.print(f"  - try: {tip}")
    emit_json(cmp, json_out)


def _show(value: Any) -> str:
    if value == "":
        return "LAYER"
    return f"{value:g}" if isinstance(value, float) else str(value)


@app.command(rich_help_panel=PANEL_TRAIN)
def losses(json_out: JsonOpt = None) -> None:
    """List the distillation losses with their kind, parameters and defaults.

    Example: edgekd losses        edgekd distill ... --loss ce:1 --loss dkd:1,beta=8,T=4
    """

    rows = list_losses()
    if json_out != "-":
        t = Table(title="losses (--loss NAME[:WEIGHT][,key=value...])")
        for col in ("name", "kind", "parameters (defaults)", "paper"):
            t.add_column(col)
        for r in rows:
            params = ", ".join(f"{k}={_show(v)}" for k, v in r["params"].items()) or "-"
            t.add_row(r["name"], r["kind"], params, r["summary"])
        console.print(t)
    emit_json(rows, json_out)
