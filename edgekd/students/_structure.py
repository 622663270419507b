"""Record and re-apply the widths of a structurally pruned model, without pickle.

A pruned model differs from its registry architecture only in the widths of its convolutions,
norms and linear layers. :func:`capture_structure` records those widths per module path (JSON in
``edgekd.json``); :func:`apply_structure` shrinks a freshly built model to them, after which the
pruned ``model.safetensors`` loads strictly.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import ArtifactError

__all__ = ["capture_structure", "apply_structure"]

_ATTRS = {
    nn.Conv2d: ("in_channels", "out_channels", "groups"),
    nn.ConvTranspose2d: ("in_channels", "out_channels", "groups"),
    nn.Conv1d: ("in_channels", "out_channels", "groups"),
    nn.BatchNorm2d: ("num_features",),
    nn.BatchNorm1d: ("num_features",),
    nn.Linear: ("in_features", "out_features"),
    nn.LayerNorm: (),
    nn.GroupNorm: ("num_groups", "num_channels"),
    nn.PReLU: ("num_parameters",),
}


def _attrs(m: nn.Module) -> tuple[str, ...] | None:
    for cls, names in _ATTRS.items():
        if type(m) is cls:
            return names
    return None


def capture_structure(model: nn.Module, reference: nn.Module | None = None) -> dict[str, dict[str, int]]:
    """Widths and parameter shapes of every resizable module (only those differing from ``reference``)."""
    ref = dict(reference.named_modules()) if reference is not None else {}
    out: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        names = _attrs(m)
        if names is None:
            continue
        rec = {a: int(getattr(m, a)) for a in names}
        if isinstance(m, nn.LayerNorm):
            rec = {"normalized_shape": int(m.normalized_shape[0])} if len(m.normalized_shape) == 1 else {}
        r = ref.get(name)
        if r is not None and all(getattr(r, a, None) == v for a, v in rec.items() if a != "normalized_shape"):
            if not isinstance(m, nn.LayerNorm) or tuple(r.normalized_shape) == tuple(m.normalized_shape):
                continue
        out[name] = rec
    return out


def apply_structure(model: nn.Module, structure: dict[str, dict[str, int]]) -> nn.Module:
    """Resize the modules named in ``structure`` in place (weights become uninitialised placeholders).

    Pruning only shrinks: every recorded width must be a positive integer no larger than the architecture's
    own, name an attribute the module has, and keep grouped layers divisible by their groups.

    Raises:
        ArtifactError: a structure that does not fit the architecture (exit 4); the model is left unchanged.
    """
    modules = dict(model.named_modules())
    for name, rec in structure.items():
        _check_record(name, modules.get(name), rec)
    for name, rec in structure.items():
        m = modules[name]
        for a, v in rec.items():
            if a == "normalized_shape":
                m.normalized_shape = (v,)
            else:
                setattr(m, a, v)
        _resize_params(m)
    return model


_MISMATCH = "the model directory does not match its architecture spec"


def _check_record(name: str, m: nn.Module | None, rec: object) -> None:
    names = _attrs(m) if m is not None else None
    if names is None:
        raise ArtifactError(f"pruned structure names module {name!r}, which the architecture lacks", _MISMATCH)
    kind = type(m).__name__
    allowed = set(names) | ({"normalized_shape"} if isinstance(m, nn.LayerNorm) else set())
    if not isinstance(rec, dict):
        raise ArtifactError(f"pruned structure of {name!r} ({kind}) is not a mapping of widths", _MISMATCH)
    for a, v in rec.items():
        if a not in allowed:
            raise ArtifactError(
                f"pruned structure sets {a!r} on {name!r} ({kind}), which has no such width",
                f"{kind} widths: {', '.join(sorted(allowed)) or 'none'}",
            )
        current = m.normalized_shape[-1] if a == "normalized_shape" else getattr(m, a)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= int(current):
            raise ArtifactError(
                f"pruned structure sets {name}.{a}={v!r}, outside 1..{int(current)} ({kind})",
                "pruning only shrinks a layer: " + _MISMATCH,
            )
    width = {**{a: getattr(m, a) for a in names}, **rec}
    groups, divisor = (width.get("groups"), "groups") if "groups" in width else (width.get("num_groups"), "num_groups")
    if groups:
        for a in ("in_channels", "out_channels", "num_channels"):
            if a in width and width[a] % groups:
                raise ArtifactError(
                    f"pruned structure of {name!r} ({kind}): {a}={width[a]} is not divisible by {divisor}={groups}",
                    _MISMATCH,
                )


def _resize_params(m: nn.Module) -> None:
    def fresh(t: torch.Tensor | None, shape: tuple[int, ...]):
        if t is None:
            return None
        return torch.empty(shape, dtype=t.dtype, device=t.device)

    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        shape = (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
        m.weight = nn.Parameter(fresh(m.weight, shape))
        if m.bias is not None:
            m.bias = nn.Parameter(fresh(m.bias, (m.out_channels,)))
    elif isinstance(m, nn.ConvTranspose2d):
        m.weight = nn.Parameter(fresh(m.weight, (m.in_channels, m.out_channels // m.groups, *m.kernel_size)))
        if m.bias is not None:
            m.bias = nn.Parameter(fresh(m.bias, (m.out_channels,)))
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = m.num_features
        if m.weight is not None:
            m.weight = nn.Parameter(fresh(m.weight, (n,)))
            m.bias = nn.Parameter(fresh(m.bias, (n,)))
        if m.running_mean is not None:
            m.running_mean = torch.zeros(n)
            m.running_var = torch.ones(n)
    elif isinstance(m, nn.Linear):
        m.weight = nn.Parameter(fresh(m.weight, (m.out_features, m.in_features)))
        if m.bias is not None:
            m.bias = nn.Parameter(fresh(m.bias, (m.out_features,)))
    elif isinstance(m, nn.GroupNorm):
        if m.weight is not None:
            m.weight = nn.Parameter(fresh(m.weight, (m.num_channels,)))
            m.bias = nn.Parameter(fresh(m.bias, (m.num_channels,)))
    elif isinstance(m, nn.LayerNorm):
        if m.weight is not None:
            m.weight = nn.Parameter(fresh(m.weight, tuple(m.normalized_shape)))
            if m.bias is not None:
                m.bias = nn.Parameter(fresh(m.bias, tuple(m.normalized_shape)))
    elif isinstance(m, nn.PReLU):
        m.weight = nn.Parameter(fresh(m.weight, (m.num_parameters,)))
