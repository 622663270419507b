"""The one place where errors become exit codes and one red line (see ``edgekd.errors`` for the table)."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edgekd.cli._click import click
from edgekd.errors import EdgeKDError

__all__ = ["EdgeKDGroup", "debug_enabled", "print_error"]


def debug_enabled() -> bool:
    return os.environ.get("EDGEKD_DEBUG", "") not in ("", "0", "false", "no")


def print_error(message: str, hint: str | None = None) -> None:
    """One red line on stderr: ``error: MESSAGE (HINT)``."""
    line = f"[bold red]error:[/] {escape(message)}"
    if hint:
        line += f" [dim]({escape(hint)})[/]"
    # A fresh console each time: under test runners stderr is swapped per invocation.
    Console(stderr=True, highlight=False, soft_wrap=True).print(line)


class EdgeKDGroup(TyperGroup):
    """Runs a sub-command and maps what it raises; ``EDGEKD_DEBUG=1`` re-raises with the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise  # usage errors (exit 2), explicit exits and Ctrl-C (130) are Typer's to report
        except EdgeKDError as e:
            if debug_enabled():
                raise
            print_error(e.message, e.hint)
            raise typer.Exit(e.exit_code) from e
        except Exception as e:  # a bug: one line by default, the traceback on request
            if debug_enabled():
                raise
            text = str(e).splitlines()[0] if str(e) else ""
            print_error(
                f"internal error ({type(e).__name__}): {text}", "set EDGEKD_DEBUG=1 for the traceback and report it"
            )
            raise typer.Exit(1) from e
