"""The click implementation Typer runs on: vendored as ``typer._click`` since Typer 0.2x, ``click`` before."""

try:  # Typer >= 0.20 vendors click
    from typer import _click as click
except ImportError:  # pragma: no cover - older Typer depends on click
    import click  # type: ignore[no-redef]

ParameterSource = click.core.ParameterSource
ClickException = click.exceptions.ClickException

__all__ = ["click", "ParameterSource", "ClickException"]
