"""Tests of the model zoo (edgekd.students) and of checkpoint import (edgekd.teachers).

No test downloads anything: pretrained weights are served by a fake ``torch.hub.download_url_to_file``.
Only a handful of torchvision models are built, because building all of them takes minutes.
"""

from __future__ import annotations

import importlib.util
import urllib.error

import pytest
import torch
from torch import nn

from edgekd.errors import ArtifactError, DependencyError, InvalidInputError, UnknownNameError
from edgekd.modeldir import ModelSpec
from edgekd.students import (
    MODELS,
    SOURCES,
    build_model,
    count_macs,
    count_params,
    default_zoo_names,
    is_student,
    list_models,
    parse_model_name,
    tap_points,
    zoo_rows,
)
from edgekd.teachers import import_checkpoint, load_checkpoint_state

NATIVE = [
    n for n in list_models("small") if MODELS.meta(n)["base"] is None and MODELS.meta(n)["task"] == "classification"
]  # the segmentation students (small:unet_w*) are pinned in tests/test_seg_models.py
SMALL_TV = ["resnet18", "mobilenet_v3_small", "mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5"]
# Pinned (params, MACs) of every native student at 28x28x1 input with 2 classes.
EXPECTED_28x28x1 = {
    "small:mobilenetv2_x0_5": (689_954, 23_101_472),
    "small:resnet14": (174_450, 20_183_424),
    "small:resnet20": (271_666, 31_021_440),
    "small:resnet32": (466_098, 52_697_472),
    "small:resnet32x4": (7_408_098, 828_732_416),
    "small:resnet8": (77_234, 9_345_408),
    "small:resnet8x4": (1_207_778, 135_099_392),
    "small:tinycnn": (46_674, 2_135_936),
    "small:wrn_16_2": (690_354, 77_183_488),
    "small:wrn_40_2": (2_242_226, 250_591_744),
}


def _build(name: str, num_classes: int = 3, in_chans: int = 3, **kw) -> nn.Module:
    return build_model(ModelSpec(name=name, num_classes=num_classes, in_chans=in_chans, **kw))


