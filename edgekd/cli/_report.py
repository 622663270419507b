"""`edgekd report` and `edgekd explain` (thin: parse, call the library, render)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_PIPELINE, app
from edgekd.cli._options import JsonOpt, OutOpt, OverwriteOpt, QuietOpt, console, emit_json
from edgekd.report import explain, write_report

__all__ = ["report", "explain_cmd"]


@app.command(rich_help_panel=PANEL_PIPELINE)
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of `edgekd run`.")],
    quiet: QuietOpt = False,
) -> None:
    """Write RUN_DIR/report/index.html: Pareto, sizes, ROC, calibration, training curves, Grad-CAM agreement.

    Example: edgekd report runs/pneumonia
    """
    path = write_report(run_dir, progress=not quiet)
    console.print(f"report: [bold]{escape(str(path))}[/]")


@app.command("explain", rich_help_panel=PANEL_PIPELINE)
def explain_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory to explain.")],
    out: OutOpt,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data spec (default: the model's).")] = None,
    images: Annotated[
        list[str] | None,
        typer.Option("--images", "-i", help="Indices of --split images or image files; repeatable or comma-separated."),
    ] = None,
    compare: Annotated[
        Path | None, typer.Option(help="Another model directory: its overlays and the agreement scores.")
    ] = None,
    n: Annotated[int, typer.Option("-n", help="Images to sample (evenly spaced) without --images.")] = 8,
    split: Annotated[str, typer.Option(help="train | val | test")] = "test",
    layer: Annotated[str | None, typer.Option(help="Layer of MODEL_DIR (default: its last stage).")] = None,
    overwrite: OverwriteOpt = False,
    json_out: JsonOpt = None,
) -> None:
    """Grad-CAM overlays of chosen or sampled images (PNG grid), optionally against another model, for review.

    Example: edgekd explain runs/pneumonia/student --images 3,17,42 --compare runs/pneumonia/teacher --out review
    """
    check_report_path(json_out, overwrite=overwrite)
    chosen = [p.strip() for item in images or [] for p in item.split(",") if p.strip()]
    res = explain(
        model_dir, out, data=data, images=chosen, compare=compare, n=n, split=split, layer=layer, overwrite=overwrite
    )
    if json_out != "-":
        t = Table(
            title=f"Grad-CAM of {model_dir} [{res.layer}]" + (f" vs {compare} [{res.compare_layer}]" if compare else "")
        )
        for col in ("image", "label", "explained", "prediction", *(["other", "Spearman", "IoU"] if compare else [])):
            t.add_column(col)
        for it in res.images:
            extra = [it.compare_prediction or "", f"{it.spearman:.2f}", f"{it.iou:.2f}"] if compare else []
            t.add_row(it.source, it.label or "?", it.explained, f"{it.prediction} {it.confidence:.2f}", *extra)
        console.print(t)
        console.print(f"figure: [bold]{escape(res.figure)}[/]")
    emit_json(res, json_out)
