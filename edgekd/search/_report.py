"""The search's report section: accuracy against measured latency, the Pareto front, the budget line.

``DIR/pareto.png`` plots every trained architecture's validation metric against its deployed variant's table
latency (measured, or predicted where marked), the Pareto front (no other point is both faster and more
accurate), the budget as a vertical line, the hand-configured alternatives (each family's zoo model as it is)
and the chosen model at its latency *measured again* on its bundle. ``DIR/report.html`` shows the figure and
the table of candidates.
"""

from __future__ import annotations

import html
from pathlib import Path

from edgekd._io import atomic_write_bytes, atomic_write_text
from edgekd.search._result import CandidateRecord, SearchResult

__all__ = [
    "pareto_front",
    "pareto_png",
    "candidate_rows",
    "CANDIDATE_COLUMNS",
    "selection_metric",
    "write_search_report",
]


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def selection_metric(result: SearchResult) -> str:
    """The validation metric the search ranked its candidates by."""
    return str(result.config.get("train", {}).get("select_metric", "auroc"))


def _score(r: CandidateRecord, metric: str) -> float | None:
    v = r.val.get(metric, r.val.get("acc"))
    return float(v) if v is not None else None


def pareto_png(result: SearchResult, metric: str) -> bytes:
    """The accuracy-against-latency figure (``DIR/pareto.png``; the run report embeds it too)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in result.candidates if r.deployed and r.trained_epochs and _score(r, metric) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    xs = [r.latency_ms or 0.0 for r in trained]
    ys = [_score(r, metric) or 0.0 for r in trained]
    ax.scatter(xs, ys, c=[r.trained_epochs for r in trained], cmap="viridis", label="trained (colour: epochs)")
    front = pareto_front(list(zip(xs, ys)))
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:green", label="Pareto front")
    alts = [r for r in trained if r.candidate.arch.key in result.alternatives]
    ax.scatter(
        [r.latency_ms for r in alts],
        [_score(r, metric) for r in alts],
        marker="s",
        facecolors="none",
        edgecolors="tab:orange",
        s=120,
        label="hand-configured (zoo as is)",
    )
    over = [r.latency_ms for r in result.candidates if not r.fits and r.latency_ms is not None]
    if over:  # where the untrained candidates lie: on the floor of the plot
        floor = min(ys, default=0.5)
        ax.scatter(over, [floor] * len(over), marker="|", s=200, color="0.6", label="over budget (never trained)")
    ax.axvline(result.budget_ms, color="tab:red", linestyle="--", label=f"budget {result.budget_ms:g} ms")
    lat = [x for x in [*xs, *over, result.budget_ms] if x and x > 0]
    if lat and max(lat) / min(lat) > 20:
        ax.set_xscale("log")
    if result.chosen is not None:
        y = result.chosen.val.get(metric, result.chosen.val.get("acc"))
        ax.scatter(
            [result.chosen.measured_ms],
            [y],
            marker="*",
            s=260,
            color="tab:red",
            label=f"chosen {result.chosen.label} (measured again)",
        )
    ax.set_xlabel(f"{result.percentile} latency of one batch of {result.batch} (ms)")
    ax.set_ylabel(f"validation {metric}")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


CANDIDATE_COLUMNS = ("candidate", "ms", "latency", "fits", "epochs", "val {metric}")


def candidate_rows(result: SearchResult, metric: str) -> list[tuple[list[str], bool]]:
    """Every candidate by latency: its cells (:data:`CANDIDATE_COLUMNS`) and whether it is the chosen one."""
    out = []
    for r in sorted(result.candidates, key=lambda r: (r.latency_ms is None, r.latency_ms or 0.0)):
        score = _score(r, metric)
        cells = [
            r.label,
            f"{r.latency_ms:.4g}" if r.latency_ms is not None else "-",
            r.latency_source,
            "yes" if r.fits else "no",
            str(r.trained_epochs or "-"),
            f"{score:.4f}" if score is not None else "-",
        ]
        out.append((cells, result.chosen is not None and result.chosen.label == r.label))
    return out


def _rows(result: SearchResult, metric: str) -> str:
    out = []
    for cells, chosen in candidate_rows(result, metric):
        style = ' style="font-weight:bold"' if chosen else ""
        out.append(f"<tr{style}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out)


def write_search_report(result: SearchResult, out: str | Path) -> Path:
    """Write ``out/pareto.png`` and ``out/report.html``; returns the page."""
    out = Path(out)
    metric = selection_metric(result)
    atomic_write_bytes(out / "pareto.png", pareto_png(result, metric))
    c = result.chosen
    chosen = (
        f"<p>Chosen: <b>{html.escape(c.label)}</b>, measured again on its bundle: {c.measured_ms:.4g} ms "
        f"({'meets' if c.meets_budget else 'misses'} the budget), val {metric} "
        f"{c.val.get(metric, float('nan')):.4f}, test {metric} {c.test.get(metric, float('nan')):.4f}.</p>"
        if c is not None
        else "<p>No model was chosen (nothing trained within the time limit).</p>"
    )
    mape = result.predictor.holdout_mape
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgekd search</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 8px;text-align:right}}</style>
</head><body><h1>Latency-budget search</h1>
<p>Budget {result.budget_ms:g} ms ({result.percentile}) at batch {result.batch} on {html.escape(str(result.device.get("cpu", {}).get("model", "")))};
wall time {result.wall_s:.0f} s; rungs reached {result.rungs_reached}{" (time limit reached)" if result.time_limit_reached else ""};
latency predictor MAPE on {result.predictor.n_holdout} held-out candidates: {f"{mape:.1f} %" if mape is not None else "n/a"}.</p>
{chosen}<img src="pareto.png" alt="accuracy against latency">
<table><tr><th>candidate</th><th>ms</th><th>latency</th><th>fits</th><th>epochs</th><th>val {metric}</th></tr>
{_rows(result, metric)}</table></body></html>
"""
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
