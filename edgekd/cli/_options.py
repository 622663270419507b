"""Shared option types and helpers for the CLI commands (Typer ``Annotated`` style)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape

from edgekd._config import StageConfig, build_config, config_default, resolve_options
from edgekd._progress import log_width
from edgekd.cli._click import click
from edgekd.distill import AmpDtype, ClassWeighting, DeviceName, DistillConfig, OptimizerName
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
    "cli_config",
    "config_option",
    "default_text",
    "NOT_CONFIG",
    "OverwriteOpt",
    "ReportOverwriteOpt",
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


C = TypeVar("C", bound=StageConfig)

# Options of the config-building commands that are no key of their config: where the output goes, how it is
# shown, the config file itself, and how the run is launched (`nproc` re-runs the command under torchrun).
# For commands whose only outputs are report files (--json, --csv...): an existing one is replaced only when asked.
ReportOverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Replace report files (--json, --csv, --markdown) that already exist (never an input).",
        rich_help_panel="Output",
    ),
]

NOT_CONFIG = frozenset({"out", "overwrite", "config", "json_out", "quiet", "nproc"})


def cli_config(
    ctx: click.Context,
    model: type[C],
    config: Path | None,
    flags: Mapping[str, Any],
    fields: Mapping[str, str] | None = None,
    *,
    section: str | None = None,
) -> C:
    """The command's config: defaults < ``--config`` < the flags the user gave (:func:`edgekd._config.build_config`).

    Args:
        ctx: the command's context (which options were given on the command line).
        model: the stage's config class.
        config: the ``--config`` file or None.
        flags: option name -> value (after the CLI's own parsing, e.g. a comma-separated list split).
        fields: option name -> dotted config path, for options whose name is neither a field nor one of the
            config's ``flat_keys``.
        section: read this section of the file when it has one.

    An option left out (its default is None: "not given") does not override the file.
    """
    fields = fields or {}
    given = given_options(ctx)
    values = {fields.get(k, k): v for k, v in flags.items() if k in given and v is not None}
    return build_config(model, config, values, section=section)


def default_text(model: type[BaseModel], path: str) -> str:
    """``[default: X]`` for an option's help, read from the config (so the help never drifts from it)."""
    try:
        value = config_default(model, path)
    except KeyError:
        return ""
    if value is None or value == [] or value == "":
        return ""
    if isinstance(value, Enum):
        value = value.value
    elif isinstance(value, bool):
        value = "yes" if value else "no"
    elif isinstance(value, (list, tuple)):
        value = " + ".join(str(v) for v in value)
    elif isinstance(value, float):
        value = f"{value:g}"
    return escape(f"[default: {value}]")


def config_option(*decls: str, model: type[BaseModel], path: str, help: str = "", **kwargs: Any) -> Any:
    """A ``typer.Option`` whose default is None ("not given") and whose help shows the config's default."""
    text = " ".join(t for t in (help, default_text(model, path)) if t)
    return typer.Option(*decls, help=text, show_default=False, **kwargs)


def resolve_config(
    ctx: click.Context, model: type[BaseModel], config: Path | None, flags: dict[str, Any], section: str | None = None
) -> BaseModel:
    """Older flat form of :func:`cli_config` (:func:`edgekd._config.resolve_options`)."""
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
_AUGMENT_HELP = "none | light | medical (pad-crop, +-10 deg, no flip) | seg | seg-strong (segmenters: larger shifts; + zoom, gamma)."
AugmentOpt = Annotated[str, typer.Option(help=_AUGMENT_HELP, rich_help_panel=_O)]
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
        help="Validation metric that picks the best epoch (auroc, acc, balanced_acc, f1_macro, loss; dice, iou, hd95 for segmentation).",
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
    "SmallInputOpt",
    "ChannelsOpt",
    "InputSizeOpt",
    "EpochsOpt",
    "BatchSizeOpt",
    "OptimizerOpt",
    "LrOpt",
    "MomentumOpt",
    "WeightDecayOpt",
    "WarmupEpochsOpt",
    "LabelSmoothingOpt",
    "ClassWeightingOpt",
    "AugmentOpt",
    "GradClipOpt",
    "AmpOpt",
    "ChannelsLastOpt",
    "SelectMetricOpt",
    "NumWorkersOpt",
    "MaxStepsOpt",
    "ResumeOpt",
    "DeterministicOpt",
    "AmpDtypeOpt",
    "CompileOpt",
    "NprocOpt",
    "IntendedUseOpt",
    "TargetSensitivityOpt",
]

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


# ---------------------------------------------------------------------------------------------------------------
# Options of `edgekd train` and `edgekd distill`: each is a key of DistillConfig, defaults to None ("not given")
# and shows DistillConfig's default in its help.


def _run(path: str, help: str = "", *decls: str, panel: str = _O, **kwargs: Any) -> Any:
    return config_option(*decls, model=DistillConfig, path=path, help=help, rich_help_panel=panel, **kwargs)


