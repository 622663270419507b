"""``budget:`` in a pipeline file: `edgekd run` searches for its student under a latency budget.

With a ``budget:`` section the ``student`` stage is a latency-budget search (:func:`edgekd.search.run_search`)
instead of one distillation: the teacher stage's model teaches every candidate that fits, with the student's
``train`` settings (epochs come from ``budget.halving.rungs``) and the run's ``distill.losses``, into
``RUN/search/``; the winner's model directory becomes ``RUN/student``, which the later stages (select, prune,
quantize, export, bench, report) take as usual. The search resumes by content hash, like every stage.

What the section holds is :class:`~edgekd.search.SearchConfig` less what the pipeline already names (data,
teacher, losses, train): ``budget_ms``, ``batch``, ``percentile``, ``backends``, ``target``, ``space`` (a mapping or
a YAML file), ``device_table``, ``margin``, ``time_limit`` and ``halving``. ``student.model`` is then only the
name the table shows. A budget run has no baseline stage (``distill.baseline`` must be false): its hand-configured
alternatives are in ``RUN/search/search.json``; and one seed.

Example (pipeline YAML):
    budget: {budget_ms: 0.1, batch: 1, time_limit: 30m}
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from edgekd.distill import TrainConfig
from edgekd.errors import InvalidInputError
from edgekd.search import (
    BudgetSettings,
    SearchConfig,
    parse_duration,
    run_search,
)

__all__ = ["BudgetSection", "SEARCH_DIR", "budget_search_config", "run_budget_search"]

SEARCH_DIR = "search"


class BudgetSection(BudgetSettings):
    """The ``budget:`` section (see the module docstring): the search's :class:`~edgekd.search.BudgetSettings`
    and its time limit (``30m``, ``1h`` or seconds)."""

    time_limit: float = Field(1800.0, gt=0)

    @field_validator("time_limit", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v)


def budget_search_config(
    budget: BudgetSection, *, data: str, teacher: str, losses: list[str], train: TrainConfig
) -> SearchConfig:
    """The search a budget run makes (``teacher`` is the teacher stage's name; resolved when the stage runs)."""
    return SearchConfig(
        data=data,
        teacher=teacher,
        losses=list(losses),
        train=train,
        cache_teacher=True,
        time_limit_s=budget.time_limit,
        **budget.model_dump(exclude={"space", "halving", "profile", "time_limit"}),
        space=budget.space,
        halving=budget.halving,
        profile=budget.profile,
    )


def run_budget_search(runner: Any, stage: Any, resume: bool) -> dict[str, Any]:
    """The ``student`` stage of a budget run: search into ``RUN/search``, the winner copied to ``RUN/student``."""
    cfg: SearchConfig = stage.config
    cfg = cfg.model_copy(update={"teacher": runner.teacher_ref(cfg.teacher)})
    result = run_search(cfg, runner.path(SEARCH_DIR), progress=runner.progress, log=runner.log)
    if result.chosen is None:
        raise InvalidInputError("the budget search trained nothing within its time limit", "raise budget.time_limit")
    out: Path = runner.path(stage.output)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(result.chosen.model_dir, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    c = result.chosen
    return {
        "chosen": c.label,
        "measured_ms": c.measured_ms,
        "meets_budget": c.meets_budget,
        "val": {k: v for k, v in c.val.items() if isinstance(v, (int, float))},
        "test": {k: v for k, v in c.test.items() if isinstance(v, (int, float))},
    }
