"""Size of a model before and after compression (params, MACs, bytes), and the measuring contracts.

Pruning does not time models itself: it reports latency through a :data:`LatencyFn` it is given (the CLI
passes :func:`edgekd.bench.model_latency_ms`, which exports to ONNX and times ONNX Runtime on the CPU), and
learns which channel counts the target runs fast from a :data:`WidthProbeFn` (the CLI passes
:func:`edgekd.bench.width_multiple`, a short measured probe cached per device), so the pruning layer never
depends on the export or benchmark layers.

Example:
    >>> stats = model_stats(model, card, weights="runs/student/model.safetensors")
    >>> stats.params, stats.macs
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel
from torch import nn

from edgekd.specs import ModelCard
from edgekd.students import count_macs, count_params

__all__ = ["ModelStats", "model_stats", "LatencyFn", "WidthProbeFn"]


class LatencyFn(Protocol):
    """Times ``models`` (sharing ``card``'s input) at ``batch``: ``[(median ms of one batch, threads used)]``."""

    def __call__(
        self, models: Sequence[nn.Module], card: ModelCard, *, batch: int, seconds: float
    ) -> list[tuple[float, int]]: ...


class WidthProbeFn(Protocol):
    """The channel multiple the target runs fast for models with ``card``'s input, and what it was found from.

    Returns:
        ``(multiple, record)``: ``record`` says where the multiple came from (``source``: ``measured`` or
        ``cached``, the device ``fingerprint``, the measured table); it goes into ``prune_report.json``.
    """

    def __call__(self, card: ModelCard) -> tuple[int, dict[str, Any]]: ...


class ModelStats(BaseModel):
    """What a compression step changed.

    Attributes:
        params: parameters.
        macs: multiply-accumulates per sample at the model's input size.
        size_bytes: size of the weights file (``model.safetensors``) or of the ONNX file.
        latency_ms: median latency of one batch (None when not measured).
        latency_batch: the batch size of ``latency_ms``.
        latency_threads: intra-op threads used.
    """

    params: int
    macs: int
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_batch: int | None = None
    latency_threads: int | None = None


def model_stats(model: nn.Module, card: ModelCard, *, weights: str | os.PathLike | None = None) -> ModelStats:
    """Params, MACs and weights size of ``model`` (``card`` gives the input size and channels)."""
    pre = card.preprocess
    return ModelStats(
        params=count_params(model),
        macs=count_macs(model, (1, pre.in_chans, *pre.input_size)),
        size_bytes=os.path.getsize(weights) if weights else None,
    )
