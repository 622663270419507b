"""The ``seg`` result writer of the DICOM node: a segmentation model's mask as a DICOM Segmentation object.

Registered in :data:`~edgekd.serve._dicom_sr.RESULT_WRITERS` as ``seg`` and answering the ``segmentation``
task (:func:`~edgekd.serve._dicom_sr.writers_for`). The object is built with ``highdicom.seg.Segmentation``:

* ``BINARY`` segmentation type, one segment per non-background class of the model (segment number = class
  index, label = class name, algorithm type ``AUTOMATIC`` with the model as the algorithm: name, version =
  bundle time stamp, family ``Artificial Intelligence``), even when the class is absent from this image (its
  frame is then all zero), so every SEG of a model has the same segments;
* the mask is at the source image's own ``Rows x Columns`` (the node upsamples the logits to it before the
  argmax) and references the source image (Referenced Series / Source Image Sequence: SOP Class + Instance
  UID), in the same study (Study Instance UID), in a new series, with UUID-derived UIDs given by the caller;
* a known anatomical class name (``lung``, ``heart``, ``liver``...) is coded in SNOMED CT as an anatomical
  structure; any other class is coded in edgekd's private scheme ``99EDGEKD`` (declared in the Coding Scheme
  Identification Sequence);
* identity: highdicom copies the patient and study modules of the source image it is given, so it is given
  :func:`~edgekd.serve._dicom_sr.reference_header` of the source (the study's identity only; patient name, ID,
  accession number and study ID empty unless ``--copy-patient-identity``) plus the image attributes a SEG
  needs to reference its geometry (rows, columns, pixel spacing, frame of reference, orientation).

An instance that was *not analysed* (outside the intended use, not an image, unreadable pixel data) has no mask:
it is answered with the SR that says why (:func:`~edgekd.serve._dicom_sr.classification_sr` handles refusals
for every task), never with an empty SEG.

Example:
    >>> [seg] = RESULT_WRITERS.get("seg")(source, Outcome(prediction=p), model.info, uids)
    >>> seg.SOPClassUID.name, seg.SegmentSequence[0].SegmentLabel
    ('Segmentation Storage', 'lung')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekd.data import Task
from edgekd.errors import InvalidInputError
from edgekd.serve._dicom_sr import (
    _SCHEME,
    _TASK_WRITERS,
    RESULT_WRITERS,
    SERIES_NUMBER,
    Outcome,
    ResultUIDs,
    _private_scheme,
    _software_version,
    classification_sr,
    reference_header,
    require_highdicom,
)
from edgekd.serve._model import ModelInfo

__all__ = ["ANATOMY", "GEOMETRY_TAGS", "segmentation_seg"]

# The source image attributes a SEG needs besides the study's identity: its size and geometry.
GEOMETRY_TAGS = (
    "Modality",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "FrameOfReferenceUID",
    "PixelSpacing",
    "ImagerPixelSpacing",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PatientOrientation",
)
# Class names coded in SNOMED CT (anatomical structures), lower-case name -> (code value, meaning).
ANATOMY = {
    "lung": ("39607008", "Lung"),
    "lungs": ("39607008", "Lung"),
    "left lung": ("44029006", "Left lung"),
    "right lung": ("3341006", "Right lung"),
    "heart": ("80891009", "Heart"),
    "liver": ("10200004", "Liver"),
    "kidney": ("64033007", "Kidney"),
    "spleen": ("78961009", "Spleen"),
    "brain": ("12738006", "Brain"),
}
_SCT_ANATOMICAL_STRUCTURE = ("91723000", "Anatomical structure")


def _source_image(source: Any, patient_identity: bool) -> Any:
    """What highdicom is given as the source image: the study's identity and the image's geometry only."""
    ref = reference_header(source, patient_identity=patient_identity)
    for tag in GEOMETRY_TAGS:
        if tag in source and source[tag].value not in (None, ""):
            ref[tag] = source[tag]
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):  # a zero spacing (seen in real CRs) is no spacing at all
        if tag in ref and not all(_positive(v) for v in ref[tag].value):
            del ref[tag]
    return ref


def _positive(v: Any) -> bool:
    try:
        return float(v) > 0
    except (TypeError, ValueError):
        return False


def _segment(k: int, label: str, info: ModelInfo) -> Any:
    hd = require_highdicom()
    from pydicom.sr.coding import Code

    known = ANATOMY.get(label.strip().lower())
    if known is not None:
        category = Code(*_SCT_ANATOMICAL_STRUCTURE[:1], "SCT", _SCT_ANATOMICAL_STRUCTURE[1])
        kind = Code(known[0], "SCT", known[1])
    else:
        category = Code("model-class", _SCHEME, "Model output class")
        kind = Code(f"class-{k}", _SCHEME, label[:64])
    return hd.seg.SegmentDescription(
        segment_number=k,
        segment_label=label[:64],
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=info.name[:64],
            family=Code("123109", "DCM", "Artificial Intelligence"),
            version=(info.version or "unknown")[:64],
            source="edgekd",
        ),
    )


def segmentation_seg(source: Any, outcome: Outcome, info: ModelInfo, uids: ResultUIDs) -> list[Any]:
    """A DICOM SEG (BINARY, one segment per non-background class) of one segmented instance; a refused
    instance gets the SR that says why. See the module docstring.

    Raises:
        InvalidInputError: the mask's size differs from the source image's, or it holds a class the model lacks.
    """
    if outcome.prediction is None:
        return classification_sr(source, outcome, info, uids)
    mask = outcome.prediction.mask
    if mask is None:
        raise InvalidInputError(f"{info.name}: the prediction carries no mask (not a segmentation model?)")
    rows, cols = int(source.Rows), int(source.Columns)
    if mask.shape != (rows, cols):
        raise InvalidInputError(f"mask {mask.shape} differs from the source image's {rows} x {cols}")
    if int(mask.max(initial=0)) >= len(info.labels):
        raise InvalidInputError(f"mask holds class {int(mask.max())}; {info.name} has {len(info.labels)} classes")
    hd = require_highdicom()
    segments = [_segment(k, info.labels[k], info) for k in range(1, len(info.labels))]
    seg = hd.seg.Segmentation(
        source_images=[_source_image(source, uids.patient_identity)],
        pixel_array=np.ascontiguousarray(mask, dtype=np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=uids.series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=uids.instance_number,
        manufacturer="edgekd",
        manufacturer_model_name=info.architecture[:64],
        software_versions=_software_version(),
        device_serial_number=info.sha256[:16],
        series_description=f"edgekd {info.name} (decision support)"[:64],
        content_label="EDGEKD_SEG",
        content_description=f"{info.name} {info.precision} segmentation (decision support)"[:64],
        omit_empty_frames=False,  # every segment has its frame, also when absent from this image
    )
    seg.CodingSchemeIdentificationSequence = [_private_scheme()]
    if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:
        # General Image, Type 2C without a frame of reference: the source's orientation (or empty)
        seg.PatientOrientation = source.get("PatientOrientation", "")
    return [seg]


RESULT_WRITERS.add("seg", segmentation_seg, help="segmentation: a DICOM SEG (BINARY, one segment per class)")
_TASK_WRITERS[Task.SEGMENTATION.value] = ("seg",)
