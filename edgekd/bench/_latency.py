"""Latency of in-memory models and ONNX files, for stages that report speed (pruning) and benchmark scripts.

Each model is exported to an FP32 ONNX file and timed with :func:`~edgekd.bench.benchmark` (ONNX Runtime,
CPU, warm-up then a timed loop, median of the iterations); several models are timed one right after the
other in one call, so they see the same machine state. :func:`model_latency_ms` satisfies
:class:`edgekd.prune.LatencyFn`.

Example:
    >>> (before_ms, threads), (after_ms, _) = model_latency_ms([model, pruned], card, batch=32, seconds=2)
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from edgekd.bench._api import benchmark
from edgekd.bench._schema import BenchSettings
from edgekd.export import export_onnx
from edgekd.specs import ModelCard

__all__ = ["onnx_latency_ms", "model_latency_ms"]


def onnx_latency_ms(
    paths: Sequence[str | os.PathLike], *, batch: int = 32, seconds: float = 2.0, threads: int | None = None
) -> list[tuple[float, int]]:
    """Median ONNX Runtime CPU latency (ms) of one batch for each ONNX file, with the threads used."""
    settings = BenchSettings(
        warmup_s=min(0.5, seconds / 4),
        warmup_iters=3,
        min_s=seconds,
        min_iters=10,
        threads=threads,
        roofline=False,
        keep_times=False,
        include_hostname=False,
    )
    report = benchmark([str(p) for p in paths], backends=["ort"], devices=["cpu"], batches=(batch,), settings=settings)
    return [(r.stats.p50_ms, int(r.options.get("threads") or report.settings.threads or 0)) for r in report.results]


def model_latency_ms(
    models: Sequence[nn.Module], card: ModelCard, *, batch: int = 32, seconds: float = 2.0, threads: int | None = None
) -> list[tuple[float, int]]:
    """:func:`onnx_latency_ms` of FP32 ONNX exports of ``models`` (all with ``card``'s input)."""
    with tempfile.TemporaryDirectory(prefix="edgekd-lat-") as tmp:
        paths = [Path(tmp) / f"model{i}.onnx" for i in range(len(models))]
        for model, path in zip(models, paths):
            export_onnx(model, card, path)
        return onnx_latency_ms(paths, batch=batch, seconds=seconds, threads=threads)
