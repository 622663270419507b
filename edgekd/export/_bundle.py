"""The hand-off bundle: model files plus everything the receiving side needs to use and verify them.

Layout of ``BUNDLE/`` (schema version 1):

=====================  ===================================================================
``model.onnx``         FP32 ONNX (``model.fp16.onnx``, ``model.int8.onnx``, ``model.engine`` ...)
``model.engine.json``  TensorRT build settings and versions, next to an engine
``labels.json``        ``{"task": ..., "labels": [...]}`` in logit order
``preprocess.json``    the exact resize / normalise / channel recipe, with a plain-language formula
``parity.npz``         reference inputs and logits (no pickle) that ``edgekd verify`` re-runs
``drift_reference.npz`` the out-of-distribution reference computed by the primary file on validation
                       (``manifest["ood"]``; absent without usable validation data)
``MODEL_CARD.md``      what the model is, data, metrics, intended use and limits, how to run it
``manifest.json``      sha256 of every file, IO, precision, target, metrics, parity, versions, lineage
=====================  ===================================================================

``manifest["files"]`` is a list of ``{"name", "sha256", "kind", "precision", "bytes"}`` and
``manifest["inputs"]`` / ``["outputs"]`` lists of ``{"name", "shape", "dtype"}``; benchmark runners
find their model files there.

Example:
    >>> files = [BundleFile(source="work/model.int8.onnx", name="model.int8.onnx", precision="int8")]
    >>> manifest = write_bundle("bundles/int8", card=card, files=files, parity=[res], target="tensorrt",
    ...                         reference=Reference(inputs=x[:16], logits=ref[:16]))
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export._lint import Finding
from edgekd.export._manifest import MANIFEST_FILE, Manifest, ManifestFile
from edgekd.export._model_card import render_model_card
from edgekd.export._parity import ParityResult
from edgekd.export._types import Precision, TensorInfo, onnx_io, static_batch
from edgekd.modeldir import ModelCard, atomic_dir, package_versions, sha256_file
from edgekd.monitor import REFERENCE_FILE, write_reference
from edgekd.monitor import Reference as OODReference
from edgekd.specs import ChannelMode, Preprocess

__all__ = [
    "BundleFile",
    "Reference",
    "write_bundle",
    "preprocess_recipe",
    "LABELS_FILE",
    "PREPROCESS_FILE",
    "PARITY_FILE",
    "MODEL_CARD_FILE",
]

LABELS_FILE = "labels.json"
PREPROCESS_FILE = "preprocess.json"
PARITY_FILE = "parity.npz"
MODEL_CARD_FILE = "MODEL_CARD.md"
_RESERVED = {MANIFEST_FILE, LABELS_FILE, PREPROCESS_FILE, PARITY_FILE, MODEL_CARD_FILE, REFERENCE_FILE}


class BundleFile(BaseModel):
    """A file to put in a bundle.

    Attributes:
        source: where it is now.
        name: its file name inside the bundle (no folders).
        kind: ``"onnx"``, ``"engine"``, ``"engine-meta"`` (a sidecar) or any other free-form kind.
        precision: the precision of a model file (what makes it one: :meth:`Manifest.model_files`); ``None``
            for other files.
    """

    source: Path
    name: str
    kind: str = "onnx"
    precision: Precision | None = None


@dataclass(frozen=True)
class Reference:
    """Reference inputs (preprocessed float32) and the PyTorch logits for them, stored as ``parity.npz``."""

    inputs: np.ndarray
    logits: np.ndarray


def preprocess_recipe(pre: Preprocess, input_name: str = "input") -> dict[str, Any]:
    """``preprocess.json``: the :class:`Preprocess` fields plus the steps in plain language."""
    h, w = pre.input_size
    steps = [
        f"read the image as uint8 with {pre.data_channels} channel(s) "
        f"({'grayscale' if pre.data_channels == 1 else 'RGB'}), laid out [C, H, W]",
        f"scale to [0, 1]: x = u8 * {pre.scale!r}",
        f"if the image is not {h}x{w} (H x W): resize to {h}x{w} with {pre.interpolation} interpolation "
        "(align_corners=False, no antialiasing, as torch.nn.functional.interpolate)",
    ]
    if pre.channel_mode is ChannelMode.REPEAT:
        steps.append(f"repeat the channels {pre.in_chans // pre.data_channels} times to {pre.in_chans} channels")
    steps += [
        f"normalise each channel c: x[c] = (x[c] - mean[c]) / std[c], mean={list(pre.mean)}, std={list(pre.std)}",
        f"stack images to a float32 batch [N, {pre.in_chans}, {h}, {w}] and feed it as {input_name!r}",
    ]
    repeat = " repeated to in_chans channels" if pre.channel_mode is ChannelMode.REPEAT else ""
    return {
        **pre.model_dump(mode="json"),
        "layout": "NCHW",
        "dtype": "float32",
        "input_name": input_name,
        "formula": f"x = (resize(u8 * scale){repeat} - mean) / std",
        "steps": steps,
    }


def _check_files(files: list[BundleFile]) -> None:
    seen: set[str] = set()
    for f in files:
        if Path(f.name).name != f.name or f.name in ("", ".", ".."):
            raise InvalidInputError(f"bundle file name {f.name!r} must be a plain file name")
        if f.name in _RESERVED or f.name in seen:
            raise InvalidInputError(f"bundle file name {f.name!r} is reserved or used twice")
        if not Path(f.source).is_file():
            raise ArtifactError(f"bundle file {f.source} does not exist")
        seen.add(f.name)


def _io_of(files: list[BundleFile]) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """IO of the primary ONNX file (FP32 first): what a caller feeds and reads."""
    onnx_files = sorted((f for f in files if f.kind == "onnx"), key=lambda f: f.precision != Precision.FP32)
    return onnx_io(onnx_files[0].source) if onnx_files else ([], [])


def _entry(path: Path, kind: str, precision: Precision | None = None) -> ManifestFile:
    return ManifestFile(
        name=path.name, sha256=sha256_file(path), kind=kind, precision=precision, bytes=path.stat().st_size
    )


def _write_support_files(
    tmp: Path, card: ModelCard, inputs: list[TensorInfo], reference: Reference | None
) -> list[ManifestFile]:
    labels = {"task": card.task.value, "labels": list(card.label_names)}
    (tmp / LABELS_FILE).write_text(json.dumps(labels, indent=2) + "\n")
    name = inputs[0].name if inputs else "input"
    (tmp / PREPROCESS_FILE).write_text(json.dumps(preprocess_recipe(card.preprocess, name), indent=2) + "\n")
    entries = [_entry(tmp / LABELS_FILE, "labels"), _entry(tmp / PREPROCESS_FILE, "preprocess")]
    if reference is not None:
        x = np.ascontiguousarray(reference.inputs, dtype=np.float32)
        y = np.ascontiguousarray(reference.logits, dtype=np.float32)
        if len(x) != len(y):
            raise InvalidInputError(f"reference has {len(x)} inputs but {len(y)} logits")
        with open(tmp / PARITY_FILE, "wb") as fh:
            np.savez(fh, inputs=x, logits=y)
        entries.append(_entry(tmp / PARITY_FILE, "parity"))
    return entries


def _manifest(
    card: ModelCard, files: list[ManifestFile], inputs: list[TensorInfo], outputs: list[TensorInfo], **fields: Any
) -> Manifest:
    precisions = [f.precision for f in files if f.precision is not None]
    versions = {**package_versions(), **(fields.pop("versions", None) or {})}
    return Manifest(
        name=card.spec.name,
        target=fields.pop("target"),
        task=card.task,
        label_names=list(card.label_names),
        precision=precisions[0] if precisions else None,
        precisions=list(dict.fromkeys(precisions)),
        inputs=inputs,
        outputs=outputs,
        dynamic_batch=bool(inputs) and static_batch(inputs[0]) is None,
        files=files,
        metrics=card.metrics,
        preprocess=card.preprocess.model_dump(mode="json"),
        spec=card.spec.model_dump(mode="json"),
        params=card.params,
        macs=card.macs,
        versions=versions,
        lineage=card.lineage.model_dump(mode="json"),
        intended_use=card.intended_use,
        **fields,
    )


def write_bundle(
    out: str | os.PathLike,
    *,
    card: ModelCard,
    files: list[BundleFile],
    parity: list[ParityResult],
    target: str,
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
    reference: Reference | None = None,
    exporter: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
    lint: list[Finding] | None = None,
    versions: dict[str, str] | None = None,
    isa: dict[str, Any] | None = None,
    ood_reference: OODReference | None = None,
    ood: dict[str, Any] | None = None,
) -> Manifest:
    """Write a bundle atomically: a failure leaves no directory (and an existing bundle untouched).

    Args:
        out: the bundle directory.
        card: the model card of the exported model (labels, preprocessing, metrics, lineage).
        files: model files (and sidecars) to copy in.
        parity: the parity results of the model files.
        target: the deployment target (``"onnxruntime"``, ``"tensorrt"``, ...).
        extra: free-form additions to ``manifest["extra"]``.
        overwrite: replace an existing bundle at ``out``.
        reference: inputs and reference logits to store as ``parity.npz`` for ``verify_bundle``.
        exporter: how the ONNX was made (exporter, reason, opset, ...).
        profile: the TensorRT optimization profile (min/opt/max batch), when relevant.
        lint: lint findings to record.
        versions: extra package versions (e.g. ``{"tensorrt": ...}``).
        isa: the instruction set the INT8 file was checked on (see :attr:`Manifest.isa`).
        ood_reference: the out-of-distribution reference to store as ``drift_reference.npz``.
        ood: its description for ``manifest["ood"]`` (see :func:`~edgekd.export.validate_bundle_file`).

    Returns:
        The :class:`Manifest` written to ``manifest.json``.

    Raises:
        InvalidInputError: bad file names; ArtifactError: a missing source file or ``out`` exists without
        ``overwrite``.
    """
    _check_files(files)
    inputs, outputs = _io_of(files)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        entries = []
        for f in files:
            shutil.copyfile(f.source, tmp / f.name)
            entries.append(_entry(tmp / f.name, f.kind, f.precision))
        entries += _write_support_files(tmp, card, inputs, reference)
        if ood_reference is not None:
            entries.append(_entry(write_reference(tmp, ood_reference), "ood-reference"))
        manifest = _manifest(
            card,
            entries,
            inputs,
            outputs,
            target=target,
            exporter=exporter or {},
            profile=profile,
            parity=parity,
            lint=lint or [],
            extra=extra or {},
            versions=versions,
        )
        manifest.isa = isa
        manifest.ood = ood
        (tmp / MODEL_CARD_FILE).write_text(render_model_card(manifest, card))
        manifest.files.append(_entry(tmp / MODEL_CARD_FILE, "model-card"))
        (tmp / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return manifest
