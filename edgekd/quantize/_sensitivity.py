"""Sensitivity analysis for mixed-precision PTQ: keep the layers that suffer most from INT8 in FP32.

Two measurements (the layer-wise recipe of e.g. Wu et al., "Integer Quantization for Deep Learning
Inference", 2020, section 6, and of ORT's ``qdq_loss_debug``):

1. **per-layer error**: for each weighted node ``n`` (Conv, Gemm, MatMul) the model is quantized with
   *only* ``n`` in INT8 and the relative logit error on validation samples is measured,
   ``e_n = ||z_n - z||^2 / ||z||^2`` with ``z`` the FP32 logits;
2. **accuracy budget**: starting from the fully quantized model, the ``k`` nodes with the largest ``e_n``
   are kept in FP32 (``nodes_to_exclude``) for ``k = 1, 2, ...`` until the chosen validation metric is
   within ``max_drop`` points of FP32 (or ``max_nodes`` are excluded).

Calibration runs once (the ranges are cached), so each trial is a graph rewrite plus one validation pass.

Example:
    >>> report = sensitivity_search(pre, "model.int8.onnx", scheme, reader, x_val=x, y_val=y, task=task,
    ...                             metric="acc", max_drop=0.5, work=tmp)
    >>> report.fp32_nodes
    ['/layer1/layer1.0/conv1/Conv']
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from edgekd.export import ort_session
from edgekd.metrics import compute_metrics, selection_value
from edgekd.quantize._data import onnx_logits
from edgekd.quantize._ptq import Calibration, quantizable_nodes, quantize_onnx
from edgekd.quantize._targets import QuantScheme
from edgekd.specs import Task

__all__ = ["NodeError", "SensitivityReport", "node_errors", "sensitivity_search", "metric_value"]

ERROR_SAMPLES = 128  # validation samples for the per-node errors


class NodeError(BaseModel):
    """Relative logit error when only ``node`` is quantized."""

    node: str
    error: float


class SensitivityReport(BaseModel):
    """The outcome of :func:`sensitivity_search`; drops are in points (x100) of ``metric``."""

    metric: str
    max_drop: float
    fp32: float
    int8_all: float
    final: float
    drop: float
    budget_met: bool
    fp32_nodes: list[str] = Field(default_factory=list)
    nodes: list[NodeError] = Field(default_factory=list)
    trials: list[dict[str, Any]] = Field(default_factory=list)


def metric_value(logits: np.ndarray, targets: np.ndarray, task: Task, metric: str) -> float:
    """One metric of :func:`~edgekd.metrics.compute_metrics` (accuracy when it is undefined, e.g. AUROC)."""
    return selection_value(compute_metrics(logits, targets, task), metric)


def _session(path: Path, kernels: str = "native"):
    return ort_session(path, kernels=kernels)


def node_errors(
    src: Path,
    scheme: QuantScheme,
    reader,
    x: np.ndarray,
    *,
    calibration: Calibration | str,
    cache: Path,
    work: Path,
    nodes: list[str] | None = None,
    kernels: str = "native",
) -> list[NodeError]:
    """Per-node relative logit errors, worst first (see the module docstring)."""
    reference = onnx_logits(_session(src), x)
    power = float(np.mean(reference.astype(np.float64) ** 2)) or 1.0
    out = []
    for i, node in enumerate(nodes if nodes is not None else quantizable_nodes(src)):
        path = quantize_onnx(
            src, work / f"one_{i}.onnx", scheme, reader, calibration=calibration, include=[node], cache=cache
        )
        z = onnx_logits(_session(path, kernels), x)
        out.append(NodeError(node=node, error=float(np.mean((z.astype(np.float64) - reference) ** 2)) / power))
        path.unlink(missing_ok=True)
    return sorted(out, key=lambda e: e.error, reverse=True)


def sensitivity_search(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    scheme: QuantScheme,
    reader,
    *,
    x_val: np.ndarray,
    y_val: np.ndarray,
    task: Task,
    work: str | os.PathLike,
    calibration: Calibration | str = Calibration.MINMAX,
    metric: str = "acc",
    max_drop: float = 0.5,
    max_nodes: int | None = None,
    kernels: str = "native",
) -> SensitivityReport:
    """Quantize ``src`` to ``dst``, keeping the most sensitive nodes in FP32 until the budget is met.

    Args:
        src: the pre-processed FP32 model.
        dst: the mixed-precision model to write.
        scheme: the target's scheme.
        reader: calibration data reader.
        x_val, y_val: validation inputs (preprocessed) and targets for the budget.
        task: the data's task.
        work: a scratch directory.
        calibration: calibration method.
        metric: validation metric of the budget (``acc``, ``auroc``, ``balanced_acc``, ``f1_macro``).
        max_drop: allowed drop in points (0.5 = half a percentage point).
        max_nodes: most nodes kept in FP32 (default: all weighted nodes).
        kernels: ONNX Runtime kernels that evaluate the budget (``reference`` for another device's target).
    """
    src, work = Path(src), Path(work)
    cache = work / "calibration.json"
    fp32 = metric_value(onnx_logits(_session(src), x_val), y_val, task, metric)
    full = quantize_onnx(src, work / "trial_0.onnx", scheme, reader, calibration=calibration, cache=cache)
    int8_all = metric_value(onnx_logits(_session(full, kernels), x_val), y_val, task, metric)
    trials = [{"fp32_nodes": 0, metric: int8_all, "drop": 100 * (fp32 - int8_all)}]
    best, ranked = full, []
    if trials[0]["drop"] > max_drop:
        ranked = node_errors(
            src, scheme, reader, x_val[:ERROR_SAMPLES], calibration=calibration, cache=cache, work=work, kernels=kernels
        )
        limit = len(ranked) if max_nodes is None else min(max_nodes, len(ranked))
        for k in range(1, limit + 1):
            exclude = [e.node for e in ranked[:k]]
            best = quantize_onnx(
                src, work / f"trial_{k}.onnx", scheme, reader, calibration=calibration, exclude=exclude, cache=cache
            )
            value = metric_value(onnx_logits(_session(best, kernels), x_val), y_val, task, metric)
            trials.append({"fp32_nodes": k, metric: value, "drop": 100 * (fp32 - value)})
            if trials[-1]["drop"] <= max_drop:
                break
    shutil.copyfile(best, dst)
    k = trials[-1]["fp32_nodes"]
    return SensitivityReport(
        metric=metric,
        max_drop=max_drop,
        fp32=fp32,
        int8_all=int8_all,
        final=trials[-1][metric],
        drop=trials[-1]["drop"],
        budget_met=trials[-1]["drop"] <= max_drop,
        fp32_nodes=[e.node for e in ranked[:k]],
        nodes=ranked,
        trials=trials,
    )
