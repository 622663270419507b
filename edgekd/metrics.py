"""Classification metrics shared by `edgekd eval`, training-time validation and quantized-model checks.

Binary tasks report accuracy at a 0.5 threshold on P(positive), balanced accuracy, macro F1, AUROC,
sensitivity (recall of the positive class) and specificity (recall of the negative class). Multi-class
tasks report one-vs-rest macro AUROC. Multi-label tasks threshold each label's sigmoid at 0.5 and report
the macro AUROC over the labels that have both classes in the split.

Single-label tasks also report ``ece``, the expected calibration error of the top-label confidence
(:func:`expected_calibration_error`; :func:`reliability_bins` gives the reliability diagram behind it).
:func:`threshold_for_sensitivity` and :func:`operating_point` choose a binary decision threshold on one
split (validation) for a target sensitivity and report what it gives on another (test).

Segmentation (:func:`segmentation_metrics`): Dice and IoU per class and their mean over the foreground classes,
the 95 % Hausdorff distance (HD95, in pixels) and pixel accuracy, computed per image as MONAI's ``DiceMetric``,
``MeanIoU`` and ``compute_hausdorff_distance(percentile=95)`` do (the tests pin them against MONAI).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn import metrics as skm

from edgekd.specs import Task

__all__ = [
    "compute_metrics",
    "probabilities",
    "METRIC_NAMES",
    "higher_is_better",
    "expected_calibration_error",
    "reliability_bins",
    "threshold_for_sensitivity",
    "operating_point",
    "ECE_BINS",
    "segmentation_metrics",
    "dice_iou",
    "hd95",
    "mask_predictions",
    "SEG_METRIC_NAMES",
    "task_select_metric",
    "selection_value",
    "per_image_metrics",
]

SEG_METRIC_NAMES = ("dice", "iou", "hd95", "acc")


def task_select_metric(metric: str, task: Task) -> str:
    """The metric that selects the best epoch for ``task``: for segmentation a classification metric (the
    default ``auroc``) means ``dice``; a segmentation metric on a classification task means ``auroc``.

    Example:
        >>> task_select_metric("auroc", Task.SEGMENTATION), task_select_metric("hd95", Task.SEGMENTATION)
        ('dice', 'hd95')
    """
    if task is Task.SEGMENTATION:
        return metric if metric in SEG_METRIC_NAMES or metric == "loss" else "dice"
    return "auroc" if metric in ("dice", "iou", "hd95") else metric


METRIC_NAMES = ("acc", "balanced_acc", "f1_macro", "auroc", "sensitivity", "specificity", "loss", "dice", "iou", "hd95")
ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width confidence bins


def higher_is_better(metric: str) -> bool:
    return metric not in ("loss", "hd95")


def selection_value(values: dict[str, Any], metric: str) -> float:
    """``values[metric]`` as a float, or the accuracy where the metric is missing or undefined (NaN: e.g. AUROC
    of a split with one class), so that a score always exists to compare checkpoints or variants by.

    Example:
        >>> selection_value({"auroc": float("nan"), "acc": 0.75}, "auroc")
        0.75
    """
    v = float(values.get(metric, math.nan))
    return float(values.get("acc", 0.0)) if math.isnan(v) else v


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
    if task is Task.SEGMENTATION:
        return segmentation_metrics(logits, targets)
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
        "ece": expected_calibration_error(probs, y),
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


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The reliability diagram of the top-label confidence: one entry per equal-width confidence bin.

    Each sample falls in the bin ``(lo, hi]`` of its confidence ``max_k p_k`` (the first bin also takes 0);
    a bin reports its ``count``, mean ``confidence`` and ``accuracy`` (NaN for an empty bin).

    Args:
        probs: ``[N, K]`` class probabilities (rows sum to one).
        targets: ``[N]`` true class indices.
        n_bins: number of bins over ``[0, 1]``.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(targets).astype(int).reshape(-1)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else math.nan,
                "accuracy": float(correct[mask].mean()) if n else math.nan,
            }
        )
    return out


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-label confidence (Guo et al., ICML 2017; Naeini et al. 2015).

    ``ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|`` over ``n_bins`` equal-width confidence bins
    (:func:`reliability_bins`). 0 is perfectly calibrated; NaN for an empty split.

    Example:
        >>> # confidence 0.9, right (|1 - 0.9|) and 0.8, wrong (|0 - 0.8|), in two bins: (0.1 + 0.8) / 2
        >>> expected_calibration_error(np.array([[0.1, 0.9], [0.2, 0.8]]), np.array([1, 0]))
        0.45
    """
    bins = reliability_bins(probs, targets, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return math.nan
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def threshold_for_sensitivity(scores: np.ndarray, targets: np.ndarray, target: float = 0.95) -> float:
    """The highest threshold ``t`` on P(positive) whose sensitivity ``mean(scores[y == 1] >= t)`` is >= ``target``.

    The highest such threshold gives the best specificity at that sensitivity: with the positives' scores
    sorted in descending order it is the ``ceil(target * P)``-th of them. NaN without positives.

    Example:
        >>> threshold_for_sensitivity(np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.1]), np.array([1, 1, 1, 1, 1, 0]), 0.8)
        0.6
    """
    if not 0 < target <= 1:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(int).reshape(-1)
    positives = np.sort(scores[y == 1])[::-1]
    if not len(positives):
        return math.nan
    k = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(positives[k - 1])


def _rates(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    pred = scores >= threshold
    pos, neg = y == 1, y == 0
    return {
        "sensitivity": float(pred[pos].mean()) if pos.any() else math.nan,
        "specificity": float((~pred[neg]).mean()) if neg.any() else math.nan,
        "n": int(len(y)),
    }


def operating_point(
    val_logits: np.ndarray,
    val_targets: np.ndarray,
    test_logits: np.ndarray,
    test_targets: np.ndarray,
    target_sensitivity: float = 0.95,
) -> dict[str, object]:
    """A binary decision threshold chosen on validation for a target sensitivity, and what it gives on test.

    The threshold is :func:`threshold_for_sensitivity` of the validation P(positive) (softmax of two logits);
    the same threshold is applied to the test split. Choosing it on validation and reporting test keeps the
    figure honest: a threshold fitted on test would always reach the target there.

    Returns:
        ``{"target_sensitivity", "threshold", "val": {sensitivity, specificity, n}, "test": {...}}``.
    """
    p_val = probabilities(val_logits, Task.BINARY)[:, 1]
    p_test = probabilities(test_logits, Task.BINARY)[:, 1]
    y_val, y_test = np.asarray(val_targets).astype(int).reshape(-1), np.asarray(test_targets).astype(int).reshape(-1)
    t = threshold_for_sensitivity(p_val, y_val, target_sensitivity)
    return {
        "target_sensitivity": float(target_sensitivity),
        "threshold": t,
        "val": _rates(p_val, y_val, t),
        "test": _rates(p_test, y_test, t),
    }


def mask_predictions(logits: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """Class index per pixel ``int64 [N, H, W]`` of ``[N, C, h, w]`` logits, bilinearly resized to ``size`` first.

    A model may run at another resolution than its masks (``--input-size 128`` on 256 px data); its logits are
    upsampled to the masks' size before the argmax, so it is scored on the masks as they are.
    """
    z = torch.as_tensor(np.asarray(logits) if not torch.is_tensor(logits) else logits).float()
    if size is not None and tuple(z.shape[-2:]) != tuple(size):
        z = F.interpolate(z, size=tuple(size), mode="bilinear", align_corners=False)
    return z.argmax(1).numpy().astype(np.int64)


def dice_iou(pred: np.ndarray, masks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image, per-class Dice ``2|P&G| / (|P| + |G|)`` and IoU ``|P&G| / |P|G|``, ``float64 [N, k]`` each.

    As MONAI's ``DiceMetric(ignore_empty=True)`` / ``MeanIoU``: NaN where the class is absent from the image's
    ground truth (an image without that structure says nothing about how well it is outlined).
    """
    n = len(pred)
    p = pred.reshape(n, -1)
    g = masks.reshape(n, -1)
    dice, iou = np.full((n, k), math.nan), np.full((n, k), math.nan)
    for c in range(k):
        pc, gc = p == c, g == c
        inter = (pc & gc).sum(1).astype(np.float64)
        sp, sg = pc.sum(1).astype(np.float64), gc.sum(1).astype(np.float64)
        has = sg > 0
        dice[has, c] = 2 * inter[has] / (sp[has] + sg[has])
        iou[has, c] = inter[has] / (sp[has] + sg[has] - inter[has])
    return dice, iou


def _edges(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask) ^ mask  # MONAI's get_mask_edges (scipy erosion, zero border)


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """95 % Hausdorff distance in pixels between two binary masks ``[H, W]`` (symmetric, Euclidean).

    With the surface (edge) pixels ``E = m XOR erode(m)`` of each mask, ``d(a -> b)`` is the distance of every
    edge pixel of ``a`` to the nearest edge pixel of ``b``; HD95 ``= max(P95(d(pred -> truth)), P95(d(truth ->
    pred)))`` (MONAI's ``compute_hausdorff_distance(percentile=95)``; Huttenlocher et al. 1993 for the Hausdorff
    distance). NaN when the truth is empty; the image diagonal when only the prediction is (MONAI: inf), so means
    stay finite and an empty answer scores as the worst one.
    """
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not truth.any():
        return math.nan
    if not pred.any():
        return float(math.hypot(*truth.shape))
    ep, et = _edges(pred), _edges(truth)
    d_pt = ndimage.distance_transform_edt(~et)[ep]
    d_tp = ndimage.distance_transform_edt(~ep)[et]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def _nanmean(x: np.ndarray, axis=None):
    with np.errstate(all="ignore"):
        valid = ~np.isnan(x)
        total = np.where(valid, x, 0.0).sum(axis=axis)
        count = valid.sum(axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), math.nan)


def per_image_metrics(logits: np.ndarray, masks: np.ndarray, metrics: tuple[str, ...] = SEG_METRIC_NAMES) -> dict:
    """Per-image values ``float64 [N]`` of segmentation metrics (foreground means per image; NaN where undefined).

    The unit a paired bootstrap resamples: images, not pixels (the pixels of one image are not independent).
    """
    masks = np.asarray(masks).astype(np.int64)
    k = int(np.asarray(logits).shape[1])
    pred = mask_predictions(logits, masks.shape[-2:])
    dice, iou = dice_iou(pred, masks, k)
    out = {"dice": _nanmean(dice[:, 1:], axis=1), "iou": _nanmean(iou[:, 1:], axis=1)}
    out["acc"] = (pred == masks).reshape(len(masks), -1).mean(1).astype(np.float64)
    if "hd95" in metrics:
        hd = np.array([[hd95(pred[i] == c, masks[i] == c) for c in range(1, k)] for i in range(len(masks))])
        out["hd95"] = _nanmean(hd, axis=1)
    return {m: np.asarray(out[m], np.float64) for m in metrics if m in out}


def segmentation_metrics(
    logits: np.ndarray, masks: np.ndarray, *, with_hd95: bool = True, per_image: bool = True
) -> dict[str, Any]:
    """Dice, IoU, HD95 and pixel accuracy of ``[N, C, h, w]`` logits against ``int [N, H, W]`` masks.

    Per class the mean over the images that contain it (:func:`dice_iou`); ``dice`` / ``iou`` / ``hd95`` are the
    means over the foreground classes ``1..C-1`` (background is class 0 and would flatter every model); ``acc``
    is the share of pixels labelled right (over all classes). ``dice_per_image`` (the foreground mean per image)
    feeds the paired bootstrap of the KD verdict.

    Example:
        >>> m = segmentation_metrics(logits, masks)
        >>> m["dice"], m["dice_per_class"], m["hd95"]
    """
    masks = np.asarray(masks).astype(np.int64)
    if masks.ndim == 2:
        masks = masks[None]
    k = int(np.asarray(logits).shape[1])
    pred = mask_predictions(logits, masks.shape[-2:])
    dice, iou = dice_iou(pred, masks, k)
    fg = slice(1, k) if k > 1 else slice(0, k)
    out: dict[str, Any] = {
        "n": int(len(masks)),
        "dice": float(_nanmean(_nanmean(dice[:, fg], axis=0))),
        "iou": float(_nanmean(_nanmean(iou[:, fg], axis=0))),
        "acc": float((pred == masks).mean()),
        "dice_per_class": [float(v) for v in _nanmean(dice, axis=0)],
        "iou_per_class": [float(v) for v in _nanmean(iou, axis=0)],
    }
    if with_hd95:
        hd = np.array([[hd95(pred[i] == c, masks[i] == c) for c in range(k)] for i in range(len(masks))])
        out["hd95"] = float(_nanmean(_nanmean(hd[:, fg], axis=0)))
        out["hd95_per_class"] = [float(v) for v in _nanmean(hd, axis=0)]
    if per_image:
        out["dice_per_image"] = [float(v) for v in _nanmean(dice[:, fg], axis=1)]
    return out
