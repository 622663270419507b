"""The edgekd error hierarchy.

Every error a user can cause is an :class:`EdgeKDError` subclass carrying a one-line message, a hint
that says how to fix it and a documented exit code. The CLI maps them to one red line in a single
place (``edgekd.cli._errors``); library users catch them like any exception.

Exit codes (also in the README):

====  ==========================================================
0     success
1     unexpected internal error (a bug: please report it)
2     command-line usage error (unknown flag, missing argument)
3     invalid input: bad model/data name, bad config or option value
4     a file or directory is missing, unreadable or malformed
5     an optional dependency, GPU or network resource is unavailable
6     a verification failed: ONNX parity, bundle hashes, lint findings
7     a benchmark regression or latency budget was exceeded, or new data drifted (``edgekd drift --fail-above``)
8     training diverged or did not learn (non-finite or exploding loss, validation at chance): no model written
130   interrupted (Ctrl-C)
====  ==========================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "EdgeKDError",
    "InvalidInputError",
    "UnknownNameError",
    "TrainingDivergedError",
    "ArtifactError",
    "DependencyError",
    "VerificationError",
    "RegressionError",
    "Interrupted",
    "suggest",
]


class EdgeKDError(Exception):
    """Base class: a message, an optional hint and an exit code."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class InvalidInputError(EdgeKDError, ValueError):
    """A name, option, config value or data content that cannot be used."""

    exit_code = 3


class UnknownNameError(InvalidInputError, KeyError):
    """A registry lookup for a name that does not exist; the hint lists the closest names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        close = suggest(name, known)
        hint = f"did you mean {', '.join(close)}?" if close else f"run `edgekd zoo` or see the list of {kind}s"
        super().__init__(f"unknown {kind} {name!r}", hint)

    __str__ = EdgeKDError.__str__


class TrainingDivergedError(InvalidInputError):
    """Training diverged (a non-finite or exploding loss) or learned nothing (validation at chance, loss flat).

    The settings (learning rate first, then loss weights) or the data do not train. Its own exit code (8), so a
    script can tell "these settings do not train" from a malformed input (3); still an :class:`InvalidInputError`
    for callers that catch those. ``epochs_done``: the epochs whose checkpoint is kept (None when not known).
    """

    exit_code = 8
    epochs_done: int | None = None


class ArtifactError(EdgeKDError):
    """A file or model directory that is missing, unreadable or malformed."""

    exit_code = 4


class DependencyError(EdgeKDError):
    """An optional package, a GPU or the network is needed and not available."""

    exit_code = 5


class VerificationError(EdgeKDError):
    """A check on an artifact failed (parity, hashes, lint)."""

    exit_code = 6


class RegressionError(EdgeKDError):
    """A benchmark regressed past the allowed threshold or exceeded its budget, or new data drifted past one."""

    exit_code = 7


class Interrupted(EdgeKDError):
    """The user interrupted the run (Ctrl-C); the hint says what was kept and how to resume."""

    exit_code = 130


def suggest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` names from ``known`` closest to ``name`` (case-insensitive)."""
    known = list(known)
    lower = {k.lower(): k for k in known}
    hits = difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.5)
    # Also match on the part after a source prefix ("resnet18" -> "tv:resnet18").
    bare = {k.split(":", 1)[-1].lower(): k for k in known}
    hits += [b for b in difflib.get_close_matches(name.split(":", 1)[-1].lower(), list(bare), n=n, cutoff=0.6)]
    out: list[str] = []
    for h in hits:
        full = lower.get(h) or bare.get(h)
        if full and full not in out:
            out.append(full)
    return out[:n]
