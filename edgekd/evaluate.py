"""Evaluation of a model directory on a data split (`edgekd eval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.data import load_data
from edgekd.distill import evaluate_split
from edgekd.errors import InvalidInputError
from edgekd.modeldir import load_model_dir

__all__ = ["evaluate_model_dir"]


def evaluate_model_dir(
    path: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    device: str = "auto",
    download: bool = False,
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
    metrics = evaluate_split(model, card.preprocess, bundle, split, batch_size=batch_size, device=device)
    return {"model": str(path), "data": spec, "split": split, "metrics": metrics, "label_names": card.label_names}
