"""DICOM results of the DICOM node: one *result writer* per kind of task, each turning an outcome into DICOM.

A result writer is a function ``(source, outcome, model, uids) -> [Dataset, ...]`` registered in
:data:`RESULT_WRITERS` under a name; :func:`writers_for` says which writers a task gets. Classification tasks
(binary, multi-class, multi-label) get ``sr``: a Comprehensive SR. The segmentation task gets ``seg`` (a DICOM
SEG built with ``highdicom.seg.Segmentation`` referencing the source image, :mod:`._dicom_seg`, which registers
itself here); an optional ``gradcam-sc`` secondary capture is not registered yet. A bundle whose task has no
writer is refused when the node starts (:func:`writers_for` raises), never answered with nothing. A Grad-CAM writer needs a PyTorch model (a model
directory: a bundle holds ONNX files only) and ``edgekd.report``, a sibling layer of this one: it would be
registered here from a layer above both (the CLI), with its name added to the task's writers.

The ``sr`` writer builds a Comprehensive SR with highdicom, a TID 1500 *Measurement Report* whose one TID 1501
measurement group holds:

* the model as the observer device (TID 1004: a device UID derived from the model file's sha256, the served
  name, ``edgekd`` as manufacturer, the architecture as model name, the sha256 prefix as serial number) and as
  the algorithm (TID 4019: name, version = bundle time stamp, parameters = precision, operating threshold and
  its source);
* the *finding* per class: its probability (a measurement, UCUM ``1``) and, for a binary task, the decision at
  the operating threshold: the positive class ``Present`` / ``Absent`` (SCT), the threshold itself as a
  measurement, and ``CAD Processing and Findings Summary`` (DCM 111017) ``succeeded with`` / ``without
  findings``; for multi-class tasks the most probable class as ``Finding`` (DCM 121071);
* the out-of-distribution score (a measurement) and flag (``Yes`` / ``No``) when the model carries a reference;
* the intended-use check: ``in-scope`` / ``not-checkable`` / ``unrestricted`` / ``out-of-scope`` (the latter
  also coded DCM 128619 *Outside operational limits of the device*) with its reason as a comment;
* the decision-support disclaimer as a comment (DCM 121106).

An instance that was *not analysed* (outside the intended use, not an image, unreadable pixel data) still gets
an SR, which says so: ``CAD Processing and Findings Summary`` = ``Not attempted`` (DCM 111225), the refusal
kind, the reason and the disclaimer, and no finding.

References and identity: the SR is in the source's study (same Study Instance UID) in a new series, references
the source instance (SOP Class + Instance UID, in the measurement group's source image and the evidence
sequence), and gets new UIDs that the caller derives from UUIDs (``2.25.<uuid>``, :func:`uuid_uid`). Of the
source's header it copies only :data:`REFERENCE_TAGS`: the study's identity (so a PACS files it in the study).
The patient name, patient ID, accession number and study ID are written empty (Type 2) unless the node is told to copy
them (``--copy-patient-identity``, for a PACS that files results by patient); birth date, sex and every other
patient, institution, physician and device attribute is absent or empty. Codes private to edgekd use the scheme
``99EDGEKD``.

Example:
    >>> writers = writers_for(model.info.task)         # ["sr"]
    >>> [sr] = RESULT_WRITERS.get("sr")(source, Outcome(prediction=p), model.info, uids)
    >>> sr.SOPClassUID.name
    'Comprehensive SR Storage'
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgekd.data import Task
from edgekd.errors import DependencyError, InvalidInputError
from edgekd.registry import Registry
from edgekd.serve._fhir import DISCLAIMER
from edgekd.serve._model import ModelInfo, Prediction
from edgekd.serve._predict import Skipped

__all__ = [
    "RESULT_WRITERS",
    "REFERENCE_TAGS",
    "Outcome",
    "ResultUIDs",
    "ResultWriter",
    "classification_sr",
    "reference_header",
    "require_highdicom",
    "uuid_uid",
    "writers_for",
]

# The source header attributes a result carries: the study's identity (its UID references the study). Type 2
# attributes absent from the source are written empty.
REFERENCE_TAGS = ("StudyInstanceUID", "StudyDate", "StudyTime", "SpecificCharacterSet")
# The patient's identifiers, copied only when asked (``ResultUIDs.patient_identity``, ``--copy-patient-identity``:
# a PACS that files results by patient rather than by Study Instance UID); by default written empty (Type 2).
IDENTITY_TAGS = ("PatientName", "PatientID", "AccessionNumber", "StudyID")
_EMPTY_TAGS = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName")
_SCHEME = "99EDGEKD"
_NAMESPACE = uuid.UUID("9f1c3c52-3b8e-5d7a-a4de-6a1b0d6c2e27")  # edgekd's namespace for name-based UUIDs
SERIES_NUMBER = 9270  # the results series of the node (a number viewers show; the UID is what identifies it)


def require_highdicom() -> Any:
    """The highdicom package, or a :class:`DependencyError` (exit 5) naming the extra."""
    try:
        import highdicom
    except ImportError as e:
        raise DependencyError("DICOM results need highdicom", "pip install 'edgekd[dicom]'") from e
    return highdicom


def uuid_uid(*parts: str) -> str:
    """A DICOM UID under the UUID-derived root ``2.25`` (PS3.5 B.2): name-based (UUID v5) on ``parts``, random
    (UUID v4) without them. Name-based UIDs make a result rebuilt after a restart the same instance."""
    u = uuid.uuid5(_NAMESPACE, "\0".join(parts)) if parts else uuid.uuid4()
    return f"2.25.{u.int}"


@dataclass(frozen=True)
class Outcome:
    """What the node concluded about one received instance: a prediction, or why there is none.

    ``refused`` holds the reason an instance was not analysed (``kind``: ``out-of-scope``, ``not-an-image`` or
    ``unreadable``). A segmentation writer would receive its mask in ``prediction``.
    """

    prediction: Prediction | None = None
    refused: Skipped | None = None

    def __post_init__(self) -> None:
        if (self.prediction is None) == (self.refused is None):
            raise InvalidInputError("an outcome is a prediction or a refusal, exactly one of them")


@dataclass(frozen=True)
class ResultUIDs:
    """The identity of one result: the caller derives these (see :func:`uuid_uid`) so a rebuild is idempotent."""

    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int = 1
    # copy the source's Patient Name and ID, Accession Number and Study ID (:data:`IDENTITY_TAGS`); else empty
    patient_identity: bool = False


ResultWriter = Callable[[Any, Outcome, ModelInfo, ResultUIDs], list[Any]]
RESULT_WRITERS: Registry[ResultWriter] = Registry("DICOM result writer")
# Which writers answer which task. Segmentation (SEG, and the optional Grad-CAM secondary capture) plugs in here.
_TASK_WRITERS: dict[str, tuple[str, ...]] = {t.value: ("sr",) for t in (Task.BINARY, Task.MULTICLASS, Task.MULTILABEL)}


def writers_for(task: Task | str) -> tuple[str, ...]:
    """The registered result writers for a task, in order.

    Raises:
        InvalidInputError: no writer answers this task (e.g. segmentation before the SEG writer exists).
    """
    key = task.value if isinstance(task, Task) else str(task)
    names = tuple(n for n in _TASK_WRITERS.get(key, ()) if n in RESULT_WRITERS)
    if not names:
        raise InvalidInputError(
            f"the DICOM node has no result writer for {key} models",
            "classification bundles are answered with an SR, segmentation bundles with a SEG",
        )
    return names


def reference_header(source: Any, *, patient_identity: bool = False) -> Any:
    """A dataset with only what a result needs of its source: :data:`REFERENCE_TAGS`, the source's SOP Class,
    SOP Instance and Series Instance UIDs (for the references), the patient's :data:`IDENTITY_TAGS` only when
    ``patient_identity``, and the other Type 2 patient attributes left empty."""
    from pydicom import Dataset

    ref = Dataset()
    copied = (*REFERENCE_TAGS, *(IDENTITY_TAGS if patient_identity else ()))
    for tag in (*copied, "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
        if tag in source:
            ref[tag] = source[tag]
    for tag in ("StudyDate", "StudyTime", "StudyID", "AccessionNumber", "PatientName", "PatientID", *_EMPTY_TAGS):
        if tag not in ref:
            setattr(ref, tag, "")
    return ref


def _code(value: str, meaning: str) -> Any:
    from pydicom.sr.coding import Code

    return Code(value, _SCHEME, meaning[:64])


def _class_code(i: int, label: str) -> Any:
    return _code(f"class-{i}", label)


def _device(info: ModelInfo) -> tuple[Any, Any]:
    """The model as observer device (TID 1004) and as algorithm (TID 4019)."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uuid_uid("device", info.sha256),
        name=info.name[:64],
        manufacturer_name="edgekd",
        model_name=info.architecture[:64],
        serial_number=info.sha256[:16],
    )
    params = [f"model file {info.file} ({info.precision}, sha256 {info.sha256})"]
    if info.threshold is not None:
        params.append(f"operating threshold {info.threshold:g} ({info.threshold_source})"[:1024])
    algo = hd.sr.AlgorithmIdentification(
        name=info.name[:64], version=(info.version or "unknown")[:64], parameters=params, manufacturer="edgekd"
    )
    return hd.sr.ObserverContext(observer_type=codes.cid270.Device, observer_identifying_attributes=device), algo


