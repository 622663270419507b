""":class:`BenchConfig`: the one typed config of `edgekd bench` (CLI flags, ``--config`` YAML, :func:`run_benchmark`,
and the ``bench:`` section of `edgekd run`), the single source of the benchmark defaults and their validation.

It is :class:`~edgekd.bench.BenchSettings` (how to measure, how to configure the runners) plus what to run
(backends, devices, batches, precision, bundle verification) and the CI gate (:class:`GateConfig`: baseline,
allowed regression, noise floor, latency budget; the ``regression:`` section of `edgekd run`).

Example:
    >>> cfg = BenchConfig(backends=["ort"], batches=[1, 32], min_s=1.0, cv_warn="15%")
    >>> report = run_benchmark(["runs/student"], cfg)
    >>> check_gate(report, cfg.gate)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from edgekd._config import StageConfig
from edgekd.bench._api import benchmark
from edgekd.bench._gate import check_budget, compare_reports, enforce, parse_fraction, regressions
from edgekd.bench._report import load_report
from edgekd.bench._runners import RUNNERS
from edgekd.bench._schema import BenchDevice, BenchReport, BenchSettings, BudgetViolation, Comparison, ComputePrecision

__all__ = ["BenchConfig", "GateConfig", "GateResult", "run_benchmark", "check_gate"]


def _fraction(v: Any) -> Any:
    return parse_fraction(v) if isinstance(v, str) else v


class GateConfig(StageConfig):
    """The CI gate of a benchmark: exit 7 when p50 or p90 regressed against a baseline, or a p90 is over budget.

    Attributes:
        baseline: a benchmark JSON (``edgekd bench --json``) to compare with (None: no comparison).
        max_regression: the allowed slow-down against the baseline (``"10%"`` or ``0.1``).
        min_abs_ms: a regression must also exceed this many milliseconds (the noise floor).
        budget_ms: fail when a p90 latency exceeds this (None: no budget).
    """

    baseline: str | None = None
    max_regression: float = Field(0.10, ge=0)
    min_abs_ms: float = Field(0.05, ge=0)
    budget_ms: float | None = Field(None, gt=0)

    @field_validator("max_regression", mode="before")
    @classmethod
    def _fraction(cls, v: Any) -> Any:
        return _fraction(v)

    @property
    def active(self) -> bool:
        return self.baseline is not None or self.budget_ms is not None


class BenchConfig(BenchSettings, StageConfig):
    """What to benchmark where, how to measure it (:class:`~edgekd.bench.BenchSettings`), and the gate.

    Attributes:
        backends: ``torch`` / ``ort`` / ``trt`` (:data:`~edgekd.bench.RUNNERS`); None picks what fits each
            artifact and skips unavailable ones (asked for explicitly, an unavailable one is an error, exit 5).
        devices: ``cpu`` / ``cuda``; None: CUDA when present (engines: CUDA).
        batches: batch sizes.
        precision: torch: the compute dtype; ONNX / engines: which file of a bundle (None: all).
        verify: re-hash bundles against their manifests before running them.
        gate: the CI gate (:class:`GateConfig`).
    """

    backends: list[str] | None = None
    devices: list[str] | None = None
    batches: list[int] = Field(default_factory=lambda: [1], min_length=1)
    precision: ComputePrecision | None = None
    verify: bool = True
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("cv_warn", "drift_warn", mode="before")
    @classmethod
    def _fractions(cls, v: Any) -> Any:
        return _fraction(v)

    @field_validator("backends", "devices", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("batches", mode="before")
    @classmethod
    def _comma_batches(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("batches")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError(f"batch sizes must be positive integers, got {v}")
        return v

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, v: list[str] | None) -> list[str] | None:
        for d in v or ():
            if d not in {x.value for x in BenchDevice}:
                raise ValueError(f"unknown device {d!r}; use {' or '.join(x.value for x in BenchDevice)}")
        return v

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, v: list[str] | None) -> list[str] | None:
        for name in v or ():
            RUNNERS.get(name)  # an unknown name raises with the closest names
        return v

    def settings(self) -> BenchSettings:
        """The measurement and runner settings alone (what a :class:`~edgekd.bench.BenchReport` records)."""
        return BenchSettings(**self.model_dump(include=set(BenchSettings.model_fields)))


def run_benchmark(
    artifacts: Sequence[str | os.PathLike], cfg: BenchConfig | None = None, *, progress: bool = False
) -> BenchReport:
    """:func:`~edgekd.bench.benchmark` of ``artifacts`` with the settings of ``cfg`` (default :class:`BenchConfig`);
    the report records ``cfg`` (``report.config``)."""
    cfg = cfg or BenchConfig()
    report = benchmark(
        [str(a) for a in artifacts],
        backends=cfg.backends,
        devices=cfg.devices,
        batches=tuple(cfg.batches),
        precision=cfg.precision.value if cfg.precision else None,
        settings=cfg.settings(),
        progress=progress,
        verify=cfg.verify,
    )
    return report.model_copy(update={"config": cfg.model_dump(mode="json")})  # the resolved config, saved with it


@dataclass(frozen=True)
class GateResult:
    """What :func:`check_gate` compared: every comparison with the baseline, and the p90s over budget."""

    comparisons: list[Comparison]
    over_budget: list[BudgetViolation]

    @property
    def regressed(self) -> list[Comparison]:
        return regressions(self.comparisons)


def check_gate(report: BenchReport, gate: GateConfig, *, enforce_it: bool = True) -> GateResult:
    """Compare ``report`` with ``gate.baseline`` and ``gate.budget_ms``.

    Raises:
        ArtifactError: the baseline is missing or not a benchmark report (exit 4).
        RegressionError: with ``enforce_it``, a regression or a p90 over budget (exit 7).
    """
    comps: list[Comparison] = []
    if gate.baseline is not None:
        base = load_report(gate.baseline)
        comps = compare_reports(base, report, max_regression=gate.max_regression, min_abs_ms=gate.min_abs_ms)
    over = check_budget(report, gate.budget_ms) if gate.budget_ms is not None else []
    result = GateResult(comps, over)
    if enforce_it:
        enforce(result.regressed, over, max_regression=gate.max_regression, min_abs_ms=gate.min_abs_ms)
    return result
