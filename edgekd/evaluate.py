"""Evaluation of a model directory on a data split (`edgekd eval`).

Segmentation models report Dice, IoU and HD95 per class and their foreground means, pixel accuracy and the
per-image Dice (:func:`edgekd.metrics.segmentation_metrics`), on the masks at the data's resolution.

Besides the metrics of :func:`edgekd.metrics.compute_metrics` (ECE included), the result holds the
reliability diagram (``calibration``) and, for binary tasks, the ``operating_point``: the threshold that
reaches ``target_sensitivity`` on the validation split and the sensitivity/specificity it gives on ``split``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.data import load_data, make_loader
from edgekd.distill import predict, resolve_device
from edgekd.errors import InvalidInputError
from edgekd.metrics import compute_metrics, operating_point, probabilities, reliability_bins
from edgekd.modeldir import load_model_dir
from edgekd.specs import Task

__all__ = ["evaluate_model_dir"]


def evaluate_model_dir(
    path: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    device: str = "auto",
    download: bool = False,
    target_sensitivity: float = 0.95,
) -> dict[str, Any]:
    """Metrics of a model directory on ``split`` of ``data`` (default: the data in its lineage).

    Example:
        >>> evaluate_model_dir("runs/teacher")["metrics"]["auroc"]
    """

    model, card = load_model_dir(path)
    spec = data or card.lineage.data
    if not spec:
        raise InvalidInputError(f"{path} does not record its training data", "pass --data")
    bundle = load_data(spec, download=download)
    if bundle.num_classes != card.spec.num_classes:
        raise InvalidInputError(
            f"data {spec} has {bundle.num_classes} classes, the model {card.spec.num_classes}",
            "evaluate on the data the model was trained for",
        )
    if bundle.task is not card.task:
        raise InvalidInputError(f"data {spec} is a {bundle.task.value} task, the model {card.task.value}")
    dev = resolve_device(device)
    model.to(dev)

    def logits_of(name: str) -> tuple[np.ndarray, np.ndarray]:
        return predict(model, card.preprocess, make_loader(bundle.split(name), batch_size, shuffle=False), dev)

    logits, targets = logits_of(split)
    res: dict[str, Any] = {
        "model": str(path),
        "data": spec,
        "split": split,
        "metrics": compute_metrics(logits, targets, bundle.task),
        "label_names": card.label_names,
    }
    if bundle.task not in (Task.MULTILABEL, Task.SEGMENTATION):  # segmentation: Dice, IoU, HD95 per class
        res["calibration"] = {
            "ece": res["metrics"]["ece"],
            "bins": reliability_bins(probabilities(logits, bundle.task), targets),
        }
    if bundle.task is Task.BINARY and bundle.num_classes == 2:
        val = (logits, targets) if split == "val" else logits_of("val")
        point = operating_point(*val, logits, targets, target_sensitivity)
        res["operating_point"] = {
            **{k: point[k] for k in ("target_sensitivity", "threshold", "val")},
            split: point["test"],
        }
    return res
