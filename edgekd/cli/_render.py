"""Rich rendering shared by commands."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from edgekd.cli._options import console

__all__ = ["metrics_table", "fmt"]


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    return str(v)


def metrics_table(title: str, metrics: dict[str, Any], label_names: list[str] | None = None) -> None:
    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if k in ("confusion_matrix", "auroc_per_label") or isinstance(v, list):  # per-class / per-image lists: JSON
            continue
        t.add_row(k, fmt(v))
    console.print(t)
    cm = metrics.get("confusion_matrix")
    if cm and len(cm) <= 20:
        names = label_names or [str(i) for i in range(len(cm))]
        c = Table(title="confusion matrix (rows: true, columns: predicted)")
        c.add_column("")
        for n in names:
            c.add_column(n, justify="right")
        for n, row in zip(names, cm):
            c.add_row(n, *map(str, row))
        console.print(c)
