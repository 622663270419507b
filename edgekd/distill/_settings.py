"""One typed object for a training run: what to train, on what, from which teachers, with which losses.

:class:`RunSettings` is what `edgekd train` and `edgekd distill` build from their flags and ``--config``
(:func:`resolve_run_settings`: defaults < YAML < flags), and what a Python caller passes to
:func:`~edgekd.distill.train_model` / :func:`~edgekd.distill.distill_model`. The YAML file is flat: the
run keys below next to :class:`~edgekd.distill.TrainConfig`'s keys (``epochs``, ``lr``, ...).

Example:
    >>> s = RunSettings(student="small:resnet8", data="pneumoniamnist", teachers=["runs/teacher"],
    ...                 losses=["ce:1", "kd:1,T=4"], train=TrainConfig(epochs=6))
    >>> card = distill_model(s, "runs/student")
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgekd._config import read_yaml, validate
from edgekd.distill._config import TrainConfig
from edgekd.errors import InvalidInputError
from edgekd.specs import ChannelMode, IntendedUse

__all__ = ["CacheSettings", "RunSettings", "resolve_run_settings", "DEFAULT_LOSSES", "RUN_KEYS"]

DEFAULT_LOSSES = ("ce:1", "kd:1,T=4")


class CacheSettings(BaseModel):
    """The teacher-logit cache (see :class:`~edgekd.distill.TeacherCache`).

    Attributes:
        dir: where (default ``OUT/teacher_cache``); share it between runs to reuse the teacher pass.
        topk: store only the top-k logits per sample (the rest spread uniformly).
        views: augmentation views to cache (default: the run's epochs).
        readonly: never write; a missing or mismatching cache is an error.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str | None = None
    topk: int | None = Field(None, ge=1)
    views: int | None = Field(None, ge=1)
    readonly: bool = False


class RunSettings(BaseModel):
    """Everything a training or distillation run needs besides its output directory.

    Attributes:
        student: registry name (``small:resnet8x4``) or a model directory to continue from.
        data: data spec (see `edgekd.data.load_data`).
        teachers: teacher references (model directories, ``onnx:``, ``ckpt:``, pretrained names); empty for
            plain supervised training.
        losses: loss terms; default ``ce:1`` alone without teachers, ``ce:1`` + ``kd:1,T=4`` with them.
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

    model_config = ConfigDict(extra="forbid", frozen=True)

    student: str = Field(min_length=1)
    data: str = "pneumoniamnist"
    teachers: list[str] = Field(default_factory=list)
    losses: list[str] = Field(default_factory=list)
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

    @field_validator("intended_use", mode="before")
    @classmethod
    def _parse_intended_use(cls, value: Any) -> Any:
        if isinstance(value, (str, list, tuple)):
            return IntendedUse.parse(list(value) if not isinstance(value, str) else value) if value else None
        return value

    @model_validator(mode="after")
    def _check(self) -> RunSettings:
        if self.teacher_weights and len(self.teacher_weights) != len(self.teachers):
            raise ValueError(f"{len(self.teacher_weights)} teacher weights for {len(self.teachers)} teachers")
        if self.cache is not None and not self.teachers:
            raise ValueError("a teacher cache needs at least one teacher")
        if self.unlabeled and not self.teachers:
            raise ValueError("unlabeled images need a teacher: they only carry the teacher's outputs")
        return self

    @property
    def loss_terms(self) -> list[str]:
        """The losses to use: the given ones, or the default for this run's teachers."""
        if self.losses:
            return list(self.losses)
        return list(DEFAULT_LOSSES) if self.teachers else ["ce:1"]

    @property
    def stage(self) -> str:
        return "distill" if self.teachers else "train"

    def record(self) -> dict[str, Any]:
        """The flat mapping saved as ``config.yaml`` (it reads back through :func:`resolve_run_settings`)."""
        flat = self.model_dump(mode="json", exclude={"train", "cache", "resume"})
        flat["losses"] = self.loss_terms
        flat = {_FLAG_OF.get(k, k): v for k, v in flat.items()}  # the CLI's names: teacher, loss, teacher_weight
        if self.cache is not None:
            flat.update(cache_teacher=True, **{f"cache_{k}": v for k, v in self.cache.model_dump().items()})
        return {**flat, **self.train.model_dump(mode="json")}


# Flat option names (CLI flags and YAML keys) of the run; TrainConfig's fields go to `train`.
_ALIASES = {"model": "student", "teacher": "teachers", "loss": "losses", "teacher_weight": "teacher_weights"}
_FLAG_OF = {"teachers": "teacher", "losses": "loss", "teacher_weights": "teacher_weight"}
_CACHE_KEYS = {"cache_dir": "dir", "cache_topk": "topk", "cache_views": "views", "cache_readonly": "readonly"}
RUN_KEYS = frozenset(set(RunSettings.model_fields) - {"train", "cache"} | set(_ALIASES) | set(_CACHE_KEYS)
                     | {"cache_teacher"})  # fmt: skip


def _normalise(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = _ALIASES.get(k, k)
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if key in ("teachers", "losses") and isinstance(v, str):
            v = [v]
        if key == "teacher_weights" and isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        out[key] = v
    return out


def _build(values: dict[str, Any]) -> RunSettings:
    train = {k: values.pop(k) for k in list(values) if k in TrainConfig.model_fields}
    cache = {_CACHE_KEYS[k]: values.pop(k) for k in list(values) if k in _CACHE_KEYS}
    if values.pop("cache_teacher", False) or cache.get("readonly"):
        values["cache"] = {k: v for k, v in cache.items() if v is not None}
    values["train"] = validate(TrainConfig, train)
    for key in ("teachers", "losses"):
        if values.get(key) is None:
            values.pop(key, None)
    if values.get("teacher_weights") == []:
        values["teacher_weights"] = None
    if not values.get("student"):
        raise InvalidInputError("no model given", "pass --model/--student NAME (see `edgekd zoo`) or a model directory")
    return validate(RunSettings, values)


def resolve_run_settings(
    flags: Mapping[str, Any],
    *,
    config: str | os.PathLike | None = None,
    given: Collection[str] = (),
    require_teacher: bool = False,
) -> RunSettings:
    """Defaults < the flat YAML ``config`` < ``flags`` named in ``given`` (STYLE.md point 8).

    Args:
        flags: option values by CLI name (``model``/``student``, ``teacher``, ``loss``, ``epochs``, ...);
            values for names not in ``given`` only fill what the file leaves open.
        config: a YAML file of the same names (``kebab-case`` accepted), or None.
        given: the names the user set explicitly.
        require_teacher: refuse a run without a teacher (`edgekd distill`).

    Raises:
        InvalidInputError: unknown keys, bad values (one line naming the key), no student, no teacher (exit 3).
        ArtifactError: the config file is missing or unreadable (exit 4).
    """
    values: dict[str, Any] = {}
    known = RUN_KEYS | set(TrainConfig.model_fields)
    if config is not None:
        raw = read_yaml(config)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise InvalidInputError(f"unknown keys in {config}: {', '.join(unknown)}",
                                    f"valid keys: {', '.join(sorted(known - set(_ALIASES)))}")  # fmt: skip
        values.update(_normalise(raw))
    for name, value in _normalise({k: v for k, v in flags.items() if k in known}).items():
        original = next((k for k, v in _ALIASES.items() if v == name and k in flags), name)
        if original in given or name in given or name not in values:
            values[name] = value
    settings = _build(values)
    if require_teacher and not settings.teachers:
        raise InvalidInputError("no teacher given", "pass --teacher DIR (a model directory from `edgekd train`)")
    return settings
