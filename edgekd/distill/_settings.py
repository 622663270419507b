"""One typed config for a training run: what to train, on what, from which teachers, with which losses.

:class:`DistillConfig` (also exported under its older name ``RunSettings``) is the single source of the defaults
and validation of `edgekd train` and `edgekd distill`: the CLI builds it from ``--config`` and the flags with
:func:`edgekd._config.build_config` (defaults < YAML < flags), a Python caller passes one to
:func:`~edgekd.distill.train_model` / :func:`~edgekd.distill.distill_model`, the pipeline builds one per stage.
Loss terms are parsed when it is built, so a typo in ``--loss`` fails before any data or model is loaded.

The YAML file may be nested (``train: {epochs: 6}``, ``cache: {topk: 5}``) or flat, with the CLI's names
(``model``, ``teacher``, ``loss``, ``epochs``, ``cache_topk``...), as the saved ``config.yaml`` is (:meth:`record`).

Example:
    >>> s = DistillConfig(student="small:resnet8", data="pneumoniamnist", teachers=["runs/teacher"],
    ...                   losses=["ce:1", "kd:1,T=4"], train=TrainConfig(epochs=6))
    >>> card = distill_model(s, "runs/student")
    >>> s = build_config(DistillConfig, "distill.yaml", {"train.lr": 1e-3})
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from edgekd._config import StageConfig, build_config, read_yaml
from edgekd.distill._config import TrainConfig
from edgekd.distill.losses import LossTerm, parse_loss
from edgekd.errors import EdgeKDError, InvalidInputError
from edgekd.specs import ChannelMode, IntendedUse, Task

__all__ = [
    "CacheSettings",
    "DistillConfig",
    "RunSettings",
    "resolve_run_settings",
    "check_losses",
    "LossTexts",
    "TeacherText",
    "DEFAULT_LOSSES",
    "RUN_KEYS",
]

DEFAULT_LOSSES = ("ce:1", "kd:1,T=4")
# Segmentation: CE + soft Dice on the masks, and per-pixel KD from a teacher (Liu et al. 2019 use T=1).
SEG_TRAIN_LOSSES = ("ce:1", "dice:1")
SEG_DEFAULT_LOSSES = ("ce:1", "dice:1", "pixkd:1,T=1")


def _parse(text: Any) -> LossTerm:
    try:
        return parse_loss(text)
    except EdgeKDError as e:  # inside a validator: one line with the hint (the closest loss names)
        raise ValueError(e.message + (f" ({e.hint})" if e.hint else "")) from None


def check_losses(terms: list[str]) -> list[str]:
    """A config validator: parse every loss term now, so an unknown loss or parameter fails when the config is
    built, before any data or model is loaded (the terms are kept as text)."""
    for term in terms:
        _parse(term)
    return terms


# The "who teaches" fields of the configs that train with a teacher besides distillation (pruning recovery, QAT):
# loss terms kept as text (one term or a list), checked when the config is built; a teacher path kept as text.
LossTexts = Annotated[
    list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v), AfterValidator(check_losses)
]
TeacherText = Annotated[str | None, BeforeValidator(lambda v: str(v) if isinstance(v, Path) else v)]


class CacheSettings(StageConfig):
    """The teacher-logit cache (see :class:`~edgekd.distill.TeacherCache`).

    Attributes:
        enabled: False turns the cache off (the same as no cache; ``cache_teacher: false`` in a flat file).
        dir: where (default ``OUT/teacher_cache``); share it between runs to reuse the teacher pass.
        topk: store only the top-k logits per sample (the rest spread uniformly).
        views: augmentation views to cache (default: the run's epochs).
        readonly: never write; a missing or mismatching cache is an error (implies ``enabled``).
    """

    model_config = ConfigDict(frozen=True)

    enabled: bool = True
    dir: str | None = None
    topk: int | None = Field(None, ge=1)
    views: int | None = Field(None, ge=1)
    readonly: bool = False

    @field_validator("dir", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v


# Flat keys (the CLI's option names, and the layout of `config.yaml`) and the fields they set.
_FLAT = {
    "model": "student",
    "teacher": "teachers",
    "loss": "losses",
    "teacher_weight": "teacher_weights",
    "cache_teacher": "cache.enabled",
    "cache_dir": "cache.dir",
    "cache_topk": "cache.topk",
    "cache_views": "cache.views",
    "cache_readonly": "cache.readonly",
    **{name: f"train.{name}" for name in TrainConfig.model_fields},
}


class DistillConfig(StageConfig):
    """Everything a training or distillation run needs besides its output directory.

    Attributes:
        student: registry name (``small:resnet8x4``) or a model directory to continue from.
        data: data spec (see `edgekd.data.load_data`).
        teachers: teacher references (model directories, ``onnx:``, ``ckpt:``, pretrained names); empty for
            plain supervised training.
        losses: loss terms (text like ``kd:1,T=4`` or :class:`~edgekd.distill.LossTerm`, parsed and checked
            here); default ``ce:1`` alone without teachers, ``ce:1`` + ``kd:1,T=4`` with them.
        teacher_weights: one per teacher (normalised); default equal.
        cache: cache the teachers' logits (None: no cache).
        small_input, channels, input_size, pretrained: how a registry student is built.
        pretrained_teacher: allow a registry-name teacher with its pretrained weights.
        trust_pickle: allow ``ckpt:`` teachers that are pickled models (unpickling runs code).
        download: allow downloading ``tv:`` datasets.
        resume: continue from ``OUT/checkpoint``.
        unlabeled: unlabelled images mixed into every step (KD and feature losses only; see
            :mod:`edgekd.distill._unlabeled`); needs a teacher.
        unlabeled_ratio: unlabelled images per labelled image in a step.
        train: the optimisation settings.
        intended_use: what the model is meant to classify (``"modality=CR,DX body_part=CHEST"``, a list of
            such items, or a mapping); recorded in the model card. None: DICOM data records the header values
            of its training split, other data no intended use.
    """

    model_config = ConfigDict(frozen=True)
    flat_keys: ClassVar[Mapping[str, str]] = _FLAT

    student: str = Field(min_length=1)
    data: str = "pneumoniamnist"
    teachers: list[str] = Field(default_factory=list)
    losses: list[LossTerm] = Field(default_factory=list)
    teacher_weights: list[float] | None = None
    cache: CacheSettings | None = None
    small_input: bool = False
    channels: ChannelMode = ChannelMode.ADAPT
    input_size: int | None = Field(None, ge=1)
    pretrained: bool = False
    pretrained_teacher: bool = False
    trust_pickle: bool = False
    download: bool = False
    resume: bool = False
    unlabeled: str | None = None
    unlabeled_ratio: float = Field(1.0, gt=0, le=64)
    train: TrainConfig = Field(default_factory=TrainConfig)
    intended_use: IntendedUse | None = None

    @model_validator(mode="before")
    @classmethod
    def _need_student(cls, values: Any) -> Any:
        if isinstance(values, dict) and not values.get("student"):
            raise ValueError("no model given: pass --model/--student NAME (see `edgekd zoo`) or a model directory")
        return values

    @field_validator("student", "data", "unlabeled", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("teachers", mode="before")
    @classmethod
    def _teacher_list(cls, v: Any) -> Any:
        if v is None:
            return []
        items = [v] if isinstance(v, (str, os.PathLike)) else v
        return [os.fspath(t) if isinstance(t, os.PathLike) else t for t in items]

    @field_validator("teacher_weights", mode="before")
    @classmethod
    def _weight_list(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return [v]
        return v or None

    @field_validator("losses", mode="before")
    @classmethod
    def _parse_losses(cls, v: Any) -> Any:
        if v is None:
            return []
        out = []
        for term in [v] if isinstance(v, (str, LossTerm)) else v:
            if isinstance(term, LossTerm):
                out.append(term)
                continue
            out.append(_parse(term))
        return out

    @field_serializer("losses")
    def _losses_text(self, terms: list[LossTerm]) -> list[str]:
        return [str(t) for t in terms]

    @field_validator("cache", mode="before")
    @classmethod
    def _cache_on(cls, v: Any) -> Any:
        if isinstance(v, bool):
            return {} if v else None
        if isinstance(v, CacheSettings):
            v = v.model_dump()
        if isinstance(v, Mapping):
            v = dict(v)
            if v.pop("enabled", True) is False and not v.get("readonly"):
                set_ = sorted(k for k, x in v.items() if x not in (None, False))
                if set_:
                    raise ValueError(f"cache {', '.join(set_)} given with the cache turned off (add --cache-teacher)")
                return None
        return v

    @field_validator("intended_use", mode="before")
    @classmethod
    def _parse_intended_use(cls, value: Any) -> Any:
        if isinstance(value, (str, list, tuple)):
            return IntendedUse.parse(list(value) if not isinstance(value, str) else value) if value else None
        return value

    @model_validator(mode="after")
    def _check(self) -> DistillConfig:
        if self.teacher_weights and len(self.teacher_weights) != len(self.teachers):
            raise ValueError(f"{len(self.teacher_weights)} teacher weights for {len(self.teachers)} teachers")
        if self.cache is not None and not self.teachers:
            raise ValueError("a teacher cache needs at least one teacher")
        if self.unlabeled and not self.teachers:
            raise ValueError("unlabeled images need a teacher: they only carry the teacher's outputs")
        return self

    @property
    def loss_terms(self) -> list[str]:
        """The losses to use, as text: the given ones, or the default for this run's teachers."""
        if self.losses:
            return [str(t) for t in self.losses]
        return list(DEFAULT_LOSSES) if self.teachers else ["ce:1"]

    def loss_terms_for(self, task: Task) -> list[str]:
        """:attr:`loss_terms` for data of ``task``: segmentation defaults to ``ce + dice`` (``+ pixkd`` with a teacher)."""
        if self.losses or task is not Task.SEGMENTATION:
            return self.loss_terms
        return list(SEG_DEFAULT_LOSSES if self.teachers else SEG_TRAIN_LOSSES)

    @property
    def stage(self) -> str:
        return "distill" if self.teachers else "train"

    def record(self) -> dict[str, Any]:
        """The flat mapping saved as ``config.yaml``; it reads back through :func:`build_config`."""
        flat = self.model_dump(mode="json", exclude={"train", "cache", "resume"})
        flat["losses"] = self.loss_terms
        flat = {_FLAG_OF.get(k, k): v for k, v in flat.items()}  # the CLI's names: teacher, loss, teacher_weight
        if self.cache is not None:
            cache = self.cache.model_dump(exclude={"enabled"})
            flat.update(cache_teacher=True, **{f"cache_{k}": v for k, v in cache.items()})
        return {**flat, **self.train.model_dump(mode="json")}


RunSettings = DistillConfig  # the earlier name (the pipeline and Python callers use it)

_FLAG_OF = {"teachers": "teacher", "losses": "loss", "teacher_weights": "teacher_weight"}
RUN_KEYS = frozenset(set(DistillConfig.model_fields) - {"train", "cache"} | set(_FLAT) - set(TrainConfig.model_fields))


def resolve_run_settings(
    flags: Mapping[str, Any],
    *,
    config: str | os.PathLike | None = None,
    given: Collection[str] = (),
    require_teacher: bool = False,
) -> DistillConfig:
    """Older form of ``build_config(DistillConfig, config, flags)`` for callers passing flat option names.

    Args:
        flags: values by CLI name (``model``/``student``, ``teacher``, ``loss``, ``epochs``, ...) or field path;
            names not in ``given`` that are not None only fill what the file leaves open; names that are no
            key of the config are ignored (e.g. a command's ``out``).
        config: a YAML file of the same names (``kebab-case`` accepted), or None.
        given: the names set explicitly.
        require_teacher: refuse a run without a teacher (`edgekd distill`).

    Raises:
        InvalidInputError: unknown keys in the file, bad values (one line naming the key), no student, no teacher
            (exit 3).
        ArtifactError: the config file is missing or unreadable (exit 4).
    """
    keys = set(DistillConfig.model_fields) | set(_FLAT)
    known = {k: v for k, v in flags.items() if k.split(".")[0] in keys}
    in_file = _file_paths(read_yaml(config)) if config is not None else set()
    values = {k: v for k, v in known.items() if k in given or (v is not None and _FLAT.get(k, k) not in in_file)}
    settings = build_config(DistillConfig, config, values)
    if require_teacher and not settings.teachers:
        raise InvalidInputError("no teacher given", "pass --teacher DIR (a model directory from `edgekd train`)")
    return settings


def _file_paths(raw: Mapping[str, Any]) -> set[str]:
    """The field paths a (flat or nested) file sets."""
    paths = set()
    for k, v in raw.items():
        path = _FLAT.get(k, k)
        if path in ("train", "cache") and isinstance(v, Mapping):
            paths |= {f"{path}.{str(s).replace('-', '_')}" for s in v}
        else:
            paths.add(path)
    return paths
