"""Bottom layer: one typed config per stage, and the one rule that fills it (STYLE.md point 8).

Every stage (train, distill, prune, quantize, export, bench) has a :class:`StageConfig`: the single source of its
defaults and validation, shared by the CLI, the library and the pipeline. :func:`build_config` fills one from
three layers, each overriding the one before:

1. the config's own defaults (a nested section keeps its parent's defaults: ``PruneConfig.train.lr`` is 1e-3);
2. a YAML file (optionally one ``section:`` of it), read with ``safe_load`` (a config never executes code);
3. ``given``: the values set explicitly, keyed by dotted field path (``"train.lr"``, ``"target.macs"``); the
   CLI passes only the flags the user typed.

Nested sections deep-merge. A key that no field reads, at any depth, is an
:class:`~edgekd.errors.InvalidInputError` (exit 3) that names it and lists the valid keys; a bad value is one
line naming its field path.

Example:
    >>> cfg = build_config(TrainConfig, "train.yaml", {"epochs": 3})
    >>> cfg = build_config(PruneConfig, "p.yaml", {"target.macs": 0.5, "train.lr": 1e-3}, section="prune")
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from edgekd.errors import ArtifactError, InvalidInputError

__all__ = [
    "StageConfig",
    "build_config",
    "config_default",
    "config_fields",
    "read_yaml",
    "resolve_options",
    "validation_message",
    "validate",
]

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound="StageConfig")


class StageConfig(BaseModel):
    """Base of every stage's config: an unknown key at any depth is an error, never silently ignored.

    Subclasses may declare:

    * ``flat_keys``: keys a file (or a :func:`build_config` caller) may write flat, mapped to their field path,
      e.g. ``{"epochs": "train.epochs", "teacher": "teachers"}`` (the CLI's names, or the layout of an older file);
    * ``exclusive``: groups of keys of which one layer's choice replaces the layer below's, e.g. the kinds of a
      pruning target: ``--target-macs`` on the command line replaces the file's ``ratio`` instead of clashing;
    * ``input_keys``: other keys its own ``mode="before"`` validator turns into fields (``macs: 0.5`` of a target);
    * ``unread``: field paths of a shared section that this stage never reads, with what to set instead
      (``{"train.epochs": "recovery_epochs"}`` for pruning): a file or flag setting one is an error.
    """

    model_config = ConfigDict(extra="forbid")

    flat_keys: ClassVar[Mapping[str, str]] = {}
    exclusive: ClassVar[tuple[frozenset[str], ...]] = ()
    input_keys: ClassVar[frozenset[str]] = frozenset()
    unread: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def build(
        cls: type[S],
        config_path: str | os.PathLike | None = None,
        given: Mapping[str, Any] | None = None,
        *,
        section: str | None = None,
    ) -> S:
        """:func:`build_config` for this config: ``PruneConfig.build("prune.yaml", {"steps": 2})``."""
        return build_config(cls, config_path, given, section=section)


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
    return {_key(k): v for k, v in data.items()}


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
        err = e.errors()[0]
        if not err.get("loc"):  # a check of the whole config: its message says what to change
            raise InvalidInputError(str(err.get("msg", "invalid")).removeprefix("Value error, ")) from None
        hint = "give it in the config file or with its flag" if err.get("type") == "missing" else None
        raise InvalidInputError(validation_message(e, where), hint) from None


def config_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf field of ``model`` by dotted path (nested :class:`StageConfig` sections walked), with its
    :class:`pydantic.fields.FieldInfo`; what :func:`build_config` accepts in ``given``."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        sub = _section(model, name)
        if sub is not None:
            out.update(config_fields(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info
    return out


def config_default(model: type[BaseModel], path: str) -> Any:
    """The default of the field at dotted ``path`` (a section's own default wins over its class's defaults).

    Raises:
        KeyError: no such field, the field is required (it has no default), or it is in a section that is None
            (off) by default.
    """
    head, _, rest = path.partition(".")
    info = model.model_fields[head]
    if info.is_required():
        raise KeyError(path)
    default = info.get_default(call_default_factory=True)
    if not rest:
        return default
    if isinstance(default, BaseModel):
        value = default
        for part in rest.split("."):
            value = getattr(value, part)
        return value
    sub = _section(model, head)
    if sub is None or default is None:  # no such section, or it is off by default (e.g. no teacher cache)
        raise KeyError(path)
    return config_default(sub, rest)


def build_config(
    model: type[S],
    config_path: str | os.PathLike | None,
    given: Mapping[str, Any] | None = None,
    *,
    section: str | None = None,
) -> S:
    """Defaults < the YAML file (its ``section`` when it has one) < ``given``; validated (see the module docstring).

    Args:
        model: the stage's config class.
        config_path: a YAML file, or None.
        given: values set explicitly, by dotted field path (``"train.lr"``) or by one of ``model.flat_keys``.
        section: read this sub-mapping of the file when the file has it (e.g. ``prune:`` of a pipeline file).

    Raises:
        InvalidInputError: an unknown key at any depth (named, with the valid keys), or a value the config
            rejects (exit 3).
        ArtifactError: the file is missing or unreadable (exit 4).
    """
    values = _defaults(model)
    if config_path is not None:
        raw: Mapping[str, Any] = read_yaml(config_path)
        if section is not None and isinstance(raw.get(section), Mapping):
            raw = raw[section]
        values = _merge(values, _read(model, raw, f"config file {config_path}"), model)
    if given:
        values = _merge(values, _read(model, given, "the options"), model)
    return validate(model, values)


def resolve_options(
    model: type[M],
    config: str | os.PathLike | None,
    flags: Mapping[str, Any],
    *,
    given: Collection[str] = (),
    section: str | None = None,
    allowed: Collection[str] = (),
) -> M:
    """Older form of :func:`build_config` for flat configs: ``flags`` named in ``given`` override the file, the
    others only fill what it leaves open; ``allowed`` names other keys the file may hold (read elsewhere).

    Raises:
        InvalidInputError: an unknown key in the file, or a value the model rejects (exit 3).
    """
    fields = set(model.model_fields)
    raw: dict[str, Any] = {}
    if config is not None:
        raw = read_yaml(config)
        if section and isinstance(raw.get(section), dict):
            raw = {_key(k): v for k, v in raw[section].items()}
        unknown = sorted(set(raw) - fields - set(flags) - set(allowed))
        if unknown:
            raise InvalidInputError(
                f"unknown keys in {config}: {', '.join(unknown)}", f"valid keys: {', '.join(sorted(fields))}"
            )
    values = {k: v for k, v in raw.items() if k in fields}
    values.update({k: v for k, v in flags.items() if k in fields and (k in given or k not in values)})
    if issubclass(model, StageConfig):
        return build_config(model, None, values)
    return validate(model, values)


# ---------------------------------------------------------------------------------------------------------------


def _key(k: Any) -> str:
    return str(k).replace("-", "_")


def _section(model: type[BaseModel] | None, name: str) -> type[StageConfig] | None:
    """The :class:`StageConfig` class of field ``name`` (``X``, ``X | None``), or None for a plain value."""
    if model is None or name not in model.model_fields:
        return None
    ann = model.model_fields[name].annotation
    args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    subs = [a for a in args if isinstance(a, type) and issubclass(a, StageConfig)]
    return subs[0] if len(subs) == 1 else None


def _valid_keys(model: type[BaseModel]) -> list[str]:
    flat = getattr(model, "flat_keys", {})
    return sorted(set(model.model_fields) | set(flat) | set(getattr(model, "input_keys", ())))


def _unknown(path: str, key: str, model: type[BaseModel], where: str) -> InvalidInputError:
    valid = _valid_keys(model)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {path.removesuffix(key)}{close[0]}? " if close else ""
    where_ = f" of {path.removesuffix(key).rstrip('.')}" if "." in path else ""
    return InvalidInputError(f"unknown key {path} in {where}", f"{hint}valid keys{where_}: {', '.join(valid)}")


def _read(model: type[BaseModel], raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One layer in the nested shape of ``model``; a key it never reads is refused."""
    values = _canonical(model, raw, where)
    for path, instead in getattr(model, "unread", {}).items():
        node: Any = values
        for part in path.split("."):
            node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
        if node is not _MISSING:
            raise InvalidInputError(f"{path} in {where} is not read by {model.__name__}", f"set {instead} instead")
    return values


_MISSING = object()


def _canonical(model: type[BaseModel], raw: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """``raw`` in the nested shape of ``model``: flat keys and dotted paths placed, unknown keys refused."""
    out: dict[str, Any] = {}
    flat = getattr(model, "flat_keys", {})
    for k, v in raw.items():
        key = _key(k)
        if key in getattr(model, "input_keys", ()):
            out[key] = v
            continue
        path = flat.get(key, key)
        head, _, rest = path.partition(".")
        if head not in model.model_fields:
            raise _unknown(prefix + key, key, model, where)
        sub = _section(model, head)
        if rest:
            if sub is None:
                raise _unknown(prefix + key, key, model, where)
            value: Any = _canonical(sub, {rest: v}, where, f"{prefix}{head}.")
        elif sub is not None and isinstance(v, Mapping):
            value = _canonical(sub, v, where, f"{prefix}{head}.")
        else:
            value = v
        out[head] = (
            _merge(out[head], value, sub, layers=False)
            if isinstance(out.get(head), dict) and isinstance(value, dict)
            else value
        )
    return out


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    """The defaults that are sections (so a file or flag setting one of their keys keeps the others)."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if info.is_required() or _section(model, name) is None:
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            out[name] = default.model_dump()
    return out


def _merge(
    base: Mapping[str, Any], over: Mapping[str, Any], model: type[BaseModel] | None, *, layers: bool = True
) -> dict[str, Any]:
    """Deep merge: ``over`` wins; sections merge key by key. Between ``layers`` (file over defaults, flags over
    the file) a key of an ``exclusive`` group in ``over`` drops base's other keys of the group; within one layer
    (``layers=False``) they are kept, so that two kinds given together are refused by the config."""
    out = dict(base)
    for group in getattr(model, "exclusive", ()) if layers else ():
        if group & over.keys():
            for k in group - over.keys():
                out.pop(k, None)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v, _section(model, k), layers=layers)
        else:
            out[k] = v
    return out
