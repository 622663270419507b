"""`edgekd label` and the ``softlabels:`` source: averaged teacher probabilities keyed by image content."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import load_data, read_soft_labels
from edgekd.distill import RunSettings, TrainConfig, distill_model, train_model
from edgekd.distill._label import label_images
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.modeldir import load_model_dir

from .conftest import SYNTH

runner = CliRunner()


@pytest.fixture(scope="module")
def second_teacher(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("t2") / "model"
    cfg = TrainConfig(epochs=1, batch_size=32, lr=5e-3, warmup_epochs=0.5, seed=1)
    train_model(RunSettings(student="small:tinycnn", data=SYNTH, train=cfg), out, progress=False)
    return str(out)


@pytest.fixture()
def png_folder(tmp_path) -> Path:
    """40 grayscale PNGs (the synthetic test images) in two sub-folders, no labels."""
    data = load_data("synthetic:classes=2,n=40,size=16,channels=1,seed=9")
    for i in range(40):
        sub = tmp_path / "unlabeled" / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.train[i][0][0].numpy()).save(sub / f"img{i:02d}.png")
    return tmp_path / "unlabeled"


def _teacher_probs(model_dir: str, paths: list[Path]) -> np.ndarray:
    """Softmax of one teacher on PIL-decoded files, computed here."""
    net, card = load_model_dir(model_dir)
    x = torch.from_numpy(np.stack([np.array(Image.open(p).convert("L"))[None] for p in paths]))
    with torch.no_grad():
        return torch.softmax(net(card.preprocess(x)), 1).numpy()


def test_weighted_average_abstention_agreement_and_content_keys(tiny_model_dir, second_teacher, png_folder, tmp_path):
    out = tmp_path / "labels.npz"
    report = label_images(
        [tiny_model_dir, second_teacher],
        f"folder:{png_folder}",
        out,
        weights=[1, 3],
        min_confidence=0.7,
        progress=False,
    )
    table = read_soft_labels(out)
    paths = [Path(s) for s in table.sources]
    assert len(paths) == 40 and all(p.is_file() for p in paths)
    p1, p2 = _teacher_probs(tiny_model_dir, paths), _teacher_probs(second_teacher, paths)
    np.testing.assert_allclose(table.probs, 0.25 * p1 + 0.75 * p2, atol=1e-5)
    conf = table.probs.max(1)
    assert np.array_equal(table.abstained, conf < 0.7) and report.abstained == int((conf < 0.7).sum())
    agree = float((p1.argmax(1) == p2.argmax(1)).mean())
    assert report.agreement["all"] == pytest.approx(agree) and report.agreement["pairwise"][0][1] == pytest.approx(
        agree
    )
    assert table.keys == [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert table.meta["teachers"][1]["weight"] == pytest.approx(0.75)
    assert sum(report.class_counts.values()) == 40 - report.abstained
    csv_out = tmp_path / "labels.csv"
    label_images(
        [tiny_model_dir, second_teacher], str(png_folder), csv_out, weights=[1, 3], min_confidence=0.7, progress=False
    )
    again = read_soft_labels(csv_out)
    assert again.keys == table.keys and np.array_equal(again.abstained, table.abstained)
    np.testing.assert_allclose(again.probs, table.probs, atol=2e-6)
    with pytest.raises(InvalidInputError, match="already exists"):
        label_images([tiny_model_dir], str(png_folder), out, progress=False)


def test_softlabels_source_matches_by_hash_never_a_stale_label(tiny_model_dir, png_folder, tmp_path):
    out = tmp_path / "labels.csv"
    label_images([tiny_model_dir], f"folder:{png_folder}", out, progress=False)
    table = read_soft_labels(out)
    bundle = load_data(f"softlabels:{out},seed=2")
    n = sum(len(bundle.split(s)) for s in ("train", "val", "test"))
    assert n == 40 and bundle.label_names == table.label_names
    image, target = bundle.train[0]
    assert image.shape == (1, 16, 16) and target.dtype == torch.float32 and target.sum() == pytest.approx(1.0)
    row = table.sources.index(str(bundle.train.paths[0]))
    np.testing.assert_allclose(target.numpy(), table.probs[row], atol=1e-6)
    assert bundle.val[0][1].dtype == torch.int64  # metrics on val/test read the argmax class
    assert load_data(f"softlabels:{out},hard=1").train[0][1].dtype == torch.int64

    changed = Path(table.sources[3])
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(changed)  # same path, other pixels: the label is stale
    with pytest.raises(ArtifactError, match="1 labelled image"):
        load_data(f"softlabels:{out}")
    kept = load_data(f"softlabels:{out},stale=skip")
    paths = [str(p) for s in ("train", "val", "test") for p in kept.split(s).paths]
    assert len(paths) == 39 and str(changed) not in paths

    moved = tmp_path / "moved"
    shutil.copytree(png_folder, moved)
    for p in list(moved.rglob("*.png"))[:5]:
        p.rename(p.with_name("renamed_" + p.name))
    found = load_data(f"softlabels:{out},images={moved}")  # found by content, wherever the files are now
    assert sum(len(found.split(s)) for s in ("train", "val", "test")) == 39


def test_array_data_is_keyed_by_pixels_and_dkd_refuses_soft_targets(tiny_model_dir, tmp_path):
    out = tmp_path / "labels.npz"
    label_images([tiny_model_dir], SYNTH, out, split="test", progress=False)
    table = read_soft_labels(out)
    assert table.sources[0].endswith("#test[0]") and len(table.keys[0]) == 64
    bundle = load_data(f"softlabels:{out},val=0.2,test=0.2")
    assert sum(len(bundle.split(s)) for s in ("train", "val", "test")) == len(table.keys)
    cfg = TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=2)
    with pytest.raises(InvalidInputError, match="dkd needs class labels"):
        distill_model(
            RunSettings(
                student="small:tinycnn",
                data=f"softlabels:{out}",
                teachers=[tiny_model_dir],
                losses=["ce:1", "dkd:1"],
                train=cfg,
            ),
            tmp_path / "s",
            progress=False,
        )


def test_label_cli_writes_json_and_refuses_bad_input(tiny_model_dir, png_folder, tmp_path):
    out, report = tmp_path / "l.npz", tmp_path / "report.json"
    r = runner.invoke(
        app,
        [
            "label",
            tiny_model_dir,
            "--data",
            str(png_folder),
            "--out",
            str(out),
            "--min-confidence",
            "0.9",
            "--json",
            str(report),
        ],
    )
    assert r.exit_code == 0, r.output
    got = json.loads(report.read_text())
    assert (
        got["images"] == 40
        and "abstained" in r.output
        and got["abstained"] == int(read_soft_labels(out).abstained.sum())
    )
    r = runner.invoke(app, ["label", tiny_model_dir, "--data", str(png_folder), "--out", str(tmp_path / "l.txt")])
    assert r.exit_code == 3 and ".npz or FILE.csv" in r.output
    r = runner.invoke(
        app, ["label", str(tmp_path / "nope"), "--data", str(png_folder), "--out", str(tmp_path / "x.csv")]
    )
    assert r.exit_code == 4
