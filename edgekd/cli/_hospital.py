"""`edgekd label`, `edgekd update` and `edgekd drift`: learning from hospital data that has few labels and changes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_DATA_OPS, app
from edgekd.cli._options import (
    NOT_CONFIG,
    ConfigOpt,
    DeviceOpt,
    DownloadOpt,
    JsonOpt,
    OutOpt,
    OverwriteOpt,
    QuietOpt,
    ReportOverwriteOpt,
    SeedOpt,
    cli_config,
    config_option,
    console,
    emit_json,
)
from edgekd.cli._render import fmt, metrics_table
from edgekd.distill import ClassWeighting, DeviceName, OptimizerName, UpdateConfig, label_images, update_model
from edgekd.errors import RegressionError
from edgekd.monitor import DEFAULT_THRESHOLD, check_drift

_DATA_HELP = "Images: folder:DIR (PNG/JPEG/DICOM), dicom:DIR[,window=C/W], or a data spec whose labels are ignored."
# Inputs and output switches of `edgekd update`, not keys of UpdateConfig.
UPDATE_NOT_CONFIG = NOT_CONFIG | {"ctx", "model_dir", "data", "download"}
SplitOpt = Annotated[str, typer.Option(help="Split of a labelled data spec: train | val | test | all.")]


@app.command(rich_help_panel=PANEL_DATA_OPS)
def label(
    teachers: Annotated[list[Path], typer.Argument(help="Model directories predicting the same classes.")],
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Soft-label file: .npz or .csv.")],
    teacher_weight: Annotated[
        list[float] | None, typer.Option(help="One per teacher, in order (normalised; default equal).")
    ] = None,
    min_confidence: Annotated[
        float, typer.Option(help="Mark images whose averaged top-1 probability is below this as abstained.")
    ] = 0.0,
    split: SplitOpt = "train",
    batch_size: Annotated[int, typer.Option()] = 256,
    device: DeviceOpt = DeviceName.AUTO,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Soft labels (class probabilities) for unlabelled images from one or several teachers.

    The file is a data source: train or distil on it with --data softlabels:FILE (images matched by content hash).

    Example: edgekd label runs/teacher_a runs/teacher_b --data folder:/data/unlabeled --min-confidence 0.8 --out labels.npz
    """
    check_report_path(json_out, overwrite=overwrite)
    report = label_images(
        [str(t) for t in teachers],
        data,
        out,
        weights=teacher_weight,
        min_confidence=min_confidence,
        split=split,
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
        progress=not quiet,
    )
    if not quiet and json_out != "-":
        agree = report.agreement
        console.print(
            f"{report.images} images labelled by {len(report.teachers)} teacher(s); {report.abstained} "
            f"abstained (top-1 probability < {report.min_confidence:g}); mean confidence "
            f"{report.mean_confidence:.3f}; all teachers agree on {agree['all']:.1%}; soft labels: "
            f"[bold]{out}[/] (use --data softlabels:{out})"
        )
        t = Table(title="labelled images per class (abstained excluded)")
        t.add_column("class")
        t.add_column("images", justify="right")
        for name, n in report.class_counts.items():
            t.add_row(name, str(n))
        console.print(t)
    emit_json(report.to_json(), json_out)


def _u(path: str, help: str = "", *decls: str, **kwargs: object) -> object:
    """An `edgekd update` option: not given by default, its default read from :class:`UpdateConfig`."""
    return config_option(*decls, model=UpdateConfig, path=path, help=help, rich_help_panel="Update", **kwargs)


