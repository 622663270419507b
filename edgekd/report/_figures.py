"""The report's figures, drawn with matplotlib's object API (no pyplot state, no display) into PNG bytes.

Each function takes plain numbers and returns the PNG of one figure; the report embeds them in the HTML
page and writes them beside it. Colours follow the stage order of the table (teacher first).

Example:
    >>> png = pareto_png([{"label": "teacher", "auroc": 0.97, "latency": {"32": 80.0}}, ...], reference="teacher")
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from sklearn.metrics import roc_curve

__all__ = [
    "pareto_png",
    "size_png",
    "roc_png",
    "confusion_png",
    "reliability_png",
    "curves_png",
    "image_grid_png",
    "gradcam_png",
    "COLORS",
]

COLORS = ("#1f3b73", "#8c8c8c", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#e6ab02")
DPI = 110


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def pareto_png(rows: Sequence[dict[str, Any]], *, metric: str = "auroc") -> bytes:
    """Test ``metric`` against p50 latency per batch size (one panel per batch), teacher lines as reference.

    ``rows``: ``{"label", metric, metric + "_std", "latency": {batch: p50_ms}}``; the first row is the teacher.
    """
    batches = sorted({int(b) for r in rows for b in r.get("latency", {})})
    fig = Figure(figsize=(5.2 * max(1, len(batches)), 4.2), layout="constrained")
    axes = fig.subplots(1, max(1, len(batches)), squeeze=False)[0]
    for ax, batch in zip(axes, batches or [None]):
        ref = rows[0]
        for i, r in enumerate(rows):
            x = r.get("latency", {}).get(str(batch)) if batch is not None else None
            y = r.get(metric)
            if not (_finite(x) and _finite(y)):
                continue
            ax.errorbar(
                x,
                y,
                yerr=r.get(f"{metric}_std") or None,
                fmt="o",
                ms=8,
                color=COLORS[i % len(COLORS)],
                capsize=3,
                label=r["label"],
            )
            if i == 0:  # the stages sit close together: the legend names them, the teacher is labelled
                ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if _finite(ref.get(metric)):
            ax.axhline(ref[metric], color=COLORS[0], ls="--", lw=0.8)
            ax.axhspan(ref[metric] - 0.01, ref[metric], color=COLORS[0], alpha=0.07, lw=0)
        rx = ref.get("latency", {}).get(str(batch)) if batch is not None else None
        if _finite(rx):
            ax.axvline(rx, color=COLORS[0], ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
        ax.set_xlabel(f"p50 latency of one batch of {batch} (ms, log)" if batch else "latency not measured")
        ax.set_ylabel(f"test {metric.upper()}")
        ax.set_title(f"batch {batch}: up and left is better" if batch else "no benchmark")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="lower right")
    return _png(fig)


def size_png(rows: Sequence[dict[str, Any]]) -> bytes:
    """Params, MACs and file size per stage (log scale bars)."""
    fig = Figure(figsize=(13, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    labels = [r["label"] for r in rows]
    for ax, key, title, scale in zip(
        axes, ("params", "macs", "size_bytes"), ("parameters", "MACs per sample", "file size (MB)"), (1.0, 1.0, 1e-6)
    ):
        values = [(r.get(key) or 0) * scale for r in rows]
        bars = ax.bar(range(len(rows)), values, color=[COLORS[i % len(COLORS)] for i in range(len(rows))])
        for b, v in zip(bars, values):
            ax.annotate(f"{v:.3g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        positive = [v for v in values if v > 0]
        if positive:
            ax.set_yscale("log")
            ax.set_ylim(min(positive) / 4, max(positive) * 3)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _scores(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Binary: P(positive). Otherwise the micro-average one-vs-rest scores and labels."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    if p.shape[1] == 2:
        return p[:, 1], targets.reshape(-1)
    onehot = np.eye(p.shape[1])[targets.reshape(-1).astype(int)]
    return p.ravel(), onehot.ravel()


def roc_png(curves: Sequence[dict[str, Any]]) -> bytes:
    """ROC curves on test, one per stage: ``{"label", "logits", "targets", "auroc"}``."""
    fig = Figure(figsize=(5.6, 5), layout="constrained")
    ax = fig.subplots()
    for i, c in enumerate(curves):
        s, y = _scores(c["logits"], c["targets"])
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color=COLORS[i % len(COLORS)], lw=1.4, label=f"{c['label']} (AUROC {c['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], color="#bbb", ls="--", lw=0.8)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_png(mats: Sequence[dict[str, Any]], label_names: Sequence[str]) -> bytes:
    """Confusion matrices on test (rows: true class), one panel per stage: ``{"label", "matrix"}``."""
    n = len(mats)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, m in zip(axes, mats):
        cm = np.asarray(m["matrix"])
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", fontsize=9, color="white" if v > cm.max() / 2 else "black")
        ticks = range(len(cm))
        names = list(label_names) if len(label_names) == len(cm) else [str(i) for i in ticks]
        ax.set_xticks(ticks, names, fontsize=7, rotation=30)
        ax.set_yticks(ticks, names, fontsize=7)
        ax.set_title(m["label"], fontsize=9)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[n:]:
        ax.axis("off")
    return _png(fig)


def reliability_png(diagrams: Sequence[dict[str, Any]]) -> bytes:
    """Reliability diagrams on test, one panel per stage: ``{"label", "ece", "bins": [{lo, hi, count, ...}]}``."""
    n = len(diagrams)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3.3 * cols, 3.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, (ax, d) in enumerate(zip(axes, diagrams)):
        bins = [b for b in d["bins"] if b["count"]]
        mids = [(b["lo"] + b["hi"]) / 2 for b in bins]
        width = d["bins"][0]["hi"] - d["bins"][0]["lo"] if d["bins"] else 0.1
        ax.bar(
            mids,
            [b["accuracy"] for b in bins],
            width=width * 0.95,
            color=COLORS[i % len(COLORS)],
            alpha=0.8,
            label="accuracy",
        )
        ax.bar(
            mids,
            [b["confidence"] - b["accuracy"] for b in bins],
            bottom=[b["accuracy"] for b in bins],
            width=width * 0.95,
            color="#e34a33",
            alpha=0.35,
            label="gap",
        )
        ax.plot([0, 1], [0, 1], color="#444", ls="--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{d['label']}\nECE {d['ece']:.3f}", fontsize=9)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
    for ax in axes[n:]:
        ax.axis("off")
    return _png(fig)


def curves_png(stages: Sequence[dict[str, Any]]) -> bytes:
    """Training loss and validation metric per epoch: ``{"label", "histories", "metric", "metric_label"}`` per stage."""
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax_loss, ax_val = fig.subplots(1, 2)
    for i, s in enumerate(stages):
        color = COLORS[i % len(COLORS)]
        for j, hist in enumerate(s["histories"]):
            x = list(range(1, len(hist) + 1))
            label = s["label"] if j == 0 else None
            ax_loss.plot(
                x,
                [h.get("loss", math.nan) for h in hist],
                color=color,
                lw=1.3 if j == 0 else 0.7,
                label=label,
                marker="o",
                ms=3,
            )
            ax_val.plot(
                x,
                [h.get(s.get("metric", "val_auroc"), math.nan) for h in hist],
                color=color,
                lw=1.3 if j == 0 else 0.7,
                label=label,
                marker="o",
                ms=3,
            )
    ax_loss.set_title("training loss (all terms, weighted)")
    ax_val.set_title(f"validation {' / '.join(sorted({s.get('metric_label', 'AUROC') for s in stages}))}")
    for ax in (ax_loss, ax_val):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (pruning: recovery epochs, all steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def _show(ax, image: np.ndarray) -> None:
    """A raw ``uint8 [C, H, W]`` image (grey for one channel)."""
    img = np.asarray(image)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.transpose(img[:3], (1, 2, 0)))
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid_png(images: Sequence[np.ndarray], titles: Sequence[str], *, cols: int = 8) -> bytes:
    """A grid of raw images with a title each (the augmented training views)."""
    n = len(images)
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, img, title in zip(axes, images, titles):
        _show(ax, img)
        ax.set_title(title, fontsize=6)
    for ax in axes[n:]:
        ax.axis("off")
    return _png(fig)


def gradcam_png(images: Sequence[np.ndarray], columns: Sequence[dict[str, Any]], row_titles: Sequence[str]) -> bytes:
    """Images (rows) and each model's Grad-CAM overlay (columns): ``{"label", "maps", "titles"}`` per column."""
    n, cols = len(images), 1 + len(columns)
    fig = Figure(figsize=(1.9 * cols, 2.0 * n), layout="constrained")
    axes = fig.subplots(n, cols, squeeze=False)
    for r, img in enumerate(images):
        _show(axes[r][0], img)
        axes[r][0].set_title(row_titles[r], fontsize=7)
        for c, col in enumerate(columns, start=1):
            _show(axes[r][c], img)
            axes[r][c].imshow(col["maps"][r], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[r][c].set_title((col["label"] + "\n" if r == 0 else "") + col["titles"][r], fontsize=7)
    return _png(fig)
