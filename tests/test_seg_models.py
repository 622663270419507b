"""Segmentation models in the zoo: U-Net widths, torchvision LR-ASPP / DeepLabV3 heads, tap points, MONAI."""

from __future__ import annotations

import pytest
import torch

from edgekd.errors import InvalidInputError
from edgekd.specs import ModelSpec
from edgekd.students import FeatureTaps, build_model, count_params, is_student, model_task, tap_points

UNETS = ["small:unet_w4", "small:unet_w8", "small:unet_w16", "small:unet_w32", "small:unet_w64"]


def _unet_params(width: int, in_chans: int, k: int, depth: int = 4) -> int:
    """Closed form of the U-Net of Ronneberger et al. with BN: two 3x3 convs (no bias) + 2 BN params per level."""

    def double(cin, cout):
        return 9 * cin * cout + 9 * cout * cout + 4 * cout

    c = [width * 2**i for i in range(depth + 1)]
    enc = double(in_chans, c[0]) + sum(double(c[i - 1], c[i]) for i in range(1, depth))
    dec = sum(double(c[i + 1] + c[i], c[i]) for i in range(depth))
    return enc + double(c[depth - 1], c[depth]) + dec + c[0] * k + k


@pytest.mark.parametrize("name", UNETS)
def test_unet_widths_params_and_shape(name):
    width = int(name.rsplit("w", 1)[1])
    model = build_model(ModelSpec(name=name, num_classes=3, in_chans=1))
    assert count_params(model) == _unet_params(width, 1, 3)
    assert model_task(name) == "segmentation" and is_student(name)
    if width <= 16:
        out = model(torch.zeros(2, 1, 40, 56))  # not a multiple of 16: the decoder follows the skips' sizes
        assert out.shape == (2, 3, 40, 56)


def test_unet_width_ratio_gives_a_10x_student():
    big = count_params(build_model(ModelSpec(name="small:unet_w32", num_classes=2, in_chans=1)))
    small = count_params(build_model(ModelSpec(name="small:unet_w8", num_classes=2, in_chans=1)))
    assert big / small > 10


def test_unet_taps_cover_encoder_and_decoder():
    model = build_model(ModelSpec(name="small:unet_w4", num_classes=2, in_chans=1)).eval()
    taps = tap_points(model)
    assert taps == ["enc1", "enc2", "enc3", "enc4", "bottleneck", "dec4", "dec3", "dec2", "dec1"]
    with FeatureTaps(model, taps) as feats, torch.no_grad():
        model(torch.zeros(1, 1, 32, 32))
    assert feats["enc1"].shape == (1, 4, 32, 32) and feats["bottleneck"].shape == (1, 64, 2, 2)
    assert feats["dec1"].shape == (1, 4, 32, 32) and feats["dec3"].shape == (1, 16, 8, 8)


def test_unet_rejects_unknown_kwargs_and_pretrained():
    with pytest.raises(InvalidInputError, match="unknown keyword argument 'widht'"):
        build_model(ModelSpec(name="small:unet_w8", num_classes=2, kwargs={"widht": 4}))
    with pytest.raises(InvalidInputError, match="no pretrained"):
        build_model(ModelSpec(name="small:unet_w8", num_classes=2), pretrained=True)


@pytest.mark.parametrize("name", ["tv:lraspp_mobilenet_v3_large", "tv:deeplabv3_mobilenet_v3_large"])
def test_torchvision_heads_return_a_logits_tensor(name):
    model = build_model(ModelSpec(name=name, num_classes=2, in_chans=1)).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 64, 64))
    assert torch.is_tensor(out) and out.shape == (1, 2, 64, 64)
    taps = tap_points(model)
    assert taps[0].startswith("backbone.") and taps[-1].startswith("classifier")
    assert model_task(name) == "segmentation"
    with pytest.raises(InvalidInputError, match="unknown keyword"):
        build_model(ModelSpec(name=name, num_classes=2, kwargs={"aux": True}))


def test_monai_unet_through_the_bundle_route():
    pytest.importorskip("monai")
    net_def = {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [4, 8, 16],
        "strides": [2, 2],
    }
    model = build_model(ModelSpec(name="monai:bundle", num_classes=2, in_chans=1, kwargs={"network_def": net_def}))
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    assert model_task("monai:bundle") is None  # the task comes from the data, not the name
