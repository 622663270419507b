"""The model directory: the unit every stage reads and writes.

``DIR/model.safetensors`` holds the weights (never pickled); ``DIR/edgekd.json`` holds a
:class:`ModelCard` with everything needed to rebuild the exact architecture and to use the model:
the :class:`ModelSpec`, task, label names, :class:`~edgekd.data.preprocess.Preprocess`, metrics and
lineage (parent hash, the command that made it, package versions). Pruned models also store their
``structure`` (per-module widths), so loading rebuilds the shrunken architecture without pickle.

Example:
    >>> save_model_dir(model, card, "runs/teacher")
    >>> model, card = load_model_dir("runs/teacher")
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekd.data.preprocess import Preprocess, Task
from edgekd.errors import ArtifactError

__all__ = [
    "ModelSpec",
    "Lineage",
    "ModelCard",
    "save_model_dir",
    "load_model_dir",
    "read_card",
    "is_model_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_dir",
    "sha256_file",
    "package_versions",
    "WEIGHTS_FILE",
    "CARD_FILE",
]

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "edgekd.json"
FORMAT_VERSION = 1


class ModelSpec(BaseModel):
    """What to build: a registry name plus the arguments that change the architecture.

    Attributes:
        name: a source-qualified name, e.g. ``tv:resnet18``, ``small:resnet8x4``, ``timm:resnet18``.
        num_classes: classifier outputs (2 for binary tasks, the label count for multi-label ones).
        in_chans: input channels of the first layer.
        small_input: 3x3 stride-1 stem without max-pool, for inputs of at most 64 px.
        kwargs: extra builder keyword arguments (validated by the builder).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    num_classes: int = Field(ge=1)
    in_chans: int = Field(default=3, ge=1)
    small_input: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Lineage(BaseModel):
    """Where a model came from."""

    command: str = ""
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    parent: str | None = None  # path of the parent model directory
    parent_sha256: str | None = None  # sha256 of the parent's weights file
    data: str | None = None
    teachers: list[str] = Field(default_factory=list)
    losses: list[str] = Field(default_factory=list)
    stage: str = "train"
    versions: dict[str, str] = Field(default_factory=dict)
    notes: dict[str, Any] = Field(default_factory=dict)


class ModelCard(BaseModel):
    """Contents of ``edgekd.json``."""

    format_version: int = FORMAT_VERSION
    spec: ModelSpec
    task: Task
    label_names: list[str]
    preprocess: Preprocess
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    structure: dict[str, dict[str, int]] | None = None
    params: int | None = None
    macs: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide how a model behaves, for lineage and benchmark records."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("edgekd", "torch", "torchvision", "onnx", "onnxruntime", "torch-pruning", "numpy", "timm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private (0600); artifacts are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class atomic_dir:
    """Context manager: build a directory under a temporary name, rename it into place on success.

    On an exception the temporary directory is removed, so no half-written artifact is left. An
    existing target is replaced only when ``overwrite`` is true.

    Example:
        >>> with atomic_dir("out/bundle") as tmp:
        ...     (tmp / "model.onnx").write_bytes(b"...")
    """

    def __init__(self, target: str | os.PathLike, *, overwrite: bool = True) -> None:
        self.target = Path(target)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise ArtifactError(f"{self.target} already exists", "choose another --out or pass --overwrite")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".tmp"))
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes directories private (0700)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)


def is_model_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / CARD_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def read_card(path: str | os.PathLike) -> ModelCard:
    """Read and validate ``edgekd.json`` of a model directory."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"model directory {p} does not exist", "pass a directory written by `edgekd train`")
    if not is_model_dir(p):
        raise ArtifactError(
            f"{p} is not an edgekd model directory (needs {CARD_FILE} and {WEIGHTS_FILE})",
            "use `edgekd import` to turn a checkpoint into a model directory",
        )
    try:
        card = ModelCard.model_validate_json((p / CARD_FILE).read_text())
    except (ValidationError, ValueError) as e:
        first = str(e).splitlines()[0:3]
        raise ArtifactError(f"{p / CARD_FILE} is malformed: {' '.join(first)}", "re-create the model directory") from e
    if card.format_version > FORMAT_VERSION:
        raise ArtifactError(
            f"{p} uses model-directory format {card.format_version}, newer than this edgekd supports",
            "upgrade edgekd",
        )
    return card


def save_model_dir(model: torch.nn.Module, card: ModelCard, out: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write ``model`` and ``card`` as a model directory, atomically.

    Params and MACs are filled in when missing; package versions are added to the lineage.
    """
    from safetensors.torch import save as st_save

    from edgekd.students import count_params

    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if card.params is None:
        card = card.model_copy(update={"params": count_params(model)})
    if not card.lineage.versions:
        card = card.model_copy(update={"lineage": card.lineage.model_copy(update={"versions": package_versions()})})
    if not card.lineage.command:
        cmd = " ".join(["edgekd", *sys.argv[1:]]) if Path(sys.argv[0]).name == "edgekd" else ""
        card = card.model_copy(update={"lineage": card.lineage.model_copy(update={"command": cmd})})
    weights = st_save(_dedupe_shared(state), metadata={"format": "pt"})
    if out.is_dir() and overwrite:
        # Update in place (a training run keeps its checkpoint/ and config.yaml beside the model). The
        # card goes first and comes back last, so a crash in between never leaves a card naming
        # weights it does not match.
        (out / CARD_FILE).unlink(missing_ok=True)
        atomic_write_bytes(out / WEIGHTS_FILE, weights)
        atomic_write_text(out / CARD_FILE, card.model_dump_json(indent=2))
        return out
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / WEIGHTS_FILE).write_bytes(weights)
        (tmp / CARD_FILE).write_text(card.model_dump_json(indent=2))
    return out


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share storage; clone the later aliases.
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        if ptr != -1:
            seen.add(ptr)
    return out


def load_model_dir(path: str | os.PathLike, *, map_location: str = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the exact architecture from ``edgekd.json`` and load the weights (no pickle)."""
    from safetensors.torch import load_file

    from edgekd.students import build_model

    p = Path(path)
    card = read_card(p)
    model = build_model(card.spec)
    if card.structure:
        from edgekd.prune import apply_structure

        apply_structure(model, card.structure)
    try:
        state = load_file(str(p / WEIGHTS_FILE), device=map_location)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"cannot read {p / WEIGHTS_FILE}: {e}", "the file is corrupt; re-create it") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = str(e).splitlines()[0]
        raise ArtifactError(
            f"weights in {p} do not match {card.spec.name}: {msg}", "re-create the model directory"
        ) from e
    model.eval()
    return model, card


def card_json(card: ModelCard) -> dict:
    return json.loads(card.model_dump_json())
