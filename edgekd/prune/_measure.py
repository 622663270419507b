"""Size and speed of a model before and after compression: params, MACs, bytes, ONNX Runtime CPU latency.

Latency is measured on an FP32 ONNX export of the model with :func:`edgekd.bench.benchmark` (ONNX Runtime,
CPU, warm-up then a timed loop, median of the iterations), at one batch size (32 by default).

Example:
    >>> stats = model_stats(model, card, weights="runs/student/model.safetensors", latency_batch=32)
    >>> stats.params, stats.macs, stats.latency_ms
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel
from torch import nn

from edgekd.modeldir import ModelCard
from edgekd.students import count_macs, count_params

__all__ = ["ModelStats", "model_stats", "onnx_latency_ms"]


class ModelStats(BaseModel):
    """What a compression step changed.

    Attributes:
        params: parameters.
        macs: multiply-accumulates per sample at the model's input size.
        size_bytes: size of the weights file (``model.safetensors``) or of the ONNX file.
        latency_ms: median ONNX Runtime CPU latency of one batch (None when not measured).
        latency_batch: the batch size of ``latency_ms``.
        latency_threads: ONNX Runtime intra-op threads used.
    """

    params: int
    macs: int
    size_bytes: int | None = None
    latency_ms: float | None = None
    latency_batch: int | None = None
    latency_threads: int | None = None


def onnx_latency_ms(
    paths: Sequence[str | os.PathLike], *, batch: int = 32, seconds: float = 2.0, threads: int | None = None
) -> list[tuple[float, int]]:
    """Median ONNX Runtime CPU latency (ms) of one batch for each ONNX file, with the threads used.

    The files are timed one after another in one :func:`edgekd.bench.benchmark` call (same settings).
    """
    from edgekd.bench import BenchSettings, benchmark

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


def model_stats(
    model: nn.Module,
    card: ModelCard,
    *,
    weights: str | os.PathLike | None = None,
    latency_batch: int | None = 32,
    latency_s: float = 2.0,
    threads: int | None = None,
    onnx_path: str | os.PathLike | None = None,
) -> ModelStats:
    """Params, MACs, weights size and (when ``latency_batch``) ORT CPU latency of ``model``.

    Args:
        model: the network.
        card: its card (input size and channels).
        weights: its weights file, for ``size_bytes``.
        latency_batch: batch size of the latency measurement; None skips it.
        latency_s: minimum timed seconds.
        threads: ORT intra-op threads (None: the physical cores).
        onnx_path: where to write the FP32 export (default: a temporary file).
    """
    pre = card.preprocess
    stats = ModelStats(
        params=count_params(model),
        macs=count_macs(model, (1, pre.in_chans, *pre.input_size)),
        size_bytes=os.path.getsize(weights) if weights else None,
    )
    if latency_batch:
        with tempfile.TemporaryDirectory(prefix="edgekd-lat-") as tmp:
            path = Path(onnx_path) if onnx_path else Path(tmp) / "model.onnx"
            _export_fp32(model, card, path)
            ((ms, used),) = onnx_latency_ms([path], batch=latency_batch, seconds=latency_s, threads=threads)
        stats = stats.model_copy(update={"latency_ms": ms, "latency_batch": latency_batch, "latency_threads": used})
    return stats


def _export_fp32(model: nn.Module, card: ModelCard, path: Path) -> None:
    from edgekd.export import export_onnx

    export_onnx(model, card, path)
