"""The console entry point: Ctrl-C at any moment, start-up included, is one line and exit code 130.

Importing the CLI loads torch and friends (seconds); a Ctrl-C in that window would otherwise print a
traceback from deep inside an import. Until the CLI has loaded, SIGINT ends the process at once (nothing has
been written yet); afterwards it is a ``KeyboardInterrupt`` that the CLI turns into one line (training saves
its per-epoch checkpoint and says how to resume).
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_at_startup(signum, frame) -> None:  # pragma: no cover - exercised by a subprocess test
    sys.stderr.write("error: interrupted (nothing was written)\n")
    sys.stderr.flush()
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_at_startup)

from edgekd.cli import main as _cli_main  # noqa: E402  (after the handler: a Ctrl-C during this import is handled)

signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> None:
    """Run the ``edgekd`` command line."""
    _cli_main()
