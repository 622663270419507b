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
    launch_nproc,
    resolve_run_settings,
    train_model,
    under_launcher,
)
from edgekd.evaluate import evaluate_model_dir
from edgekd.serve import evaluate_bundle, is_bundle
from edgekd.specs import ChannelMode

PANEL_MODEL, PANEL_OPT, PANEL_RUN = "Model", "Optimisation", "Run"


@app.command(rich_help_panel=PANEL_TRAIN)
def train(
    ctx: typer.Context,
    out: OutOpt,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Registry name (tv:resnet18, small:resnet8x4, timm:...) or a model directory to fine-tune.",
            rich_help_panel=PANEL_MODEL,
        ),
    ] = "",
    data: DataOpt = "pneumoniamnist",
    small_input: SmallInputOpt = False,
    pretrained: Annotated[
        bool, typer.Option(help="Start from pretrained weights (downloads once).", rich_help_panel=PANEL_MODEL)
    ] = False,
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
    intended_use: IntendedUseOpt = None,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a model with labels only (the teacher, or a no-teacher baseline).

    Example: edgekd train --model small:resnet18 --data pneumoniamnist --epochs 4 --out runs/teacher
    """
    flags = {k: v for k, v in locals().items() if k != "ctx"}
    if nproc > 1 and not under_launcher():
        launch_nproc(nproc, sys.argv[1:])  # re-runs this command under torch.distributed.run
    check_report_path(json_out)
    settings = resolve_run_settings(flags, config=config, given=given_options(ctx))
    card = train_model(settings, out, overwrite=overwrite, progress=not quiet)
    if not quiet and json_out != "-":
        console.print(f"best epoch {card.metrics['best_epoch']['epoch']} by val {settings.train.select_metric}; "
                      f"model directory: [bold]{out}[/]")  # fmt: skip
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
        res = evaluate_model_dir(model_dir, data=data, split=split, batch_size=batch_size, device=device,
                                 download=download)  # fmt: skip
    if not quiet and json_out != "-":
        metrics_table(f"{model_dir} on {res['data']} [{split}]", res["metrics"], res["label_names"])
        at = res.get("at_threshold")
        if at:
            console.print(f"at the operating threshold {at['threshold']:.4g} ({escape(at['source'])}): sensitivity "
                          f"{at['sensitivity']:.3f}, specificity {at['specificity']:.3f}, accuracy {at['acc']:.3f}")  # fmt: skip
        if res.get("ood"):
            o = res["ood"]
            console.print(f"out of distribution: {o['flagged']} of {o['n']} images ({o['rate']:.1%})")
    emit_json(res, json_out)
