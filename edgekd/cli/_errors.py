"""The one place where errors become exit codes and one red line (see ``edgekd.errors`` for the table)."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from edgekd.cli._click import click
from edgekd.errors import EdgeKDError

__all__ = ["EdgeKDGroup", "debug_enabled", "print_error", "print_warning"]


def debug_enabled() -> bool:
    return os.environ.get("EDGEKD_DEBUG", "") not in ("", "0", "false", "no")


def print_error(message: str, hint: str | None = None) -> None:
    """One red line on stderr: ``error: MESSAGE (HINT)``."""
    line = f"[bold red]error:[/] {escape(message)}"
    if hint:
        line += f" [dim]({escape(hint)})[/]"
    # A fresh console each time: under test runners stderr is swapped per invocation.
    Console(stderr=True, highlight=False, soft_wrap=True).print(line)


def print_warning(message: str) -> None:
    """One yellow line on stderr: ``warning: MESSAGE``."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold yellow]warning:[/] {escape(message)}")


class EdgeKDGroup(TyperGroup):
    """Runs a sub-command and maps what it raises; ``EDGEKD_DEBUG=1`` re-raises with the traceback."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands by help panel ("1. ...", "2. ..."), in registration order within a panel.

        Typer adds sub-apps (``bench``) after plain commands; sorting by panel keeps `--help` in pipeline order.
        """
        names = super().list_commands(ctx)
        panel = {n: getattr(self.commands[n], "rich_help_panel", None) or "" for n in names}
        return sorted(names, key=lambda n: (panel[n], names.index(n)))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, typer.Exit, typer.Abort):
            raise  # usage errors (exit 2) and explicit exits are Typer's to report
        except KeyboardInterrupt as e:  # Ctrl-C outside a training loop: nothing half-written is left
            if debug_enabled():
                raise
            print_error("interrupted", "outputs appear only when complete, so nothing partial was left")
            raise typer.Exit(130) from e
        except EdgeKDError as e:
            if debug_enabled():
                raise
            print_error(e.message, e.hint)
            raise typer.Exit(e.exit_code) from e
        except OSError as e:  # the disk is full, a folder is read-only, a file vanished: the machine, not a bug
            if debug_enabled():
                raise
            where = f" ({e.filename})" if e.filename else ""
            print_error(f"{e.strerror or e}{where}", "check free disk space, permissions and the paths given")
            raise typer.Exit(4) from e
        except Exception as e:  # a bug: one line by default, the traceback on request
            if debug_enabled():
                raise
            text = str(e).splitlines()[0] if str(e) else ""
            print_error(
                f"internal error ({type(e).__name__}): {text}", "set EDGEKD_DEBUG=1 for the traceback and report it"
            )
            raise typer.Exit(1) from e
