"""Predictions as HL7 FHIR resources for hospital systems, validated with the ``fhir.resources`` package.

Each classified image becomes one ``DiagnosticReport`` (status ``preliminary``: nobody has reviewed it) that
*contains* everything it refers to, so it stands alone:

* a ``Device`` for the model: name, version (the bundle's creation time), the sha256 of the model file as an
  identifier, and the precision and architecture in a note;
* one ``Observation`` per finding (class or label): the class as ``code``, its probability as
  ``valueQuantity`` (UCUM unit ``1``), the model as ``device``; for a binary task the positive class also
  carries the decision at the operating threshold as ``interpretation`` (``POS`` / ``NEG``), naming the
  threshold and its source;
* when the model carries an out-of-distribution reference, one more ``Observation`` (code
  ``urn:edgekd:ood#ood-score``): the score as ``valueQuantity`` and ``interpretation`` ``out-of-distribution`` /
  ``in-distribution``; a flagged image (out of distribution, outside the intended use but allowed, or not
  checkable) also gets a ``meta.tag`` and a sentence in the narrative and conclusion.

Inputs that gave no report are listed in an ``OperationOutcome``: unreadable ones with issue code
``processing``, refused ones (outside the intended use, or DICOM objects that are no image) with
``not-supported``.

The narrative and the conclusion say plainly that this is decision support, not a diagnosis. No patient is
referenced: the report's ``identifier`` is the input's name, and linking it to a patient is the receiving
system's job. Resources are validated against FHIR R4B (4.3, the technical correction of R4 whose
DiagnosticReport, Observation and Device are the R4 ones) because ``fhir.resources`` ships R4B and R5 only.

Example:
    >>> report = diagnostic_report(prediction, model.info, issued="2025-01-01T00:00:00+00:00")
    >>> [c["resourceType"] for c in report["contained"]]
    ['Device', 'Observation', 'Observation']
"""

from __future__ import annotations

import datetime as _dt
import html
import uuid
from collections.abc import Sequence
from typing import Any

from edgekd.data import Task
from edgekd.errors import DependencyError, InvalidInputError
from edgekd.serve._model import ModelInfo, Prediction

__all__ = [
    "DISCLAIMER",
    "FHIR_VERSION",
    "diagnostic_report",
    "fhir_bundle",
    "operation_outcome",
    "require_fhir",
    "validate_resource",
]

FHIR_VERSION = "4.3.0"  # R4B
DISCLAIMER = (
    "Decision support only, not a diagnosis: this result was produced by a machine-learning model and must be "
    "reviewed by a qualified clinician together with the image and the clinical context."
)
_UCUM = "http://unitsofmeasure.org"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_XHTML = "http://www.w3.org/1999/xhtml"
_OOD = "urn:edgekd:ood"


def require_fhir() -> Any:
    """The ``fhir.resources`` R4B package, or a :class:`DependencyError` (exit 5) naming the extra."""
    try:
        import fhir.resources.R4B as r4b
    except ImportError as e:
        raise DependencyError("FHIR output needs the fhir.resources package", "pip install 'edgekd[serve]'") from e
    return r4b


