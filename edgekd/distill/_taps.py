"""Feature taps: capture the outputs of named modules during a forward pass.

In the style of torchdistill's ``ForwardHookManager``: a context manager registers forward hooks on the
modules named by path (as ``edgekd inspect`` prints them), fills a dict ``{path: output}`` while the model
runs, and removes every hook on exit, also when the step raises. Losses receive that dict and never
touch the models.

Example:
    >>> with FeatureTaps(model, ["layer2", "layer3"]) as feats:
    ...     logits = model(x)
    >>> feats["layer3"].shape
    torch.Size([8, 64, 7, 7])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from edgekd.errors import InvalidInputError, suggest

__all__ = ["FeatureTaps", "check_layers", "default_layer"]


def _first_tensor(output):
    """Modules may return tuples or lists (e.g. attention blocks); the first tensor is the feature."""
    if isinstance(output, (tuple, list)):
        return next((o for o in output if isinstance(o, torch.Tensor)), None)
    return output


def check_layers(model: nn.Module, paths: Iterable[str], who: str = "model") -> None:
    """Raise :class:`~edgekd.errors.InvalidInputError` for a path that is not a module of ``model``.

    The hint lists the close module paths and the model's tap points (the stage outputs).

    Args:
        model: the network.
        paths: module paths, e.g. ``["layer3", "features.6"]``.
        who: ``"student"`` or ``"teacher ..."``, for the message.
    """
    from edgekd.students import tap_points

    paths = list(paths)
    modules = dict(model.named_modules()) if paths else {}
    for path in paths:
        if path and path in modules:
            continue
        close = suggest(path, [p for p in modules if p])
        taps = tap_points(model)
        hint = (f"did you mean {', '.join(close)}? " if close else "") + f"tap points of the {who}: {', '.join(taps)}"
        raise InvalidInputError(f"unknown layer {path!r} in the {who}", hint + " (all paths: `edgekd inspect`)")


def default_layer(model: nn.Module, who: str = "model") -> str:
    """The last tap point of ``model`` (the final feature map before pooling), for losses given no layer."""
    from edgekd.students import tap_points

    taps = tap_points(model)
    if not taps:
        raise InvalidInputError(f"the {who} has no tap points", "name the layers with s=PATH,t=PATH")
    return taps[-1]


class FeatureTaps:
    """Context manager capturing module outputs into a dict keyed by module path.

    Args:
        model: the network to tap.
        paths: module paths; an unknown path raises before any hook is registered.
        who: ``"student"`` / ``"teacher"`` for error messages.

    The dict is cleared on entry; hooks are removed on exit whatever happens inside the block.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], *, who: str = "model") -> None:
        self.paths = list(dict.fromkeys(paths))
        check_layers(model, self.paths, who)
        self.model = model
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> dict[str, torch.Tensor]:
        self.features.clear()
        if not self.paths:  # nothing to tap: no hooks, no module walk (the common logit-only case)
            return self.features
        modules = dict(self.model.named_modules())
        try:
            for path in self.paths:
                self._handles.append(modules[path].register_forward_hook(self._hook(path)))
        except BaseException:
            self.remove()
            raise
        return self.features

    def _hook(self, path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self.features[path] = _first_tensor(output)

        return hook

    def remove(self) -> None:
        """Remove every hook this object registered (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()
