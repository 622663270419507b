"""Structural pruning: every criterion, targets, kept layers, reload without pickle, recovery, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import InvalidInputError, UnknownNameError
from edgekd.modeldir import ModelSpec, load_model_dir, save_model_dir
from edgekd.prune import (
    IMPORTANCE,
    REPORT_FILE,
    ChannelPruner,
    PruneConfig,
    PruneTarget,
    find_classifier,
    prune_model_dir,
    recalibrate_batchnorm,
)
from edgekd.students import build_model, capture_structure, count_macs

from .conftest import SYNTH

CRITERIA = ["bn-scale", "l1", "l2", "lamp", "random", "taylor"]
runner = CliRunner()


def _grads(model: nn.Module) -> None:
    """Gradients for the taylor criterion (any loss works for the test)."""
    torch.manual_seed(0)
    model(torch.randn(8, 1, 16, 16)).logsumexp(1).sum().backward()


def test_registry_has_every_criterion():
    assert IMPORTANCE.names() == CRITERIA
    with pytest.raises(UnknownNameError, match="importance criterion"):
        IMPORTANCE.get("l3")


@pytest.mark.parametrize("criterion", CRITERIA)
def test_each_criterion_prunes_and_reloads_identically(criterion, tiny_model_dir, tmp_path):
    model, card = load_model_dir(tiny_model_dir)
    pruner = ChannelPruner(
        model,
        (1, 1, 16, 16),
        importance=criterion,
        target=PruneTarget.from_options(ratio=0.4),
        num_classes=2,
        grad_fn=_grads,
    )
    record = pruner.step()
    assert record["macs"] < pruner.base["macs"]
    structure = capture_structure(model, reference=build_model(card.spec))
    assert structure  # some widths changed
    save_model_dir(model, card.model_copy(update={"structure": structure, "params": None}), tmp_path / "p")
    reloaded, rcard = load_model_dir(tmp_path / "p")
    x = torch.randn(5, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert rcard.structure == structure


def test_macs_target_reached_within_tolerance():
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="small:resnet8", num_classes=2, in_chans=1))
    base = count_macs(model, (1, 1, 16, 16))
    pruner = ChannelPruner(
        model, (1, 1, 16, 16), importance="l2", target=PruneTarget.from_options(target_macs=0.5), steps=2, num_classes=2
    )
    first, second = pruner.step(), pruner.step()
    assert first["goal"] == pytest.approx(0.75) and second["goal"] == pytest.approx(0.5)
    assert 0.70 <= first["macs_kept"] <= 0.75
    assert 0.45 <= second["macs_kept"] <= 0.50 and second["goal_met"]
    assert count_macs(model, (1, 1, 16, 16)) == second["macs"] < base


def test_params_target_reached():
    model = build_model(ModelSpec(name="small:tinycnn", num_classes=3, in_chans=1))
    pruner = ChannelPruner(
        model, (1, 1, 16, 16), importance="l1", target=PruneTarget.from_options(target_params=0.6), num_classes=3
    )
    rec = pruner.step()
    assert rec["goal_met"] and 0.5 <= rec["params_kept"] <= 0.6


def test_classifier_and_kept_layers_untouched():
    model = build_model(ModelSpec(name="small:resnet8", num_classes=2, in_chans=1))
    before = {k: v.shape for k, v in model.state_dict().items()}
    pruner = ChannelPruner(
        model,
        (1, 1, 16, 16),
        importance="l2",
        target=PruneTarget.from_options(target_macs=0.6),
        keep=["layer2"],
        num_classes=2,
    )
    assert pruner.step()["goal_met"]
    after = model.state_dict()
    assert find_classifier(model, 2) == "fc" and model.fc.out_features == 2
    kept = [k for k in before if k.startswith("layer2.")]
    assert kept and all(after[k].shape == before[k] for k in kept)
    assert any(after[k].shape != before[k] for k in before if k.startswith("layer1."))


def test_round_to_keeps_multiples():
    model = build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1))
    ChannelPruner(
        model,
        (1, 1, 16, 16),
        importance="l2",
        target=PruneTarget.from_options(ratio=0.3),
        round_to=8,
        global_pruning=False,
        num_classes=2,
    ).step()
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert widths != [16, 32, 48, 64] and all(w % 8 == 0 for w in widths)


def test_bad_targets_and_keep_paths():
    with pytest.raises(InvalidInputError, match="exactly one"):
        PruneTarget.from_options()
    with pytest.raises(InvalidInputError, match="exactly one"):
        PruneTarget.from_options(ratio=0.3, target_macs=0.5)
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        PruneTarget.from_options(target_macs=1.5)
    model = build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1))
    with pytest.raises(InvalidInputError, match="layer9"):
        ChannelPruner(
            model,
            (1, 1, 16, 16),
            importance="l2",
            target=PruneTarget.from_options(ratio=0.3),
            keep=["layer9"],
            num_classes=2,
        )


@pytest.mark.parametrize("kd", [True, False], ids=["kd", "ce"])
def test_prune_model_dir_with_recovery(kd, tiny_model_dir, tmp_path):
    from edgekd.distill import TrainConfig

    train = TrainConfig(batch_size=32, lr=1e-3, warmup_epochs=0.0, max_steps_per_epoch=2)
    cfg = PruneConfig(
        importance="lamp",
        target=PruneTarget.from_options(target_macs=0.6),
        steps=2,
        recovery_epochs=1,
        kd=kd,
        latency_batch=8 if kd else None,
        latency_s=0.2,
        train=train,
    )
    out = tmp_path / "pruned"
    from edgekd.bench import model_latency_ms

    report = prune_model_dir(tiny_model_dir, out, cfg, latency=model_latency_ms, progress=False)
    assert report.target_met and report.recovery == ("kd" if kd else "ce")
    assert report.after.macs <= 0.6 * report.before.macs and report.after.params < report.before.params
    assert report.after.size_bytes < report.before.size_bytes
    assert (report.after.latency_ms is not None) == kd and (report.latency_speedup is not None) == kd
    model, card = load_model_dir(out)  # the pruned architecture from the card, no pickle
    assert card.structure and card.lineage.stage == "prune" and card.lineage.parent == str(tiny_model_dir)
    assert card.lineage.notes["importance"] == "lamp" and card.lineage.notes["steps"] == 2
    assert card.lineage.teachers == ([str(tiny_model_dir)] if kd else [])
    assert card.macs == report.after.macs and "test" in card.metrics
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2]
    assert ("kd" in hist[0]) == kd
    assert json.loads((out / REPORT_FILE).read_text())["target_met"]
    assert not (out / ".recovery").exists()


def test_cli_prune_json_and_exit_codes(tiny_model_dir, tmp_path):
    out = tmp_path / "p"
    args = [
        "prune",
        tiny_model_dir,
        "--out",
        str(out),
        "--target-macs",
        "0.7",
        "--recovery-epochs",
        "0",
        "--latency-batch",
        "0",
        "--json",
        "-",
        "--quiet",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["after"]["macs"] <= 0.7 * payload["before"]["macs"] and payload["recovery"] == "none"
    assert load_model_dir(out)[1].structure

    missing = runner.invoke(app, ["prune", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--ratio", "0.3"])
    assert missing.exit_code == 4
    bad = runner.invoke(
        app, ["prune", tiny_model_dir, "--out", str(tmp_path / "y"), "--importance", "l3", "--ratio", "0.3"]
    )
    assert bad.exit_code == 3 and "l1" in bad.output
    no_target = runner.invoke(app, ["prune", tiny_model_dir, "--out", str(tmp_path / "z")])
    assert no_target.exit_code == 3
    bad_keep = runner.invoke(
        app,
        ["prune", tiny_model_dir, "--out", str(tmp_path / "k"), "--ratio", "0.3", "--keep", "layer9", "--data", SYNTH],
    )
    assert bad_keep.exit_code == 3 and not (tmp_path / "k").exists()  # failure leaves nothing


def test_recalibrate_batchnorm_is_the_cumulative_batch_statistics():
    """With momentum None, PyTorch's running stats are the mean of the batch means and of the unbiased batch
    variances (torch.nn.BatchNorm2d docs); recalibration must end exactly there and restore the layer."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU()).eval()
    batches = [(torch.randint(0, 256, (8, 1, 9, 9), dtype=torch.uint8), torch.zeros(8)) for _ in range(4)]
    pre = lambda x: x.float() / 255  # noqa: E731
    with torch.no_grad():
        z = [net[0](pre(x)) for x, _ in batches]
    seen = recalibrate_batchnorm(net, iter(batches), pre)
    bn = net[1]
    assert seen == 32 and not net.training and bn.momentum == 0.3 and int(bn.num_batches_tracked) == 4
    expect_mean = torch.stack([t.mean((0, 2, 3)) for t in z]).mean(0)
    expect_var = torch.stack([t.var((0, 2, 3), unbiased=True) for t in z]).mean(0)
    assert torch.allclose(bn.running_mean, expect_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, expect_var, rtol=1e-5)
    before = bn.running_mean.clone()
    assert recalibrate_batchnorm(net, iter([]), pre) == 0 and torch.equal(bn.running_mean, before)  # no data: kept
    assert recalibrate_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3)), iter(batches), pre) == 0


