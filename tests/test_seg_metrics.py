"""Segmentation metrics pinned against MONAI (DiceMetric, MeanIoU, compute_hausdorff_distance) on fixed masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgekd.metrics import compute_metrics, dice_iou, hd95, higher_is_better, mask_predictions, segmentation_metrics
from edgekd.specs import Task

monai_metrics = pytest.importorskip("monai.metrics")


def _masks(k: int = 3, n: int = 4, size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth with a disc and a box per image, predictions shifted and eroded: overlapping, not equal."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    gt = np.zeros((n, size, size), np.int64)
    pr = np.zeros_like(gt)
    for i in range(n):
        cy, cx, r = rng.integers(12, 28), rng.integers(12, 28), rng.integers(5, 10)
        gt[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        dy, dx = rng.integers(-3, 4, size=2)
        pr[i][(yy - cy - dy) ** 2 + (xx - cx - dx) ** 2 <= (r - 1) ** 2] = 1
        if k > 2:
            gt[i, 2:8, 30:38] = 2
            pr[i, 3 : 8 + i, 29:36] = 2
    pr[0, 0:2, 0:3] = 1  # a stray blob far from the disc: the Hausdorff tail
    return pr, gt


def _onehot(m: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(m), k).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("k", [2, 3])
def test_dice_and_iou_match_monai(k):
    pr, gt = _masks(k)
    dice, iou = dice_iou(pr, gt, k)
    ref_dice = monai_metrics.DiceMetric(include_background=True, reduction="none")(_onehot(pr, k), _onehot(gt, k))
    ref_iou = monai_metrics.MeanIoU(include_background=True, reduction="none")(_onehot(pr, k), _onehot(gt, k))
    np.testing.assert_allclose(dice, ref_dice.numpy(), rtol=1e-6)
    np.testing.assert_allclose(iou, ref_iou.numpy(), rtol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_hd95_matches_monai(k):
    pr, gt = _masks(k, seed=3)
    ref = monai_metrics.compute_hausdorff_distance(
        _onehot(pr, k), _onehot(gt, k), include_background=False, percentile=95
    )
    ours = np.array([[hd95(pr[i] == c, gt[i] == c) for c in range(1, k)] for i in range(len(gt))])
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert ours[0, 0] > ours[1:, 0].max()  # the stray blob of image 0 shows in its HD95


def test_hd95_edge_cases():
    truth = np.zeros((10, 10), bool)
    assert math.isnan(hd95(truth, truth))  # nothing to outline
    truth[2:5, 2:5] = True
    assert hd95(truth, truth) == 0.0
    assert hd95(np.zeros_like(truth), truth) == pytest.approx(math.hypot(10, 10))  # an empty answer: the worst


def test_segmentation_metrics_means_and_logit_resizing():
    pr, gt = _masks(2)
    logits = _onehot(pr, 2).numpy() * 10
    m = segmentation_metrics(logits, gt)
    dice, _ = dice_iou(pr, gt, 2)
    assert m["dice"] == pytest.approx(float(dice[:, 1].mean())) and m["dice_per_class"][1] == pytest.approx(m["dice"])
    assert m["acc"] == pytest.approx(float((pr == gt).mean())) and len(m["dice_per_image"]) == len(gt)
    assert compute_metrics(logits, gt, Task.SEGMENTATION)["dice"] == m["dice"]
    # logits at half the resolution are upsampled to the masks before the argmax
    small = torch.nn.functional.interpolate(torch.from_numpy(logits), size=(20, 20), mode="bilinear").numpy()
    assert mask_predictions(small, (40, 40)).shape == (4, 40, 40)
    assert abs(segmentation_metrics(small, gt)["dice"] - m["dice"]) < 0.05
    perfect = segmentation_metrics(_onehot(gt, 2).numpy(), gt)  # one-hot truth as logits
    assert perfect["dice"] == 1.0 and perfect["iou"] == 1.0 and perfect["hd95"] == 0.0
    assert not higher_is_better("hd95") and higher_is_better("dice")
