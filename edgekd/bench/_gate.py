"""The CI gate: compare a run against a baseline, and check a latency budget.

A configuration is matched by ``(name, backend, device, batch, precision)``. It **regresses** when, on p50
or on p90, the new latency exceeds the baseline by more than *both* the relative threshold and the absolute
floor::

    new - base > max_regression * base   and   new - base > min_abs_ms

The absolute floor keeps the gate from firing on scheduler noise of tiny models (a 0.02 ms model that
measures 0.03 ms once is +50 % but means nothing). Symmetrically a configuration is ``improved`` when it got
faster past both thresholds on p50. Configurations only in one report are ``new`` / ``missing`` and never
fail the gate (a renamed artifact should not silently pass either, so they are listed).

Example:
    >>> comps = compare_reports(base, new, max_regression=0.10, min_abs_ms=0.05)
    >>> [c.label for c in comps if c.status == "regressed"]
"""

from __future__ import annotations

import re

from edgekd.bench._schema import BenchReport, BenchResult, BudgetViolation, Comparison
from edgekd.errors import InvalidInputError, RegressionError

__all__ = ["compare_reports", "check_budget", "parse_fraction", "regressions", "enforce"]


def parse_fraction(text: str | float) -> float:
    """Parse a threshold: ``"10%"`` -> 0.10, ``"0.1"`` -> 0.10, ``"10"`` -> 0.10 (numbers >= 1 are percent).

    Raises:
        InvalidInputError: not a non-negative number or percentage.
    """
    if isinstance(text, (int, float)):
        value, percent = float(text), float(text) >= 1
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", str(text))
        if not m:
            raise InvalidInputError(f"cannot read {text!r} as a threshold", "write it like 10% or 0.1")
        value, percent = float(m.group(1)), bool(m.group(2)) or float(m.group(1)) >= 1
    return value / 100.0 if percent else value


def _exceeds(base: float, new: float, rel: float, abs_ms: float) -> bool:
    delta = new - base
    return delta > rel * base and delta > abs_ms


def _compare_one(b: BenchResult, n: BenchResult, rel: float, abs_ms: float) -> Comparison:
    regressed = [
        q for q in ("p50", "p90") if _exceeds(getattr(b.stats, f"{q}_ms"), getattr(n.stats, f"{q}_ms"), rel, abs_ms)
    ]
    improved = _exceeds(n.stats.p50_ms, b.stats.p50_ms, rel, abs_ms)
    status = "regressed" if regressed else ("improved" if improved else "ok")
    return Comparison(
        name=n.name,
        backend=n.backend,
        device=n.device,
        batch=n.batch,
        precision=n.precision,
        status=status,
        base_p50_ms=b.stats.p50_ms,
        new_p50_ms=n.stats.p50_ms,
        p50_ratio=n.stats.p50_ms / b.stats.p50_ms if b.stats.p50_ms > 0 else None,
        base_p90_ms=b.stats.p90_ms,
        new_p90_ms=n.stats.p90_ms,
        p90_ratio=n.stats.p90_ms / b.stats.p90_ms if b.stats.p90_ms > 0 else None,
        regressed_on=regressed,
    )


def compare_reports(
    base: BenchReport, new: BenchReport, *, max_regression: float = 0.10, min_abs_ms: float = 0.05
) -> list[Comparison]:
    """Compare every configuration of ``new`` with the same one in ``base``.

    Args:
        base: the baseline report.
        new: the report under test.
        max_regression: relative threshold as a fraction (0.10 = 10 %).
        min_abs_ms: absolute floor in milliseconds.

    Returns:
        One :class:`Comparison` per configuration of either report, in ``new``'s order, then the missing ones.

    Raises:
        InvalidInputError: a negative threshold.
    """
    if max_regression < 0 or min_abs_ms < 0:
        raise InvalidInputError("regression thresholds must be non-negative")
    base_by_key = {r.key(): r for r in base.results}
    out: list[Comparison] = []
    for n in new.results:
        b = base_by_key.get(n.key())
        if b is None:
            out.append(
                Comparison(
                    name=n.name,
                    backend=n.backend,
                    device=n.device,
                    batch=n.batch,
                    precision=n.precision,
                    status="new",
                    new_p50_ms=n.stats.p50_ms,
                    new_p90_ms=n.stats.p90_ms,
                )
            )
        else:
            out.append(_compare_one(b, n, max_regression, min_abs_ms))
    new_keys = {r.key() for r in new.results}
    for b in base.results:
        if b.key() not in new_keys:
            out.append(
                Comparison(
                    name=b.name,
                    backend=b.backend,
                    device=b.device,
                    batch=b.batch,
                    precision=b.precision,
                    status="missing",
                    base_p50_ms=b.stats.p50_ms,
                    base_p90_ms=b.stats.p90_ms,
                )
            )
    return out


def regressions(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons that fail the gate."""
    return [c for c in comparisons if c.status == "regressed"]


def check_budget(report: BenchReport, budget_ms: float) -> list[BudgetViolation]:
    """Results whose p90 latency exceeds ``budget_ms`` (an empty list passes).

    Raises:
        InvalidInputError: a non-positive budget.
    """
    if budget_ms <= 0:
        raise InvalidInputError(f"--budget-ms must be positive, got {budget_ms}")
    return [
        BudgetViolation(
            name=r.name,
            backend=r.backend,
            device=r.device,
            batch=r.batch,
            precision=r.precision,
            p90_ms=r.stats.p90_ms,
            budget_ms=budget_ms,
        )
        for r in report.results
        if r.stats.p90_ms > budget_ms
    ]


def enforce(
    regressed: list[Comparison],
    over_budget: list[BudgetViolation],
    *,
    max_regression: float | None = None,
    min_abs_ms: float | None = None,
) -> None:
    """Raise :class:`~edgekd.errors.RegressionError` (exit 7) naming every failing configuration, if any."""
    parts = []
    if regressed:
        what = ", ".join(f"{c.label} p50 x{c.p50_ratio:.2f} p90 x{c.p90_ratio:.2f}" for c in regressed)
        limit = f" more than {100 * max_regression:.0f}% and {min_abs_ms} ms" if max_regression is not None else ""
        parts.append(f"{len(regressed)} configuration(s) regressed{limit}: {what}")
    if over_budget:
        what = ", ".join(f"{v.label} p90 {v.p90_ms:.3f} ms" for v in over_budget)
        parts.append(f"{len(over_budget)} configuration(s) over the {over_budget[0].budget_ms} ms budget: {what}")
    if parts:
        raise RegressionError("; ".join(parts), "see the table above; re-run on a quiet machine before bisecting")
