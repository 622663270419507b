"""Shared option types and helpers for the CLI commands (Typer ``Annotated`` style)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from rich.console import Console

from edgekd._config import resolve_options
from edgekd._progress import log_width
from edgekd.cli._click import click
from edgekd.distill import AmpDtype, ClassWeighting, DeviceName, OptimizerName
from edgekd.modeldir import atomic_write_text
from edgekd.specs import ChannelMode

__all__ = [
    "DataOpt",
    "DownloadOpt",
    "DeviceOpt",
    "SeedOpt",
    "JsonOpt",
    "QuietOpt",
    "OutOpt",
    "ConfigOpt",
    "console",
    "emit_json",
    "resolve_config",
    "given_options",
    "OverwriteOpt",
]

console = Console(highlight=False, width=log_width(sys.stdout))

DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Data spec: pneumoniamnist | medmnist:F.npz | imagefolder:DIR | csv:F | "
        "synthetic:classes=K,n=N,size=S,channels=C,seed=X | tv:CIFAR10.",
        rich_help_panel="Data",
    ),
]
DownloadOpt = Annotated[
    bool,
    typer.Option(
        "--download",
        help="Allow downloading tv: datasets / pretrained weights (needs internet).",
        rich_help_panel="Data",
    ),
]
DeviceOpt = Annotated[DeviceName, typer.Option("--device", help="auto picks CUDA when present.", rich_help_panel="Run")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (data order, init, splits).", rich_help_panel="Run")]
JsonOpt = Annotated[
    str | None,
    typer.Option(
        "--json", help="Also write machine-readable JSON to this file ('-' for stdout).", rich_help_panel="Output"
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.", rich_help_panel="Output")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output directory.", rich_help_panel="Output")]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace an earlier edgekd output at --out (never other files, never an input).",
        rich_help_panel="Output",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file of options; flags given on the command line override it.",
        rich_help_panel="Run",
    ),
]


def given_options(ctx: click.Context) -> set[str]:
    """Names of the options the user set on the command line (not left at their defaults)."""
    return {
        name for name in ctx.params if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
    }


def resolve_config(ctx: click.Context, model: type[BaseModel], config: Path | None, flags: dict[str, Any],
                   section: str | None = None) -> BaseModel:  # fmt: skip
    """The library's precedence rules (:func:`edgekd._config.resolve_options`) for this command's options."""
    return resolve_options(model, config, flags, given=given_options(ctx), section=section, allowed=set(ctx.params))


def emit_json(payload: Any, dest: str | None) -> None:
    """Write ``payload`` as JSON to ``dest`` (a path, or '-' for stdout)."""
    if not dest:
        return
    text = json.dumps(payload, indent=2, default=_default)
    if dest == "-":
        typer.echo(text)
    else:
        atomic_write_text(dest, text + "\n")


def _default(o: Any) -> Any:
    if isinstance(o, BaseModel):
        return json.loads(o.model_dump_json())
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# Model / optimisation / run options shared by `edgekd train` and `edgekd distill` (same flags, same help).
_M, _O, _R = "Model", "Optimisation", "Run"
SmallInputOpt = Annotated[
    bool, typer.Option(help="3x3 stride-1 stem, no max-pool (inputs <= 64 px).", rich_help_panel=_M)
]
ChannelsOpt = Annotated[
    ChannelMode,
    typer.Option(
        help="Grayscale data: adapt the first conv, or repeat the channel for a 3-channel model.", rich_help_panel=_M
    ),
]
InputSizeOpt = Annotated[
    int | None, typer.Option(help="Resize inputs to this size (default: data size).", rich_help_panel=_M)
]
EpochsOpt = Annotated[int, typer.Option(rich_help_panel=_O)]
BatchSizeOpt = Annotated[int, typer.Option(rich_help_panel=_O)]
OptimizerOpt = Annotated[OptimizerName, typer.Option(rich_help_panel=_O)]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel=_O)]
MomentumOpt = Annotated[float, typer.Option(help="SGD momentum.", rich_help_panel=_O)]
WeightDecayOpt = Annotated[float, typer.Option(rich_help_panel=_O)]
WarmupEpochsOpt = Annotated[float, typer.Option(help="Linear warm-up before the cosine decay.", rich_help_panel=_O)]
LabelSmoothingOpt = Annotated[float, typer.Option(rich_help_panel=_O)]
ClassWeightingOpt = Annotated[
    ClassWeighting, typer.Option(help="'balanced' weights the loss against class imbalance.", rich_help_panel=_O)
]
AugmentOpt = Annotated[
    str, typer.Option(help="none | light | medical (pad-crop, +-10 deg, no flip).", rich_help_panel=_O)
]
GradClipOpt = Annotated[float | None, typer.Option(rich_help_panel=_O)]
AmpOpt = Annotated[
    bool | None, typer.Option("--amp/--no-amp", help="Mixed precision (default: on CUDA).", rich_help_panel=_R)
]
ChannelsLastOpt = Annotated[
    bool | None, typer.Option("--channels-last/--no-channels-last", help="Default: on CUDA.", rich_help_panel=_R)
]
SelectMetricOpt = Annotated[
    str,
    typer.Option(
        help="Validation metric that picks the best epoch (auroc, acc, balanced_acc, f1_macro, loss).",
        rich_help_panel=_R,
    ),
]
NumWorkersOpt = Annotated[int, typer.Option(rich_help_panel=_R)]
MaxStepsOpt = Annotated[int | None, typer.Option(hidden=True)]
ResumeOpt = Annotated[
    bool, typer.Option(help="Continue an interrupted run from its last finished epoch.", rich_help_panel=_R)
]
AmpDtypeOpt = Annotated[
    AmpDtype,
    typer.Option(help="Mixed-precision type: auto (fp16 on CUDA, bf16 on CPU), bf16 or fp16.", rich_help_panel=_R),
]
CompileOpt = Annotated[
    bool, typer.Option(help="torch.compile the student (CUDA; slow first steps).", rich_help_panel=_R)
]
NprocOpt = Annotated[
    int,
    typer.Option(
        help="Train with this many local processes (DistributedDataParallel through torchrun; --batch-size is the "
        "global batch).",
        rich_help_panel=_R,
    ),
]
DeterministicOpt = Annotated[
    bool, typer.Option(help="Deterministic kernels: reruns and resumes give identical weights.", rich_help_panel=_R)
]

__all__ += [
    "SmallInputOpt", "ChannelsOpt", "InputSizeOpt", "EpochsOpt", "BatchSizeOpt", "OptimizerOpt", "LrOpt",
    "MomentumOpt", "WeightDecayOpt", "WarmupEpochsOpt", "LabelSmoothingOpt", "ClassWeightingOpt", "AugmentOpt",
    "GradClipOpt", "AmpOpt", "ChannelsLastOpt", "SelectMetricOpt", "NumWorkersOpt", "MaxStepsOpt", "ResumeOpt",
    "DeterministicOpt", "AmpDtypeOpt", "CompileOpt", "NprocOpt", "IntendedUseOpt", "TargetSensitivityOpt",
]  # fmt: skip

TargetSensitivityOpt = Annotated[
    float | None,
    typer.Option(
        "--target-sensitivity",
        min=0.0,
        max=1.0,
        help="Binary tasks: store the operating threshold reaching this sensitivity on the validation split in "
        "the manifest (predict/serve decide at it; default: none, they use 0.5).",
        rich_help_panel="Output",
        show_default=False,
    ),
]

IntendedUseOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--intended-use",
        help="What the model is meant for, recorded in its card and enforced by predict/serve: "
        "'modality=CR,DX body_part=CHEST' (keys modality, body_part, view, photometric; repeatable). "
        "Default: the DICOM header values of DICOM training data, else none.",
        rich_help_panel="Output",
        show_default=False,
    ),
]
