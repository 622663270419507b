"""Tests of edgekd.data: sources, spec parsing, bundles, preprocessing, augmentation and loaders."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.data import (
    SOURCES,
    Augment,
    AugmentedDataset,
    ChannelMode,
    DataBundle,
    Task,
    list_sources,
    load_data,
    make_loader,
    parse_data_spec,
)
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError, UnknownNameError

# ---------------------------------------------------------------- helpers


def _write_npz(path: Path, labels: dict[str, np.ndarray], shape=(8, 8), rgb=False, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, lab in labels.items():
        size = (len(lab), *shape, 3) if rgb else (len(lab), *shape)
        arrays[f"{split}_images"] = rng.integers(0, 256, size, dtype=np.uint8)
        arrays[f"{split}_labels"] = lab.astype(np.uint8)
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _labels(rng, n, width, high):
    return rng.integers(0, high, (n, width))


def _png(path: Path, value: int, size=(10, 12), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
    Image.fromarray(np.full(shape, value, np.uint8), mode=mode).save(path)
    return path


def _folder(root: Path, classes=("cat", "dog"), per_class=10, **kw) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _png(root / name / f"{i}.png", 40 + 100 * c + i, **kw)
    return root


# ---------------------------------------------------------------- bundled PneumoniaMNIST


@pytest.fixture(scope="module")
def pneumonia() -> DataBundle:
    return load_data("pneumoniamnist")


def test_pneumoniamnist_bundle(pneumonia):
    b = pneumonia
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [4708, 524, 624]
    assert b.task is Task.BINARY and b.num_classes == 2
    assert b.label_names == ["normal", "pneumonia"]
    assert b.channels == 1 and b.image_size == (28, 28)
    assert b.class_counts().tolist() == [1214, 3494]
    assert np.bincount(b.labels("test")).tolist() == [234, 390]
    assert b.spec == "pneumoniamnist"
    image, target = b.train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
    assert target.dtype == torch.int64 and target.ndim == 0
    assert 0.3 < b.mean[0] < 0.8 and 0.05 < b.std[0] < 0.4


def test_split_name_checked(pneumonia):
    with pytest.raises(InvalidInputError, match="unknown split"):
        pneumonia.split("training")


def test_pneumoniamnist_takes_no_options():
    with pytest.raises(InvalidInputError, match="valid keys for pneumoniamnist: none"):
        load_data("pneumoniamnist,size=64")


# ---------------------------------------------------------------- medmnist npz


def test_medmnist_multilabel(tmp_path):
    rng = np.random.default_rng(1)
    path = _write_npz(
        tmp_path / "chest.npz", {s: _labels(rng, n, 5, 2) for s, n in [("train", 20), ("val", 6), ("test", 7)]}
    )
    b = load_data(f"medmnist:{path}")
    assert b.task is Task.MULTILABEL and b.num_classes == 5
    assert b.label_names == [f"class_{i}" for i in range(5)]
    _, target = b.train[3]
    assert target.dtype == torch.float32 and target.shape == (5,)
    assert b.labels("val").shape == (6, 5) and b.labels("val").dtype == np.float32
    assert b.class_counts().tolist() == b.labels("train").sum(0).astype(int).tolist()


def test_medmnist_multiclass_with_names(tmp_path):
    labels = {"train": np.arange(20).reshape(-1, 1) % 4, "val": np.zeros((3, 1)), "test": np.ones((3, 1))}
    path = _write_npz(tmp_path / "blood.npz", labels)
    b = load_data(f"medmnist:{path},labels=a;b;c;d")
    assert b.task is Task.MULTICLASS and b.num_classes == 4
    assert b.label_names == ["a", "b", "c", "d"]
    assert b.class_counts().tolist() == [5, 5, 5, 5]
    assert int(b.train[5][1]) == 1
    with pytest.raises(InvalidInputError, match="label names"):
        load_data(f"medmnist:{path},labels=a;b")


def test_medmnist_rgb(tmp_path):
    labels = {s: np.array([[0], [1], [1]]) for s in ("train", "val", "test")}
    path = _write_npz(tmp_path / "derma.npz", labels, shape=(6, 9), rgb=True)
    raw = np.load(path)["train_images"]
    b = load_data(f"medmnist:{path}")
    assert b.task is Task.BINARY and b.channels == 3 and b.image_size == (6, 9)
    image, _ = b.train[1]
    assert image.shape == (3, 6, 9)
    assert torch.equal(image, torch.from_numpy(raw[1].transpose(2, 0, 1).copy()))
    assert len(b.mean) == 3


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"val_labels": None}, "lacks key 'val_labels'"),
        ({"train_images": np.zeros((4, 8, 8), np.float32)}, "dtype float32"),
        ({"test_labels": np.zeros((5, 1), np.uint8)}, "4 test images but 5 labels"),
        ({"train_images": np.zeros((4, 8, 8, 8), np.uint8)}, "expected \\(N, H, W\\)"),
    ],
)
def test_medmnist_malformed(tmp_path, overrides, match):
    labels = {s: np.array([[0], [1], [0], [1]]) for s in ("train", "val", "test")}
    path = _write_npz(tmp_path / "bad.npz", labels, **overrides)
    with pytest.raises(ArtifactError, match=match):
        load_data(f"medmnist:{path}")


def test_medmnist_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_data(f"medmnist:{tmp_path / 'nope.npz'}")


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_shaped():
    spec = "synthetic:classes=3,n=60,size=12,channels=2,seed=5"
    a, b, c = load_data(spec), load_data(spec), load_data(spec.replace("seed=5", "seed=6"))
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.targets, b.test.targets)
    assert not np.array_equal(a.train.images, c.train.images)
    assert a.train.images.shape == (60, 2, 12, 12) and a.train.images.dtype == np.uint8
    assert len(a.val) == len(a.test) == 15
    assert a.task is Task.MULTICLASS and a.class_counts().tolist() == [20, 20, 20]
    assert a.spec == "synthetic:channels=2,classes=3,n=60,seed=5,size=12"


def test_synthetic_seed_argument_and_defaults():
    a = load_data("synthetic", seed=3)
    assert a.spec == "synthetic:seed=3" and a.task is Task.BINARY
    assert len(a.train) == 256 and a.image_size == (16, 16) and a.channels == 1
    assert len(a.val) == 64
    assert np.array_equal(a.train.images, load_data("synthetic:seed=3").train.images)


def test_synthetic_is_learnable():
    b = load_data("synthetic:classes=4,n=200,size=16")
    x = b.train.images.reshape(len(b.train), -1).astype(np.float32)
    means = np.stack([x[b.train.targets == k].mean(0) for k in range(4)])
    gaps = [np.abs(means[i] - means[j]).max() for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) > 40  # class means differ clearly (blob positions)
    test = b.test.images.reshape(len(b.test), -1).astype(np.float32)
    pred = ((test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == b.test.targets).mean() > 0.9  # even nearest-class-mean separates them


def test_synthetic_multilabel():
    b = load_data("synthetic:classes=3,n=40,task=multilabel")
    assert b.task is Task.MULTILABEL and b.num_classes == 3
    _, target = b.train[0]
    assert target.dtype == torch.float32 and target.shape == (3,)
    assert set(np.unique(b.labels("train"))) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "spec", ["synthetic:classes=1", "synthetic:n=abc", "synthetic:task=regression", "synthetic:size=2"]
)
def test_synthetic_bad_values(spec):
    with pytest.raises(InvalidInputError):
        load_data(spec)


# ---------------------------------------------------------------- imagefolder


def test_imagefolder_seeded_split(tmp_path):
    root = _folder(tmp_path / "pets", per_class=10)
    b = load_data(f"imagefolder:{root},val=0.2,test=0.2,seed=1")
    assert b.label_names == ["cat", "dog"] and b.task is Task.BINARY
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [12, 4, 4]
    assert b.channels == 1 and b.image_size == (10, 12)
    assert b.class_counts().tolist() == [6, 6]
    image, target = b.val[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 10, 12)
    assert int(image[0, 0, 0]) == 40 + 100 * int(target) + int(b.val.paths[0].stem)
    again = load_data(f"imagefolder:{root},val=0.2,test=0.2,seed=1")
    assert again.val.paths == b.val.paths
    assert load_data(f"imagefolder:{root},val=0.2,test=0.2,seed=2").val.paths != b.val.paths


def test_imagefolder_explicit_splits_size_and_rgb(tmp_path):
    for split, n in [("train", 4), ("val", 2), ("test", 3)]:
        for c, name in enumerate(["a", "b", "c"]):
            for i in range(n):
                _png(tmp_path / split / name / f"{i}.png", 50 * c, size=(8, 8) if i else (5, 7), mode="RGB")
    b = load_data(f"imagefolder:{tmp_path},size=6")
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [12, 6, 9]
    assert b.task is Task.MULTICLASS and b.label_names == ["a", "b", "c"]
    assert b.channels == 3 and b.image_size == (6, 6)
    assert b.train[0][0].shape == (3, 6, 6)
    with pytest.raises(InvalidInputError, match=r"is 8x8 \(H x W\) but .*0.png is 5x7") as info:
        load_data(f"imagefolder:{tmp_path},channels=1")  # sizes differ and no size= says how to resize
    assert "size=N" in info.value.hint


def test_imagefolder_carves_missing_val(tmp_path):
    _folder(tmp_path / "train", per_class=10)
    _folder(tmp_path / "test", per_class=2)
    b = load_data(f"imagefolder:{tmp_path},val=0.2")
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [16, 4, 4]


def test_imagefolder_broken_image(tmp_path):
    _folder(tmp_path, per_class=3)
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    with pytest.raises(ArtifactError, match="broken.png"):
        load_data(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("layout, match", [("empty", "no class folders"), ("empty_class", "has no images")])
def test_imagefolder_empty(tmp_path, layout, match):
    if layout == "empty_class":
        _folder(tmp_path, per_class=2)
        (tmp_path / "zebra").mkdir()
        (tmp_path / "zebra" / "notes.txt").write_text("no images here")
    with pytest.raises(ArtifactError, match=match) as info:
        load_data(f"imagefolder:{tmp_path}")
    assert info.value.hint


def test_imagefolder_missing_folder(tmp_path):
    with pytest.raises(ArtifactError, match="commas are not supported"):
        load_data(f"imagefolder:{tmp_path / 'missing'}")


# ---------------------------------------------------------------- csv


def test_csv_with_header_and_seeded_split(tmp_path):
    rows = ["path,label"]
    for i in range(12):
        label = "pneumonia" if i % 2 else "normal"
        _png(tmp_path / "img" / f"{i}.png", 100 + i)
        rows.append(f"img/{i}.png,{label}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    b = load_data(f"csv:{tmp_path / 'labels.csv'},val=0.2,test=0.2")
    assert b.label_names == ["normal", "pneumonia"]
    assert sum(len(b.split(s)) for s in ("train", "val", "test")) == 12
    assert len(b.val) == 2 and len(b.test) == 2
    assert b.class_counts().tolist() == [4, 4]


def test_csv_split_column(tmp_path):
    rows = []
    for i, split in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2):
        _png(tmp_path / f"{i}.png", i)
        rows.append(f"{i}.png,{'b' if i % 2 else 'a'},{split}")
    (tmp_path / "t.csv").write_text("\n".join(rows))
    b = load_data(f"csv:{tmp_path / 't.csv'}")
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [4, 2, 2]
    assert b.labels("test").tolist() == [0, 1]


def test_csv_missing_file_names_row(tmp_path):
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "b.png", 2)
    (tmp_path / "t.csv").write_text("path,label\na.png,x\nb.png,y\nc.png,y\n")
    with pytest.raises(ArtifactError, match="row 4"):
        load_data(f"csv:{tmp_path / 't.csv'}")


def test_csv_bad_split_value(tmp_path):
    _png(tmp_path / "a.png", 1)
    (tmp_path / "t.csv").write_text("a.png,x,training\n")
    with pytest.raises(ArtifactError, match="row 1: split 'training'"):
        load_data(f"csv:{tmp_path / 't.csv'}")


# ---------------------------------------------------------------- torchvision


def test_tv_offline_without_download(tmp_path):
    with pytest.raises(DependencyError, match="CIFAR10 is not under") as info:
        load_data("tv:cifar10", root=str(tmp_path))
    assert "--download" in info.value.hint
    assert info.value.exit_code == 5


def test_tv_download_network_failure(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DependencyError, match="could not download MNIST") as info:
        load_data("tv:MNIST", download=True, root=str(tmp_path))
    assert "\n" not in str(info.value)


def test_tv_converts_and_splits(tmp_path, monkeypatch):
    import torchvision.datasets

    class FakeCIFAR:
        classes = ["plane", "car"]

        def __init__(self, root, train=True, download=False):
            n = 40 if train else 10
            self.data = np.arange(n * 4 * 4 * 3, dtype=np.int64).reshape(n, 4, 4, 3).astype(np.uint8)
            self.targets = [i % 2 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR)
    b = load_data("tv:Cifar10", root=str(tmp_path))
    assert [len(b.split(s)) for s in ("train", "val", "test")] == [36, 4, 10]
    assert b.channels == 3 and b.image_size == (4, 4) and b.label_names == ["plane", "car"]
    assert torch.equal(b.test[1][0], torch.from_numpy(FakeCIFAR("", train=False).data[1].transpose(2, 0, 1).copy()))


def test_tv_unknown_name():
    with pytest.raises(UnknownNameError, match="cifar11") as info:
        load_data("tv:cifar11")
    assert "CIFAR10" in info.value.hint


# ---------------------------------------------------------------- spec parsing and registry


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("pneumoniamnist", ("pneumoniamnist", None, {})),
        ("PneumoniaMNIST", ("pneumoniamnist", None, {})),
        ("medmnist:/d/x.npz", ("medmnist", "/d/x.npz", {})),
        ("imagefolder:/dir,size=64", ("imagefolder", "/dir", {"size": "64"})),
        ("synthetic:classes=3,n=200", ("synthetic", None, {"classes": "3", "n": "200"})),
        ("synthetic,seed=2", ("synthetic", None, {"seed": "2"})),
        ("tv:CIFAR10", ("tv", "CIFAR10", {})),
        ("medmnist:/d/a=b.npz,labels=x;y", ("medmnist", "/d/a=b.npz", {"labels": "x;y"})),
    ],
)
def test_parse_data_spec(spec, expected):
    assert parse_data_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", "imagefolder:/d,size=64,size=32", "imagefolder:/my,dir", ":x"])
def test_parse_data_spec_errors(spec):
    with pytest.raises(InvalidInputError):
        parse_data_spec(spec)


def test_unknown_source_suggests():
    with pytest.raises(UnknownNameError) as info:
        load_data("pneumonia")
    assert "pneumoniamnist" in info.value.hint
    assert info.value.exit_code == 3


def test_unknown_option_names_valid_keys():
    with pytest.raises(InvalidInputError, match="unknown option 'clases'") as info:
        load_data("synthetic:clases=3")
    assert "classes" in info.value.hint


def test_argument_checks():
    with pytest.raises(InvalidInputError, match="needs an argument"):
        load_data("imagefolder")
    with pytest.raises(InvalidInputError, match="takes no argument"):
        load_data("pneumoniamnist:extra")


def test_sources_registered():
    assert list_sources() == [
        "csv",
        "dicom",
        "imagefolder",
        "lungseg",
        "medmnist",
        "pneumoniamnist",
        "seg",
        "softlabels",
        "synthetic",
        "tv",
    ]
    for name in list_sources():
        meta = SOURCES.meta(name)
        assert meta["help"] and meta["example"].startswith(name)


# ---------------------------------------------------------------- preprocess


def test_preprocess_default_adapt(pneumonia):
    pre = pneumonia.preprocess()
    assert pre.channel_mode is ChannelMode.ADAPT
    assert pre.input_size == (28, 28) and pre.in_chans == 1 and pre.mean == pneumonia.mean


def test_preprocess_repeat_normalises(pneumonia):
    pre = pneumonia.preprocess(input_size=(32, 32), in_chans=3)
    assert pre.channel_mode is ChannelMode.REPEAT and pre.in_chans == 3 and len(pre.std) == 3
    images = torch.stack([pneumonia.train[i][0] for i in range(8)])
    out = pre(images)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert torch.equal(out[:, 0], out[:, 2])
    same = pneumonia.preprocess(in_chans=3, input_size=(28, 28))(images)
    expected = (images.float() / 255 - pneumonia.mean[0]) / pneumonia.std[0]
    assert torch.allclose(same[:, 1:2], expected, atol=1e-5)


def test_train_statistics_normalise_to_unit(pneumonia):
    images = torch.from_numpy(pneumonia.train.images[:2000])
    x = pneumonia.preprocess()(images)
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


# ---------------------------------------------------------------- augmentation


@pytest.fixture(scope="module")
def small() -> DataBundle:
    return load_data("synthetic:classes=2,n=32,size=16")


def test_augment_deterministic(small):
    a = AugmentedDataset(small.train, Augment.preset("medical"), seed=3)
    b = AugmentedDataset(small.train, Augment.preset("medical"), seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    for i in range(5):
        assert torch.equal(a[i][0], b[i][0])
        assert a.params(i) == b.params(i, 2)
        assert torch.equal(a[i][0], a.apply(small.train[i][0], a.params(i, 2)))
        assert a[i][0].dtype == torch.uint8 and a[i][0].shape == (1, 16, 16)
    b.set_epoch(3)
    differ = sum(not torch.equal(a[i][0], b[i][0]) for i in range(10))
    assert differ >= 9


def test_augment_none_is_identity(small):
    aug = AugmentedDataset(small.train, Augment.preset("none"), seed=0)
    for i in range(4):
        assert torch.equal(aug[i][0], small.train[i][0])
        assert int(aug[i][1]) == int(small.train[i][1])
    assert np.array_equal(aug.targets, small.train.targets)


def test_augment_medical_never_flips(small):
    aug = AugmentedDataset(small.train, Augment.preset("medical"), seed=0)
    assert Augment.preset("medical").hflip is False
    assert not any(aug.params(i, e)["flip"] for i in range(50) for e in range(4))
    assert all(abs(aug.params(i, 0)["angle"]) <= 10 for i in range(50))


def test_augment_light_flips_exactly():
    light = AugmentedDataset([], Augment(hflip=True), seed=0)
    flips = [light.params(i, 0)["flip"] for i in range(100)]
    assert 20 < sum(flips) < 80
    image = torch.arange(12, dtype=torch.uint8).reshape(1, 3, 4)
    assert torch.equal(light.apply(image, {**light.params(0), "flip": True}), image.flip(-1))


def test_augment_crop_is_a_shift():
    aug = AugmentedDataset([], Augment(crop_padding=2), seed=0)
    image = torch.arange(64, dtype=torch.uint8).reshape(1, 8, 8)
    params = {**aug.params(0, 0), "dy": 3, "dx": 2}  # window starts 1 row below the original
    assert torch.equal(aug.apply(image, params)[:, :7], image[:, 1:])


def test_augment_geometry_matches_torch():
    import torch.nn.functional as F

    aug = AugmentedDataset([], Augment(crop_padding=2, hflip=True), seed=0)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 9, 7), dtype=np.uint8))
    for dy, dx in [(0, 0), (1, 4), (4, 2)]:
        params = {**aug.params(0, 0), "dy": dy, "dx": dx, "flip": dx == 4}
        ref = F.pad(image.float()[None], (2, 2, 2, 2), mode="reflect")[0, :, dy : dy + 9, dx : dx + 7]
        ref = ref.flip(-1) if params["flip"] else ref
        assert torch.equal(aug.apply(image, params), ref.to(torch.uint8))
    square = image[:, :7, :7]
    turned = aug.apply(square, {**aug.params(0, 0), "pad": 0, "dy": 0, "dx": 0, "flip": False, "angle": 90.0})
    assert torch.equal(turned, torch.rot90(square, -1, (1, 2)))


def test_augment_zoom_matches_torch_affine_grid():
    """Zoom about the centre is torch's affine_grid/grid_sample with theta = I / scale (align_corners=True)."""
    import torch.nn.functional as F

    aug = AugmentedDataset([], Augment(scale=0.5), seed=0)
    base = {**aug.params(0, 0), "pad": 0, "dy": 0, "dx": 0, "flip": False, "angle": 0.0, "gamma": 1.0}
    yy, xx = np.mgrid[0:17, 0:17]
    image = torch.from_numpy(((yy * 13 + xx * 7) % 256).astype(np.uint8)[None])  # smooth: no reflection reached
    for zoom in (1.25, 1.5):
        theta = torch.tensor([[[1 / zoom, 0.0, 0.0], [0.0, 1 / zoom, 0.0]]])
        grid = F.affine_grid(theta, (1, 1, 17, 17), align_corners=True)
        ref = F.grid_sample(image.float()[None], grid, mode="bilinear", align_corners=True)[0]
        ours = aug.apply(image, {**base, "scale": zoom})
        assert (ours.float() - ref.round()).abs().max() <= 1  # the same map; rounding of x.5 may differ
    # zoom in by 2 about the centre of a 5 x 5 ramp: the centre stays, the edges come from the middle half
    ramp = torch.arange(5, dtype=torch.uint8).mul(50).expand(1, 5, 5).contiguous()
    zoomed = aug.apply(ramp, {**base, "scale": 2.0})
    assert zoomed[0, 2].tolist() == [50, 75, 100, 125, 150]
    mask = (ramp[0] >= 100).to(torch.uint8)
    assert aug.apply_mask(mask, {**base, "scale": 2.0})[2].tolist() == [0, 1, 1, 1, 1]  # nearest, labels only