def validate_resource(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate a FHIR resource dict with ``fhir.resources``; returns it unchanged.

    Raises:
        InvalidInputError: the resource does not validate (the first problem is named).
    """
    r4b = require_fhir()
    cls = r4b.get_fhir_model_class(resource["resourceType"])
    try:
        cls.model_validate(resource)
    except ValueError as e:
        first = " ".join(str(e).splitlines()[:3])
        raise InvalidInputError(f"invalid FHIR {resource['resourceType']}: {first}") from e
    return resource


def _device(info: ModelInfo) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": "model",
        "identifier": [{"system": "urn:edgekd:sha256", "value": info.sha256}],
        "deviceName": [{"name": info.name, "type": "model-name"}],
        "type": {"text": "machine-learning model (clinical decision support software)"},
        "version": [{"value": info.version}],
        "note": [{"text": f"edgekd {info.kind} {info.file} ({info.precision}), architecture {info.architecture}"}],
    }


def _observation(i: int, label: str, p: float, pred: Prediction, info: ModelInfo) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"finding-{i}",
        "status": "preliminary",
        "code": {"coding": [{"system": f"urn:edgekd:model:{info.name}:label", "code": label}], "text": label},
        "valueQuantity": {"value": round(p, 6), "unit": "probability", "system": _UCUM, "code": "1"},
        "device": {"reference": "#model"},
        "note": [{"text": DISCLAIMER}],
    }
    if info.task is Task.BINARY and info.threshold is not None and label == info.labels[1]:
        positive = pred.decision == label
        obs["interpretation"] = [
            {
                "coding": [{"system": _INTERPRETATION, "code": "POS" if positive else "NEG"}],
                "text": f"{'at or above' if positive else 'below'} the operating threshold "
                f"{info.threshold:g} ({info.threshold_source})",
            }
        ]
    return obs


def _ood_observation(pred: Prediction, info: ModelInfo) -> dict[str, Any]:
    flagged = bool(pred.out_of_distribution)
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "ood",
        "status": "preliminary",
        "code": {"coding": [{"system": _OOD, "code": "ood-score"}], "text": "out-of-distribution score"},
        "device": {"reference": "#model"},
        "interpretation": [
            {
                "coding": [{"system": _OOD, "code": "out-of-distribution" if flagged else "in-distribution"}],
                "text": ("beyond" if flagged else "within") + " the reference's 99.5th percentile (combined score) "
                f"({info.ood_reference})",
            }
        ],
        "note": [
            {
                "text": "Score = the larger of the squared Mahalanobis distances (penultimate features, image "
                "statistics) over their levels, calibrated jointly at the 99.5th percentile of held-out "
                "validation images; above 1 the image is unlike the validation data and the answer "
                "should not be trusted."
            }
        ],
    }
    if pred.ood_score is not None:
        obs["valueQuantity"] = {"value": round(pred.ood_score, 4), "unit": "ratio", "system": _UCUM, "code": "1"}
    else:
        obs["dataAbsentReason"] = {"text": "not computable (non-finite input)"}
    return obs


def _warnings(pred: Prediction) -> str:
    parts = []
    if pred.out_of_distribution:
        parts.append("The image is out of distribution (unlike the validation images): do not rely on this result.")
    if pred.intended_use == "out-of-scope":
        parts.append(f"The input is outside the model's intended use ({pred.scope_reason}).")
    elif pred.intended_use == "not-checkable":
        parts.append(f"The intended use could not be checked: {pred.scope_reason}.")
    return " ".join(parts)


def _summary(pred: Prediction, info: ModelInfo) -> str:
    if info.task is Task.MULTILABEL:
        found = pred.label.replace(";", ", ") or "none of the labels"
        return f"Model output: {found} at or above probability 0.5."
    p = pred.probabilities[pred.label]
    text = f"Model output: {pred.label} (probability {p:.3f})."
    if pred.decision is not None:
        text += f" Decision at the operating threshold {info.threshold:g}: {pred.decision}."
    return text


def diagnostic_report(pred: Prediction, info: ModelInfo, *, issued: str | None = None) -> dict[str, Any]:
    """One validated FHIR ``DiagnosticReport`` (a dict) for one prediction, with its findings contained."""
    issued = issued or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    findings = [_observation(i, label, p, pred, info) for i, (label, p) in enumerate(pred.probabilities.items())]
    if pred.out_of_distribution is not None:
        findings.append(_ood_observation(pred, info))
    summary = " ".join(x for x in (_summary(pred, info), _warnings(pred)) if x)
    rows = "".join(f"<li>{html.escape(label)}: {p:.3f}</li>" for label, p in pred.probabilities.items())
    div = (
        f'<div xmlns="{_XHTML}"><p><b>{html.escape(summary)}</b></p><ul>{rows}</ul>'
        f"<p>Model {html.escape(info.name)} ({html.escape(info.architecture)}, {info.precision}), "
        f"sha256 {info.sha256[:16]}...</p><p><b>{html.escape(DISCLAIMER)}</b></p></div>"
    )
    tags = [{"system": "urn:edgekd", "code": "decision-support", "display": "not a diagnosis"}]
    tags += [{"system": "urn:edgekd", "code": f.replace(" ", "-"), "display": f} for f in pred.flags]
    report = {
        "resourceType": "DiagnosticReport",
        "id": str(uuid.uuid4()),
        "meta": {"tag": tags},
        "text": {"status": "generated", "div": div},
        "contained": [_device(info), *findings],
        "identifier": [{"system": "urn:edgekd:input", "value": pred.source or "request"}],
        "status": "preliminary",
        "code": {"text": f"Image classification by machine-learning model {info.name} (decision support)"},
        "issued": issued,
        "result": [{"reference": f"#{o['id']}", "display": o["code"]["text"]} for o in findings],
        "conclusion": f"{summary} {DISCLAIMER}",
    }
    return validate_resource(report)


def operation_outcome(skipped: Sequence[tuple[str, ...]]) -> dict[str, Any]:
    """A validated ``OperationOutcome`` for inputs without a report: ``(source, reason[, kind])`` each."""
    issues = []
    for src, reason, *kind in skipped:
        refused = bool(kind) and kind[0] != "unreadable"
        issues.append(
            {
                "severity": "error",
                "code": "not-supported" if refused else "processing",
                "diagnostics": f"{src}: {reason} ({'refused' if refused else 'skipped'})",
            }
        )
    return validate_resource({"resourceType": "OperationOutcome", "id": str(uuid.uuid4()), "issue": issues})


def fhir_bundle(preds: Sequence[Prediction], info: ModelInfo, skipped: Sequence[tuple[str, ...]] = ()) -> dict:
    """A FHIR ``Bundle`` of type ``collection``: one DiagnosticReport per prediction, then an
    ``OperationOutcome`` listing the skipped inputs (when any)."""
    issued = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    resources = [diagnostic_report(p, info, issued=issued) for p in preds]
    if skipped:
        resources.append(operation_outcome(skipped))
    bundle = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "timestamp": issued,
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }
    return validate_resource(bundle)
