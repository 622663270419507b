"""``dicom:`` data source: pydicom's own test files and files written here with pydicom's writing API."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import load_data, read_dicom
from edgekd.data._dicom import ALLOWED_TAGS, dicom_summary, parse_window
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError

runner = CliRunner()

# Identifying values written into every test file; none may appear in anything edgekd writes or prints.
SENTINELS = {
    "PatientName": "Sentinelname^Patricia",
    "PatientID": "PID-4711-SENTINEL",
    "PatientBirthDate": "19020304",
    "InstitutionName": "Sentinel General Hospital",
    "AccessionNumber": "ACC-0815-SNTL",
    "ReferringPhysicianName": "Drsentinel^Referrer",
    "StudyDescription": "SENTINEL chest study",
}
# Needles that cannot occur in numbers: words and whole identifiers, never bare digit strings (a scan for "4711"
# found it in a float of history.jsonl). The birth date is all digits, so it counts only where no digit, sign,
# decimal point or exponent touches it (a DICOM DA value, not a run of digits inside a float's mantissa).
NEEDLES = ("Sentinel", "SENTINEL", "Patricia", "Referrer", "PID-4711", "ACC-0815", "SNTL")
DIGIT_NEEDLES = (re.compile(rb"(?<![0-9.eE+-])19020304(?![0-9])"),)


def shipped(name: str) -> Path:
    """A file shipped with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom does not ship {name} in this install")
    return Path(path)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    modality: str = "CT",
    signed: bool = False,
) -> Path:
    """A minimal CT-like file (16-bit, explicit VR little endian) with identifying sentinel tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    for key, value in SENTINELS.items():
        setattr(ds, key, value)
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _linear(v: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, written out here independently of edgekd."""
    y = np.where(
        v <= c - 0.5 - (w - 1) / 2, 0.0, np.where(v > c - 0.5 + (w - 1) / 2, 1.0, (v - (c - 0.5)) / (w - 1) + 0.5)
    )
    return np.rint(y * 255).astype(np.uint8)


def test_rescaled_ct_from_pydicom_is_windowed_in_hounsfield_units():
    path = shipped("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) == -1024  # a rescaled CT: stored values are not HU
    got = read_dicom(path, window="40/400")
    assert got.shape == (1, 128, 128) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], _linear(hu, 40, 400))
    lung = read_dicom(path, window="-600/1500")
    assert not np.array_equal(lung, got)
    assert dicom_summary(path) == {"Modality": "CT", "Rows": 128, "Columns": 128}
    assert tuple(dicom_summary(path)) == ALLOWED_TAGS


