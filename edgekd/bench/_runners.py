"""The runner contract (STYLE.md point 10) and the one registry of runners.

A backend runner is ``load / run / close``:

* :meth:`Runner.load` builds the session/engine/module for one configuration (artifact file, device,
  batch, options) and pre-allocates its inputs (and, where the backend allows, its outputs), so the
  timed call does no allocation or host-device copy of its own;
* :meth:`Runner.run` executes *one* inference on those inputs and may return before the device is done;
* :meth:`Runner.sync` waits for the device (a no-op on CPU);
* :meth:`Runner.close` frees everything and restores global state it changed (torch threads).

Runners register in :data:`RUNNERS` by backend name; each says which artifact kinds it runs, which
files of an artifact it would run, and why it cannot run on this machine (missing package, no GPU).

Example:
    >>> runner_cls = RUNNERS.get("ort")
    >>> with runner_cls() as r:
    ...     r.load(target, "cpu", 8, BenchSettings())
    ...     r.run(); r.sync()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgekd.bench._artifacts import Artifact, ArtifactKind
from edgekd.bench._schema import BenchSettings
from edgekd.registry import Registry

__all__ = ["Target", "Runner", "RUNNERS", "SkipConfig", "cuda_unavailable_reason", "physical_cores"]


@dataclass(frozen=True)
class Target:
    """What one runner loads: an artifact, the file of it to run (None: the model directory), its precision.

    Attributes:
        artifact: the resolved artifact.
        file: ONNX file or engine to run; None for the torch backend on a model directory.
        precision: ``fp32`` / ``fp16`` / ``bf16`` / ``int8`` (or ``unknown`` for an engine without manifest).
        name: the result name (the artifact name; ``BUNDLE/FILE`` for a file of a bundle).
    """

    artifact: Artifact
    file: Path | None
    precision: str
    name: str


class Runner(ABC):
    """Base class of backend runners; subclasses register with ``@RUNNERS.register(name)``."""

    backend: ClassVar[str]
    kinds: ClassVar[frozenset[ArtifactKind]]

    def __init__(self) -> None:
        self.options_used: dict[str, Any] = {}

    @classmethod
    @abstractmethod
    def unavailable(cls, device: str, settings: BenchSettings) -> str | None:
        """Why this backend cannot run on ``device`` on this machine, or None when it can."""

    @classmethod
    @abstractmethod
    def targets(cls, artifact: Artifact, precision: str | None) -> tuple[list[Target], str | None]:
        """The files of ``artifact`` this backend runs at ``precision`` (None: every one it can).

        Returns:
            ``(targets, reason)``: the reason says why the list is empty.
        """

    @abstractmethod
    def load(self, target: Target, device: str, batch: int, options: BenchSettings) -> None:
        """Prepare one configuration and pre-allocate its inputs."""

    @abstractmethod
    def run(self) -> None:
        """One inference on the pre-allocated inputs (may be asynchronous on a GPU)."""

    def sync(self) -> None:
        """Wait until the device has finished the work :meth:`run` queued (CPU: nothing to wait for)."""
        return None

    def cuda_stream(self) -> Any | None:
        """The ``torch.cuda.Stream`` :meth:`run` queues on, for CUDA-event timing; None times on the host."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Free the session/engine/module and restore any global state changed by :meth:`load`."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RUNNERS: Registry[type[Runner]] = Registry("backend")


class SkipConfig(Exception):
    """Raised by ``load`` when one configuration cannot run (e.g. a fixed batch); it becomes a skipped row."""


def physical_cores() -> int:
    """Physical CPU cores (logical ones when psutil cannot tell), at least 1."""
    import os

    import psutil

    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def cuda_unavailable_reason() -> str | None:
    """None when torch sees a CUDA device, else why not (a CPU build of torch, or no device)."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if torch.version.cuda is None:
        return "this PyTorch build has no CUDA support"
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None
