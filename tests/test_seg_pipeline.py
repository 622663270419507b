"""`edgekd run` for a segmenter (issue 26 item 6): the example pipeline validates and plans every stage; the KD
verdict's paired bootstrap on per-image Dice / HD95; a tiny end-to-end run on the bundled lung masks (teacher,
baseline, distilled student, export, benchmark, report with the mask sections).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from edgekd.metrics import segmentation_metrics
from edgekd.pipeline import load_pipeline_config, plan, run_pipeline
from edgekd.pipeline._diagnose import (
    DECIDING_METRIC,
    _accuracy,
    _agreement,
    bootstrap_gains,
    per_image_scores,
    secondary_metrics,
)
from edgekd.report import SEG_SECTION_IDS, section_ids, write_report
from edgekd.report._seg import pick_cases
from edgekd.specs import Task

REPO = Path(__file__).resolve().parents[1]


def _logits_from(masks: np.ndarray, k: int = 2, size: int | None = None) -> np.ndarray:
    """Confident logits ``[N, k, h, w]`` whose argmax is ``masks`` (optionally subsampled to ``size``)."""
    m = masks if size is None else masks[:, :: masks.shape[1] // size, :: masks.shape[2] // size]
    z = np.full((len(m), k, *m.shape[1:]), -4.0, np.float32)
    for c in range(k):
        z[:, c][m == c] = 4.0
    return z


def _cases(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 9)
        out.append(((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.int64))
    return np.stack(out)


def test_the_lung_example_validates_and_plans_every_stage():
    cfg = load_pipeline_config(REPO / "examples" / "lung-seg.yaml")
    assert cfg.data == "lungseg" and cfg.distill.baseline and cfg.prune is not None
    names = [s.name for s in plan(cfg)]
    for stage in ("teacher", "baseline", "student", "select", "pruned", "int8-cpu-x86", "bundle", "bench"):
        assert stage in names
    assert any("pixkd" in t for t in cfg.distill.losses)


def test_per_image_scores_match_the_segmentation_metrics_and_resize_to_the_masks():
    masks = _cases(8, 32)
    truth = masks.copy()
    truth[:, 14:18, :] = 0  # the prediction is wrong in a band
    logits = _logits_from(masks, size=16)  # a model at half the masks' resolution
    dice = per_image_scores(logits, truth, "dice")
    ref = segmentation_metrics(logits, truth, with_hd95=False)["dice_per_image"]
    np.testing.assert_allclose(dice, ref)
    assert (dice < 1).all() and (dice > 0.3).all()
    hd = per_image_scores(logits, truth, "hd95")
    assert (hd > 0).all() and np.isfinite(hd).all()
    assert per_image_scores(_logits_from(truth), truth, "hd95").max() == 0.0
    assert _accuracy(logits, truth, Task.SEGMENTATION) == pytest.approx((per_image_scores(logits, truth, "acc")).mean())
    assert _agreement(logits, logits, Task.SEGMENTATION) == 1.0
    # another resolution: compared at the first model's; only the subsampled borders differ
    assert 0.95 < _agreement(logits, _logits_from(masks), Task.SEGMENTATION) < 1.0


def test_the_kd_verdict_bootstraps_per_image_dice_and_hd95():
    assert DECIDING_METRIC[Task.SEGMENTATION] == "dice" and secondary_metrics("dice", Task.SEGMENTATION) == [
        "hd95",
        "iou",
    ]
    truth = _cases(20, 32, seed=1)
    good = _logits_from(truth)
    worse = truth.copy()
    worse[:, :, :3] = 1  # a band of false lung on every image
    bad = _logits_from(worse)
    cis = bootstrap_gains([good], [bad], truth, Task.SEGMENTATION, ["dice", "hd95"], n=200)
    gain = float(np.mean(per_image_scores(good, truth, "dice") - per_image_scores(bad, truth, "dice")))
    lo, hi = cis["dice"]
    assert 0 < lo <= gain <= hi  # distillation better beyond the noise: the interval excludes 0
    assert cis["hd95"][0] > 0  # HD95 lower is better: a positive gain
    same = bootstrap_gains([good], [good], truth, Task.SEGMENTATION, ["dice"], n=50)
    assert same["dice"] == (0.0, 0.0)


def test_report_cases_include_the_worst():
    dice = np.array([0.9, 0.2, 0.95, 0.5, math.nan, 0.97])
    picked = pick_cases(dice, 4)
    assert 1 in picked and 3 in picked and len(picked) == 4


@pytest.mark.slow
def test_tiny_lung_pipeline_end_to_end(tmp_path):
    cfg = {
        "name": "lung-tiny",
        "data": "lungseg",
        "teacher": {"model": "small:unet_w8", "input_size": 32, "train": {"epochs": 2, "batch_size": 8, "lr": 0.01}},
        "student": {"model": "small:unet_w4", "input_size": 32, "train": {"epochs": 2, "batch_size": 8, "lr": 0.01}},
        "distill": {"losses": ["ce:1", "dice:1", "pixkd:1,T=2"], "cache_teacher": False},
        "prune": None,
        # INT8 of a 2-epoch U-Net can miss mask parity (many undecided pixels): test_seg_quantize covers INT8
        "quantize": [],
        "export": {"formats": ["onnx"]},
        "bench": {"backends": ["ort"], "batches": [1], "min_s": 0.1, "min_iters": 3},
        "handoff": {"rounds": 2},
        "report": {"gradcam_images": 4},
    }
    import yaml

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(tmp_path / "p.yaml", tmp_path / "run", report=write_report, progress=False)
    rows = {r.name: r for r in summary.rows}
    assert {"teacher", "baseline", "student"} <= set(rows)
    for r in rows.values():
        assert 0.0 <= r.test["dice"] <= 1.0 and "hd95" in r.test
    kd = json.loads((tmp_path / "run" / "kd.json").read_text())
    assert kd["metric"] == "dice" and len(kd["gain_val_ci"]) == 2 and "dice" in kd["message"]
    html = (tmp_path / "run" / "report" / "index.html").read_text()
    assert tuple(re.findall(r'<section id="([\w-]+)">', html)) == SEG_SECTION_IDS == section_ids("segmentation")
    curves = html.split('<section id="curves">')[1].split("</section>")[0]
    assert "validation Dice per epoch" in curves and "AUROC" not in curves  # a segmenter's history holds val_dice
    assert "roc" not in {p.stem for p in (tmp_path / "run" / "report" / "figures").glob("*.png")}
    assert (tmp_path / "run" / "report" / "figures" / "overlays.png").stat().st_size > 1000
