"""`edgekd inspect`, `edgekd zoo` and `edgekd import`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekd.cli._app import PANEL_MODELS, app
from edgekd.cli._options import DataOpt, IntendedUseOpt, JsonOpt, OutOpt, console, emit_json
from edgekd.cli._render import fmt
from edgekd.describe import describe_model
from edgekd.importer import import_model
from edgekd.specs import IntendedUse
from edgekd.students import list_models, zoo_rows


@app.command(rich_help_panel=PANEL_MODELS)
def inspect(
    model: Annotated[str, typer.Argument(help="Model directory or registry name (tv:resnet18, small:resnet8x4).")],
    num_classes: Annotated[int, typer.Option(help="For a registry name.")] = 2,
    input_size: Annotated[int, typer.Option(help="For a registry name.")] = 224,
    in_chans: Annotated[int, typer.Option(help="For a registry name.")] = 3,
    small_input: Annotated[bool, typer.Option(help="For a registry name.")] = False,
    json_out: JsonOpt = None,
) -> None:
    """Params, MACs at the model's input size, size on disk, and the module paths for feature taps.

    Example: edgekd inspect runs/teacher        edgekd inspect small:resnet8x4 --input-size 28 --in-chans 1
    """

    info = describe_model(
        model, num_classes=num_classes, input_size=input_size, in_chans=in_chans, small_input=small_input
    )
    if json_out != "-":
        t = Table(title=f"{model}", show_header=False)
        for key in ("spec", "input_shape", "params", "macs", "size_bytes", "task", "labels", "pruned"):
            if key in info:
                t.add_row(key, fmt(info[key]) if not isinstance(info[key], dict) else info[key]["name"])
        console.print(t)
        console.print("tap points (for --loss fitnet:...,s=PATH): " + ", ".join(info["tap_points"]))
    emit_json(info, json_out)


@app.command(rich_help_panel=PANEL_MODELS)
def zoo(
    source: Annotated[
        str | None, typer.Option(help="small | tv | timm | all (default: the compact students and mobile nets)")
    ] = None,
    filter: Annotated[str | None, typer.Option("--filter", "-f", help="Only names containing this.")] = None,
    input_size: Annotated[int, typer.Option(help="Input size for MACs.")] = 28,
    in_chans: Annotated[int, typer.Option()] = 1,
    num_classes: Annotated[int, typer.Option()] = 2,
    json_out: JsonOpt = None,
) -> None:
    """List registered models with params and MACs at an input size.

    Example: edgekd zoo --source tv --filter mobilenet --input-size 64 --in-chans 3
    """

    names = None if source is None else list_models(None if source == "all" else source)
    if filter:
        names = [n for n in (names or list_models()) if filter in n]
    rows = zoo_rows(names, input_size=input_size, in_chans=in_chans, num_classes=num_classes)
    if json_out != "-":
        t = Table(title=f"edgekd zoo ({len(rows)} models, {in_chans}x{input_size}x{input_size})")
        for col in ("name", "params", "MACs", "student"):
            t.add_column(col, justify="left" if col == "name" else "right")
        for r in rows:
            t.add_row(r["name"], fmt(r.get("params")), fmt(r.get("macs")), "yes" if r.get("student") else "")
        console.print(t)
    emit_json(rows, json_out)


@app.command("import", rich_help_panel=PANEL_MODELS)
def import_cmd(
    checkpoint: Annotated[
        Path, typer.Argument(help=".pt/.pth/.bin state dict or .safetensors file, or a MONAI Bundle folder.")
    ],
    out: OutOpt,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Architecture the checkpoint was trained with (monai: for a bundle)."),
    ] = None,
    data: DataOpt = "pneumoniamnist",
    small_input: Annotated[bool, typer.Option()] = False,
    in_chans: Annotated[int | None, typer.Option(help="Default: the data's channels.")] = None,
    input_size: Annotated[int | None, typer.Option(help="Default: the data's size.")] = None,
    trust_pickle: Annotated[
        bool, typer.Option(help="Allow unpickling a full model object. Unpickling runs code: only for files you trust.")
    ] = False,
    intended_use: IntendedUseOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Turn a user checkpoint into a model directory (the data gives labels and preprocessing).

    Example: edgekd import resnet18_xray.pt --model small:resnet18 --data pneumoniamnist --out runs/imported
             edgekd import bundles/xray_classifier --data pneumoniamnist --out runs/xray   (a MONAI Bundle)
    """

    card = import_model(
        checkpoint,
        model=model,
        data=data,
        out=out,
        small_input=small_input,
        in_chans=in_chans,
        input_size=input_size,
        trust_pickle=trust_pickle,
        intended_use=IntendedUse.parse(intended_use) if intended_use else None,
    )
    console.print(f"imported {checkpoint} as {card.spec.name} ({card.params:,} params) -> [bold]{out}[/]")
    emit_json({"out": str(out), "spec": card.spec, "params": card.params}, json_out)
