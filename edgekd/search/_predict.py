"""A latency predictor fitted on the device table, and its error on held-out measured candidates.

An additive cost model per group ``g`` = (runtime, precision, batch), fitted by non-negative least squares
weighted by 1/latency (so that the relative error is what is minimised):

    ms = a_g + b_g * GMACs + c_g * activation MB + d_g * weight MB + e_g * layers / 10

a fixed per-call overhead, compute, activation traffic and weight traffic (the roofline's terms, Williams et al.,
CACM 2009) and a fixed cost per layer (convolutions and linear layers: one kernel call each, normalisation and
activations folded in), with non-negative coefficients so that a bigger network is never predicted faster. The
per-layer term is what a small network's latency is made of: on the bundled 28 px data a ResNet-14 at half width
has fewer MACs than a ResNet-8 at full width and runs slower. On the default space's tables of a 2-vCPU EPYC
(benchmarks/search_budget.py, 2026-12-07) it lowered the held-out error from 34 % to 29 % at batch 1 and from 33 %
to 24 % at batch 32 (means over 20 seeded quarter hold-outs); what remains is timing noise of 0.01-10 ms calls on
a shared machine and kernel effects of channel counts a linear model does not see. nn-Meter (Zhang et al.,
MobiSys 2021) predicts per fused kernel instead; a per-network model is enough to cover the candidates a table
lacks. Tables written before the layer count was recorded predict without it. The error is measured, not
assumed: :func:`fit_predictor` holds out a seeded quarter of the measured entries, fits on the rest and reports
the mean absolute percentage error (MAPE) on the held-out ones; the predictor it returns is then refitted on all
of them.

Example:
    >>> pred = fit_predictor(table.entries, percentile="p50")
    >>> pred.holdout_mape, pred.predict("ort", "fp32", macs, params, act_bytes, batch=1, layers=12)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from edgekd.search._table import TableEntry

__all__ = ["LatencyPredictor", "fit_predictor", "mape"]


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, in percent."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return float(np.mean(np.abs(p - m) / m) * 100.0)


def _group(runtime: str, precision: str, batch: int) -> str:
    return f"{runtime}/{precision}/b{batch}"


def _features(macs: int, params: int, act_bytes: int, batch: int, layers: int | None) -> np.ndarray:
    # GMACs and MB of one batch, tens of layers: similar scales for the solver
    return np.array([1.0, macs * batch / 1e9, act_bytes * batch / 1e6, params * 4 / 1e6, (layers or 0) / 10])


class LatencyPredictor(BaseModel):
    """Non-negative coefficients per (runtime, precision, batch) group, and the held-out error."""

    percentile: str
    coef: dict[str, list[float]]
    n_fit: int
    n_holdout: int
    holdout_mape: float | None = None
    holdout: list[dict[str, float | str]] = Field(default_factory=list)

    def predict(
        self,
        runtime: str,
        precision: str,
        macs: int,
        params: int,
        act_bytes: int,
        batch: int,
        layers: int | None = None,
    ) -> float | None:
        """Predicted latency (ms), or None for a (runtime, precision, batch) the table never measured."""
        coef = self.coef.get(_group(runtime, precision, batch))
        if coef is None:
            return None
        coef = [*coef, *([0.0] * (5 - len(coef)))]  # a predictor stored before the layer term
        return float(_features(macs, params, act_bytes, batch, layers) @ np.asarray(coef))


def _solve(entries: Sequence[TableEntry], percentile: str) -> dict[str, list[float]]:
    from scipy.optimize import nnls

    groups: dict[str, list[TableEntry]] = {}
    for e in entries:
        groups.setdefault(_group(e.candidate.runtime, e.candidate.precision.value, e.batch), []).append(e)
    out = {}
    for name, members in groups.items():
        x = np.stack([_features(e.macs, e.params, e.act_bytes, e.batch, e.layers) for e in members])
        y = np.array([e.percentiles[percentile] for e in members])
        cols = x.shape[1] if len(members) >= x.shape[1] + 2 else 2  # few points: overhead + MACs only
        coef, _ = nnls(x[:, :cols] / y[:, None], np.ones_like(y))  # rows weighted by 1/y: relative error
        out[name] = [*map(float, coef), *([0.0] * (x.shape[1] - cols))]
    return out


def fit_predictor(
    entries: Sequence[TableEntry], *, percentile: str = "p50", holdout: float = 0.25, seed: int = 0
) -> LatencyPredictor:
    """Fit on ``entries``; report the MAPE on a seeded ``holdout`` fraction first fitted without them.

    With fewer than 8 entries there is no held-out error (``holdout_mape`` None): too few to say.
    """
    entries = list(entries)
    n_hold = int(round(len(entries) * holdout)) if len(entries) >= 8 else 0
    rows: list[dict[str, float | str]] = []
    err = None
    if n_hold:
        order = np.random.default_rng(seed).permutation(len(entries))
        held, fit = [entries[i] for i in order[:n_hold]], [entries[i] for i in order[n_hold:]]
        partial = LatencyPredictor(percentile=percentile, coef=_solve(fit, percentile), n_fit=len(fit), n_holdout=0)
        for e in held:
            c = e.candidate
            p = partial.predict(c.runtime, c.precision.value, e.macs, e.params, e.act_bytes, e.batch, e.layers)
            if p is not None:
                rows.append(
                    {"label": e.label, "batch": e.batch, "measured_ms": e.percentiles[percentile], "predicted_ms": p}
                )
        if rows:
            err = mape([float(r["predicted_ms"]) for r in rows], [float(r["measured_ms"]) for r in rows])
    return LatencyPredictor(
        percentile=percentile,
        coef=_solve(entries, percentile),
        n_fit=len(entries),
        n_holdout=len(rows),
        holdout_mape=err,
        holdout=rows,
    )
