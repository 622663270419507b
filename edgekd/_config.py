"""Bottom layer: option precedence for every command and library call that takes a YAML config.

Defaults < the YAML file < options given explicitly (STYLE.md point 8). YAML is read with ``safe_load`` (a
config never executes code) and validated by a pydantic model; errors name the key. :func:`resolve_options`
is what the CLI commands and :func:`edgekd.distill.resolve_run_settings` use, so a Python caller gets the
same rules as the command line.

Example:
    >>> cfg = resolve_options(TrainConfig, "train.yaml", {"epochs": 3}, given={"epochs"})
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from edgekd.errors import ArtifactError, InvalidInputError

__all__ = ["read_yaml", "resolve_options", "validation_message", "validate"]

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping safely; keys are normalised from ``kebab-case`` to ``snake_case``."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"config file {path} does not exist", "check the --config path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ArtifactError(f"config file {path} is not UTF-8 text", "pass a YAML file") from None
    except yaml.YAMLError as e:
        raise InvalidInputError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def validation_message(e: ValidationError, where: str = "option") -> str:
    """One line for a pydantic error: the field path and what is wrong (no URLs, no dumps)."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "value"
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"invalid {where} {loc}: {msg}{more}"


def validate(model: type[M], values: Mapping[str, Any], where: str = "option") -> M:
    """``model.model_validate(values)`` with one-line :class:`InvalidInputError` messages."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as e:
        raise InvalidInputError(validation_message(e, where)) from None


def resolve_options(
    model: type[M],
    config: str | os.PathLike | None,
    flags: Mapping[str, Any],
    *,
    given: Collection[str] = (),
    section: str | None = None,
    allowed: Collection[str] = (),
) -> M:
    """Defaults < YAML ``config`` (optionally its ``section``) < ``flags`` named in ``given``; validated.

    Args:
        model: the pydantic model of the options.
        config: a YAML file or None.
        flags: option values (e.g. every CLI option); those not in ``given`` only fill what the file leaves.
        given: the option names set explicitly (the CLI passes those not at their default).
        section: read this sub-mapping of the file when present (e.g. ``prune:``).
        allowed: other keys the file may hold that another part of the command reads.

    Raises:
        InvalidInputError: an unknown key in the file, or a value the model rejects (exit 3).
    """
    values: dict[str, Any] = {}
    fields = set(model.model_fields)
    if config is not None:
        raw = read_yaml(config)
        if section and isinstance(raw.get(section), dict):
            raw = {str(k).replace("-", "_"): v for k, v in raw[section].items()}
        unknown = sorted(set(raw) - fields - set(flags) - set(allowed))
        if unknown:
            raise InvalidInputError(f"unknown keys in {config}: {', '.join(unknown)}",
                                    f"valid keys: {', '.join(sorted(fields))}")  # fmt: skip
        values.update({k: v for k, v in raw.items() if k in fields})
    for name, value in flags.items():
        if name in fields and (name in given or name not in values):
            values[name] = value
    return validate(model, values)
