"""Segmentation data: the bundled lung masks, ``seg:PATH`` folders and manifests, patient splits, augmentation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from edgekd.data import Augment, AugmentedDataset, load_data, patient_split
from edgekd.data._seg import SegArrayDataset, masks_to_classes
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import Task

LUNG_DIR = "/work/shared/data/cxr-lung-seg"


def test_lungseg_bundle_is_patient_grouped():
    bundle = load_data("lungseg")
    assert bundle.task is Task.SEGMENTATION and bundle.label_names == ["background", "lung"]
    assert bundle.image_size == (256, 256) and bundle.channels == 1 and bundle.num_classes == 2
    sizes = {s: len(bundle.split(s)) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 84 and sizes["train"] >= 45 and sizes["test"] >= 15
    with np.load("edgekd/data/bundled/lungseg.npz", allow_pickle=False) as npz:
        patients = npz["patients"]
    assert len(set(patients.tolist())) == 43
    image, mask = bundle.train[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 256, 256)
    assert mask.dtype == torch.int64 and mask.shape == (256, 256) and set(mask.unique().tolist()) == {0, 1}
    # lungs cover roughly a third of a chest X-ray
    counts = bundle.class_counts()
    assert 0.25 < counts[1] / counts.sum() < 0.5


def test_patient_split_never_splits_a_patient():
    rng = np.random.default_rng(0)
    groups = [f"p{int(g)}" for g in rng.integers(0, 30, size=100)]
    for seed in range(5):
        parts = patient_split(groups, 0.15, 0.25, seed)
        assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(100))
        owners = [{groups[i] for i in parts[s]} for s in ("train", "val", "test")]
        assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
        assert all(len(parts[s]) for s in parts)
    with pytest.raises(InvalidInputError, match="at least 3"):
        patient_split(["a", "a", "b"], 0.2, 0.2, 0)


def test_lungseg_size_option_resizes_masks_nearest():
    bundle = load_data("lungseg:size=64")
    assert bundle.image_size == (64, 64)
    _, mask = bundle.val[0]
    assert mask.shape == (64, 64) and set(mask.unique().tolist()) <= {0, 1}


def _write_pairs(root, n=6, size=24, values=(0, 255)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        img = rng.integers(0, 255, (size, size), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[4 : 12 + i, 6:18] = values[1]
        if len(values) > 2:
            mask[14:20, 2:8] = values[2]
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")


def test_seg_folder_source_reads_0_255_masks(tmp_path):
    _write_pairs(tmp_path / "d")
    bundle = load_data(f"seg:{tmp_path / 'd'},val=0.2,test=0.2")
    assert bundle.task is Task.SEGMENTATION and bundle.label_names == ["background", "foreground"]
    _, mask = bundle.train[0]
    assert set(mask.unique().tolist()) == {0, 1}


def test_seg_manifest_with_patients_splits_and_class_indices(tmp_path):
    _write_pairs(tmp_path, n=6, values=(0, 1, 2))
    rows = [(f"images/im{i}.png", f"masks/im{i}.png", f"p{i // 2}", ["train", "val", "test"][i // 2]) for i in range(6)]
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "mask", "patient", "split"])
        w.writerows(rows)
    bundle = load_data(f"seg:{tmp_path / 'm.csv'},labels=bg;a;b,size=16")
    assert bundle.num_classes == 3 and bundle.label_names == ["bg", "a", "b"] and bundle.image_size == (16, 16)
    assert [len(bundle.split(s)) for s in ("train", "val", "test")] == [2, 2, 2]
    # a patient in two splits is refused
    rows[1] = (rows[1][0], rows[1][1], "p0", "val")
    with open(tmp_path / "bad.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "mask", "patient", "split"])
        w.writerows(rows)
    with pytest.raises(ArtifactError, match="patient 'p0' is in both"):
        load_data(f"seg:{tmp_path / 'bad.csv'}")


def test_seg_source_refuses_missing_masks_and_bad_layout(tmp_path):
    _write_pairs(tmp_path / "d", n=4)
    (tmp_path / "d" / "masks" / "im0.png").unlink()
    with pytest.raises(ArtifactError, match="has no mask"):
        load_data(f"seg:{tmp_path / 'd'}")
    with pytest.raises(ArtifactError, match="images/ and masks/"):
        load_data(f"seg:{tmp_path}")


def test_masks_to_classes():
    m, k = masks_to_classes(np.array([[0, 255]], np.uint8))
    assert k == 2 and m.tolist() == [[0, 1]]
    m, k = masks_to_classes(np.array([[0, 1, 3]], np.uint8))
    assert k == 4
    with pytest.raises(ArtifactError):
        masks_to_classes(np.array([[0, 5]], np.uint8), classes=3)
    with pytest.raises(ArtifactError, match="0, 128, 255: not class indices"):
        masks_to_classes(np.array([[0, 128, 255]], np.uint8))


def test_dicom_image_with_png_mask(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset as DcmFile
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = DcmFile(str(tmp_path / f"images/c{i}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "CR"
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 16).tobytes()
        ds.save_as(str(tmp_path / f"images/c{i}.dcm"), enforce_file_format=True)
        mask = np.zeros((16, 16), np.uint8)
        mask[2:10, 3:9] = 255
        Image.fromarray(mask).save(tmp_path / f"masks/c{i}.png")
    assert pydicom is not None
    bundle = load_data(f"seg:{tmp_path}")
    image, mask = bundle.test[0]
    assert image.shape == (1, 16, 16) and image.dtype == torch.uint8 and int(image.max()) > 200
    assert int(mask.sum()) == 48


def test_augmentation_moves_mask_with_image_nearest():
    img = np.zeros((1, 1, 32, 32), np.uint8)
    img[0, 0, 8:20, 4:14] = 200
    mask = (img[:, 0] > 0).astype(np.uint8)
    ds = SegArrayDataset(img, mask)
    aug = AugmentedDataset(ds, Augment(crop_padding=3, hflip=True, rotation_deg=15.0, brightness=0.2), seed=3)
    for idx_epoch in range(6):
        aug.set_epoch(idx_epoch)
        image, m = aug[0]
        assert m.dtype == torch.int64 and set(m.unique().tolist()) <= {0, 1}  # nearest: no new labels
        # the mask follows the image: foreground pixels of the mask are the bright ones
        bright = image[0] > 100
        agree = (bright == m.bool()).float().mean().item()
        assert agree > 0.95
        p = aug.params(0)
        assert torch.equal(m, AugmentedDataset.apply_mask(torch.from_numpy(mask[0].astype(np.int64)), p))
