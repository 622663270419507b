"""Latency statistics of one configuration, from its per-iteration times.

Percentiles are numpy's ``linear`` method (type 7 of Hyndman & Fan 1996, the default of numpy and of
most tools): for sorted times ``t[0..n-1]`` the q-th percentile is ``t[h]`` interpolated at
``h = (n - 1) * q / 100``. The standard deviation is the sample one (``ddof=1``); the coefficient of
variation is ``CV = std / mean``; throughput is ``batch / mean`` samples per second (the mean, not the
median, because throughput is total work over total time).

**Drift.** The percentiles pool every iteration, so they cannot show a machine whose speed changed *during*
the run (a neighbour on a shared VM, thermal or frequency changes): the timed iterations are cut into
``DRIFT_SEGMENTS`` consecutive segments and ``p50_drift`` is the largest segment median over the smallest.
A steady machine gives about 1.0; above ``1 + drift_warn`` the machine changed speed during the run and its
p50 will not repeat. A low drift is no guarantee: changes slower than one run only show between runs.

Example:
    >>> s = summarize([1.0, 2.0, 3.0, 4.0], batch=8)
    >>> s.p50_ms, round(s.throughput)
    (2.5, 3200)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgekd.bench._schema import Stats
from edgekd.errors import InvalidInputError

__all__ = ["summarize", "p50_drift", "PERCENTILES", "DRIFT_SEGMENTS"]

PERCENTILES = (50, 90, 95, 99)
DRIFT_SEGMENTS = 5
MIN_PER_SEGMENT = 10


def p50_drift(times_ms: Sequence[float] | np.ndarray, segments: int = DRIFT_SEGMENTS) -> float | None:
    """Max over min of the medians of ``segments`` consecutive, equal-count slices of the timed iterations.

    None when there are fewer than ``MIN_PER_SEGMENT`` iterations per segment (too few for a median).
    """
    t = np.asarray(times_ms, dtype=np.float64)
    if segments < 2 or t.size < segments * MIN_PER_SEGMENT:
        return None
    medians = [float(np.median(part)) for part in np.array_split(t, segments)]
    low = min(medians)
    return max(medians) / low if low > 0 else None


def summarize(
    times_ms: Sequence[float],
    *,
    batch: int,
    cv_warn: float = 0.10,
    drift_warn: float = 0.10,
    warmup_iters: int = 0,
    warmup_s: float = 0.0,
    total_s: float | None = None,
) -> Stats:
    """Summarise per-iteration latencies.

    Args:
        times_ms: one latency per timed iteration, in milliseconds.
        batch: samples per iteration (for the throughput).
        cv_warn: ``high_cv`` is set when ``std / mean`` exceeds this fraction.
        drift_warn: ``high_drift`` is set when ``p50_drift`` exceeds ``1 + drift_warn``.
        warmup_iters, warmup_s: recorded as they were run.
        total_s: wall time of the timed phase (default: the sum of the times).

    Returns:
        The :class:`Stats` record.

    Raises:
        InvalidInputError: no times, a non-positive batch, or a negative/non-finite time.
    """
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        raise InvalidInputError("no timed iterations to summarise")
    if batch < 1:
        raise InvalidInputError(f"batch must be >= 1, got {batch}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise InvalidInputError("latencies must be finite and non-negative")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(t, PERCENTILES, method="linear"))
    mean = float(t.mean())
    std = float(t.std(ddof=1)) if t.size > 1 else 0.0
    cv = std / mean if mean > 0 else 0.0
    drift = p50_drift(t)
    return Stats(
        n=int(t.size),
        total_s=float(total_s if total_s is not None else t.sum() / 1e3),
        mean_ms=mean,
        std_ms=std,
        min_ms=float(t.min()),
        max_ms=float(t.max()),
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        cv=cv,
        throughput=batch / (mean / 1e3) if mean > 0 else float("inf"),
        high_cv=cv > cv_warn,
        p50_drift=drift,
        high_drift=drift is not None and drift > 1.0 + drift_warn,
        warmup_iters=warmup_iters,
        warmup_s=warmup_s,
    )
