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
from typing import TypeVar

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from edgekd._config import validation_message
from edgekd._io import atomic_dir, atomic_write_bytes, atomic_write_text, sha256_file
from edgekd.data import DataBundle, load_data
from edgekd.errors import ArtifactError, DependencyError, EdgeKDError, InvalidInputError
from edgekd.specs import FORMAT_VERSION, Lineage, ModelCard, ModelSpec, current_command, package_versions
from edgekd.students import MAX_INPUT_SIZE, apply_structure, build_model, count_params, probe_forward

__all__ = [
    "ModelSpec",
    "Lineage",
    "ModelCard",
    "save_model_dir",
    "load_model_dir",
    "read_card",
    "read_json",
    "validate_file",
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
    """Read and validate ``edgekd.json`` of a model directory.

    Raises:
        ArtifactError: a missing directory or file, a card that is not JSON, a newer format, or a field with a
            bad value (one line naming the file and the field; exit 4).
    """
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"model directory {p} does not exist", "pass a directory written by `edgekd train`")
    if not is_model_dir(p):
        raise ArtifactError(
            f"{p} is not an edgekd model directory (needs {CARD_FILE} and {WEIGHTS_FILE})",
            "use `edgekd import` to turn a checkpoint into a model directory",
        )
    raw = read_json(p / CARD_FILE)
    if not isinstance(raw, dict):
        raise ArtifactError(f"{p / CARD_FILE} must hold a JSON object, not {type(raw).__name__}", _RECREATE)
    version = raw.get("format_version", FORMAT_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ArtifactError(
            f"{p} uses model-directory format {version}, newer than this edgekd supports", "upgrade edgekd"
        )
    card = validate_file(ModelCard, raw, p / CARD_FILE, _RECREATE)
    if min(card.preprocess.input_size) < 1:
        raise ArtifactError(
            f"{p / CARD_FILE}: invalid field preprocess.input_size: {list(card.preprocess.input_size)} "
            "is not a positive size",
            _RECREATE,
        )
    return card


_RECREATE = "re-create the model directory"
M = TypeVar("M", bound=BaseModel)


def validate_file(model: type[M], raw: object, path: Path, hint: str) -> M:
    """``model.model_validate(raw)`` for the contents of ``path``: one line naming the file and the field.

    Raises:
        ArtifactError: the first invalid field, without pydantic's dump or URLs (exit 4).
    """
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        cause = (e.errors()[0].get("ctx") or {}).get("error")
        if isinstance(cause, EdgeKDError):  # a validator's own one-line message and hint
            where = ".".join(str(x) for x in e.errors()[0].get("loc", ())) or "value"
            raise ArtifactError(f"{path}: invalid field {where}: {cause.message}", cause.hint or hint) from e
        raise ArtifactError(f"{path}: {validation_message(e, 'field')}", hint) from e


def read_json(path: str | os.PathLike, hint: str = _RECREATE) -> object:
    """Parsed JSON of a file, with one-line errors (never a traceback, whatever the bytes).

    Raises:
        ArtifactError: unreadable, not UTF-8, not JSON, or nested too deeply (exit 4).
    """
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or type(e).__name__}") from e
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{path} is not JSON text (invalid UTF-8 at byte {e.start})", hint) from e
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", hint) from e
    except RecursionError as e:
        raise ArtifactError(f"{path} is not valid JSON: nested too deeply", hint) from e
    except ValueError as e:
        raise ArtifactError(f"{path} is not valid JSON: {(str(e).splitlines() or ['?'])[0]}", hint) from e


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
    """Rebuild the exact architecture from ``edgekd.json`` and load the weights (no pickle).

    The card is checked against the architecture before it is used: the builder must accept its spec, a
    pruned ``structure`` must fit, the weights must match, and the model must run once on a zero input of
    the card's preprocessing (batch 1), so a damaged or hand-edited directory fails here, not mid-run.

    Raises:
        ArtifactError: any of those checks failed, naming the file (exit 4).
        DependencyError: the architecture needs a package that is not installed (exit 5).
    """
    p = Path(path)
    card = read_card(p)
    card_file = p / CARD_FILE
    try:
        model = build_model(card.spec)
        if card.structure:
            apply_structure(model, card.structure)
    except DependencyError:
        raise
    except EdgeKDError as e:
        raise ArtifactError(f"{card_file}: {e.message}", e.hint or _RECREATE) from e
    try:
        state = load_file(str(p / WEIGHTS_FILE), device=map_location)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"cannot read {p / WEIGHTS_FILE}: {e}", "the file is corrupt; re-create it") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        msg = lines[1] if len(lines) > 1 else (lines or ["mismatch"])[0]  # line 0 is "Error(s) in loading ..."
        raise ArtifactError(f"weights in {p} do not match {card.spec.name}: {msg}", _RECREATE) from e
    shape = (1, card.preprocess.in_chans, *card.preprocess.input_size)
    reason = probe_forward(model, shape) if max(shape[2:]) <= MAX_INPUT_SIZE else "the input size is too large"
    if reason is not None:
        raise ArtifactError(
            f"{card_file}: {card.spec.name} does not run on its recorded input "
            f"{'x'.join(map(str, shape[1:]))}: {reason}",
            _RECREATE,
        )
    model.eval()
    return model, card


def card_json(card: ModelCard) -> dict:
    return json.loads(card.model_dump_json())


def load_model_and_data(
    source: str | os.PathLike, data: str | DataBundle | None = None, *, seed: int = 0
) -> tuple[torch.nn.Module, ModelCard, DataBundle]:
    """A model directory and its data (default: the data in its lineage), checked to fit each other.

    Raises:
        ArtifactError: ``source`` is missing or malformed (exit 4).
        InvalidInputError: no data recorded nor given, or data with other classes, label names or task (exit 3).
    """
    model, card = load_model_dir(source)
    spec = data if data is not None else card.lineage.data
    if spec is None:
        raise InvalidInputError(f"{source} does not record its training data", "pass --data")
    bundle = spec if isinstance(spec, DataBundle) else load_data(spec, seed=seed)
    if bundle.num_classes != card.spec.num_classes or bundle.task is not card.task:
        raise InvalidInputError(
            f"data {bundle.spec} ({bundle.num_classes} classes, {bundle.task.value}) does not fit "
            f"{source} ({card.spec.num_classes} outputs, {card.task.value})",
            "prune on the data the model was trained for",
        )
    if card.label_names and bundle.label_names and list(bundle.label_names) != list(card.label_names):
        # Same count, other names or order: class i of the data would silently be class i of the model.
        raise InvalidInputError(
            f"data {bundle.spec} has labels {_brief(bundle.label_names)} but {source} was "
            f"trained on {_brief(card.label_names)}",
            "use data with the model's labels in the model's order",
        )
    return model, card, bundle


def _brief(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return f"[{shown}]"