def test_augment_gamma_is_a_power_curve():
    aug = AugmentedDataset([], Augment(gamma=0.5), seed=0)
    base = {**aug.params(0, 0), "pad": 0, "dy": 0, "dx": 0, "flip": False, "angle": 0.0, "scale": 1.0}
    base = {**base, "brightness": 0.0, "contrast": 0.0}
    image = torch.tensor([[[0, 64, 128, 255]]], dtype=torch.uint8)
    assert aug.apply(image, {**base, "gamma": 2.0}).tolist() == [[[0, 16, 64, 255]]]  # 255 * (x/255)^2
    assert aug.apply(image, {**base, "gamma": 0.5}).tolist() == [[[0, 128, 181, 255]]]
    mask = torch.tensor([[0, 1], [1, 0]], dtype=torch.uint8)
    assert torch.equal(aug.apply_mask(mask, {**base, "gamma": 2.0}), mask)  # intensity never touches a mask
    draws = [aug.params(i, 0)["gamma"] for i in range(200)]
    assert min(draws) >= 0.5 and max(draws) <= 1.5 and min(draws) < 0.7 and max(draws) > 1.3


def test_augment_new_fields_keep_old_presets_replaying():
    """scale and gamma are drawn after the older values: a preset without them draws exactly what it drew."""
    old = AugmentedDataset([], Augment.preset("seg"), seed=4)
    strong = AugmentedDataset([], Augment.preset("seg-strong"), seed=4)
    for i in range(20):
        a, b = old.params(i, 1), strong.params(i, 1)
        assert a["scale"] == 1.0 and a["gamma"] == 1.0
        assert {k: a[k] for k in ("dy", "dx", "angle", "brightness", "contrast")} == {
            k: b[k] for k in ("dy", "dx", "angle", "brightness", "contrast")
        }
        rng = np.random.default_rng([4, 1, i])  # the documented stream: dy, dx, flip, angle, b, c, then s, g
        rng.integers(0, 25, size=2)
        rng.random(), rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-1, 1)
        assert b["scale"] == pytest.approx(1 + 0.15 * rng.uniform(-1, 1))
        assert b["gamma"] == pytest.approx(1 + 0.3 * rng.uniform(-1, 1))