def _text(name: Any, value: str) -> Any:
    hd = require_highdicom()
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _findings(p: Prediction, info: ModelInfo) -> tuple[list[Any], list[Any]]:
    """(measurements, qualitative evaluations) of one prediction."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    unit = codes.UCUM.NoUnits
    measures = [
        hd.sr.Measurement(
            name=_code(f"p-{i}", f"Probability of {label}"), value=float(p.probabilities[label]), unit=unit
        )
        for i, label in enumerate(info.labels)
    ]
    evals = []
    if info.task is Task.BINARY and p.decision is not None and info.threshold is not None:
        positive = p.decision == info.labels[1]
        evals.append(
            hd.sr.QualitativeEvaluation(
                _class_code(1, info.labels[1]), codes.SCT.Present if positive else codes.SCT.Absent
            )
        )
        measures.append(
            hd.sr.Measurement(
                name=_code("threshold", f"Operating threshold on P({info.labels[1]})"),
                value=float(info.threshold),
                unit=unit,
            )
        )
        summary = (
            codes.DCM.AllAlgorithmsSucceededWithFindings
            if positive
            else codes.DCM.AllAlgorithmsSucceededWithoutFindings
        )
        evals.append(hd.sr.QualitativeEvaluation(codes.DCM.CADProcessingAndFindingsSummary, summary))
    elif info.task is not Task.MULTILABEL:
        i = info.labels.index(p.label)
        evals.append(hd.sr.QualitativeEvaluation(codes.DCM.Finding, _class_code(i, p.label)))
    else:
        for i, label in enumerate(info.labels):
            present = label in p.label.split(";")
            evals.append(
                hd.sr.QualitativeEvaluation(_class_code(i, label), codes.SCT.Present if present else codes.SCT.Absent)
            )
    if p.ood_score is not None:
        measures.append(
            hd.sr.Measurement(name=_code("ood-score", "Out-of-distribution score"), value=float(p.ood_score), unit=unit)
        )
    if p.out_of_distribution is not None:
        evals.append(
            hd.sr.QualitativeEvaluation(
                _code("ood", "Out of distribution"), codes.SCT.Yes if p.out_of_distribution else codes.SCT.No
            )
        )
    return measures, evals


def _scope_items(status: str, reason: str) -> tuple[list[Any], list[Any]]:
    """(qualitative evaluations, comments) of the intended-use check."""
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    name = _code("intended-use", "Intended use check")
    evals = [hd.sr.QualitativeEvaluation(name, _code(status, status.replace("-", " ")))]
    if status == "out-of-scope":
        evals.append(hd.sr.QualitativeEvaluation(name, codes.DCM.OutsideOperationalLimitsOfTheDevice))
    return evals, [_text(codes.DCM.Comment, f"Intended use: {status}: {reason}"[:1024])] if reason else []


def classification_sr(source: Any, outcome: Outcome, info: ModelInfo, uids: ResultUIDs) -> list[Any]:
    """A Comprehensive SR (TID 1500) of one classified (or not analysed) instance: see the module docstring.

    Args:
        source: the received dataset (a header is enough: only :func:`reference_header` of it is used).
        outcome: the prediction, or the refusal.
        info: the model.
        uids: the SR's SOP Instance UID, Series Instance UID and Instance Number.
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    ref = reference_header(source, patient_identity=uids.patient_identity)
    observer, algo = _device(info)
    comments: list[Any] = []
    if outcome.prediction is not None:
        p = outcome.prediction
        measures, evals = _findings(p, info)
        scope_evals, scope_comments = _scope_items(p.intended_use, p.scope_reason)
        evals, comments = evals + scope_evals, scope_comments
    else:
        r = outcome.refused
        assert r is not None  # __post_init__ guarantees one of the two
        measures = []
        evals = [hd.sr.QualitativeEvaluation(codes.DCM.CADProcessingAndFindingsSummary, codes.DCM.NotAttempted)]
        if r.kind == "out-of-scope":
            evals += _scope_items("out-of-scope", "")[0]
        comments = [_text(codes.DCM.Comment, f"Not analysed ({r.kind}): {r.reason}"[:1024])]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=uuid_uid("tracking", uids.sop_instance_uid), identifier=f"{info.name} result"[:64]
        ),
        algorithm_id=algo,
        measurements=measures or None,
        qualitative_evaluations=evals or None,
        source_images=[hd.sr.SourceImageForMeasurementGroup(ref.SOPClassUID, ref.SOPInstanceUID)],
    )
    group[0].ContentSequence.extend([*comments, _text(codes.DCM.Comment, DISCLAIMER)])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.Imaging,
        imaging_measurements=[group],
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[ref],
        content=report[0],
        series_instance_uid=uids.series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=uids.instance_number,
        manufacturer="edgekd",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=f"edgekd {info.name} (decision support)"[:64],
    )
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    sr.ManufacturerModelName = info.architecture[:64]
    sr.SoftwareVersions = _software_version()
    sr.DeviceSerialNumber = info.sha256[:16]
    return [sr]


def _private_scheme() -> Any:
    """The Coding Scheme Identification item (PS3.3 C.12.1) that declares edgekd's private scheme."""
    from pydicom import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = _SCHEME
    item.CodingSchemeName = "edgekd model outputs"
    item.CodingSchemeResponsibleOrganization = "edgekd"
    return item


def _software_version() -> str:
    from edgekd import __version__

    return f"edgekd {__version__}"[:64]


RESULT_WRITERS.add("sr", classification_sr, help="classification: a Comprehensive SR (TID 1500)")
