"""Parsing of data spec strings ``source[:arg][,key=value...]`` and of their option values.

Example:
    >>> parse_data_spec("imagefolder:/data/xray,size=64")
    ('imagefolder', '/data/xray', {'size': '64'})
    >>> parse_data_spec("synthetic:classes=3,n=200")
    ('synthetic', None, {'classes': '3', 'n': '200'})
"""

from __future__ import annotations

import numbers
import re

from edgekd.errors import InvalidInputError

__all__ = ["parse_data_spec", "format_data_spec", "opt_int", "opt_float", "check_seed"]

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SYNTAX = "write data specs as source[:arg][,key=value...], e.g. imagefolder:/data/xray,size=64"


def parse_data_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """Split a data spec into ``(source, positional arg, options)``.

    The source name is lower-cased; the positional argument (a path or a dataset name) is the first
    piece after ``:`` unless it looks like ``key=value``. Paths containing commas are not supported.

    Args:
        spec: e.g. ``"pneumoniamnist"``, ``"medmnist:/d/x.npz"``, ``"tv:CIFAR10,val=0.2"``.

    Returns:
        The source name, the positional argument or ``None``, and the options as strings.

    Raises:
        InvalidInputError: an empty spec, a piece that is not ``key=value`` or a repeated key.

    Example:
        >>> parse_data_spec("csv:/d/labels.csv,seed=1")
        ('csv', '/d/labels.csv', {'seed': '1'})
    """
    spec = (spec or "").strip()
    colon, comma = spec.find(":"), spec.find(",")
    if colon >= 0 and (comma < 0 or colon < comma):
        source, rest = spec[:colon], spec[colon + 1 :]
        pieces = rest.split(",")
    else:
        source, *pieces = spec.split(",")
        pieces = ["", *pieces]  # no positional slot without ':'
    source = source.strip().lower()
    if not source:
        raise InvalidInputError(f"empty data source in spec {spec!r}", _SYNTAX)
    arg = None
    if pieces and pieces[0].strip() and not _KEY.match(pieces[0].strip()):
        arg = pieces[0].strip()
        pieces = pieces[1:]
    return source, arg, _parse_options(spec, pieces)


def _parse_options(spec: str, pieces: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        if not _KEY.match(piece):
            raise InvalidInputError(
                f"bad piece {piece!r} in data spec {spec!r}: expected key=value",
                "paths containing commas are not supported; " + _SYNTAX,
            )
        key, value = piece.split("=", 1)
        key = key.lower()
        if key in options:
            raise InvalidInputError(f"option {key!r} given twice in data spec {spec!r}", _SYNTAX)
        options[key] = value.strip()
    return options


def format_data_spec(source: str, arg: str | None, options: dict[str, str]) -> str:
    """The canonical spec string: options sorted by key (inverse of :func:`parse_data_spec`).

    Example:
        >>> format_data_spec("synthetic", None, {"n": "200", "classes": "3"})
        'synthetic:classes=3,n=200'
    """
    parts = ([arg] if arg else []) + [f"{k}={options[k]}" for k in sorted(options)]
    return f"{source}:{','.join(parts)}" if parts else source


def opt_int(
    options: dict[str, str], key: str, default: int, *, low: int | None = None, example: int | None = None
) -> int:
    """Read an integer option, checking its lower bound; hints show ``example`` (default: ``default``).

    Example:
        >>> opt_int({"n": "200"}, "n", 10, low=1)
        200
    """
    if key not in options:
        return default
    hint = f"e.g. {key}={default if example is None else example}"
    try:
        value = int(options[key])
    except ValueError:
        raise InvalidInputError(f"option {key}={options[key]!r} is not an integer", hint) from None
    if low is not None and value < low:
        raise InvalidInputError(f"option {key}={value} must be >= {low}", hint)
    return value


def opt_float(options: dict[str, str], key: str, default: float, *, low: float = 0.0, high: float = 1.0) -> float:
    """Read a float option that must lie in ``[low, high)``.

    Example:
        >>> opt_float({"val": "0.2"}, "val", 0.1)
        0.2
    """
    if key not in options:
        return default
    try:
        value = float(options[key])
    except ValueError:
        raise InvalidInputError(f"option {key}={options[key]!r} is not a number", f"e.g. {key}={default}") from None
    if not low <= value < high:
        raise InvalidInputError(f"option {key}={value} must be in [{low}, {high})", f"e.g. {key}={default}")
    return value


def check_seed(seed: int) -> int:
    """Seeds feed ``numpy.random.default_rng([seed, ...])``, which needs a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InvalidInputError(f"seed must be a non-negative integer, got {seed!r}", "e.g. seed=0")
    return int(seed)
