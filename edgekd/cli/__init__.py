"""The `edgekd` command line: thin Typer commands over the library."""

# Commands register on import, and `edgekd --help` lists them in this order: the pipeline's.
from edgekd.cli import _models, _train, _distill, _prune, _quantize, _export, _bench, _serve  # noqa: F401, I001
from edgekd.cli import _dicom, _run, _search, _report, _hospital  # noqa: F401, I001
from edgekd.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
