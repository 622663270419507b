"""`edgekd train / distill / eval` on segmentation data: one runner, Dice selects, the losses combine, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.distill import RunSettings, TrainConfig, distill_model, train_model
from edgekd.evaluate import evaluate_model_dir
from edgekd.modeldir import load_model_dir, read_card
from edgekd.specs import Task

DATA = "lungseg:size=32"
runner = CliRunner()


def _cfg(epochs=3, **kw):
    return TrainConfig(epochs=epochs, batch_size=10, lr=5e-3, warmup_epochs=0.2, device="cpu", **kw)


@pytest.fixture(scope="module")
def seg_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("segt") / "teacher"
    settings = RunSettings(student="small:unet_w8", data=DATA, train=_cfg(6))
    train_model(settings, out, progress=False)
    return out


def test_train_learns_lungs_and_selects_by_dice(seg_teacher):
    card = read_card(seg_teacher)
    assert card.task is Task.SEGMENTATION and card.label_names == ["background", "lung"]
    assert card.metrics["best_epoch"]["metric"] == "dice"
    assert card.lineage.losses == ["ce:1", "dice:1"]
    test = card.metrics["test"]
    assert set(test) >= {"dice", "iou", "hd95", "acc", "dice_per_class", "dice_per_image"}
    # predicting "lung" everywhere scores Dice 2p / (1 + p) ~ 0.54 for a lung share p ~ 0.37: it learned more
    assert test["dice"] > 0.7 and len(test["dice_per_image"]) == test["n"]
    history = [json.loads(line) for line in (seg_teacher / "history.jsonl").read_text().splitlines()]
    best = max(h["val_dice"] for h in history)
    assert card.metrics["val"]["dice"] == pytest.approx(best)
    model, _ = load_model_dir(seg_teacher)
    assert model(__import__("torch").zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_distill_with_pixel_channel_and_feature_losses(seg_teacher, tmp_path):
    losses = ["ce:1", "dice:1", "pixkd:1", "cwd:1,tau=4", "fitnet:1,s=dec1+enc4,t=dec1+enc4", "at:1,s=dec2,t=dec2"]
    settings = RunSettings(
        student="small:unet_w4", data=DATA, teachers=[str(seg_teacher)], losses=losses, train=_cfg(2)
    )
    card = distill_model(settings, tmp_path / "s", progress=False)
    assert card.lineage.stage == "distill" and card.lineage.losses[2:4] == ["pixkd:1", "cwd:1,tau=4"]
    record = json.loads((tmp_path / "s" / "history.jsonl").read_text().splitlines()[-1])
    for term in ("ce", "dice", "pixkd", "cwd", "fitnet", "at"):
        assert np.isfinite(record[term]), term
    assert 0 <= card.metrics["test"]["dice"] <= 1


def test_default_distill_losses_and_input_size(seg_teacher, tmp_path):
    """A student at 16 px on 32 px data: scored on the 32 px masks (its logits upsampled)."""
    settings = RunSettings(
        student="small:unet_w4", data=DATA, teachers=[str(seg_teacher)], input_size=16, train=_cfg(1)
    )
    card = distill_model(settings, tmp_path / "s16", progress=False)
    assert card.lineage.losses == ["ce:1", "dice:1", "pixkd:1,T=1"]
    assert card.preprocess.input_size == (16, 16)
    res = evaluate_model_dir(tmp_path / "s16", split="val", device="cpu")
    assert res["metrics"]["n"] == 13 and "calibration" not in res and "operating_point" not in res


def test_cli_eval_json_and_refusals(seg_teacher, tmp_path):
    r = runner.invoke(app, ["eval", str(seg_teacher), "--split", "test", "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["metrics"]["dice"] > 0.7
    r = runner.invoke(
        app, ["train", "--model", "small:resnet8", "--data", DATA, "--epochs", "1", "--out", str(tmp_path / "c")]
    )
    assert r.exit_code == 3 and "is a classifier" in r.output and "small:unet_w8" in r.output
    base = ["distill", "--student", "small:unet_w4", "--teacher", str(seg_teacher), "--data", DATA, "--epochs", "1"]
    r = runner.invoke(app, [*base, "--loss", "kd:1", "--out", str(tmp_path / "k")])
    assert r.exit_code == 3 and "pixkd or cwd" in r.output
    r = runner.invoke(app, [*base, "--cache-teacher", "--out", str(tmp_path / "k")])
    assert r.exit_code == 3 and "teacher cache" in r.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "k").exists()


def test_finetune_defaults_for_masks(seg_teacher, tmp_path):
    """Pruning recovery and QAT fine-tune through the same runner: the segmentation defaults apply there too."""
    from edgekd.data import load_data
    from edgekd.distill import finetune, finetune_objective
    from edgekd.teachers import load_teacher

    data = load_data(DATA)
    model, card = load_model_dir(seg_teacher)
    teacher = load_teacher(str(seg_teacher), data=data)
    objective = finetune_objective(model, card.preprocess, data, teacher=teacher)
    assert [t.name for t in objective.terms] == ["ce", "dice", "pixkd"]
    plain = finetune_objective(model, card.preprocess, data, teacher=None)
    assert [t.name for t in plain.terms] == ["ce", "dice"]
    history = finetune(model, card.preprocess, data, _cfg(1), tmp_path / "ft", teacher=teacher, progress=False)
    assert np.isfinite(history[0]["pixkd"]) and 0 <= history[0]["val_dice"] <= 1
