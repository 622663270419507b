"""Resolve what the user named into an :class:`Artifact` a runner can load.

Four kinds are recognised, by what is on disk rather than by flags:

* a **model directory** (``edgekd.json`` + ``model.safetensors``): the torch backend runs it; the ort
  backend runs it exported on the fly to a temporary fp32 ONNX file (dynamic batch);
* an **ONNX file** (``*.onnx``): the ort backend;
* a **bundle** (a directory with ``manifest.json``, ``schema_version: 1``): its ONNX files (ort) and
  TensorRT engines (trt), each with the precision the manifest gives;
* a **TensorRT engine** (``*.engine``, ``*.plan``, ``*.trt``): the trt backend.

Example:
    >>> a = resolve_artifact("runs/student")
    >>> a.kind, a.input_shape, [f.precision for f in a.files]
    (<ArtifactKind.MODEL_DIR: 'model_dir'>, (1, 28, 28), [])
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edgekd.bench._onnxinfo import onnx_size_bytes, read_onnx_info
from edgekd.errors import ArtifactError
from edgekd.export import check_isa, verify_hashes
from edgekd.modeldir import WEIGHTS_FILE, is_model_dir, load_model_dir, read_card

__all__ = [
    "ArtifactKind",
    "ArtifactFile",
    "Artifact",
    "resolve_artifact",
    "onnx_for_model_dir",
    "cwd_git_revision",
    "ENGINE_SUFFIXES",
    "MANIFEST_FILE",
    "read_manifest",
]

MANIFEST_FILE = "manifest.json"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
RUNNABLE_KINDS = ("onnx", "engine", "openvino", "executorch")  # manifest file kinds a runner runs
_GIT_KEYS = ("git_revision", "git_rev", "git_commit", "git", "revision", "commit")


class ArtifactKind(str, Enum):
    MODEL_DIR = "model_dir"
    ONNX = "onnx"
    BUNDLE = "bundle"
    ENGINE = "engine"


@dataclass(frozen=True)
class ArtifactFile:
    """One runnable file: ONNX (``kind='onnx'``), a TensorRT engine, an OpenVINO IR or an ExecuTorch program."""

    path: Path
    kind: str
    precision: str


@dataclass
class Artifact:
    """A resolved artifact.

    Attributes:
        given: the string the user passed (recorded as ``artifact`` in results).
        path: the resolved path.
        kind: what it is.
        name: display and baseline-matching name (the path's last component).
        files: runnable files (ONNX/engines) with their precision; empty for a model directory.
        input_shape: per-sample input shape, e.g. ``(C, H, W)``, when known.
        params, macs: per-sample counts when derivable.
        size_bytes: size on disk of the weights / model file(s).
        git_revision, git_revision_source: the revision the lineage records (``"lineage"``) if any.
    """

    given: str
    path: Path
    kind: ArtifactKind
    name: str
    files: tuple[ArtifactFile, ...] = ()
    input_shape: tuple[int, ...] | None = None
    params: int | None = None
    macs: int | None = None
    size_bytes: int | None = None
    git_revision: str | None = None
    git_revision_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_artifact(given: str, *, verify: bool = True) -> Artifact:
    """Recognise a model directory, ONNX file, bundle or engine.

    A bundle's files are re-hashed against its manifest first (``verify``): a tampered bundle is never run; an
    INT8 file checked on another class of CPU re-runs its stored parity samples here (:func:`edgekd.export.check_isa`).

    Raises:
        ArtifactError: the path does not exist or is none of the four kinds, or a manifest is malformed.
        VerificationError: a bundle file is missing or modified, or an INT8 file fails on this CPU (exit 6).
    """

    path = Path(given)
    if not path.exists():
        raise ArtifactError(f"{given} does not exist", "pass a model directory, an ONNX file, a bundle or an engine")
    if path.is_dir() and is_model_dir(path):
        return _model_dir(given, path)
    if path.is_dir() and (path / MANIFEST_FILE).is_file():
        if verify:
            verify_hashes(path)
            check_isa(path)  # an INT8 file checked on another class of CPU is re-checked here, refused if wrong
        return _bundle(given, path)
    if path.is_file() and path.suffix.lower() == ".onnx":
        if verify and (path.parent / MANIFEST_FILE).is_file():
            check_isa(path.parent, [path.name])
        return _onnx_file(given, path)
    if path.is_file() and path.suffix.lower() in ENGINE_SUFFIXES:
        return _engine_file(given, path)
    raise ArtifactError(
        f"{given} is not a model directory, ONNX file, bundle or TensorRT engine",
        "model directories hold edgekd.json; bundles hold manifest.json; files end in .onnx or .engine/.plan",
    )


def _model_dir(given: str, path: Path) -> Artifact:

    card = read_card(path)
    h, w = card.preprocess.input_size
    lineage = card.lineage.model_dump()
    rev = _find_revision(lineage.get("versions"), lineage.get("notes"), lineage)
    return Artifact(
        given=given,
        path=path,
        kind=ArtifactKind.MODEL_DIR,
        name=path.resolve().name,
        input_shape=(card.preprocess.in_chans, h, w),
        params=card.params,
        macs=card.macs,
        size_bytes=(path / WEIGHTS_FILE).stat().st_size,
        git_revision=rev,
        git_revision_source="lineage" if rev else None,
    )


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Read and minimally validate a bundle's ``manifest.json``."""
    mpath = bundle / MANIFEST_FILE
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{mpath} is not readable JSON: {e}", "re-create the bundle with `edgekd export`") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", []), list):
        raise ArtifactError(f"{mpath} is malformed (needs a 'files' list)", "re-create the bundle with `edgekd export`")
    version = manifest.get("schema_version", 1)
    if not isinstance(version, int) or version > 1:
        raise ArtifactError(f"{mpath} has schema_version {version!r}, newer than this edgekd reads", "upgrade edgekd")
    return manifest


