"""Evaluation of every artifact of a run on validation and test, with the same code for PyTorch and ONNX.

Each artifact is wrapped as a :class:`~edgekd.teachers.Teacher` (a model directory runs in PyTorch, an ONNX
file of a bundle in ONNX Runtime with the source model's preprocessing), so teacher, students, pruned, INT8
and FP16 models are measured identically: logits of the whole val and test splits, the metrics of
`edgekd eval` (ECE included), the reliability diagram and the operating point (the threshold reaching the
target sensitivity on validation, applied to test). The logits are kept in ``NAME.npz`` beside ``NAME.json``
for the report's ROC curves and reliability diagrams.

Example:
    >>> res = evaluate_artifact(Teacher.from_onnx("runs/x/int8/model.int8.onnx", pre), bundle, 0.95)
    >>> res["test"]["auroc"], res["operating_point"]["test"]["specificity"]
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd._io import atomic_write_bytes, atomic_write_text
from edgekd.data import DataBundle, make_loader
from edgekd.metrics import compute_metrics, operating_point, probabilities, reliability_bins
from edgekd.specs import Task
from edgekd.teachers import Teacher

__all__ = ["split_logits", "evaluate_artifact", "write_evaluation"]


@torch.no_grad()
def split_logits(
    model: Teacher, data: DataBundle, split: str, *, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, K]`` and targets of a whole split, in order, on the CPU."""
    outs, targets = [], []
    for images, y in make_loader(data.split(split), batch_size, shuffle=False):
        outs.append(model.logits(images).float().cpu().numpy())
        targets.append(y.numpy())
    return np.concatenate(outs), np.concatenate(targets)


def evaluate_artifact(model: Teacher, data: DataBundle, target_sensitivity: float) -> dict[str, Any]:
    """Metrics on val and test, reliability bins, operating point; logits under ``"_arrays"`` (not JSON)."""
    arrays: dict[str, np.ndarray] = {}
    res: dict[str, Any] = {}
    for split in ("val", "test"):
        logits, y = split_logits(model, data, split)
        arrays[f"{split}_logits"], arrays[f"{split}_targets"] = logits, y
        res[split] = compute_metrics(logits, y, data.task)
        if data.task not in (Task.MULTILABEL, Task.SEGMENTATION):  # no per-image calibration bins for masks
            res.setdefault("reliability", {})[split] = reliability_bins(probabilities(logits, data.task), y)
    if data.task is Task.BINARY and data.num_classes == 2:
        res["operating_point"] = operating_point(
            arrays["val_logits"],
            arrays["val_targets"],
            arrays["test_logits"],
            arrays["test_targets"],
            target_sensitivity,
        )
    res["_arrays"] = arrays
    return res


def write_evaluation(result: dict[str, Any], json_path: Path, extra: dict[str, Any]) -> None:
    """``NAME.json`` (metrics) and ``NAME.npz`` (logits and targets) beside it, each written atomically."""
    arrays = result.pop("_arrays")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(json_path.with_suffix(".npz"), buf.getvalue())
    atomic_write_text(json_path, json.dumps({**extra, **result}, indent=2, default=float) + "\n")