@pytest.mark.parametrize("field", ["scale", "gamma", "brightness", "contrast"])
@pytest.mark.parametrize("value", [-0.1, 1.0, float("nan")])
def test_augment_rejects_out_of_range(field, value):
    with pytest.raises(InvalidInputError, match="invalid augmentation"):
        Augment(**{field: value})


def test_augment_preset_unknown():
    with pytest.raises(UnknownNameError) as info:
        Augment.preset("medicl")
    assert "medical" in info.value.hint


# ---------------------------------------------------------------- loaders


def test_make_loader_same_order(small):
    def order(seed):
        return [t.tolist() for _, t in make_loader(small.train, 8, shuffle=True, seed=seed)]

    def first_pixels(seed):
        return [x[:, 0, 0, 0].tolist() for x, _ in make_loader(small.train, 8, shuffle=True, seed=seed)]

    assert order(1) == order(1) and first_pixels(1) == first_pixels(1)
    assert first_pixels(1) != first_pixels(2)
    images, targets = next(iter(make_loader(small.train, 8, shuffle=False)))
    assert images.shape == (8, 1, 16, 16) and images.dtype == torch.uint8 and targets.dtype == torch.int64
    assert len(make_loader(small.train, 5, shuffle=True, drop_last=True)) == 6
    with pytest.raises(InvalidInputError):
        make_loader(small.train, 0, shuffle=False)


def test_exif_orientation_is_applied_as_viewers_show_the_image(tmp_path):
    """A phone photo stored landscape with EXIF Orientation 6 (rotate 90° clockwise to view) decodes upright, the
    same in training (the folder source) and in predict/serve (which decode through the same function)."""
    from edgekd.data import decode_image

    stored = np.zeros((20, 40), dtype=np.uint8)  # 20 rows x 40 columns as stored
    stored[:, :10] = 255  # a bright band at the left edge of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "photo.png"
    Image.fromarray(stored, "L").save(path, exif=exif)
    with Image.open(path) as im:
        arr = decode_image(im, channels=1, size=(40, 20), depth=8)[0]
    # Rotated 90° clockwise (PIL's Image.transpose(ROTATE_270)): stored left edge -> top rows, the shape 40 x 20.
    assert arr.shape == (40, 20)
    np.testing.assert_array_equal(arr, np.rot90(stored, k=-1))
    assert arr[:10].min() == 255 and arr[10:].max() == 0