def _bundle(given: str, path: Path) -> Artifact:
    manifest = read_manifest(path)
    files = []
    for entry in manifest.get("files", []):
        if not isinstance(entry, dict) or entry.get("kind") not in RUNNABLE_KINDS:
            continue  # labels, preprocess.json, the model card: not runnable
        f = path / str(entry.get("name", ""))
        if not f.is_file():
            raise ArtifactError(
                f"bundle {given} lists {entry.get('name')!r} but the file is missing",
                "run `edgekd verify` on the bundle or re-export it",
            )
        files.append(ArtifactFile(path=f, kind=entry["kind"], precision=str(entry.get("precision") or "fp32")))
    if not files:
        raise ArtifactError(f"bundle {given} has no ONNX file or engine in its manifest", "re-export it")
    art = Artifact(given=given, path=path, kind=ArtifactKind.BUNDLE, name=path.resolve().name, files=tuple(files))
    _apply_manifest(art, manifest, files)
    return art


def _apply_manifest(art: Artifact, manifest: dict[str, Any], files: list[ArtifactFile]) -> None:
    """Fill shape, params, MACs, size and lineage revision from a bundle manifest."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    art.params = _int_or_none(manifest.get("params", model.get("params")))
    art.macs = _int_or_none(manifest.get("macs", model.get("macs")))
    inputs = manifest.get("inputs") or []
    if inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape") or []
        if len(shape) > 1 and all(isinstance(d, int) and d > 0 for d in shape[1:]):
            art.input_shape = tuple(shape[1:])
    if art.input_shape is None:
        art.input_shape = _shape_from_preprocess(art.path)
    art.size_bytes = sum(f.path.stat().st_size for f in files)
    lineage = manifest.get("lineage") if isinstance(manifest.get("lineage"), dict) else {}
    rev = _find_revision(manifest, lineage, lineage.get("versions"), lineage.get("notes"), manifest.get("versions"))
    art.git_revision, art.git_revision_source = rev, ("lineage" if rev else None)


def _shape_from_preprocess(bundle: Path) -> tuple[int, ...] | None:
    p = bundle / "preprocess.json"
    try:
        pre = json.loads(p.read_text())
        h, w = pre["input_size"]
        return (int(pre["in_chans"]), int(h), int(w))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _onnx_file(given: str, path: Path) -> Artifact:

    info = read_onnx_info(path)
    precision = info.precision
    art = Artifact(given=given, path=path, kind=ArtifactKind.ONNX, name=path.name, macs=info.macs)
    first = info.inputs[0] if info.inputs else None
    if first is not None and len(first.shape) > 1 and all(isinstance(d, int) for d in first.shape[1:]):
        art.input_shape = tuple(int(d) for d in first.shape[1:])
    if (path.parent / MANIFEST_FILE).is_file():  # BUNDLE/NAME.onnx: the manifest knows more
        manifest = read_manifest(path.parent)
        entry = next((e for e in manifest.get("files", []) if isinstance(e, dict) and e.get("name") == path.name), {})
        precision = str(entry.get("precision") or precision)
        macs = art.macs
        _apply_manifest(art, manifest, [])
        art.macs = art.macs if art.macs is not None else macs
        if first is not None and all(isinstance(d, int) for d in first.shape[1:]):
            art.input_shape = tuple(int(d) for d in first.shape[1:])
    art.size_bytes = onnx_size_bytes(path)
    art.files = (ArtifactFile(path=path, kind="onnx", precision=precision),)
    return art


def _engine_file(given: str, path: Path) -> Artifact:
    precision = "unknown"
    art = Artifact(given=given, path=path, kind=ArtifactKind.ENGINE, name=path.name)
    if (path.parent / MANIFEST_FILE).is_file():
        manifest = read_manifest(path.parent)
        entry = next((e for e in manifest.get("files", []) if isinstance(e, dict) and e.get("name") == path.name), {})
        precision = str(entry.get("precision") or precision)
        _apply_manifest(art, manifest, [])
    art.size_bytes = path.stat().st_size
    art.files = (ArtifactFile(path=path, kind="engine", precision=precision),)
    return art


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _find_revision(*sources: Any) -> str | None:
    """The first git revision recorded under a well-known key in any of the given mappings."""
    for src in sources:
        if not isinstance(src, dict):
            continue
        for key in _GIT_KEYS:
            v = src.get(key)
            if isinstance(v, str) and v.strip():
                return v.strip()
    return None


def cwd_git_revision() -> str | None:
    """``git rev-parse HEAD`` of the working directory, or None (no git, not a repository, no commit)."""
    if shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    return rev if out.returncode == 0 and rev else None


_EXPORTS: dict[Path, Path] = {}
_TMP: list[Path] = []


def onnx_for_model_dir(art: Artifact) -> Path:
    """Export a model directory to a temporary fp32 ONNX file (dynamic batch), once per process.

    The legacy TorchScript exporter (``dynamo=False``) is used: it handles every edgekd student and is
    what the ONNX files of a bundle are compared against. The file lives in a temporary directory removed
    at interpreter exit.
    """
    key = art.path.resolve()
    if key in _EXPORTS and _EXPORTS[key].is_file():
        return _EXPORTS[key]
    import torch

    model, _ = load_model_dir(art.path)
    if not _TMP:
        _TMP.append(Path(tempfile.mkdtemp(prefix="edgekd-bench-")))
        atexit.register(shutil.rmtree, _TMP[0], True)
    out = _TMP[0] / f"{len(_EXPORTS)}-{art.path.resolve().name}.onnx"
    x = torch.zeros((1, *(art.input_shape or ())))
    torch.onnx.export(
        model,
        (x,),
        str(out),
        input_names=["input"],
        output_names=["output"],
        opset_version=17,
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        dynamo=False,
    )
    _EXPORTS[key] = out
    return out
