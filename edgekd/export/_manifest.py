"""``manifest.json`` of a bundle: :class:`Manifest` (sha256 of every file, IO, precision, target, metrics, parity,
versions, lineage) and :func:`read_manifest`. Below both the bundle writer (:mod:`._bundle`) and the model card
(:mod:`._model_card`), which renders a manifest.

Example:
    >>> m = read_manifest("bundles/student")
    >>> [(f.name, f.precision) for f in m.model_files()]
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from edgekd.errors import ArtifactError
from edgekd.export._lint import Finding
from edgekd.export._parity import ParityResult
from edgekd.export._types import Precision, TensorInfo
from edgekd.modeldir import read_json, validate_file
from edgekd.specs import IntendedUse, Task

__all__ = ["Manifest", "ManifestFile", "read_manifest", "SCHEMA_VERSION", "MANIFEST_FILE", "MODEL_KINDS"]

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_KINDS = ("onnx", "engine")  # the model files of bundles written before a file's precision marked it


class ManifestFile(BaseModel):
    """One entry of ``manifest["files"]``."""

    name: str
    sha256: str
    kind: str
    precision: Precision | None = None
    bytes: int


class Manifest(BaseModel):
    """Contents of ``manifest.json``."""

    schema_version: int = SCHEMA_VERSION
    name: str
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    target: str
    task: Task
    label_names: list[str]
    precision: Precision | None = None
    precisions: list[Precision] = Field(default_factory=list)
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    dynamic_batch: bool = True
    profile: dict[str, Any] | None = None
    files: list[ManifestFile] = Field(default_factory=list)
    exporter: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: list[ParityResult] = Field(default_factory=list)
    lint: list[Finding] = Field(default_factory=list)
    preprocess: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    lineage: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    # The instruction set an INT8 file was checked on (edgekd.quantize): ``target``, ``scheme``, ``verified_isa``
    # (None when only reference kernels checked it), ``kernels``, ``built_on``, ``device_isa``; None otherwise.
    isa: dict[str, Any] | None = None
    # What the model is meant to classify (from the model card): checked by `edgekd predict` / `serve`.
    intended_use: IntendedUse | None = None
    # The out-of-distribution reference (``drift_reference.npz``): model file, feature tensor, spaces; or
    # ``{"available": false, "reason": ...}``. None for bundles written before it existed.
    ood: dict[str, Any] | None = None

    def model_files(self) -> list[ManifestFile]:
        """The model files (ONNX graphs, engines, any file format of :data:`~edgekd.export.FORMATS`), in manifest
        order: the files with a precision (sidecars and support files have none)."""
        return [f for f in self.files if f.precision is not None or f.kind in MODEL_KINDS]


def read_manifest(bundle: str | os.PathLike) -> Manifest:
    """Read and validate ``BUNDLE/manifest.json``.

    Raises:
        ArtifactError: no bundle, no manifest, a malformed one or a newer schema.
    """
    path = Path(bundle) / MANIFEST_FILE
    if not Path(bundle).is_dir():
        raise ArtifactError(f"bundle {bundle} does not exist", "pass a directory written by `edgekd export`")
    if not path.is_file():
        raise ArtifactError(f"{bundle} has no {MANIFEST_FILE}: not an edgekd bundle", "re-export it")
    raw = read_json(path, "re-export it")
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} must hold a JSON object, not {type(raw).__name__}", "re-export it")
    version = raw.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ArtifactError(f"{path} uses bundle schema {version}, newer than this edgekd", "upgrade")
    return validate_file(Manifest, raw, path, "re-export it")
