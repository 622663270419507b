import math

import numpy as np
import pytest

from edgekd.metrics import compute_metrics
from edgekd.specs import Task


def test_binary_metrics_stored_values():
    # 4 samples: probabilities of class 1 are 0.9, 0.2, 0.6, 0.4; truth 1, 0, 0, 1
    p1 = np.array([0.9, 0.2, 0.6, 0.4])
    logits = np.stack([np.zeros(4), np.log(p1 / (1 - p1))], axis=1)
    m = compute_metrics(logits, np.array([1, 0, 0, 1]), Task.BINARY)
    assert m["acc"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["sensitivity"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(0.5)
    # pairs (pos, neg): (0.9,0.2) (0.9,0.6) (0.4,0.2) (0.4,0.6) -> 3 of 4 ranked right
    assert m["auroc"] == pytest.approx(0.75)
    assert m["balanced_acc"] == pytest.approx(0.5)


def test_multiclass_ovr_auroc_perfect():
    logits = np.eye(3)[[0, 1, 2, 0, 1, 2]] * 5
    m = compute_metrics(logits, np.array([0, 1, 2, 0, 1, 2]), Task.MULTICLASS)
    assert m["acc"] == 1.0 and m["auroc"] == pytest.approx(1.0) and m["f1_macro"] == pytest.approx(1.0)
    assert "sensitivity" not in m


def test_multilabel_metrics():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    logits = np.where(y == 1, 3.0, -3.0)
    logits[0, 0] = -1.0  # one label wrong
    m = compute_metrics(logits, y, Task.MULTILABEL)
    assert m["acc"] == pytest.approx(7 / 8)
    assert m["exact_match"] == pytest.approx(3 / 4)
    assert len(m["auroc_per_label"]) == 2


def test_single_class_split_gives_nan_auroc():
    m = compute_metrics(np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([0, 0]), Task.BINARY)
    assert math.isnan(m["auroc"])
