"""Loading user checkpoints into zoo architectures, without unpickling unless asked to.

``.safetensors`` files are read with safetensors. PyTorch files (``.pt``, ``.pth``, ``.bin``,
``.ckpt``, ``.tar``) are read with ``torch.load(weights_only=True)``, which only accepts tensors
and plain containers. Common training-script containers are unwrapped (``state_dict``,
``model_state_dict``, ``model``, ``net``, ``ema``) and the prefixes added by ``DataParallel``
(``module.``), Lightning-style wrappers (``model.``) and ``torch.compile`` (``_orig_mod.``) are
stripped. A file that pickles a whole model (``torch.save(model)``) or other Python objects needs
``trust_pickle=True``, because unpickling runs code chosen by the file's author.

Example:
    >>> teacher = import_checkpoint("resnet32x4.pth", spec=ModelSpec(name="small:resnet32x4", num_classes=100))
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import ArtifactError
from edgekd.specs import ModelSpec
from edgekd.students import build_model

__all__ = ["load_checkpoint_state", "import_checkpoint", "TORCH_SUFFIXES"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "ema")
_PREFIXES = ("module.", "model.", "_orig_mod.")
_ARCH_HINT = "check --model matches the architecture the checkpoint was trained with"
_TRUST_HINT = "pass --trust-pickle only if you trust its author: unpickling runs code"

State = dict[str, torch.Tensor]


def load_checkpoint_state(path: str | Path, *, trust_pickle: bool = False) -> State | nn.Module:
    """Read a checkpoint file and return its state dict (or the pickled module, with ``trust_pickle``).

    Args:
        path: a ``.safetensors`` file or a PyTorch file (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.tar``).
        trust_pickle: allow unpickling arbitrary Python objects (runs code from the file).

    Returns:
        A flat ``{name: tensor}`` dict with wrapper prefixes stripped, or an ``nn.Module`` when the
        file pickles a whole model and ``trust_pickle`` is true (take its ``state_dict()``).

    Raises:
        ArtifactError: missing, unreadable or unsupported file; no state dict inside; a pickled
            object without ``trust_pickle``.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"checkpoint {p} does not exist", "check the path")
    if p.suffix == ".safetensors":
        return strip_prefixes(_load_safetensors(p))
    if p.suffix not in TORCH_SUFFIXES:
        raise ArtifactError(
            f"unsupported checkpoint format {p.suffix or '(no suffix)'!r} for {p}",
            f"use .safetensors or a PyTorch file ({', '.join(TORCH_SUFFIXES)})",
        )
    obj = _torch_load(p, trust_pickle)
    found = _unwrap(obj)
    if isinstance(found, nn.Module):
        return found
    if found is None:
        keys = ", ".join(list(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise ArtifactError(f"no state dict found in {p} (contains: {keys})", "save model.state_dict() instead")
    return strip_prefixes(found)


def _load_safetensors(p: Path) -> State:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ArtifactError(f"cannot read {p}: {e}", "the file is corrupt or not a safetensors file") from e


def _torch_load(p: Path, trust_pickle: bool) -> object:
    try:
        return torch.load(p, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        # weights_only refuses any class reference ("Unsupported global: GLOBAL pkg.Class ..."); other
        # unpickling errors mean the bytes are not a pickle at all.
        if not trust_pickle and "unsupported global" in str(e).lower():
            raise ArtifactError(f"{p} contains a pickled Python object, not a plain state dict", _TRUST_HINT) from e
        raise _unreadable(p, e) from e
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        TypeError,
        struct.error,
    ) as e:
        # AttributeError/ImportError: a trusted pickle refers to a class that cannot be imported here; the
        # rest are what the unpicklers raise on bytes that are not a pickle (found by tests/test_fuzz.py).
        raise _unreadable(p, e) from e


def _unreadable(p: Path, e: BaseException) -> ArtifactError:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return ArtifactError(f"cannot read {p}: {reason}", "the file is corrupt or not a PyTorch checkpoint")


def _is_state(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, depth: int = 0) -> State | nn.Module | None:
    """Find the state dict (or module) inside common training-checkpoint containers."""
    if isinstance(obj, nn.Module):
        return obj
    if _is_state(obj):
        return dict(obj)  # type: ignore[arg-type]
    if not isinstance(obj, Mapping) or depth > 3:
        return None
    for key in _CONTAINER_KEYS:
        if key in obj:
            found = _unwrap(obj[key], depth + 1)
            if found is not None:
                return found
    return None


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> State:
    """Remove ``module.``/``model.``/``_orig_mod.`` while *every* key carries the same one."""
    state = dict(state)
    while state:
        prefix = next((p for p in _PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def import_checkpoint(
    path: str | Path, *, spec: ModelSpec, trust_pickle: bool = False, strict: bool = True
) -> nn.Module:
    """Build ``spec`` and load the checkpoint at ``path`` into it; the model is returned in eval mode.

    Args:
        path: checkpoint file, see :func:`load_checkpoint_state`.
        spec: the architecture the checkpoint was trained with.
        trust_pickle: allow unpickling (see :func:`load_checkpoint_state`).
        strict: every key must match; with ``False`` missing and unexpected keys are ignored, but at
            least one key and every shape must still match.

    Raises:
        ArtifactError: unreadable file, key mismatches (up to 5 listed), or shape mismatches (the
            hint names ``--num-classes`` when only the classifier differs).
    """
    found = load_checkpoint_state(path, trust_pickle=trust_pickle)
    state = strip_prefixes(found.state_dict()) if isinstance(found, nn.Module) else found
    model = build_model(spec)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if (strict and (missing or unexpected)) or len(missing) == len(expected):
        raise ArtifactError(f"{path} does not match {spec.name}: {_describe_keys(missing, unexpected)}", _ARCH_HINT)
    _check_shapes(path, spec, model, state, expected)
    model.load_state_dict(state, strict=strict)
    return model.eval()


def _describe_keys(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            parts.append(f"{len(keys)} {label} keys ({', '.join(keys[:5])}{more})")
    return "; ".join(parts)


def _check_shapes(path: str | Path, spec: ModelSpec, model: nn.Module, state: State, expected: State) -> None:
    bad = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if not bad:
        return
    if all(_is_classifier_mismatch(model, k, state[k], spec.num_classes) for k in bad):
        outputs = state[bad[0]].shape[0]
        raise ArtifactError(
            f"the classifier in {path} has {outputs} outputs but {spec.name} was built with "
            f"num_classes={spec.num_classes}",
            f"pass --num-classes {outputs}",
        )
    first_conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    key = f"{first_conv}.weight"
    hint = _ARCH_HINT
    if key in bad and state[key].shape[1] != expected[key].shape[1]:
        hint = f"the checkpoint takes {state[key].shape[1]} input channels: pass --in-chans {state[key].shape[1]}"
    shown = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in bad[:5])
    raise ArtifactError(
        f"{path} does not match {spec.name}: {len(bad)} shape mismatches (checkpoint vs model: {shown})", hint
    )


def _is_classifier_mismatch(model: nn.Module, key: str, tensor: torch.Tensor, num_classes: int) -> bool:
    """A mismatch only in the output dimension of a Linear/1x1-conv layer with ``num_classes`` outputs."""
    module_path, _, _ = key.rpartition(".")
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        return False
    outputs = getattr(module, "out_features", getattr(module, "out_channels", None))
    param = getattr(module, key.rpartition(".")[2], None)
    if outputs != num_classes or not isinstance(param, torch.Tensor) or param.dim() != tensor.dim():
        return False
    return tensor.shape[1:] == param.shape[1:]
