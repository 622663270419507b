"""The model directory: the unit every stage reads and writes.

``DIR/model.safetensors`` holds the weights (never pickled); ``DIR/edgekd.json`` holds a
:class:`~edgekd.specs.ModelCard` with everything needed to rebuild the exact architecture and to use the
model: the :class:`~edgekd.specs.ModelSpec`, task, label names, :class:`~edgekd.specs.Preprocess`, metrics
and lineage (parent hash, the command that made it, package versions). Pruned models also store their
``structure`` (per-module widths), so loading rebuilds the shrunken architecture without pickle.

Example:
    >>> save_model_dir(model, card, "runs/teacher")
    >>> model, card = load_model_dir("runs/teacher")
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from edgekd._io import atomic_dir, atomic_write_bytes, atomic_write_text, sha256_file
from edgekd.data import DataBundle, load_data
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import FORMAT_VERSION, Lineage, ModelCard, ModelSpec, current_command, package_versions
from edgekd.students import apply_structure, build_model, count_params

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
    "load_model_and_data",
]

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "edgekd.json"


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
    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if card.params is None:
        card = card.model_copy(update={"params": count_params(model)})
    if not card.lineage.versions:
        card = card.model_copy(update={"lineage": card.lineage.model_copy(update={"versions": package_versions()})})
    if not card.lineage.command:
        card = card.model_copy(update={"lineage": card.lineage.model_copy(update={"command": current_command()})})
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
    p = Path(path)
    card = read_card(p)
    model = build_model(card.spec)
    if card.structure:
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


def load_model_and_data(source: str | os.PathLike, data: str | DataBundle | None = None, *, seed: int = 0
                        ) -> tuple[torch.nn.Module, ModelCard, DataBundle]:  # fmt: skip
    """A model directory and its data (default: the data in its lineage), checked to fit each other.

    Raises:
        ArtifactError: ``source`` is missing or malformed (exit 4).
        InvalidInputError: no data recorded nor given, or data with other classes or task (exit 3).
    """
    model, card = load_model_dir(source)
    spec = data if data is not None else card.lineage.data
    if spec is None:
        raise InvalidInputError(f"{source} does not record its training data", "pass --data")
    bundle = spec if isinstance(spec, DataBundle) else load_data(spec, seed=seed)
    if bundle.num_classes != card.spec.num_classes or bundle.task is not card.task:
        raise InvalidInputError(f"data {bundle.spec} ({bundle.num_classes} classes, {bundle.task.value}) does not fit "
                                f"{source} ({card.spec.num_classes} outputs, {card.task.value})",
                                "prune on the data the model was trained for")  # fmt: skip
    return model, card, bundle
