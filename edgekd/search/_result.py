"""What a search writes: ``DIR/search.json`` (:class:`SearchResult`), its candidates and the chosen model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from edgekd.search._predict import LatencyPredictor
from edgekd.search._space import Candidate
from edgekd.search._train import Training

__all__ = ["ArrayTask", "CandidateRecord", "ChosenModel", "SearchResult"]


class ArrayTask(BaseModel):
    """One job of an array (SLURM ``--array``): train the ``index``-th architecture of ``rung``, then stop."""

    rung: int = Field(ge=0)
    index: int = Field(ge=0)


class CandidateRecord(BaseModel):
    """One candidate: its spec, its latency (measured or predicted) and, for its architecture, the training."""

    label: str
    key: str
    candidate: Candidate
    latency_ms: float | None
    latency_source: str  # measured | predicted | unknown
    fits: bool
    macs: int | None = None
    params: int | None = None
    deployed: bool = False  # the variant its architecture would ship as (the most precise one that fits)
    trained_epochs: int = 0
    val: dict[str, Any] = Field(default_factory=dict)
    test: dict[str, Any] = Field(default_factory=dict)


class ChosenModel(BaseModel):
    """The winner: its candidate, its model directory and bundle, and its latency measured again."""

    label: str
    candidate: Candidate
    model_dir: str
    bundle: str
    table_ms: float | None
    measured_ms: float
    meets_budget: bool
    pruned: dict[str, Any] | None = None
    val: dict[str, Any] = Field(default_factory=dict)
    test: dict[str, Any] = Field(default_factory=dict)
    bench: dict[str, Any] = Field(default_factory=dict)


class SearchResult(BaseModel):
    """``DIR/search.json``."""

    budget_ms: float
    batch: int
    percentile: str
    margin: float
    device: dict[str, Any]
    predictor: LatencyPredictor
    candidates: list[CandidateRecord]
    trainings: list[Training]
    rungs_reached: int
    time_limit_reached: bool
    chosen: ChosenModel | None
    alternatives: list[str] = Field(default_factory=list)
    wall_s: float
    config: dict[str, Any] = Field(default_factory=dict)
