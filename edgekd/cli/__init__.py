"""The `edgekd` command line: thin Typer commands over the library."""

from edgekd.cli import _bench, _distill, _export, _models, _prune, _quantize, _train  # noqa: F401  (commands register on import)
from edgekd.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
