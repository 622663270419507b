"""MONAI networks (``monai:bundle``), available when the optional ``monai`` package is installed.

A model directory imported from a MONAI Bundle (``edgekd import BUNDLE_DIR``) stores the bundle's
``network_def`` mapping in its spec: ``ModelSpec(name="monai:bundle", kwargs={"network_def": {...}})``. The
network is rebuilt from that mapping alone with :class:`monai.bundle.ConfigParser`, as MONAI builds it.
Python expressions (``$...``), macros (``%...``) and references (``@...``) to config keys outside
``network_def`` are refused: a model directory is loaded without trusting code, and nothing else of the
bundle travels with it.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from torch import nn

from edgekd.errors import DependencyError, InvalidInputError

__all__ = ["import_monai_bundle", "build_monai", "check_network_def"]

_KEY = "network_def"
_HINT = "import a bundle whose network_def is plain MONAI components (_target_ and literal arguments)"


def import_monai_bundle() -> ModuleType:
    """Import :mod:`monai.bundle` or raise :class:`~edgekd.errors.DependencyError` with the install hint."""
    try:
        import monai.bundle
    except ImportError as e:
        raise DependencyError(f"MONAI networks need the MONAI package ({e})", "pip install 'edgekd[monai]'") from e
    return monai.bundle


def _bad_strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        if obj.startswith(("$", "%")):
            return [obj]
        if obj.startswith("@") and not (obj[1:] == _KEY or obj[1:].startswith(f"{_KEY}#")):
            return [obj]
        return []
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _bad_strings(v)]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in _bad_strings(v)]
    return []


def check_network_def(network_def: Any) -> None:
    """Raise :class:`InvalidInputError` unless ``network_def`` is a mapping resolvable on its own."""
    if not isinstance(network_def, dict) or "_target_" not in network_def:
        raise InvalidInputError("monai:bundle needs kwargs network_def: a MONAI component with _target_", _HINT)
    bad = _bad_strings(network_def)
    if bad:
        raise InvalidInputError(
            f"the network_def of monai:bundle holds {bad[0]!r}: expressions, macros and references outside "
            "network_def cannot be rebuilt from a model directory",
            _HINT,
        )


def build_monai(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    small_input: bool = False,
    pretrained: bool = False,
    network_def: Any = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``monai:bundle`` from its ``network_def`` with MONAI's ConfigParser; see the module docstring.

    ``num_classes`` and ``in_chans`` describe the network the mapping builds (they are not passed to it).

    Raises:
        DependencyError: monai is missing.
        InvalidInputError: another name than ``bundle``, unknown kwargs, ``small_input``/``pretrained``, or a
            ``network_def`` that is not a self-contained MONAI component or does not build a torch module.
    """
    if name != "bundle":
        raise InvalidInputError(f"unknown MONAI model monai:{name}", "the only MONAI model name is monai:bundle")
    if kwargs:
        raise InvalidInputError(
            f"monai:bundle got an unknown keyword argument {sorted(kwargs)[0]!r}", "monai:bundle takes only network_def"
        )
    if small_input or pretrained:
        raise InvalidInputError(
            "monai:bundle has no small_input variant or pretrained weights",
            "its weights come from the bundle (edgekd import BUNDLE_DIR)",
        )
    check_network_def(network_def)
    bundle = import_monai_bundle()
    parser = bundle.ConfigParser({_KEY: network_def})
    try:
        net = parser.get_parsed_content(_KEY, instantiate=True)
    except Exception as e:  # MONAI wraps the component's own errors in RuntimeError/ValueError/ImportError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InvalidInputError(f"MONAI cannot build monai:bundle's network_def: {first}", _HINT) from e
    if not isinstance(net, nn.Module):
        raise InvalidInputError(f"monai:bundle's network_def builds a {type(net).__name__}, not a torch module", _HINT)
    return net