def _record_taps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, tuple[int, ...]]]:
    """Run ``model(x)`` and return the output and the shape of every tap point's output."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: shapes.__setitem__(p, tuple(o.shape)))
        for p in tap_points(model)
    ]
    try:
        out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, shapes


def _tap_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    with torch.no_grad():
        return _record_taps(model.eval(), x)[1]


# ---------------------------------------------------------------------------------------------
# Registry and names
# ---------------------------------------------------------------------------------------------


def test_native_students_are_the_documented_ones():
    assert sorted(NATIVE) == sorted(EXPECTED_28x28x1)


def test_list_models_by_source():
    tv = list_models("tv")
    for name in ("tv:resnet18", "tv:resnet50", "tv:mobilenet_v3_small", "tv:vit_b_16"):
        assert name in tv
    assert all(n.startswith("tv:") for n in tv)
    small = list_models("small")
    assert "small:resnet18" in small and "small:resnet8x4" in small
    assert "small:vit_b_16" not in small  # no small-input adaptation for ViTs
    assert MODELS.meta("small:resnet18")["base"] == "tv:resnet18"
    everything = list_models()
    assert everything == sorted(everything) and set(tv) | set(small) <= set(everything)
    assert {MODELS.meta(n)["source"] for n in everything} <= set(SOURCES)
    with pytest.raises(InvalidInputError):
        list_models("bogus")


def test_parse_model_name():
    assert parse_model_name("tv:resnet18") == ("tv", "resnet18")
    assert parse_model_name("small:resnet8x4") == ("small", "resnet8x4")
    with pytest.raises(InvalidInputError) as err:
        parse_model_name("resnet18")
    assert err.value.hint == "prefix the source, e.g. tv:resnet18 or small:resnet8x4"
    assert "tv:resnet18" in err.value.message
    with pytest.raises(InvalidInputError) as err:
        parse_model_name("foo:resnet18")
    assert all(s in str(err.value) for s in ("tv", "timm", "small"))
    with pytest.raises(InvalidInputError):
        parse_model_name("tv:")


def test_unknown_name_suggests_closest():
    with pytest.raises(UnknownNameError) as err:
        _build("tv:resnet81")
    assert "tv:resnet18" in err.value.hint
    assert err.value.exit_code == 3


def test_missing_prefix_in_build_gives_hint():
    with pytest.raises(InvalidInputError, match="prefix the source"):
        _build("resnet18")


@pytest.mark.parametrize(
    ("name", "kwargs", "bad"),
    [
        ("small:resnet8x4", {"widht": 2}, "widht"),
        ("tv:resnet18", {"widht": 2}, "widht"),
        ("tv:mobilenet_v3_small", {"widht_mult": 0.5}, "widht_mult"),  # torchvision swallows this one
        ("small:resnet8", {"num_classes": 5}, "num_classes"),  # reserved: use the ModelSpec field
    ],
)
def test_unknown_or_reserved_kwargs_rejected(name, kwargs, bad):
    with pytest.raises(InvalidInputError) as err:
        _build(name, kwargs=kwargs)
    assert bad in err.value.message


def test_valid_kwargs_reach_the_builder():
    narrow = _build("small:tinycnn", kwargs={"widths": [8, 16]})
    assert count_params(narrow) < count_params(_build("small:tinycnn"))
    half = _build("tv:mobilenet_v3_small", kwargs={"width_mult": 0.5})
    assert count_params(half) < count_params(_build("tv:mobilenet_v3_small"))


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_missing_is_a_dependency_error():
    with pytest.raises(DependencyError) as err:
        _build("timm:resnet18")
    assert err.value.message == "timm is not installed"
    assert "edgekd[timm]" in err.value.hint and err.value.exit_code == 5
    with pytest.raises(DependencyError):
        list_models("timm")
    assert not any(n.startswith("timm:") for n in list_models())


def test_is_student():
    assert is_student("small:resnet8x4") and is_student("small:resnet18")
    assert is_student("tv:mobilenet_v3_small") and is_student("tv:shufflenet_v2_x0_5")
    assert not is_student("tv:resnet50") and not is_student("tv:vit_b_16")
    with pytest.raises(UnknownNameError):
        is_student("tv:resnet81")


# ---------------------------------------------------------------------------------------------
# Native small students
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", NATIVE)
def test_native_student_forward_backward_and_taps(name, in_chans):
    torch.manual_seed(0)
    model = _build(name, num_classes=3, in_chans=in_chans)
    taps = tap_points(model)
    assert taps and set(taps) <= dict(model.named_modules()).keys()
    out, shapes = _record_taps(model, torch.randn(2, in_chans, 32, 32))
    assert out.shape == (2, 3)
    assert list(shapes) == taps and all(len(s) == 4 and s[0] == 2 for s in shapes.values())
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(EXPECTED_28x28x1))
def test_native_student_params_and_macs_pinned(name):
    model = _build(name, num_classes=2, in_chans=1)
    assert (count_params(model), count_macs(model, (1, 1, 28, 28))) == EXPECTED_28x28x1[name]


def test_student_sizes_in_ballpark():
    assert 1.1e6 < count_params(_build("small:resnet8x4", num_classes=100)) < 1.35e6  # CRD: 1.23 M
    assert 7.2e6 < count_params(_build("small:resnet32x4", num_classes=100)) < 7.6e6  # CRD: 7.43 M
    assert count_params(_build("small:tinycnn", num_classes=10)) < 100_000


def test_small_students_have_no_pretrained_weights():
    with pytest.raises(InvalidInputError, match="no pretrained weights"):
        build_model(ModelSpec(name="small:resnet8", num_classes=2), pretrained=True)


def test_cifar_resnet_depth_is_validated():
    from edgekd.students._cifar_resnet import CifarResNet

    with pytest.raises(InvalidInputError, match="6n\\+2"):
        CifarResNet(9, (16, 16, 32, 64), num_classes=2)


# ---------------------------------------------------------------------------------------------
# Torchvision models: small input, input channels, pretrained
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL_TV)
def test_small_input_keeps_resolution(name):
    x = torch.zeros(2, 3, 28, 28)
    plain = _tap_shapes(_build(f"tv:{name}"), x)
    small_model = _build(f"small:{name}")
    small = _tap_shapes(small_model, x)
    assert small_model(x).shape == (2, 3)
    first = next(iter(plain))
    assert list(small) == list(plain)
    assert small[first][-1] > plain[first][-1] and small[first][-2] > plain[first][-2]
    if name == "resnet18":
        assert small["layer1"][-2:] == (28, 28)
        assert isinstance(small_model.maxpool, nn.Identity) and small_model.conv1.kernel_size == (3, 3)


def test_small_prefix_equals_small_input_flag():
    a = _build("small:resnet18").state_dict()
    b = _build("tv:resnet18", small_input=True).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_small_input_unsupported_family():
    with pytest.raises(InvalidInputError, match="small_input is not supported"):
        _build("tv:squeezenet1_0", small_input=True)


def test_tv_in_chans_one():
    model = _build("tv:resnet18", num_classes=5, in_chans=1)
    assert model.conv1.in_channels == 1
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 5)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache whose downloads fail like a machine without internet."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return monkeypatch


def test_pretrained_offline_is_a_dependency_error(offline_hub):
    with pytest.raises(DependencyError) as err:
        build_model(ModelSpec(name="tv:resnet18", num_classes=2), pretrained=True)
    msg = str(err.value)
    assert err.value.message.startswith("could not download pretrained weights for tv:resnet18: ")
    assert "name resolution" in msg and "\n" not in msg
    assert "TORCH_HOME" in err.value.hint and err.value.exit_code == 5


def test_pretrained_weights_adapted_to_head_and_channels(offline_hub):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18()

    def fake_download(url, dst, *args, **kwargs):
        torch.save(reference.state_dict(), dst)

    offline_hub.setattr(torch.hub, "download_url_to_file", fake_download)
    model = build_model(ModelSpec(name="tv:resnet18", num_classes=3, in_chans=1), pretrained=True)
    assert model.fc.out_features == 3
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    four = build_model(ModelSpec(name="tv:resnet18", num_classes=1000, in_chans=4), pretrained=True)
    torch.testing.assert_close(four.conv1.weight[:, 3], reference.conv1.weight[:, 0] * 0.75)
    torch.testing.assert_close(four.fc.weight, reference.fc.weight)
    small = build_model(ModelSpec(name="small:resnet18", num_classes=3), pretrained=True)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, nn.Identity)
    torch.testing.assert_close(small.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)


# ---------------------------------------------------------------------------------------------
# Counting and taps
# ---------------------------------------------------------------------------------------------


def test_count_macs_resnet18_matches_paper():
    model = _build("tv:resnet18", num_classes=1000)
    model.train()
    macs = count_macs(model, (1, 3, 224, 224))
    assert abs(macs - 1.82e9) / 1.82e9 < 0.03
    assert all(m.training for m in model.modules())  # mode restored
    assert count_params(model) == sum(p.numel() for p in model.parameters()) == 11_689_512


def test_count_macs_depthwise_and_eval_mode_kept():
    model = _build("tv:mobilenet_v2", num_classes=1000).eval()
    assert abs(count_macs(model, (1, 3, 224, 224)) - 300e6) / 300e6 < 0.03  # Sandler et al.: 300 M
    assert not any(m.training for m in model.modules())


def test_count_macs_is_per_sample_and_validates_shape():
    model = _build("small:tinycnn")
    assert count_macs(model, (4, 3, 28, 28)) == count_macs(model, (1, 3, 28, 28))
    with pytest.raises(InvalidInputError):
        count_macs(model, (1, 3, 0, 28))


def test_tap_points_of_torchvision_models():
    assert tap_points(_build("tv:resnet18")) == ["layer1", "layer2", "layer3", "layer4"]
    assert "features.3" in tap_points(_build("tv:mobilenet_v2"))
    assert tap_points(_build("small:resnet8x4")) == ["layer1", "layer2", "layer3"]


def test_zoo_rows():
    rows = zoo_rows(["small:tinycnn", "tv:regnet_x_400mf"], input_size=28, in_chans=1, num_classes=2)
    tiny, regnet = rows  # tinycnn is measured on the meta device, RegNet's builder needs real tensors
    assert tiny["name"] == "small:tinycnn" and tiny["source"] == "small" and tiny["small_input"] is True
    assert (tiny["params"], tiny["macs"]) == EXPECTED_28x28x1["small:tinycnn"] and tiny["note"] is None
    model = _build("tv:regnet_x_400mf", num_classes=2, in_chans=1)
    assert (regnet["params"], regnet["macs"]) == (count_params(model), count_macs(model, (1, 1, 28, 28)))
    assert regnet["student"] is True and regnet["small_input"] is False
    (squeeze,) = zoo_rows(["tv:squeezenet1_1"], input_size=16, in_chans=3, num_classes=2)
    assert squeeze["macs"] is None and "16x16" in squeeze["note"] and squeeze["params"] > 0
    names = default_zoo_names()
    assert "small:tinycnn" in names and "tv:mobilenet_v3_small" in names
    assert "tv:resnet50" not in names and "small:resnet18" not in names


# ---------------------------------------------------------------------------------------------
# Checkpoint import (edgekd.teachers)
# ---------------------------------------------------------------------------------------------

TINY = ModelSpec(name="small:tinycnn", num_classes=3)


@pytest.fixture
def trained_tiny() -> nn.Module:
    torch.manual_seed(1)
    model = build_model(TINY)
    model(torch.randn(8, 3, 16, 16))  # move the BN running statistics away from their defaults
    return model.eval()


def _same_logits(a: nn.Module, b: nn.Module) -> None:
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_import_wrapped_state_dict(tmp_path, trained_tiny):
    path = tmp_path / "ckpt.pt"
    state = {f"module.{k}": v for k, v in trained_tiny.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = load_checkpoint_state(path)
    assert isinstance(loaded, dict) and not any(k.startswith("module.") for k in loaded)
    imported = import_checkpoint(path, spec=TINY)
    assert not imported.training
    _same_logits(imported, trained_tiny)


def test_import_compiled_model_container(tmp_path, trained_tiny):
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {f"_orig_mod.{k}": v for k, v in trained_tiny.state_dict().items()}}, path)
    _same_logits(import_checkpoint(path, spec=TINY), trained_tiny)


def test_import_safetensors(tmp_path, trained_tiny):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in trained_tiny.state_dict().items()}, str(path))
    _same_logits(import_checkpoint(path, spec=TINY), trained_tiny)


def test_pickled_model_needs_trust(tmp_path, trained_tiny):
    path = tmp_path / "full.pt"
    torch.save(trained_tiny, path)
    with pytest.raises(ArtifactError) as err:
        import_checkpoint(path, spec=TINY)
    assert "pickled Python object" in err.value.message and "--trust-pickle" in err.value.hint
    assert err.value.exit_code == 4
    assert isinstance(load_checkpoint_state(path, trust_pickle=True), nn.Module)
    _same_logits(import_checkpoint(path, spec=TINY, trust_pickle=True), trained_tiny)


def test_wrong_architecture(tmp_path, trained_tiny):
    path = tmp_path / "ckpt.pt"
    torch.save(trained_tiny.state_dict(), path)
    with pytest.raises(ArtifactError) as err:
        import_checkpoint(path, spec=ModelSpec(name="small:resnet8", num_classes=3))
    assert "missing keys" in err.value.message and "unexpected keys" in err.value.message
    assert err.value.message.count(",") <= 12  # at most 5 keys of each kind are listed
    assert "--model" in err.value.hint


def test_classifier_and_channel_mismatch_hints(tmp_path, trained_tiny):
    path = tmp_path / "ckpt.pt"
    torch.save(trained_tiny.state_dict(), path)
    with pytest.raises(ArtifactError) as err:
        import_checkpoint(path, spec=TINY.model_copy(update={"num_classes": 5}))
    assert "--num-classes 3" in err.value.hint
    with pytest.raises(ArtifactError) as err:
        import_checkpoint(path, spec=TINY.model_copy(update={"in_chans": 1}))
    assert "--in-chans 3" in err.value.hint


def test_non_strict_import_ignores_extra_keys(tmp_path, trained_tiny):
    path = tmp_path / "ckpt.pt"
    torch.save({**trained_tiny.state_dict(), "projector.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ArtifactError, match="unexpected"):
        import_checkpoint(path, spec=TINY)
    _same_logits(import_checkpoint(path, spec=TINY, strict=False), trained_tiny)


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_checkpoint_state(tmp_path / "nope.pt")
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    with pytest.raises(ArtifactError, match="unsupported checkpoint format"):
        load_checkpoint_state(text)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_checkpoint_state(corrupt)
    no_state = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, no_state)
    with pytest.raises(ArtifactError, match="no state dict"):
        load_checkpoint_state(no_state)
