"""The Typer application object that every command module attaches to."""

from __future__ import annotations

from typing import Annotated

import typer

from edgekd import __version__
from edgekd.cli._errors import EdgeKDGroup

__all__ = [
    "app",
    "PANEL_MODELS",
    "PANEL_TRAIN",
    "PANEL_COMPRESS",
    "PANEL_EXPORT",
    "PANEL_BENCH",
    "PANEL_DEPLOY",
    "PANEL_PIPELINE",
    "PANEL_DATA_OPS",
]

# `edgekd --help` groups the commands by stage, in pipeline order (panels appear in the order commands register:
# see the import order in edgekd/cli/__init__.py).
PANEL_MODELS = "1. Data and models"
PANEL_TRAIN = "2. Train and distil"
PANEL_COMPRESS = "3. Compress"
PANEL_EXPORT = "4. Export"
PANEL_BENCH = "5. Benchmark"
PANEL_DEPLOY = "6. Predict and serve"
PANEL_PIPELINE = "7. Pipeline and review"
PANEL_DATA_OPS = "8. Hospital data"

app = typer.Typer(
    name="edgekd",
    cls=EdgeKDGroup,
    help="Distil, prune, quantize, export and benchmark models for edge devices.\n\n"
    "Example: edgekd train --model small:resnet18 --data pneumoniamnist --out runs/teacher",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgekd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """edgekd: knowledge-distillation model compression for edge deployment.

    Exit codes: 0 ok, 1 internal error, 2 usage, 3 invalid input, 4 bad/missing file, 5 missing
    dependency/GPU/network, 6 verification failed, 7 benchmark regression, 130 interrupted.
    Set EDGEKD_DEBUG=1 to see tracebacks.
    """
