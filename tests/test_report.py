"""Grad-CAM agreement, calibration and operating-point figures, `edgekd explain` and the eval JSON additions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.metrics import (
    compute_metrics,
    expected_calibration_error,
    operating_point,
    reliability_bins,
    threshold_for_sensitivity,
)
from edgekd.modeldir import load_model_dir
from edgekd.report import cam_agreement, default_cam_layer, gradcam_maps
from edgekd.specs import Task

runner = CliRunner()


# -- calibration and operating point (hand-computed values) ----------------------------------------------------------


def test_ece_hand_computed():
    # confidences 0.9 (right), 0.8 (wrong), 0.65 (right), 0.55 (wrong); 15 bins: each sample alone in its bin
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.35, 0.65], [0.55, 0.45]])
    y = np.array([1, 1, 1, 1])
    # |1 - .9| + |0 - .8| + |1 - .65| + |0 - .55| = 0.1 + 0.8 + 0.35 + 0.55 = 1.8, over 4 samples
    assert expected_calibration_error(probs, y) == pytest.approx(1.8 / 4)
    # 0.6 and 0.55 share the bin (0.533, 0.6]: accuracy 1/2, confidence 0.575 -> |0.5 - 0.575| * 2/4
    probs[2] = [0.4, 0.6]
    assert expected_calibration_error(probs, y) == pytest.approx((0.1 + 0.8) / 4 + 0.075 * 2 / 4)
    # two samples in one bin (0.9 and 0.92, both right): |1 - 0.91| * 2/3, plus the third alone (0.7, right)
    probs = np.array([[0.1, 0.9], [0.08, 0.92], [0.3, 0.7]])
    assert expected_calibration_error(probs, np.array([1, 1, 1])) == pytest.approx((2 * 0.09 + 0.3) / 3)
    assert expected_calibration_error(np.array([[0.5, 0.5]] * 2), np.array([0, 1])) == pytest.approx(0.0)


def test_reliability_bins_counts_and_edges():
    probs = np.array([[0.1, 0.9], [0.08, 0.92], [0.3, 0.7], [1.0, 0.0]])
    bins = reliability_bins(probs, np.array([1, 0, 1, 0]), n_bins=10)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 4
    top = bins[-1]  # (0.9, 1.0]: 0.92 and 1.0 (0.9 sits on the edge of (0.8, 0.9])
    assert top["count"] == 2 and top["accuracy"] == pytest.approx(0.5) and top["confidence"] == pytest.approx(0.96)
    assert bins[8]["count"] == 1 and math.isnan(bins[0]["accuracy"])


def test_compute_metrics_reports_ece():
    logits = np.log(np.array([[0.1, 0.9], [0.8, 0.2]]))
    m = compute_metrics(logits, np.array([1, 1]), Task.BINARY)
    assert m["ece"] == pytest.approx((0.1 + 0.8) / 2)


def test_threshold_for_sensitivity_pinned():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.1, 0.65, 0.2, 0.5])
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    assert threshold_for_sensitivity(scores, y, 0.8) == pytest.approx(0.6)  # 4 of 5 positives at >= 0.6
    assert threshold_for_sensitivity(scores, y, 0.81) == pytest.approx(0.3)  # needs all 5
    assert threshold_for_sensitivity(scores, y, 1.0) == pytest.approx(0.3)
    assert math.isnan(threshold_for_sensitivity(scores, np.zeros(9), 0.9))


def test_operating_point_chosen_on_val_reported_on_test():
    def logits(p):
        p = np.asarray(p, dtype=np.float64)
        return np.stack([np.zeros_like(p), np.log(p / (1 - p))], 1)

    val = logits([0.9, 0.8, 0.7, 0.6, 0.3, 0.1, 0.65, 0.2, 0.5]), np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    test = logits([0.95, 0.55, 0.62, 0.61, 0.1]), np.array([1, 1, 0, 0, 0])
    op = operating_point(*val, *test, target_sensitivity=0.8)
    assert op["threshold"] == pytest.approx(0.6)
    assert op["val"]["sensitivity"] == pytest.approx(0.8) and op["val"]["specificity"] == pytest.approx(0.75)
    # test at 0.6: positives 0.95 (hit), 0.55 (miss); negatives 0.62, 0.61 (false alarms), 0.1 (right)
    assert op["test"]["sensitivity"] == pytest.approx(0.5) and op["test"]["specificity"] == pytest.approx(1 / 3)


def test_eval_json_has_ece_calibration_and_operating_point(tiny_model_dir, tmp_path):
    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", tiny_model_dir, "--json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert 0 <= res["metrics"]["ece"] <= 1 and len(res["calibration"]["bins"]) == 15
    op = res["operating_point"]
    assert op["target_sensitivity"] == 0.95 and {"val", "test"} <= set(op) and 0 <= op["threshold"] <= 1
    assert op["val"]["sensitivity"] >= 0.95 - 1e-9


# -- Grad-CAM agreement ----------------------------------------------------------------------------------------------


def test_agreement_of_a_map_with_itself_and_its_negation():
    m = np.random.default_rng(0).random((12, 12))
    assert cam_agreement(m, m) == {"spearman": pytest.approx(1.0), "iou": 1.0}
    neg = cam_agreement(m, -m)
    assert neg["spearman"] == pytest.approx(-1.0) and neg["iou"] == 0.0
    flat = cam_agreement(np.zeros((4, 4)), m[:4, :4])  # a flat map has no top 20 %: not "perfect agreement"
    assert math.isnan(flat["spearman"]) and math.isnan(flat["iou"])


def test_agreement_top_region_iou_pinned():
    a = np.zeros((5, 4))
    b = np.zeros((5, 4))
    a.flat[[0, 1, 2, 3]] = [4, 3, 2, 1]  # top-20 % of 20 pixels = 4 pixels: 0, 1, 2, 3
    b.flat[[2, 3, 4, 5]] = [4, 3, 2, 1]  # 2, 3, 4, 5
    assert cam_agreement(a, b)["iou"] == pytest.approx(2 / 6)


def _images(tiny_model_dir, n=6):
    from edgekd.data import load_data

    _, card = load_model_dir(tiny_model_dir)
    data = load_data(card.lineage.data)
    return torch.stack([data.test[i][0] for i in range(n)]), [int(data.test[i][1]) for i in range(n)], data


def test_identical_models_agree_fully(tiny_model_dir):
    images, labels, data = _images(tiny_model_dir)
    m1, card = load_model_dir(tiny_model_dir)
    m2, _ = load_model_dir(tiny_model_dir)
    a = gradcam_maps(m1, card.preprocess, images, classes=labels)
    b = gradcam_maps(m2, card.preprocess, images, classes=labels)
    assert a.layer == default_cam_layer(m1) == "features.3"
    assert a.maps.shape == (6, *data.image_size) and a.maps.min() >= 0 and a.maps.max() <= 1
    for i in range(6):
        s = cam_agreement(a.maps[i], b.maps[i])
        assert s["iou"] == 1.0 and (math.isnan(s["spearman"]) or s["spearman"] == pytest.approx(1.0))


def test_explain_cli_with_compare(tiny_model_dir, tmp_path):
    out = tmp_path / "review"
    r = runner.invoke(
        app,
        [
            "explain",
            tiny_model_dir,
            "--images",
            "0,3",
            "--images",
            "5",
            "--compare",
            tiny_model_dir,
            "--out",
            str(out),
            "--json",
            str(tmp_path / "x.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "x.json").read_text())
    assert [it["source"] for it in res["images"]] == ["test #0", "test #3", "test #5"]
    assert res["layer"] == res["compare_layer"] == "features.3" and res["mean"]["iou"] == 1.0
    assert (out / "gradcam.png").read_bytes()[:4] == b"\x89PNG"
    again = runner.invoke(app, ["explain", tiny_model_dir, "--out", str(out)])
    assert again.exit_code == 3  # an existing output needs --overwrite
    bad = runner.invoke(app, ["explain", tiny_model_dir, "--images", "99999", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 3 and "outside" in bad.output
