"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

``OUT/checkpoint/last.safetensors`` holds the model, the objective's own parameters (e.g. FitNet adapters),
the best epoch's weights, the optimizer's tensors and the torch RNG state as tensors, and the epoch, the
history, the optimizer's hyper-parameters and the gradient scaler as JSON in the file's metadata: one file,
renamed into place atomically, so a killed process never leaves a checkpoint that loads as valid but is not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as st_save

from edgekd._io import atomic_write_bytes
from edgekd.errors import ArtifactError
from edgekd.metrics import higher_is_better

__all__ = ["TrainState", "save_checkpoint", "load_checkpoint", "load_best", "has_checkpoint", "CKPT_DIR", "CKPT_FILE"]

CKPT_DIR = "checkpoint"
CKPT_FILE = "last.safetensors"
META_KEY = "edgekd_run_state"


@dataclass
class TrainState:
    """What the loop carries from epoch to epoch (and what a checkpoint restores)."""

    select_metric: str
    epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_val: dict = field(default_factory=dict)
    best_state: dict | None = None
    history: list = field(default_factory=list)
    loss_reference: float | None = None  # the first step's loss, before any update (the scale of divergence)

    def is_better(self, score: float) -> bool:
        if not higher_is_better(self.select_metric):
            score = -score
        return score > self.best_metric


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["state"][str(pid)][k] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, t in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(out_dir: Path, model, objective, optimizer, scaler, st: TrainState) -> None:
    """Write ``OUT/checkpoint/last.safetensors`` for the state after ``st.epoch`` epochs (one atomic file)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"objective.{k}": v.detach().cpu().contiguous() for k, v in objective.state_dict().items()})
    if st.best_state is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in st.best_state.items()})
    opt_t, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_t)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {
        "epoch": st.epoch,
        "best_metric": st.best_metric,
        "best_epoch": st.best_epoch,
        "best_val": st.best_val,
        "select_metric": st.select_metric,
        "history": st.history,
        "loss_reference": st.loss_reference,
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
    }
    # The metadata travels inside the tensor file, so the checkpoint is one atomic rename: a process killed
    # at any point leaves either the previous complete checkpoint or the new one, never a mix of both.
    blob = st_save(_unalias(tensors), metadata={META_KEY: json.dumps(meta, default=float)})
    atomic_write_bytes(out_dir / CKPT_DIR / CKPT_FILE, blob)


def _unalias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    seen, out = set(), {}
    for k, v in tensors.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    hint = "delete the checkpoint folder and start without --resume"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})[META_KEY])
        tensors = load_file(str(path))
    except (KeyError, json.JSONDecodeError):
        raise ArtifactError(f"{path} is not an edgekd checkpoint (no run state in it)", hint) from None
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise ArtifactError(f"{path} is corrupt or truncated: {str(e).splitlines()[0][:200]}", hint) from None
    return tensors, meta


def has_checkpoint(out_dir: Path) -> bool:
    return (Path(out_dir) / CKPT_DIR / CKPT_FILE).is_file()


def load_checkpoint(out_dir: Path, model, objective, optimizer, scaler) -> TrainState:
    """Restore model, objective, optimizer, scaler and RNG from ``OUT/checkpoint`` (for ``--resume``).

    Raises:
        ArtifactError: no checkpoint, a corrupt one, or one of another model (other layers, class count).
    """
    path = Path(out_dir) / CKPT_DIR / CKPT_FILE
    if not path.is_file():
        raise ArtifactError(
            f"--resume: no checkpoint in {path.parent}", "start without --resume, or point --out at the run"
        )
    tensors, meta = _read(path)
    device = next(model.parameters()).device

    def part(prefix):
        return {k[len(prefix) :]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}

    try:
        model.load_state_dict(part("model."))
        objective.load_state_dict(part("objective."), strict=False)
        optimizer.load_state_dict(_unflatten_optimizer(part(""), meta["optimizer"]))
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0].rstrip(":")
        raise ArtifactError(
            f"--resume: the checkpoint in {path.parent} is of another model or loss setup ({first})",
            "resume with the same --model/--student, data and losses, or start a new --out",
        ) from None
    if meta.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return TrainState(
        select_metric=meta["select_metric"],
        epoch=meta["epoch"],
        best_metric=meta["best_metric"],
        best_epoch=meta["best_epoch"],
        best_val=meta["best_val"],
        best_state=best,
        history=meta["history"],
        loss_reference=meta.get("loss_reference"),
    )


def load_best(out_dir: Path) -> dict[str, torch.Tensor]:
    """The best epoch's weights stored in a (finished) run's checkpoint."""
    tensors, _ = _read(Path(out_dir) / CKPT_DIR / CKPT_FILE)
    return {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
