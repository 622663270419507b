"""`edgekd distill --unlabeled`: unlabelled images add KD (and feature) terms through the one shared Trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import load_images
from edgekd.distill import (
    CacheSettings,
    RunSettings,
    TrainConfig,
    UnlabeledDistillObjective,
    build_distill_objective,
    distill_model,
)
from edgekd.distill.losses import kd_div
from edgekd.errors import InvalidInputError
from edgekd.modeldir import load_model_dir
from edgekd.students import build_model
from edgekd.teachers import Teacher

from .conftest import SYNTH

UNLABELED = "synthetic:classes=2,n=60,size=16,channels=1,seed=5"


def test_labelled_rows_get_the_task_loss_and_every_row_gets_kd(tiny_model_dir):
    net, card = load_model_dir(tiny_model_dir)
    teacher = Teacher.from_module(net, card.preprocess, name="t")
    torch.manual_seed(0)
    student = build_model(card.spec).eval()
    base = build_distill_objective(student, card.preprocess, card.task, [teacher], ["ce:1", "kd:0.5,T=4"])
    images = load_images(UNLABELED, channels=1, size=(16, 16))
    objective = UnlabeledDistillObjective(base, images, batch=6, seed=3, student=student)
    objective.on_epoch_start(0, 1)
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1, 0])
    loss, terms = objective(student, x, y, None, 0)

    order = np.random.default_rng([3, 11, 0]).permutation(len(images))[:6]  # the documented walk
    u = torch.stack([images.dataset[int(i)][0] for i in order])
    both = torch.cat([x, u])
    with torch.no_grad():
        s = student(card.preprocess(both))
        t = teacher.logits(both)
    ce, kd = F.cross_entropy(s[:4], y), kd_div(s, t, 4.0)
    assert float(terms["ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(terms["kd"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(ce + 0.5 * kd), rel=1e-5)
    assert objective.seen == 6
    _, terms2 = objective(student, x, y, None, 0)
    assert float(terms2["kd"]) != pytest.approx(float(kd))  # the next unlabelled batch


@pytest.mark.slow
def test_run_with_cache_two_teachers_and_the_cli(tiny_model_dir, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, warmup_epochs=0.5)
    settings = RunSettings(
        student="small:tinycnn",
        data=SYNTH,
        teachers=[tiny_model_dir, tiny_model_dir],
        teacher_weights=[1, 3],
        unlabeled=UNLABELED,
        unlabeled_ratio=0.5,
        cache=CacheSettings(),
        train=cfg,
    )
    card = distill_model(settings, tmp_path / "s", progress=False)
    notes = card.lineage.notes["unlabeled"]
    steps = 4  # 128 labelled images / batch 32
    assert notes["batch"] == 16 and notes["seen"] == 2 * steps * 16 and notes["images"] == 60
    assert notes["cache"]["misses"] == 60 and notes["cache"]["hits"] == 2 * steps * 16 - 60  # each image once
    assert yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())["unlabeled"] == UNLABELED

    # feature losses see the unlabelled rows too (no cache: they need the live teacher)
    feat = settings.model_copy(
        update={
            "losses": ["ce:1", "kd:1", "at:10"],
            "cache": None,
            "train": cfg.model_copy(update={"epochs": 1, "augment": "light"}),
        }
    )
    card = distill_model(feat, tmp_path / "f", progress=False)
    assert card.lineage.notes["unlabeled"]["seen"] == steps * 16

    r = CliRunner().invoke(
        app,
        [
            "distill",
            "--student",
            "small:tinycnn",
            "--teacher",
            tiny_model_dir,
            "--data",
            SYNTH,
            "--unlabeled",
            UNLABELED,
            "--unlabeled-ratio",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--max-steps-per-epoch",
            "2",
            "--out",
            str(tmp_path / "c"),
            "--quiet",
            "--json",
            "-",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["lineage"]["notes"]["unlabeled"]["seen"] == 2 * 64


def test_refusals(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="need a teacher"):
        RunSettings(student="small:tinycnn", data=SYNTH, unlabeled=UNLABELED)
    cfg = TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=1)
    with pytest.raises(InvalidInputError, match="dkd needs the true class"):
        distill_model(
            RunSettings(
                student="small:tinycnn",
                data=SYNTH,
                teachers=[tiny_model_dir],
                unlabeled=UNLABELED,
                losses=["ce:1", "dkd:1"],
                train=cfg,
            ),
            tmp_path / "d",
            progress=False,
        )
    r = CliRunner().invoke(
        app,
        [
            "distill",
            "--student",
            "small:tinycnn",
            "--teacher",
            tiny_model_dir,
            "--data",
            SYNTH,
            "--unlabeled",
            str(tmp_path / "missing"),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 3 and "unknown data source" in r.output
