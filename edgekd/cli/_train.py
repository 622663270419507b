"""`edgekd train` and `edgekd eval`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_TRAIN, app
from edgekd.cli._options import (
    NOT_CONFIG,
    ConfigOpt,
    DeviceOpt,
    DownloadOpt,
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
from edgekd.distill import DeviceName, DistillConfig, launch_nproc, train_model, under_launcher
from edgekd.evaluate import evaluate_model_dir
from edgekd.serve import evaluate_bundle, is_bundle

PANEL_MODEL, PANEL_OPT, PANEL_RUN = "Model", "Optimisation", "Run"
# Options whose name is not a key of DistillConfig (the others are fields or its flat keys: epochs, lr, ...).
TRAIN_FIELDS = {"model": "student"}
TRAIN_NOT_CONFIG = NOT_CONFIG


@app.command(rich_help_panel=PANEL_TRAIN)
def train(
    ctx: typer.Context,
    out: OutOpt,
    model: Annotated[
        str | None,
        config_option(
            "--model",
            "-m",
            model=DistillConfig,
            path="student",
            help="Registry name (tv:resnet18, small:resnet8x4, timm:...) or a model directory to fine-tune.",
            rich_help_panel=PANEL_MODEL,
        ),
    ] = None,
    data: RunDataOpt = None,
    small_input: RunSmallInputOpt = None,
    pretrained: Annotated[
        bool | None,
        config_option(
            model=DistillConfig,
            path="pretrained",
            help="Start from pretrained weights (downloads once).",
            rich_help_panel=PANEL_MODEL,
        ),
    ] = None,
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
    intended_use: IntendedUseOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a model with labels only (the teacher, or a no-teacher baseline).

    Example: edgekd train --model small:resnet18 --data pneumoniamnist --epochs 4 --out runs/teacher

    Example: edgekd train --config train.yaml --lr 1e-3 --out runs/teacher   (flags override the file)
    """
    if nproc > 1 and not under_launcher():
        launch_nproc(nproc, sys.argv[1:])  # re-runs this command under torch.distributed.run
    check_report_path(json_out, overwrite=overwrite)
    flags = {k: v for k, v in locals().items() if k not in TRAIN_NOT_CONFIG | {"ctx"}}
    settings = cli_config(ctx, DistillConfig, config, flags, TRAIN_FIELDS)
    card = train_model(settings, out, overwrite=overwrite, progress=not quiet)
    if not quiet and json_out != "-":
        console.print(
            f"best epoch {card.metrics['best_epoch']['epoch']} by val {card.metrics['best_epoch'].get('metric', settings.train.select_metric)}; "
            f"model directory: [bold]{out}[/]"
        )
        metrics_table("test metrics", card.metrics["test"], card.label_names)
    emit_json({"out": str(out), "metrics": card.metrics, "params": card.params}, json_out)


@app.command("eval", rich_help_panel=PANEL_TRAIN)
def eval_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory, or a bundle (run as edgekd predict runs it).")],
    data: Annotated[
        str | None, typer.Option("--data", "-d", help="Data spec (default: the data the model was trained on).")
    ] = None,
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    batch_size: Annotated[int, typer.Option()] = 256,
    device: DeviceOpt = DeviceName.AUTO,
    download: DownloadOpt = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a model directory or a bundle: accuracy, balanced accuracy, macro F1, AUROC, sensitivity/specificity.

    A binary bundle also reports sensitivity, specificity and accuracy at its operating threshold (the one
    `edgekd predict` and `edgekd serve` decide at), and the share of images flagged out of distribution.

    Example: edgekd eval runs/teacher --split test --json metrics.json
             edgekd eval runs/pneumonia/int8-cpu-x86 --split test
    """
    if is_bundle(model_dir):
        res = evaluate_bundle(model_dir, data=data, split=split, batch_size=batch_size)
    else:
        res = evaluate_model_dir(
            model_dir, data=data, split=split, batch_size=batch_size, device=device, download=download
        )
    if not quiet and json_out != "-":
        metrics_table(f"{model_dir} on {res['data']} [{split}]", res["metrics"], res["label_names"])
        at = res.get("at_threshold")
        if at:
            console.print(
                f"at the operating threshold {at['threshold']:.4g} ({escape(at['source'])}): sensitivity "
                f"{at['sensitivity']:.3f}, specificity {at['specificity']:.3f}, accuracy {at['acc']:.3f}"
            )
        if res.get("ood"):
            o = res["ood"]
            console.print(f"out of distribution: {o['flagged']} of {o['n']} images ({o['rate']:.1%})")
    emit_json(res, json_out)