def test_pruning_re_estimates_batchnorm_statistics(tiny_model_dir, tmp_path):
    """After a step, a batch norm behind a pruned convolution describes the pruned network, not the unpruned one
    (stale statistics silenced a pruned U-Net's lungs in eval mode: val Dice 0 on an AVX2 run). Here the source's
    statistics are made wrong on purpose: the re-estimated ones must score better on validation and be kept."""
    from edgekd.data import load_data
    from edgekd.distill import TrainConfig

    model, card = load_model_dir(tiny_model_dir)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.add_(3.0)
            m.running_var.mul_(50.0)
    save_model_dir(model, card, tmp_path / "stale")
    train_set = load_data(SYNTH).train
    n_train = len(train_set)
    train = TrainConfig(batch_size=n_train, lr=1e-3, warmup_epochs=0.0)  # one calibration batch: all of train
    cfg = PruneConfig(
        target=PruneTarget.from_options(target_macs=0.5),
        recovery_epochs=0,
        latency_batch=None,
        round_to=None,
        train=train,
    )
    report = prune_model_dir(tmp_path / "stale", tmp_path / "p", cfg, progress=False)
    step = report.steps[0]
    assert step["bn_recalibrated"] == n_train and step["bn_val"]["metric"] == "auroc"
    assert step["bn_val"]["kept"] and step["bn_val"]["re_estimated"] > step["bn_val"]["stale"] + 0.1
    pruned, pcard = load_model_dir(tmp_path / "p")
    bns = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    seen = {}
    hook = bns[1].register_forward_pre_hook(lambda m, i: seen.update(z=i[0].clone()))  # returns None
    pruned.train()
    with torch.no_grad():  # the one calibration batch, as recalibration saw it (train-mode BN before it)
        pruned(pcard.preprocess(torch.stack([train_set[i][0] for i in range(n_train)])))
    hook.remove()
    z = seen["z"]
    assert torch.allclose(bns[1].running_mean, z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bns[1].running_var, z.var((0, 2, 3), unbiased=True), rtol=1e-4)
    off = PruneConfig(**{**cfg.model_dump(), "bn_batches": 0})
    assert "bn_recalibrated" not in prune_model_dir(tmp_path / "stale", tmp_path / "q", off, progress=False).steps[0]


