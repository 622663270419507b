"""``edgekd eval BUNDLE``: a bundle's metrics on a data split, run exactly as ``edgekd predict`` runs it.

The bundle is loaded with :func:`~edgekd.serve.load_model` (hashes and parity verified, its first ONNX file, its
own preprocessing), so the figures are those of the deployed file. Besides the threshold-free metrics of
:func:`edgekd.metrics.compute_metrics` (accuracy at 0.5...), a binary bundle reports its metrics *at its
operating threshold* (``at_threshold``: the threshold ``predict`` and ``serve`` decide at, with its source),
and the operating point re-chosen on this data's validation split for ``target_sensitivity``. When the bundle
carries an out-of-distribution reference, the share of the split's images flagged is reported too.

Example:
    >>> res = evaluate_bundle("runs/pneumonia/int8-cpu-x86", split="test")
    >>> res["at_threshold"]["threshold"], res["at_threshold"]["sensitivity"]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.data import load_data, make_loader
from edgekd.errors import InvalidInputError
from edgekd.export import read_manifest
from edgekd.metrics import compute_metrics, operating_point, probabilities
from edgekd.serve._model import LoadedModel, load_model
from edgekd.specs import Task

__all__ = ["evaluate_bundle"]


def _split_outputs(model: LoadedModel, data: Any, split: str, batch: int) -> tuple[np.ndarray, np.ndarray, list]:
    logits, targets, flags = [], [], []
    for images, y in make_loader(data.split(split), batch, shuffle=False):
        z, ood = model.forward(model.prepare(list(images.numpy())))
        logits.append(z)
        targets.append(y.numpy())
        flags += [s.out_of_distribution for s in ood] if ood is not None else []
    return np.concatenate(logits), np.concatenate(targets), flags


def _rates(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    pred = p >= threshold
    pos, neg = y == 1, y == 0
    return {
        "sensitivity": float(pred[pos].mean()) if pos.any() else math.nan,
        "specificity": float((~pred[neg]).mean()) if neg.any() else math.nan,
        "acc": float((pred == pos).mean()),
        "n": int(len(y)),
    }


def evaluate_bundle(
    path: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    batch_size: int = 256,
    target_sensitivity: float = 0.95,
    verify: bool = True,
    threads: int = 0,
) -> dict[str, Any]:
    """Metrics of a bundle on ``split`` of ``data`` (default: the data in the bundle's lineage).

    Raises:
        InvalidInputError: no data recorded or given, or data with other classes or task (exit 3).
        VerificationError: a modified bundle (exit 6).
    """
    model = load_model(path, verify=verify, threads=threads)
    info = model.info
    spec = data or read_manifest(path).lineage.get("data")
    if not spec:
        raise InvalidInputError(f"{path} does not record its training data", "pass --data")
    bundle = load_data(spec)
    if bundle.num_classes != len(info.labels) or bundle.task is not info.task:
        raise InvalidInputError(
            f"data {spec} ({bundle.task.value}, {bundle.num_classes} classes) does not fit the "
            f"bundle ({info.task.value}, {len(info.labels)} classes)"
        )
    if bundle.channels != model.preprocess.data_channels:
        raise InvalidInputError(
            f"data {spec} has {bundle.channels}-channel images; the bundle reads {model.preprocess.data_channels}"
        )
    logits, targets, flags = _split_outputs(model, bundle, split, batch_size)
    res: dict[str, Any] = {
        "model": str(path),
        "file": info.file,
        "precision": info.precision,
        "data": bundle.spec,
        "split": split,
        "metrics": compute_metrics(logits, targets, bundle.task),
        "label_names": list(info.labels),
    }
    if flags:
        res["ood"] = {
            "flagged": int(sum(flags)),
            "n": len(flags),
            "rate": float(np.mean(flags)),
            "reference": info.ood_reference,
        }
    if info.task is Task.BINARY and info.threshold is not None:
        p, y = probabilities(logits, Task.BINARY)[:, 1], targets.astype(int).reshape(-1)
        res["at_threshold"] = {
            "threshold": info.threshold,
            "source": info.threshold_source,
            **_rates(p, y, info.threshold),
        }
        val = (logits, targets) if split == "val" else _split_outputs(model, bundle, "val", batch_size)[:2]
        point = operating_point(*val, logits, targets, target_sensitivity)
        res["operating_point"] = {
            **{k: point[k] for k in ("target_sensitivity", "threshold", "val")},
            split: point["test"],
        }
    return res