def test_auto_window_uses_the_files_own_window_centre_and_width():
    path = shipped("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_array_equal(read_dicom(path)[0], _linear(ds.pixel_array.astype(np.float64), c, w))
    mm = read_dicom(path, window="minmax")[0]
    assert mm.min() == 0 and mm.max() == 255


def test_monochrome1_is_inverted_and_rescale_applies(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4000, size=(24, 20))
    kw = dict(slope=2.0, intercept=-1000.0, window=(0.0, 2000.0))
    mono2 = read_dicom(write_dicom(tmp_path / "m2.dcm", stored, **kw))
    mono1 = read_dicom(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", **kw))
    np.testing.assert_array_equal(mono2[0], _linear(stored * 2.0 - 1000.0, 0.0, 2000.0))
    assert np.abs(mono1.astype(int) + mono2.astype(int) - 255).max() <= 1  # 1 - y, rounding aside
    assert mono2.shape == (1, 24, 20)
    resized = read_dicom(tmp_path / "m2.dcm", size=(12, 10), channels=3)
    assert resized.shape == (3, 12, 10) and np.array_equal(resized[0], resized[2])


def test_multi_frame_is_refused_unless_a_frame_is_chosen():
    path = shipped("SC_rgb_rle_2frame.dcm")
    with pytest.raises(ArtifactError, match="2 frames") as e:
        read_dicom(path)
    assert "frame=first" in e.value.hint
    first, second = read_dicom(path, frame=0, channels=3), read_dicom(path, frame=1, channels=3)
    assert first.shape == (3, 100, 100) and not np.array_equal(first, second)
    with pytest.raises(ArtifactError, match="frame=2 does not exist"):
        read_dicom(path, frame=2)


def test_compressed_pixels_without_a_decoder_name_the_package(tmp_path):
    path = shipped("MR_small_jpeg_ls_lossless.dcm")
    if pydicom.pixels.get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(DependencyError) as e:
        read_dicom(path)
    assert e.value.exit_code == 5 and "JPEG-LS" in e.value.message and "pylibjpeg" in e.value.hint
    for label in ("a", "b"):  # at load time, before any training, for a whole folder
        (tmp_path / label).mkdir()
        (tmp_path / label / "x.dcm").write_bytes(path.read_bytes())
    with pytest.raises(DependencyError, match="needs a decoder"):
        load_data(f"dicom:{tmp_path}")


def test_files_without_an_image_or_not_dicom_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="holds no image"):
        read_dicom(shipped("rtplan.dcm"))
    bad = tmp_path / "junk.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(ArtifactError, match="not a DICOM file"):
        read_dicom(bad)
    with pytest.raises(InvalidInputError, match="window"):
        parse_window("40")


def _learnable_folder(root: Path, n: int = 48, *, sizes=(16, 20)) -> list[tuple[str, str]]:
    """Two classes of CT-like files (the synthetic blobs as stored values), two sizes, sentinel tags."""
    data = load_data(f"synthetic:classes=2,n={n},size=16,channels=1,seed=3")
    rows = []
    for i in range(n):
        image, label = data.train[i]
        px = image[0].numpy().astype(np.float64) * 8 + 500
        size = sizes[i % len(sizes)]
        if size != 16:
            px = np.kron(px, np.ones((2, 2)))[:size, :size]
        rel = f"series{i % 3}/img{i:03d}.dcm"
        write_dicom(
            root / rel,
            px,
            slope=1.0,
            intercept=-1024.0,
            window=(500.0, 2200.0),
            photometric="MONOCHROME1" if i % 4 == 0 else "MONOCHROME2",
        )
        rows.append((rel, ["normal", "nodule"][int(label)]))
    return rows


def test_folder_with_labels_csv_or_class_folders(tmp_path):
    root = tmp_path / "ct"
    rows = _learnable_folder(root, 24)
    table = tmp_path / "labels.csv"
    table.write_text("file,label\n" + "".join(f"{f},{lab}\n" for f, lab in rows))
    with pytest.raises(InvalidInputError, match="size=N"):
        load_data(f"dicom:{root},labels={table}")
    bundle = load_data(f"dicom:{root},labels={table},size=16")
    assert bundle.label_names == ["nodule", "normal"] and bundle.channels == 1 and bundle.image_size == (16, 16)
    assert sum(len(bundle.split(s)) for s in ("train", "val", "test")) == 24
    image, target = bundle.train[0]
    assert image.shape == (1, 16, 16) and int(target) in (0, 1)
    by_class = tmp_path / "classes"
    for f, lab in rows:
        (by_class / lab).mkdir(parents=True, exist_ok=True)
        (by_class / lab / Path(f).name).write_bytes((root / f).read_bytes())
    other = load_data(f"dicom:{by_class},size=16,channels=3")
    assert other.label_names == ["nodule", "normal"] and other.channels == 3
    with pytest.raises(ArtifactError, match="does not exist"):
        load_data(f"dicom:{tmp_path / 'nope'}")


def _scan_for_identifiers(paths: list[Path], texts: list[str]) -> list[str]:
    hits = []
    for base in paths:
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        for f in files:
            blob = f.read_bytes()
            hits += [f"{f}: {n}" for n in NEEDLES if n.encode() in blob]
            hits += [f"{f}: {r.pattern!r}" for r in DIGIT_NEEDLES if r.search(blob)]
    hits += [f"output: {n}" for t in texts for n in NEEDLES if n in t]
    hits += [f"output: {r.pattern!r}" for t in texts for r in DIGIT_NEEDLES if r.search(t.encode())]
    return hits


@pytest.mark.slow
def test_dicom_folder_trains_evaluates_predicts_and_leaks_no_identifier(tmp_path):
    root = tmp_path / "ct"
    rows = _learnable_folder(root, 64)
    table = tmp_path / "labels.csv"
    with open(table, "w", newline="") as f:
        csv.writer(f).writerows([("file", "label"), *rows])
    spec = f"dicom:{root},labels={table},size=16"
    out, outputs = tmp_path / "model", []
    r = runner.invoke(
        app,
        [
            "train",
            "--model",
            "small:tinycnn",
            "--data",
            spec,
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "5e-3",
            "--out",
            str(out),
            "--quiet",
            "--json",
            str(tmp_path / "t.json"),
        ],
    )
    outputs.append(r.output)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(out), "--json", str(tmp_path / "eval.json")])
    outputs.append(r.output)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["acc"] > 0.6
    preds = tmp_path / "preds.csv"
    r = runner.invoke(app, ["predict", str(out), str(root), "--out", str(preds)])
    outputs.append(r.output)
    assert r.exit_code == 0, r.output
    with open(preds) as f:
        got = list(csv.DictReader(f))
    assert len(got) == 64 and all(row["label"] in ("nodule", "normal") and not row["error"] for row in got)
    r = runner.invoke(app, ["predict", str(out), "--data", spec, "--out", str(tmp_path / "preds.json")])
    outputs.append(r.output)
    assert r.exit_code == 0, r.output
    labels = tmp_path / "labels.npz"  # the hospital-data commands on the same files
    r = runner.invoke(
        app, ["label", str(out), "--data", f"dicom:{root}", "--out", str(labels), "--quiet", "--json", "-"]
    )
    outputs.append(r.output)
    assert r.exit_code == 0 and json.loads(r.output)["images"] == 64, r.output
    r = runner.invoke(app, ["drift", str(out), "--data", f"dicom:{root}"])
    outputs.append(r.output)
    assert r.exit_code == 4 and "validation images" in r.output, r.output  # 6 validation images: too few
    written = [out, tmp_path / "t.json", tmp_path / "eval.json", preds, tmp_path / "preds.json", labels]
    assert _scan_for_identifiers(written, outputs) == []
    assert any(SENTINELS["PatientID"].encode() in p.read_bytes() for p in root.rglob("*.dcm"))  # the scan can see


def test_identifier_scan_sees_identifiers_and_not_numbers(tmp_path):
    """The scan must not fail on the digits of a float, and must still find every sentinel where it stands."""
    numbers = ['{"val_ece": 0.42095552047114415, "loss": 4711.0815}', "0.119020304", "1.9020304e-05", "-19020304.5"]
    assert _scan_for_identifiers([], numbers) == []
    dcm = write_dicom(tmp_path / "a.dcm", np.zeros((8, 8)))
    found = " ".join(_scan_for_identifiers([dcm], ["PatientBirthDate 19020304"]))
    for needle in ("Sentinel", "Patricia", "Referrer", "PID-4711", "ACC-0815", "19020304"):
        assert needle in found, needle


def test_errors_never_quote_identifying_tags(tmp_path):
    px = np.zeros((2, 8, 8))
    path = write_dicom(tmp_path / "a.dcm", px[0])
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = px.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ArtifactError) as e:
        read_dicom(path)
    assert _scan_for_identifiers([], [str(e.value)]) == []
