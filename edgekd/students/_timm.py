"""timm models (``timm:NAME``), available when the optional ``timm`` package is installed.

Models are built with ``timm.create_model(name, pretrained=..., num_classes=..., in_chans=...)``;
timm adapts the first convolution to ``in_chans`` and replaces the classifier itself. Names may carry
a pretrained tag (``timm:resnet18.a1_in1k``).
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from torch import nn

from edgekd.errors import DependencyError, InvalidInputError

__all__ = ["import_timm", "timm_available", "timm_names", "build_timm"]

_UNEXPECTED_KW = re.compile(r"unexpected keyword argument '(\w+)'")
_DOWNLOAD_HINT = "run once with internet access, or pre-fill the Hugging Face cache (HF_HOME), or drop --pretrained"


def import_timm() -> ModuleType:
    """Import timm or raise :class:`~edgekd.errors.DependencyError` with the install hint."""
    try:
        import timm
    except ImportError as e:
        raise DependencyError("timm is not installed", "pip install 'edgekd[timm]'") from e
    return timm


def timm_available() -> bool:
    try:
        import_timm()
    except DependencyError:
        return False
    return True


def timm_names() -> list[str]:
    """Architecture names known to timm (without pretrained tags)."""
    return sorted(import_timm().list_models())


def build_timm(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    small_input: bool = False,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build ``timm:name``; see the module docstring.

    Raises:
        DependencyError: timm is missing or the pretrained weights could not be downloaded.
        InvalidInputError: ``small_input`` was asked for, or an unknown keyword argument was passed.
    """
    timm = import_timm()
    if small_input:
        raise InvalidInputError(
            f"small_input is not supported for timm:{name}", "use a tv: or small: model for inputs of at most 64 px"
        )
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:
        match = _UNEXPECTED_KW.search(str(e))
        if match is None:
            raise
        raise InvalidInputError(f"timm:{name} got an unknown keyword argument {match.group(1)!r}") from e
    except OSError as e:  # includes URLError and the Hugging Face hub's connection errors
        if not pretrained:
            raise
        reason = (str(e).strip().splitlines() or ["unknown error"])[0]
        raise DependencyError(f"could not download pretrained weights for timm:{name}: {reason}", _DOWNLOAD_HINT) from e
