"""Rich progress bars for long work, written to stderr so ``--json`` on stdout stays clean."""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["TrainProgress", "log_width", "stderr_console", "task_progress"]

LOG_WIDTH = 160


def log_width(stream) -> int | None:
    """Rich's width for ``stream``: the terminal's own, or ``LOG_WIDTH`` when it is redirected to a log or CI.

    Rich falls back to 80 columns off a terminal, which squeezes the wide benchmark and metric tables into
    unreadable ellipses in CI logs; ``COLUMNS`` still wins when set.
    """
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return None if tty or "COLUMNS" in os.environ else LOG_WIDTH


stderr_console = Console(stderr=True, width=log_width(sys.stderr))


class TrainProgress:
    """One bar per epoch showing the running loss terms, images/s and the ETA.

    The loss values live on the device; reading them forces a sync, so the text is refreshed at most
    every ``refresh_s`` seconds rather than every step.
    """

    def __init__(self, *, enabled: bool, epoch: int, epochs: int, steps: int, refresh_s: float = 0.5) -> None:
        self.enabled = enabled and (stderr_console.is_terminal or "pytest" not in sys.modules)
        self.epoch, self.epochs, self.steps, self.refresh_s = epoch, epochs, steps, refresh_s
        self._last = 0.0
        self._t0 = time.perf_counter()

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self.progress = Progress(
                TextColumn(f"epoch {self.epoch + 1}/{self.epochs}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=stderr_console,
                transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.steps, info="")
        return self

    def advance(self, n: int, sums: dict, seen: int, lr: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last >= self.refresh_s:
            self._last = now
            terms = " ".join(f"{k}={float(v) / seen:.4f}" for k, v in sums.items())
            info = f"{terms} lr={lr:.2e} {seen / (now - self._t0):.0f} img/s"
            self.progress.update(self.task, advance=1, info=info)
        else:
            self.progress.update(self.task, advance=1)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)


def task_progress(description: str, total: int | None, enabled: bool = True):
    """A simple bar for non-training work (calibration, caching, evaluation)."""
    p = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled,
    )
    return p, total
