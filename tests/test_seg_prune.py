"""Structural pruning of segmentation models (issue 26 item 5): Torch-Pruning through U-Net skip connections
(channel concatenation), with KD recovery on the bundled lung masks.

The dependency graph must carry a removed encoder channel into the decoder convolution that reads the
concatenated skip tensor; the tests check the widths of every decoder input against the widths of the tensors
concatenated into it, on edgekd's U-Net (``small:unet_w8``, bilinear decoder), and that the pruned network is an ordinary one (it runs, exports to ONNX and
keeps its classes).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.distill import TrainConfig
from edgekd.export import export_bundle
from edgekd.modeldir import load_model_dir, save_model_dir
from edgekd.prune import PruneConfig, PruneTarget, prune_model_dir
from edgekd.prune._pruner import ChannelPruner
from edgekd.specs import Lineage, ModelCard, ModelSpec, Preprocess, Task
from edgekd.students import build_model, count_macs


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_unet_concat_skips_are_pruned_together():
    torch.manual_seed(0)
    net = build_model(ModelSpec(name="small:unet_w8", num_classes=3, in_chans=1)).eval()
    before = count_macs(net, (1, 1, 32, 32))
    pruner = ChannelPruner(
        net, (1, 1, 32, 32), importance="l2", target=PruneTarget.from_options(target_macs=0.5), steps=1, num_classes=3
    )
    assert pruner.classifier == "head"
    record = pruner.step()
    assert record["goal_met"] and record["macs_kept"] <= 0.5 + 0.02
    assert count_macs(net, (1, 1, 32, 32)) < 0.52 * before
    c = _convs(net)
    assert c["head"].out_channels == 3
    widths = {f"enc{i}": c[f"enc{i}.3"].out_channels for i in range(1, 5)} | {
        "bottleneck": c["bottleneck.3"].out_channels,
        **{f"dec{i}": c[f"dec{i}.3"].out_channels for i in range(1, 5)},
    }
    assert any(w < 8 * 2 ** (i - 1) for i, w in ((i, widths[f"enc{i}"]) for i in range(1, 5)))  # encoders pruned
    # each decoder reads [upsampled deeper output, skip]: its input width is the sum of the two, as pruned
    deeper = {4: "bottleneck", 3: "dec4", 2: "dec3", 1: "dec2"}
    for i in range(1, 5):
        assert c[f"dec{i}.0"].in_channels == widths[deeper[i]] + widths[f"enc{i}"]
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 3, 32, 32)
    assert net(torch.randn(1, 1, 48, 80)).shape == (1, 3, 48, 80)  # still fully convolutional


@pytest.mark.slow
def test_prune_model_dir_recovers_with_pixel_kd_and_exports_with_mask_parity(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(name="small:unet_w4", num_classes=2, in_chans=1)
    pre = Preprocess(input_size=(32, 32), data_channels=1, in_chans=1, mean=(0.5,), std=(0.25,))
    card = ModelCard(
        spec=spec,
        task=Task.SEGMENTATION,
        label_names=["background", "lung"],
        preprocess=pre,
        lineage=Lineage(data="lungseg"),
    )
    save_model_dir(build_model(spec), card, tmp_path / "student")
    cfg = PruneConfig(
        target=PruneTarget.from_options(target_macs=0.5),
        recovery_epochs=1,
        losses=["ce:1", "pixkd:1,T=2"],
        latency_batch=None,
        round_to=None,
        train=TrainConfig(lr=1e-3, warmup_epochs=0.0, batch_size=16),
    )
    report = prune_model_dir(tmp_path / "student", tmp_path / "pruned", cfg, progress=False)
    assert report.after.macs <= 0.52 * report.before.macs
    assert {"dice", "hd95", "iou"} <= set(report.metrics_after["test"])
    model, pruned = load_model_dir(tmp_path / "pruned")
    assert pruned.task is Task.SEGMENTATION and pruned.structure  # the widths to rebuild it are stored
    assert any("pixkd" in loss for loss in pruned.lineage.losses)
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    manifest = export_bundle(tmp_path / "pruned", tmp_path / "bundle", n_samples=8)
    [parity] = manifest.parity
    assert parity.passed and parity.mask_dice is not None and parity.top1_agreement > 0.999