@app.command(rich_help_panel=PANEL_DATA_OPS)
def update(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="The model directory to update.")],
    out: OutOpt,
    data: Annotated[str, typer.Option("--data", "-d", help="New labelled data (a new site, or new classes).")],
    lwf: Annotated[
        bool | None, _u("lwf", "Learning without Forgetting (default: plain fine-tune).", "--lwf/--no-lwf")
    ] = None,
    lwf_weight: Annotated[
        float | None, _u("lwf_weight", "Weight of the LwF term, Li & Hoiem's lambda_o (implies --lwf).")
    ] = None,
    lwf_temperature: Annotated[float | None, _u("lwf_temperature", "LwF temperature (Li & Hoiem: 2).")] = None,
    freeze_norm: Annotated[
        bool | None,
        _u(
            "freeze_norm",
            "Keep the old model's batch-norm running statistics; --update-norm re-estimates them on the new data "
            "only, which shifts the old domain's outputs.",
            "--freeze-norm/--update-norm",
        ),
    ] = None,
    epochs: Annotated[int | None, _u("train.epochs")] = None,
    batch_size: Annotated[int | None, _u("train.batch_size")] = None,
    optimizer: Annotated[OptimizerName | None, _u("train.optimizer")] = None,
    lr: Annotated[float | None, _u("train.lr", "Peak learning rate.")] = None,
    weight_decay: Annotated[float | None, _u("train.weight_decay")] = None,
    warmup_epochs: Annotated[float | None, _u("train.warmup_epochs")] = None,
    label_smoothing: Annotated[float | None, _u("train.label_smoothing")] = None,
    class_weighting: Annotated[ClassWeighting | None, _u("train.class_weighting")] = None,
    augment: Annotated[str | None, _u("train.augment", "none | light | medical | seg | seg-strong.")] = None,
    seed: Annotated[int | None, _u("train.seed", "Random seed (data order, init, splits).")] = None,
    device: Annotated[DeviceName | None, _u("train.device", "auto picks CUDA when present.")] = None,
    select_metric: Annotated[str | None, _u("train.select_metric", "Validation metric picking the best epoch.")] = None,
    max_steps_per_epoch: Annotated[int | None, _u("train.max_steps_per_epoch", hidden=True)] = None,
    overwrite: OverwriteOpt = False,
    config: ConfigOpt = None,
    download: DownloadOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Update a model on new data (new site or new classes); --lwf distils the old model's outputs to keep it.

    Example: edgekd update runs/site_a --data imagefolder:/data/site_b --lwf --lwf-weight 1 --epochs 5 --out runs/site_b
    Example: edgekd update runs/site_a --data imagefolder:/data/site_b --config update.yaml --out runs/site_b
    (its keys are UpdateConfig's: lwf, lwf_weight, lwf_temperature, freeze_norm, and the schedule's, flat or under train:)
    """
    check_report_path(json_out, overwrite=overwrite)
    flags = {k: v for k, v in locals().items() if k not in UPDATE_NOT_CONFIG}
    cfg = cli_config(ctx, UpdateConfig, config, flags, section="update")
    card = update_model(
        model_dir,
        data,
        out,
        cfg,
        overwrite=overwrite,
        progress=not quiet,
        download=download,
    )
    if not quiet and json_out != "-":
        note = card.lineage.notes["update"]
        weight = cfg.lwf_term
        how = "plain fine-tune" if weight is None else f"LwF (weight {weight:g}, T {cfg.lwf_temperature:g})"
        console.print(
            f"{note['kind']} update by {how}; {len(note['chain'])} model(s) in the update chain; "
            f"model directory: [bold]{out}[/]"
        )
        metrics_table("test metrics (new data)", card.metrics["test"], card.label_names)
    emit_json({"out": str(out), "metrics": card.metrics, "lineage": card.lineage}, json_out)


@app.command(rich_help_panel=PANEL_DATA_OPS)
def drift(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (holds its drift reference).")],
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)],
    split: SplitOpt = "test",
    fail_above: Annotated[
        float | None,
        typer.Option(help=f"Exit 7 when the drift score is above this (default threshold {DEFAULT_THRESHOLD})."),
    ] = None,
    reference_data: Annotated[
        str | None, typer.Option(help="Compute the reference from this spec's val split (models without one).")
    ] = None,
    seed: SeedOpt = 0,
    json_out: JsonOpt = None,
    overwrite: ReportOverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare new images with the model's reference statistics: distances, confidence, class mix.

    The score is the share of images far from the validation images in penultimate features or image statistics
    (contrast, sharpness, noise): about 0.01 without drift.

    Example: edgekd drift runs/student --data folder:/data/new_scanner --fail-above 0.05 --json drift.json
    """
    check_report_path(json_out, overwrite=overwrite)
    report = check_drift(model_dir, data, split=split, threshold=fail_above, reference_data=reference_data, seed=seed)
    if not quiet and json_out != "-":
        colour = "red" if report.drift else "green"
        console.print(
            f"[bold {colour}]{report.verdict}[/]: score {report.score:.3f} (threshold {report.threshold:g}); "
            f"{report.far_images} of {report.images} images far from the validation images "
            f"(expected {report.expected_rate:.0%}, binomial p = {report.binomial_pvalue:.2g})"
        )
        t = Table(title=f"{model_dir} on {report.data}")
        t.add_column("figure")
        t.add_column("value", justify="right")
        t.add_column("flags", justify="left")
        for space, ratio in report.mean_d2_ratio.items():
            what = "penultimate features" if space == "features" else "image statistics"
            t.add_row(f"far images, {what}", str(report.far_by_space[space]), "")
            t.add_row(f"mean distance / reference, {what}", fmt(ratio), "")
        flag = "shift" if report.ks_pvalue < 0.01 else ""
        t.add_row("confidence KS statistic (p)", f"{report.ks_statistic:.3f} ({report.ks_pvalue:.2g})", flag)
        for name, value in report.psi.items():
            t.add_row(f"PSI {name}", fmt(value), "major shift" if value > 0.25 else "")
        console.print(t)
    emit_json(report.to_json(), json_out)
    if fail_above is not None and report.drift:
        raise RegressionError(
            f"drift score {report.score:.3f} is above --fail-above {fail_above:g}",
            "the new data differs from the validation data: check the site, scanner or protocol",
        )
