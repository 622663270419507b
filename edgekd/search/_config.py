""":class:`SearchConfig`: the one typed config of `edgekd search` (CLI flags, ``--config`` YAML, :func:`run_search`,
and the ``budget:`` section of `edgekd run`), the single source of the search's defaults.

Example:
    >>> cfg = SearchConfig.build("search.yaml", {"budget_ms": 0.1, "batch": 1, "teacher": "runs/teacher"})
"""

from __future__ import annotations

import os
import re
from enum import Enum
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator

from edgekd._config import StageConfig, read_yaml, validate
from edgekd.distill import DEFAULT_LOSSES, ClassWeighting, TrainConfig
from edgekd.search._space import RUNTIMES, SearchSpace
from edgekd.search._table import ProfileSettings

__all__ = ["Engine", "Percentile", "HalvingConfig", "SearchConfig", "parse_duration", "load_space"]


class Percentile(str, Enum):
    """The latency percentile a budget bounds."""

    P50 = "p50"
    P90 = "p90"


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: Any) -> Any:
    """``"30m"``, ``"1h"``, ``"90s"`` or a number of seconds -> seconds (other values pass to validation)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", value)
        if not m:
            raise ValueError(f"cannot read {value!r} as a duration; write e.g. 30m, 1h or 900s")
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return value


class Engine(str, Enum):
    """Who runs the candidate trainings: this process in sequence, or Ray Tune's ASHA (``edgekd[ray]``)."""

    LOCAL = "local"
    RAY = "ray"


class HalvingConfig(StageConfig):
    """Successive halving (Jamieson & Talwalkar, AISTATS 2016; the synchronous form of ASHA, Li et al. 2020).

    Every architecture that fits is distilled to ``rungs[0]`` epochs; the best ``1/eta`` of them (by the
    validation metric) continue to ``rungs[1]``, and so on. A rung continues the previous rung's model (warm
    start), so an architecture reaching the last rung has trained ``rungs[-1]`` epochs in all.

    Attributes:
        rungs: cumulative epochs at each rung, increasing.
        eta: keep the best ``ceil(n / eta)`` at each rung.
        keep_alternatives: the hand-configured alternatives (each family's zoo model as it is) that fit always
            train to the last rung, so the search never ends below them on validation because a short rung
            ranked them low.
    """

    model_config = ConfigDict(frozen=True)

    rungs: list[int] = Field(default_factory=lambda: [2, 4, 6], min_length=1)
    eta: int = Field(3, ge=2)
    keep_alternatives: bool = True

    @field_validator("rungs")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v[0] < 1 or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"rungs must be increasing positive epoch counts, got {v}")
        return v

    @property
    def segments(self) -> list[int]:
        """Epochs trained at each rung (the differences of ``rungs``)."""
        return [b - a for a, b in zip([0, *self.rungs], self.rungs)]


def _student_train() -> TrainConfig:
    # The demo student's schedule (examples/pneumonia.yaml): what a hand-configured run of one zoo student uses.
    return TrainConfig(batch_size=128, lr=2e-3, augment="medical", class_weighting=ClassWeighting.BALANCED)


def load_space(path: str | os.PathLike) -> SearchSpace:
    """A space file: a mapping of :class:`SearchSpace` keys, a file with a ``space:`` section, or a pipeline file
    whose ``budget:`` section has one (``examples/search-pneumonia.yaml``)."""
    raw = read_yaml(path)
    budget = raw.get("budget")
    if isinstance(budget, dict) and isinstance(budget.get("space"), dict):
        return validate(SearchSpace, budget["space"], f"space in {path}")
    return SearchSpace.build(path, section="space" if "space" in raw else None)


class BudgetSettings(StageConfig):
    """A latency budget and what may be searched under it: the fields :class:`SearchConfig` (`edgekd search`) and
    the pipeline's ``budget:`` section share (see :class:`SearchConfig` for each)."""

    budget_ms: float = Field(gt=0)
    batch: int = Field(1, ge=1)
    percentile: Percentile = Percentile.P50
    backends: list[str] | None = None
    target: str = "cpu-x86"
    space: SearchSpace = Field(default_factory=SearchSpace)
    device_table: str | None = None
    margin: float = Field(0.05, ge=0, lt=0.5)
    halving: HalvingConfig = Field(default_factory=HalvingConfig)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)

    @field_validator("space", mode="before")
    @classmethod
    def _space_file(cls, v: Any) -> Any:
        return load_space(v) if isinstance(v, (str, os.PathLike)) else v

    @field_validator("device_table", mode="before")
    @classmethod
    def _table_path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("backends", mode="before")
    @classmethod
    def _comma(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("backends")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        for r in v or ():
            if r not in RUNTIMES:
                raise ValueError(f"unknown backend {r!r} for the search; use {', '.join(RUNTIMES)}")
        return v


class SearchConfig(BudgetSettings):
    """Everything a latency-budget search needs besides its output directory.

    Attributes:
        data: data spec (see `edgekd.data.load_data`).
        teacher: the teacher (a model directory, ``onnx:FILE``, ...) whose logits every candidate learns from.
        budget_ms: the latency budget of one batch, in milliseconds.
        batch: the batch size the budget is for.
        percentile: the percentile the budget bounds (p50 or p90).
        backends: runtimes to consider (None: the space's ``runtimes``).
        target: the INT8 quantization target (``edgekd quantize --help``).
        space: the search space (``--space FILE.yaml`` narrows or extends it).
        device_table: a table from `edgekd device profile` (measured on the target device); None: profile here.
        margin: a candidate fits when its latency is at most ``budget_ms * (1 - margin)`` (re-measurements vary).
        time_limit_s: stop starting trainings after this long (``30m``); the best trained so far wins.
        halving: the successive-halving schedule.
        losses: distillation loss terms.
        train: the optimisation settings of every candidate (epochs come from ``halving.rungs``).
        profile: how latency is measured (timing loop, threads).
        cache_teacher: cache the teacher's logits once for all candidates.
        engine: ``local`` (successive halving in this process, in sequence) or ``ray`` (Ray Tune's ASHA scheduler;
            local mode, or the cluster ``RAY_ADDRESS`` names).
    """

    model_config = ConfigDict(frozen=True)
    flat_keys: ClassVar = {
        "budget": "budget_ms",
        "backend": "backends",
        "space_file": "space",
        "time_limit": "time_limit_s",
    }
    unread: ClassVar = {"train.epochs": "halving.rungs"}

    data: str = "pneumoniamnist"
    teacher: str = Field(min_length=1)
    time_limit_s: float = Field(1800.0, gt=0)
    losses: list[str] = Field(default_factory=lambda: list(DEFAULT_LOSSES), min_length=1)
    train: TrainConfig = Field(default_factory=_student_train)
    cache_teacher: bool = True
    engine: Engine = Engine.LOCAL

    @field_validator("time_limit_s", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v)

    @field_validator("teacher", "data", mode="before")
    @classmethod
    def _path(cls, v: Any) -> Any:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @property
    def resolved_space(self) -> SearchSpace:
        """The space with ``backends`` (when given) as its runtimes."""
        if self.backends:
            return self.space.model_copy(update={"runtimes": list(self.backends)})
        return self.space

    def profile_settings(self, input_shape: list[int], num_classes: int) -> ProfileSettings:
        """The profile settings at this budget's batch, for this data's input."""
        return self.profile.model_copy(
            update={
                "batches": [self.batch],
                "input_shape": input_shape,
                "num_classes": num_classes,
                "target": self.target,
            }
        )
