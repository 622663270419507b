"""Classification metrics shared by `edgekd eval`, training-time validation and quantized-model checks.

Binary tasks report accuracy at a 0.5 threshold on P(positive), balanced accuracy, macro F1, AUROC,
sensitivity (recall of the positive class) and specificity (recall of the negative class). Multi-class
tasks report one-vs-rest macro AUROC. Multi-label tasks threshold each label's sigmoid at 0.5 and report
the macro AUROC over the labels that have both classes in the split.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

from edgekd.specs import Task

__all__ = ["compute_metrics", "probabilities", "METRIC_NAMES", "higher_is_better"]

METRIC_NAMES = ("acc", "balanced_acc", "f1_macro", "auroc", "sensitivity", "specificity", "loss")


def higher_is_better(metric: str) -> bool:
    return metric != "loss"


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def probabilities(logits: np.ndarray, task: Task) -> np.ndarray:
    """Softmax for single-label tasks, element-wise sigmoid for multi-label ones."""
    logits = np.asarray(logits, dtype=np.float64)
    if task is Task.MULTILABEL:
        return 1.0 / (1.0 + np.exp(-logits))
    return _softmax(logits)


def _safe_auc(y: np.ndarray, p: np.ndarray, **kw) -> float:
    if len(np.unique(y)) < 2:  # a split with a single class has no AUROC
        return math.nan
    try:
        return float(skm.roc_auc_score(y, p, **kw))
    except ValueError:  # a split with a single class has no AUROC
        return math.nan


def compute_metrics(logits: np.ndarray, targets: np.ndarray, task: Task) -> dict[str, Any]:
    """Metrics for ``logits`` ``[N, K]`` against ``targets`` (``[N]`` int or ``[N, L]`` 0/1).

    Returns a JSON-friendly dict; ``confusion_matrix`` is a nested list (rows = true class).
    """
    probs = probabilities(logits, task)
    targets = np.asarray(targets)
    if task is Task.MULTILABEL:
        return _multilabel(probs, targets.astype(int))
    y = targets.astype(int).reshape(-1)
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "acc": float((pred == y).mean()),
        "balanced_acc": float(skm.balanced_accuracy_score(y, pred)) if len(np.unique(y)) > 1 else math.nan,
        "f1_macro": float(skm.f1_score(y, pred, average="macro", labels=list(range(k)), zero_division=0)),
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=list(range(k))).tolist(),
    }
    if task is Task.BINARY and k == 2:
        out["auroc"] = _safe_auc(y, probs[:, 1])
        cm = np.array(out["confusion_matrix"])
        tn, fp, fn, tp = cm[0, 0], cm[0, 1], cm[1, 0], cm[1, 1]
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else math.nan
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else math.nan
    else:
        present = np.unique(y)
        if len(present) == k:
            out["auroc"] = _safe_auc(y, probs, multi_class="ovr", average="macro")
        else:
            out["auroc"] = math.nan
    return out


def _multilabel(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    pred = (probs >= 0.5).astype(int)
    aucs = [_safe_auc(y[:, j], probs[:, j]) for j in range(y.shape[1])]
    valid = [a for a in aucs if not math.isnan(a)]
    return {
        "n": int(len(y)),
        "acc": float((pred == y).mean()),  # label-wise accuracy
        "exact_match": float((pred == y).all(axis=1).mean()),
        "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "auroc": float(np.mean(valid)) if valid else math.nan,
        "auroc_per_label": aucs,
    }
