import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.distill import RunSettings, TrainConfig, lr_at, train_model
from edgekd.modeldir import CARD_FILE, load_model_dir, read_card, save_model_dir

from .conftest import SYNTH, SYNTH3


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_training_learns_and_writes_model_dir(tiny_model_dir):
    card = read_card(tiny_model_dir)
    out = Path(tiny_model_dir)
    assert card.metrics["test"]["acc"] > 0.8  # synthetic classes are learnable
    from edgekd.data import load_data

    assert card.lineage.data == load_data(SYNTH).spec and card.lineage.losses == ["ce"]
    assert "torch" in card.lineage.versions
    assert (out / "config.yaml").is_file() and (out / "checkpoint" / "last.safetensors").is_file()
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]


def test_model_dir_round_trip_identical_logits(tiny_model_dir, tmp_path):
    model, card = load_model_dir(tiny_model_dir)
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        a = model(x)
    save_model_dir(model, card, tmp_path / "copy")
    model2, card2 = load_model_dir(tmp_path / "copy")
    with torch.no_grad():
        b = model2(x)
    assert torch.equal(a, b)
    assert card2.spec == card.spec and card2.preprocess == card.preprocess


class _Stop(Exception):
    pass


def _stop_after_first(epoch, record):
    if epoch == 1:
        raise _Stop


def test_resume_continues_to_same_result(tmp_path):
    """Interrupt a 2-epoch run after epoch 1, resume it: the result equals the uninterrupted run."""
    from edgekd.data import load_data
    from edgekd.distill import SupervisedObjective, fit, resolve_student

    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, optimizer="sgd", seed=3)
    full = train_model(RunSettings(student="small:tinycnn", data=SYNTH3, train=cfg), tmp_path / "full", progress=False)

    torch.manual_seed(cfg.seed)
    data = load_data(SYNTH3, seed=cfg.seed)
    net, _, pre, _ = resolve_student("small:tinycnn", data)
    with pytest.raises(_Stop):
        fit(
            net,
            SupervisedObjective(pre, data.task),
            data,
            cfg,
            tmp_path / "part",
            preprocess=pre,
            progress=False,
            on_epoch_end=_stop_after_first,
        )
    assert not (tmp_path / "part" / CARD_FILE).exists()  # interrupted: a checkpoint, no model directory
    res = train_model(
        RunSettings(student="small:tinycnn", data=SYNTH3, train=cfg, resume=True), tmp_path / "part", progress=False
    )

    m_full, _ = load_model_dir(tmp_path / "full")
    m_res, _ = load_model_dir(tmp_path / "part")
    for (k, a), b in zip(m_full.state_dict().items(), m_res.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k
    assert res.metrics["test"]["acc"] == pytest.approx(full.metrics["test"]["acc"])


def test_resume_without_checkpoint_fails(tmp_path):
    from edgekd.errors import ArtifactError

    with pytest.raises(ArtifactError, match="no checkpoint"):
        train_model(
            RunSettings(student="small:tinycnn", data=SYNTH, train=TrainConfig(epochs=1), resume=True),
            tmp_path / "none",
            progress=False,
        )


def test_class_weighting_balanced():
    from edgekd.data import load_data
    from edgekd.distill import ClassWeighting, class_weights

    data = load_data("pneumoniamnist")
    w = class_weights(data, ClassWeighting.BALANCED).numpy()
    counts = np.array([1214, 3494])
    assert np.allclose(w, counts.sum() / (2 * counts), rtol=1e-5)


def test_card_is_json(tiny_model_dir):
    raw = json.loads((Path(tiny_model_dir) / CARD_FILE).read_text())
    assert raw["spec"]["name"] == "small:tinycnn" and raw["task"] == "binary"


def test_artifacts_are_not_private(tiny_model_dir, tmp_path):
    """Model directories and bundles are handed to other people: mkstemp's 0600 must not leak through."""
    import os
    import stat

    from edgekd.modeldir import atomic_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "bundle") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "bundle").stat().st_mode) == 0o755