def test_re_estimated_batchnorm_is_not_kept_when_validation_prefers_the_old(tiny_model_dir, tmp_path, monkeypatch):
    """Measured, not assumed: when the re-estimated statistics score no better on validation, the old ones stay."""
    import edgekd.prune._api as api

    scores = iter([0.9, 0.6])  # stale, then re-estimated
    monkeypatch.setattr(api, "_val_score", lambda *a: next(scores))
    from edgekd.distill import TrainConfig

    cfg = PruneConfig(
        target=PruneTarget.from_options(target_macs=0.5),
        recovery_epochs=0,
        latency_batch=None,
        round_to=None,
        train=TrainConfig(batch_size=32, warmup_epochs=0.0),
    )
    report = prune_model_dir(tiny_model_dir, tmp_path / "p", cfg, progress=False)
    assert report.steps[0]["bn_val"] == {"metric": "auroc", "stale": 0.9, "re_estimated": 0.6, "kept": False}
    off = prune_model_dir(
        tiny_model_dir, tmp_path / "q", PruneConfig(**{**cfg.model_dump(), "bn_batches": 0}), progress=False
    )
    assert off.steps and "bn_val" not in off.steps[0]
    a, _ = load_model_dir(tmp_path / "p")
    b, _ = load_model_dir(tmp_path / "q")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k  # the same pruned network with the statistics the step left
