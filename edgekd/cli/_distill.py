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
    NOT_CONFIG,
    ConfigOpt,
    IntendedUseOpt,
    JsonOpt,
    NprocOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    RunAmpDtypeOpt,
    RunAmpOpt,
    RunAugmentOpt,
    RunBatchSizeOpt,
    RunChannelsLastOpt,
    RunChannelsOpt,
    RunClassWeightingOpt,
    RunCompileOpt,
    RunDataOpt,
    RunDeterministicOpt,
    RunDeviceOpt,
    RunDownloadOpt,
    RunEpochsOpt,
    RunGradClipOpt,
    RunInputSizeOpt,
    RunLabelSmoothingOpt,
    RunLrOpt,
    RunMaxStepsOpt,
    RunMomentumOpt,
    RunNumWorkersOpt,
    RunOptimizerOpt,
    RunResumeOpt,
    RunSeedOpt,
    RunSelectMetricOpt,
    RunSmallInputOpt,
    RunWarmupEpochsOpt,
    RunWeightDecayOpt,
    cli_config,
    config_option,
    console,
    emit_json,
)
from edgekd.cli._render import metrics_table
from edgekd.distill import DistillConfig, distill_model, launch_nproc, list_losses, under_launcher
from edgekd.errors import InvalidInputError
from edgekd.pipeline import KDComparison, distill_with_baseline

D, C, U = "Distillation", "Teacher cache", "Unlabelled data"
# `baseline` chooses the library function (distill_with_baseline), so it is no key of DistillConfig.
DISTILL_NOT_CONFIG = NOT_CONFIG | {"baseline"}
# Options whose name is not a field of DistillConfig (the others are fields or its flat keys).
DISTILL_FIELDS = {"teacher": "teachers", "loss": "losses", "teacher_weight": "teacher_weights"}


def _opt(path: str, help: str, *decls: str, panel: str = D) -> object:
    return config_option(*decls, model=DistillConfig, path=path, help=help, rich_help_panel=panel)


@app.command(rich_help_panel=PANEL_TRAIN)
def distill(
    ctx: typer.Context,
    out: OutOpt,
    student: Annotated[
        str | None,
        _opt(
            "student", "Registry name (small:resnet8x4, tv:mobilenet_v3_small) or a model directory.", "--student", "-s"
        ),
    ] = None,
    teacher: Annotated[
        list[str] | None,
        _opt(
            "teachers",
            "Model directory, onnx:FILE.onnx, ckpt:FILE@MODEL or a pretrained registry name; repeat for several.",
            "--teacher",
            "-t",
        ),
    ] = None,
    data: RunDataOpt = None,
    loss: Annotated[
        list[str] | None,
        _opt(
            "losses",
            "NAME[:WEIGHT][,key=value...], repeatable (default: ce:1 + kd:1,T=4). See `edgekd losses`.",
            "--loss",
            "-l",
        ),
    ] = None,
    teacher_weight: Annotated[
        list[float] | None, _opt("teacher_weights", "One per --teacher, in order (normalised; default equal).")
    ] = None,
    pretrained: Annotated[
        bool | None, _opt("pretrained", "Start a registry student from pretrained weights (downloads once).")
    ] = None,
    pretrained_teacher: Annotated[
        bool | None, _opt("pretrained_teacher", "Allow a registry-name teacher with its pretrained weights.")
    ] = None,
    trust_pickle: Annotated[  # False, not None: every trust_pickle parameter defaults to False (a security audit)
        bool, _opt("trust_pickle", "Allow ckpt: teachers that are pickled models (runs code).")
    ] = False,
    cache_teacher: Annotated[
        bool | None,
        _opt(
            "cache.enabled",
            "Compute teacher logits once per sample and view, store them memory-mapped (fp16) (default: off).",
            panel=C,
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None, _opt("cache.dir", "Cache folder (default OUT/teacher_cache); share it between runs.", panel=C)
    ] = None,
    cache_topk: Annotated[
        int | None, _opt("cache.topk", "Store only the top-k logits (the rest spread uniformly).", panel=C)
    ] = None,
    cache_views: Annotated[
        int | None,
        _opt("cache.views", "Augmentation views to cache (default: --epochs); epoch e replays view e mod V.", panel=C),
    ] = None,
    cache_readonly: Annotated[
        bool | None, _opt("cache.readonly", "Never write the cache; error if it does not match.", panel=C)
    ] = None,
    unlabeled: Annotated[
        str | None,
        _opt(
            "unlabeled",
            "Unlabelled images mixed into every step, KD and feature losses only: folder:DIR, "
            "dicom:DIR, or a data spec whose labels are ignored (its train split).",
            panel=U,
        ),
    ] = None,
    unlabeled_ratio: Annotated[
        float | None, _opt("unlabeled_ratio", "Unlabelled images per labelled image in a step.", panel=U)
    ] = None,
    small_input: RunSmallInputOpt = None,
    channels: RunChannelsOpt = None,
    input_size: RunInputSizeOpt = None,
    epochs: RunEpochsOpt = None,
    batch_size: RunBatchSizeOpt = None,
    optimizer: RunOptimizerOpt = None,
    lr: RunLrOpt = None,
    momentum: RunMomentumOpt = None,
    weight_decay: RunWeightDecayOpt = None,
    warmup_epochs: RunWarmupEpochsOpt = None,
    label_smoothing: RunLabelSmoothingOpt = None,
    class_weighting: RunClassWeightingOpt = None,
    augment: RunAugmentOpt = None,
    grad_clip: RunGradClipOpt = None,
    seed: RunSeedOpt = None,
    device: RunDeviceOpt = None,
    amp: RunAmpOpt = None,
    amp_dtype: RunAmpDtypeOpt = None,
    compile: RunCompileOpt = None,
    nproc: NprocOpt = 1,
    channels_last: RunChannelsLastOpt = None,
    select_metric: RunSelectMetricOpt = None,
    num_workers: RunNumWorkersOpt = None,
    max_steps_per_epoch: RunMaxStepsOpt = None,
    resume: RunResumeOpt = None,
    deterministic: RunDeterministicOpt = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    download: RunDownloadOpt = None,
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

    Example: edgekd distill --config distill.yaml --epochs 3 --out runs/student   (flags override the file)
    """
    if nproc > 1 and not under_launcher():
        launch_nproc(nproc, sys.argv[1:])  # re-runs this command under torch.distributed.run
    check_report_path(json_out, overwrite=overwrite)
    flags = {k: v for k, v in locals().items() if k not in DISTILL_NOT_CONFIG | {"ctx"}}
    settings = cli_config(ctx, DistillConfig, config, flags, DISTILL_FIELDS)
    if not settings.teachers:
        raise InvalidInputError("no teacher given", "pass --teacher DIR (a model directory from `edgekd train`)")
    if baseline:
        cmp = distill_with_baseline(settings, out, overwrite=overwrite, progress=not quiet)
        _render_comparison(cmp, quiet, json_out)
        return
    card = distill_model(settings, out, overwrite=overwrite, progress=not quiet)
    if not quiet and json_out != "-":
        notes = card.lineage.notes
        cache = f"; teacher cache {notes['cache']['status']}" if "cache" in notes else ""
        console.print(
            f"best epoch {card.metrics['best_epoch']['epoch']} by val {card.metrics['best_epoch'].get('metric', settings.train.select_metric)}; losses "
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
