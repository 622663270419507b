"""`edgekd drift`: reference statistics stored at training time, compared with new data; exit 7 above a threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekd._io import sha256_file
from edgekd.cli import app
from edgekd.data import load_data
from edgekd.distill import RunSettings, TrainConfig, train_model
from edgekd.monitor import DEFAULT_THRESHOLD, REFERENCE_FILE, check_drift, psi, read_reference
from edgekd.monitor._reference import image_statistics

runner = CliRunner()
SYNTH = "synthetic:classes=2,n=400,size=16,channels=1,seed=0"  # 100 validation images: a usable reference


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    """A small:tinycnn trained for 2 epochs on 400 synthetic images (its reference: 100 validation images)."""
    out = tmp_path_factory.mktemp("drift") / "model"
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, warmup_epochs=0.5)
    train_model(RunSettings(student="small:tinycnn", data=SYNTH, train=cfg), out, progress=False)
    return str(out)


def _npz(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """A MedMNIST-layout file whose every split holds these images (drift reads the test split)."""
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez(path, **arrays)
    return f"medmnist:{path}"


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> dict[str, str]:
    """The model's own test data, the same images through a fixed 'other scanner' shift, and a mix."""
    root = tmp_path_factory.mktemp("shift")
    test = load_data(SYNTH).test
    images, labels = test.images[:, 0], np.asarray(test.targets)
    rng = np.random.default_rng(0)
    other = np.clip(255 - images.astype(np.float64) * 0.6 + rng.normal(0, 25, images.shape), 0, 255).astype(np.uint8)
    return {"same": _npz(root / "same.npz", images, labels), "other": _npz(root / "other.npz", other, labels)}


def test_psi_is_zero_for_equal_histograms_and_grows_with_the_shift():
    assert psi(np.array([10, 20, 70]), np.array([1, 2, 7])) == pytest.approx(0.0)
    small, large = psi(np.array([50, 50]), np.array([45, 55])), psi(np.array([50, 50]), np.array([5, 95]))
    assert 0 < small < 0.05 < 0.25 < large


def test_training_stores_a_reference_for_these_weights(tiny_model_dir):
    ref = read_reference(tiny_model_dir)
    assert ref is not None and ref.meta["weights_sha256"] == sha256_file(Path(tiny_model_dir) / "model.safetensors")
    n = len(load_data(SYNTH).val)
    assert ref.meta["images"] == n and len(ref.confidence) == n
    assert ref.prob_hist.shape == (2, 10) and ref.prob_hist.sum() == 2 * n
    features, image = ref.spaces["features"], ref.spaces["image"]
    d = features.mean.shape[0]
    assert features.precision.shape == (d, d) and ref.meta["feature_dim"] == d and len(features.ref_d2) == n
    assert image.mean.shape == (13,) and len(ref.meta["image_statistics"]) == 13 and len(image.ref_d2) == n


def test_no_drift_on_the_models_own_data_and_drift_on_another_scanner(tiny_model_dir, shifted):
    same = check_drift(tiny_model_dir, shifted["same"])
    assert not same.drift and same.score <= DEFAULT_THRESHOLD and same.images == len(load_data(SYNTH).test)
    other = check_drift(tiny_model_dir, shifted["other"])
    assert other.drift and other.score > 0.5 and "far images" in other.signals
    assert other.far_by_space["image"] > 0.5 * other.images and other.binomial_pvalue < 1e-6
    assert other.mean_d2_ratio["image"] > same.mean_d2_ratio["image"]
    assert set(other.psi) == {"class_0", "class_1"}


def test_cli_verdict_json_and_exit_7(tiny_model_dir, shifted, tmp_path):
    report = tmp_path / "d.json"
    r = runner.invoke(app, ["drift", tiny_model_dir, "--data", shifted["other"], "--json", str(report)])
    assert r.exit_code == 0 and "drift" in r.output  # a verdict, but no --fail-above: monitoring only
    got = json.loads(report.read_text())
    assert got["verdict"] == "drift" and got["threshold"] == DEFAULT_THRESHOLD
    r = runner.invoke(app, ["drift", tiny_model_dir, "--data", shifted["other"], "--fail-above", "0.05"])
    assert r.exit_code == 7 and "above --fail-above 0.05" in r.output
    r = runner.invoke(app, ["drift", tiny_model_dir, "--data", shifted["same"], "--fail-above", "0.05"])
    assert r.exit_code == 0 and "no drift" in r.output


def test_a_model_without_reference_needs_reference_data(tiny_model_dir, shifted, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    (copy / REFERENCE_FILE).unlink()
    r = runner.invoke(app, ["drift", str(copy), "--data", shifted["same"]])
    assert r.exit_code == 4 and "--reference-data" in r.output
    report = check_drift(copy, shifted["other"], reference_data=SYNTH)
    assert report.drift and report.reference["computed"] == "on the fly"
    assert not (copy / REFERENCE_FILE).exists()


def test_image_statistics_see_contrast_blur_and_noise():
    rng = np.random.default_rng(1)
    base = torch.from_numpy(rng.integers(60, 200, size=(4, 1, 16, 16), dtype=np.uint8))
    stats = image_statistics(base, (16, 16))
    flat = base.double().div(255).flatten(1)
    torch.testing.assert_close(stats[:, 0], flat.mean(1))
    torch.testing.assert_close(stats[:, 5], flat.quantile(0.5, dim=1))
    low_contrast = image_statistics((base.double() * 0.5 + 64).to(torch.uint8), (16, 16))
    assert (low_contrast[:, 1] < stats[:, 1]).all() and (low_contrast[:, 12] < stats[:, 12]).all()
    assert image_statistics(base, (32, 32)).shape == (4, 13)  # at the model's input size