RunDataOpt = Annotated[
    str | None,
    _run(
        "data",
        "Data spec: pneumoniamnist | medmnist:F.npz | imagefolder:DIR | csv:F | "
        "synthetic:classes=K,n=N,size=S,channels=C,seed=X | tv:CIFAR10.",
        "--data",
        "-d",
        panel="Data",
    ),
]
RunDownloadOpt = Annotated[
    bool | None, _run("download", "Allow downloading tv: datasets / pretrained weights (needs internet).", panel="Data")
]
RunSmallInputOpt = Annotated[
    bool | None, _run("small_input", "3x3 stride-1 stem, no max-pool (inputs <= 64 px).", panel=_M)
]
RunChannelsOpt = Annotated[
    ChannelMode | None,
    _run("channels", "Grayscale data: adapt the first conv, or repeat the channel for a 3-channel model.", panel=_M),
]
RunInputSizeOpt = Annotated[
    int | None, _run("input_size", "Resize inputs to this size (default: data size).", panel=_M)
]
RunEpochsOpt = Annotated[int | None, _run("train.epochs")]
RunBatchSizeOpt = Annotated[int | None, _run("train.batch_size")]
RunOptimizerOpt = Annotated[OptimizerName | None, _run("train.optimizer")]
RunLrOpt = Annotated[float | None, _run("train.lr", "Peak learning rate.")]
RunMomentumOpt = Annotated[float | None, _run("train.momentum", "SGD momentum.")]
RunWeightDecayOpt = Annotated[float | None, _run("train.weight_decay")]
RunWarmupEpochsOpt = Annotated[float | None, _run("train.warmup_epochs", "Linear warm-up before the cosine decay.")]
RunLabelSmoothingOpt = Annotated[float | None, _run("train.label_smoothing")]
RunClassWeightingOpt = Annotated[
    ClassWeighting | None, _run("train.class_weighting", "'balanced' weights the loss against class imbalance.")
]
RunAugmentOpt = Annotated[str | None, _run("train.augment", _AUGMENT_HELP)]
RunGradClipOpt = Annotated[float | None, _run("train.grad_clip")]
RunSeedOpt = Annotated[int | None, _run("train.seed", "Random seed (data order, init, splits).", "--seed", panel=_R)]
RunDeviceOpt = Annotated[DeviceName | None, _run("train.device", "auto picks CUDA when present.", "--device", panel=_R)]
RunAmpOpt = Annotated[bool | None, _run("train.amp", "Mixed precision (default: on CUDA).", "--amp/--no-amp", panel=_R)]
RunChannelsLastOpt = Annotated[
    bool | None, _run("train.channels_last", "Default: on CUDA.", "--channels-last/--no-channels-last", panel=_R)
]
RunSelectMetricOpt = Annotated[
    str | None,
    _run(
        "train.select_metric",
        "Validation metric that picks the best epoch (auroc, acc, balanced_acc, f1_macro, loss; dice, iou, hd95 for segmentation).",
        panel=_R,
    ),
]
RunNumWorkersOpt = Annotated[int | None, _run("train.num_workers", panel=_R)]
RunMaxStepsOpt = Annotated[int | None, _run("train.max_steps_per_epoch", hidden=True)]
RunResumeOpt = Annotated[
    bool | None, _run("resume", "Continue an interrupted run from its last finished epoch.", panel=_R)
]
RunAmpDtypeOpt = Annotated[
    AmpDtype | None,
    _run("train.amp_dtype", "Mixed-precision type: auto (fp16 on CUDA, bf16 on CPU), bf16 or fp16.", panel=_R),
]
RunCompileOpt = Annotated[
    bool | None, _run("train.compile", "torch.compile the student (CUDA; slow first steps).", panel=_R)
]
RunDeterministicOpt = Annotated[
    bool | None,
    _run("train.deterministic", "Deterministic kernels: reruns and resumes give identical weights.", panel=_R),
]

__all__ += [
    "RunDataOpt",
    "RunDownloadOpt",
    "RunSmallInputOpt",
    "RunChannelsOpt",
    "RunInputSizeOpt",
    "RunEpochsOpt",
    "RunBatchSizeOpt",
    "RunOptimizerOpt",
    "RunLrOpt",
    "RunMomentumOpt",
    "RunWeightDecayOpt",
    "RunWarmupEpochsOpt",
    "RunLabelSmoothingOpt",
    "RunClassWeightingOpt",
    "RunAugmentOpt",
    "RunGradClipOpt",
    "RunSeedOpt",
    "RunDeviceOpt",
    "RunAmpOpt",
    "RunChannelsLastOpt",
    "RunSelectMetricOpt",
    "RunNumWorkersOpt",
    "RunMaxStepsOpt",
    "RunResumeOpt",
    "RunAmpDtypeOpt",
    "RunCompileOpt",
    "RunDeterministicOpt",
]
