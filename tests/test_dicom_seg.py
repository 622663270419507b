"""DICOM SEG results (issue 27, item 2, segmentation): a segmentation bundle's DICOM node answers each image with
a highdicom Segmentation object.

Checked independently: highdicom's reader (``segread``) decodes the SEG back to the mask, dicom3tools'
``dciodvfy`` validates it, dcmtk's ``storescu`` sends a real chest CR (pydicom-data's ``RG1_UNCI.dcm``,
subsampled) to the node and dcmtk's ``storescp`` receives the SEG (the tests that need them skip, naming the
binary, where they are absent). The model is the trained U-Net of test_seg_serve.py.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from edgekd.data import Task
from edgekd.errors import InvalidInputError
from edgekd.serve import load_model, predict
from edgekd.serve._dicom_node import Destination, DicomNode, NodeConfig
from edgekd.serve._dicom_seg import segmentation_seg
from edgekd.serve._dicom_sr import Outcome, ResultUIDs, uuid_uid, writers_for
from edgekd.serve._model import ModelInfo, Prediction
from edgekd.serve._predict import Skipped

from .test_dicom_node import Proc, dciodvfy_errors, free_port, need, small_cr, start_storescp, wait_files
from .test_seg_serve import LABELS, seg_artifacts
from .test_trust import pydicom_file

hd = pytest.importorskip("highdicom", reason="the dicom extra is not installed (pip install 'edgekd[dicom]')")
pytest.importorskip("pynetdicom", reason="the dicom extra is not installed (pip install 'edgekd[dicom]')")


def info_of(labels: tuple[str, ...]) -> ModelInfo:
    return ModelInfo(
        name="unet",
        architecture="small:unet_w8",
        source="bundle",
        kind="bundle",
        file="model.onnx",
        precision="fp32",
        sha256="ab" * 32,
        version="2026-12-04T00:00:00+00:00",
        task=Task.SEGMENTATION,
        labels=labels,
        threshold=None,
        threshold_source="not a binary task",
        verified=True,
    )


def cr_header() -> pydicom.Dataset:
    return pydicom.dcmread(pydicom_file("RG1_UNCI.dcm"), stop_before_pixels=True)


def labelmap(seg: pydicom.Dataset, source: pydicom.Dataset) -> np.ndarray:
    """The SEG decoded by highdicom as a label map (segment number per pixel) of the source image."""
    s = hd.seg.Segmentation.from_dataset(seg)
    return s.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]


def uids() -> ResultUIDs:
    return ResultUIDs(uuid_uid("test-seg"), uuid_uid("test-series"), instance_number=3)


@pytest.mark.parametrize("labels", [("background", "lung"), ("background", "left lung", "right lung", "tube")])
def test_seg_decodes_to_the_mask_with_one_segment_per_class_in_the_source_study(labels, tmp_path):
    src = cr_header()
    mask = np.zeros((src.Rows, src.Columns), np.uint8)
    mask[200:900, 150:800] = 1
    if len(labels) > 2:
        mask[200:900, 1000:1600] = 2  # class 3 ("tube") absent: its segment is still there, empty
    [seg] = segmentation_seg(src, Outcome(prediction=Prediction("x", "lung", {}, mask=mask)), info_of(labels), uids())
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert [s.SegmentNumber for s in seg.SegmentSequence] == list(range(1, len(labels)))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(labels[1:])
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    np.testing.assert_array_equal(labelmap(seg, src), mask)
    assert seg.StudyInstanceUID == src.StudyInstanceUID and seg.SeriesInstanceUID != src.SeriesInstanceUID
    assert seg.SOPInstanceUID.startswith("2.25.") and seg.SeriesInstanceUID.startswith("2.25.")
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert str(src.PatientName) and not str(seg.PatientName) and not seg.PatientID  # no identity by default
    if labels[1] in ("lung", "left lung"):
        assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    if subprocess.run(["which", "dciodvfy"], capture_output=True).returncode == 0:
        assert dciodvfy_errors(tmp_path / "seg.dcm") == []


def test_patient_identity_only_on_request_and_refusals_get_an_sr():
    src = cr_header()
    mask = np.zeros((src.Rows, src.Columns), np.uint8)
    ids = ResultUIDs(uuid_uid("a"), uuid_uid("b"), patient_identity=True)
    [seg] = segmentation_seg(
        src, Outcome(prediction=Prediction("x", "lung", {}, mask=mask)), info_of(("bg", "lung")), ids
    )
    assert seg.PatientName == src.PatientName and seg.PatientID == src.PatientID
    refused = Outcome(refused=Skipped("x", "outside the intended use", "out-of-scope"))
    [sr] = segmentation_seg(src, refused, info_of(("bg", "lung")), uids())
    assert sr.SOPClassUID.name == "Comprehensive SR Storage" and sr.StudyInstanceUID == src.StudyInstanceUID
    with pytest.raises(InvalidInputError, match="differs from the source image"):
        segmentation_seg(src, Outcome(prediction=Prediction("x", "", {}, mask=mask[:10])), info_of(("bg", "l")), uids())
    assert writers_for(Task.SEGMENTATION) == ("seg",)


def test_storescu_to_the_node_delivers_a_valid_seg_of_the_bundle_mask(tmp_path_factory, tmp_path, caplog):
    need("storescu", "storescp", "dciodvfy")
    caplog.set_level(logging.INFO, logger="edgekd.dicom")
    bundle = seg_artifacts(tmp_path_factory)["bundle"]
    cr = small_cr(tmp_path / "in" / "cr.dcm")
    procs: list[Proc] = []
    dest_port = free_port()
    start_storescp(tmp_path / "dest", dest_port, procs)
    model = load_model(bundle, threads=1)
    cfg = NodeConfig(port=0, outbox=tmp_path / "outbox", send_to=Destination("DEST", "127.0.0.1", dest_port))
    try:
        with DicomNode(model, cfg) as node:
            t0 = time.monotonic()
            sent = subprocess.run(
                ["storescu", "-aec", "EDGEKD", "127.0.0.1", str(node.port), str(cr)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr
            [got] = wait_files(tmp_path / "dest", 1)
            print(f"storescu -> node -> storescp SEG round trip: {time.monotonic() - t0:.2f} s")
            assert node.counters.to_json()["delivered"] == 1
    finally:
        for p in procs:
            p.stop()
    seg, src = pydicom.dcmread(got), pydicom.dcmread(cr)
    assert seg.SOPClassUID.name == "Segmentation Storage" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == src.StudyInstanceUID and (seg.Rows, seg.Columns) == (src.Rows, src.Columns)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == LABELS[1:]
    assert dciodvfy_errors(got) == []
    expected = predict(model, [str(cr)], progress=False).predictions[0].mask
    np.testing.assert_array_equal(labelmap(seg, src), expected)
    assert 0 < expected.mean() < 1  # a real mask, not all background nor all foreground
    assert not str(seg.PatientName) and not seg.PatientID
    name = str(src.PatientName)  # "CompressedSamples^RG1": neither in the SEG nor in the node's log
    assert name and name not in caplog.text and "delivered 1 result(s)" in caplog.text
    assert all(name not in str(e.value) for e in seg.iterall() if isinstance(e.value, str))


def test_a_seg_outbox_result_is_kept_without_destination(tmp_path_factory, tmp_path):
    bundle = seg_artifacts(tmp_path_factory)["bundle"]
    cr = small_cr(tmp_path / "in" / "cr.dcm")
    model = load_model(bundle, threads=1)
    node = DicomNode(model, NodeConfig(port=0, outbox=tmp_path / "outbox"))
    node._open_outbox()
    try:
        job = node.dirs["incoming"] / "00000000000000000001-abcdef.dcm"
        job.write_bytes(Path(cr).read_bytes())
        node._process([job])
    finally:
        node._release_outbox()
    [out] = sorted((tmp_path / "outbox" / "out").glob("*.dcm"))
    assert out.name.endswith(".seg.0.dcm") and not job.exists()
    assert pydicom.dcmread(out).SOPClassUID.name == "Segmentation Storage"
