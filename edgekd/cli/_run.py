"""`edgekd run`: the whole pipeline from one YAML file (thin: parse, call the library, render)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgekd._io import check_report_path
from edgekd._progress import stderr_console
from edgekd.cli._app import PANEL_PIPELINE, app
from edgekd.cli._options import JsonOpt, QuietOpt, ReportOverwriteOpt, console, emit_json
from edgekd.pipeline import RunSummary, run_pipeline
from edgekd.report import fmt_score, write_report

__all__ = ["run", "render_summary"]


@app.command(rich_help_panel=PANEL_PIPELINE)
def run(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML file (see examples/pneumonia.yaml).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key: --set student.train.epochs=3 (value read as YAML); repeatable."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run directory (default runs/NAME); re-running continues it.")
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Train teacher, baseline and student over N seeds (same as --set seeds=N).")
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML report.")] = False,
    json_out: JsonOpt = None,
    overwrite: ReportOverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every stage from data to a reviewed edge bundle; unchanged stages are skipped, interrupted ones resume.

    Example: edgekd run examples/pneumonia.yaml --set student.train.epochs=4 --out runs/pneumonia
    """
    check_report_path(json_out, overwrite=overwrite, inputs=(pipeline,))
    overrides = [*(set_ or []), *([f"seeds={seeds}"] if seeds is not None else [])]
    summary = run_pipeline(
        pipeline,
        out,
        overrides=overrides,
        report=None if no_report else write_report,
        progress=not quiet,
        log=(lambda _: None) if quiet else stderr_console.print,
    )
    if json_out != "-":
        render_summary(summary)
    emit_json(summary.dump(), json_out)


def _cell(value: float | None, spread: float | None = None, digits: int = 3) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:.{digits}f}" + (f"±{spread:.{digits}f}" if spread else "")


def _si(n: float | None) -> str:
    if not n:
        return "n/a"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def render_summary(s: RunSummary) -> None:
    """The final table, the KD verdict and the report's path."""
    batches = sorted({int(b) for r in s.rows for b in r.latency})
    t = Table(
        title=f"edgekd run {s.name}: {s.data}, test split"
        + ("" if s.task == "segmentation" else f" (operating point: sensitivity {s.target_sensitivity:g} on val)")
        + (f"; * the KD verdict's metric ({s.kd['metric']})" if s.kd.get("metric") else "")
    )
    decides = s.kd.get("metric")  # the KD verdict's metric (balanced accuracy for multi-class by default)
    seg = s.task == "segmentation"  # masks: Dice, IoU, HD95 and pixel accuracy; no operating point, no ECE
    base = ("dice", "iou", "hd95", "acc") if seg else ("acc", "auroc")
    extra = [decides] if decides and decides not in base else []
    names = {"acc": "ACC", "auroc": "AUROC", "balanced_acc": "bal. ACC", "f1_macro": "macro F1", "hd95": "HD95"}
    shown = (*extra, *base)
    cols = [names.get(m, m) + ("*" if m == decides else "") for m in shown]
    classif = () if seg else ("sens@op", "spec@op", "ECE")
    for col in ("stage", "hand-off", *cols, *classif, "params", "MACs", "size"):
        t.add_column(col, justify="left" if col in ("stage", "hand-off") else "right")
    for b in batches:
        t.add_column(f"p50/p90 ms b{b}", justify="right")
        t.add_column(f"speedup b{b}", justify="right")
    for r in s.rows:
        sp = r.spread.get
        cells = [
            r.label,
            ", ".join(r.handoff),
            *[_cell(r.test.get(m), sp(f"test.{m}")) for m in shown],
            *(
                ()
                if seg
                else (
                    _cell(r.operating_point.get("sensitivity")),
                    _cell(r.operating_point.get("specificity")),
                    _cell(r.test.get("ece")),
                )
            ),
            _si(r.params),
            _si(r.macs),
            f"{(r.size_bytes or 0) / 1e6:.2f}MB",
        ]
        for b in batches:
            lat = r.latency.get(str(b))
            runtime = f" {lat.backend}" if lat and len(lat.runtimes) > 1 else ""  # the row's fastest runtime
            cells += [
                f"{lat.p50_ms:.2f}/{lat.p90_ms:.2f}{runtime}" if lat else "n/a",
                f"{lat.speedup:.1f}x" if lat and lat.speedup else "n/a",
            ]
        t.add_row(*cells)
    console.print(t)
    for d in s.handoff.decisions:  # one line per compression stage: carried forward or not, and why
        console.print(f"[{'green' if d.kept else 'yellow'}]{escape(d.line)}[/]", soft_wrap=True)
    for h in s.handoff.targets:
        console.print(f"hand-off for {escape(h.target)} ({h.device}): {escape(h.note)}", soft_wrap=True)
    for line in s.handoff.recheck:
        console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True)
    kd = s.kd
    if kd.get("message"):
        color = "green" if kd.get("helps") else "yellow"
        console.print(f"[{color}]{escape(kd['message'])}[/]")
        for tip in kd.get("suggestions", []):
            console.print(f"  - try: {escape(tip)}")
    means = s.gradcam.get("mean", {})
    if means:
        labels = {r.name: r.label for r in s.rows}
        parts = [f"{labels.get(k, k)} {fmt_score(v['spearman'])} / {fmt_score(v['iou'])}" for k, v in means.items()]
        console.print(
            f"Grad-CAM agreement with the teacher (mean Spearman / top-20% IoU, {len(s.gradcam.get('images', []))} "
            f"test images): {'; '.join(parts)}"
        )
    ran = [o.name for o in s.stages if o.status != "skipped"]
    skipped = [o.name for o in s.stages if o.status == "skipped"]
    console.print(f"stages run: {', '.join(ran) or 'none'}; skipped (unchanged): {', '.join(skipped) or 'none'}")
    if s.report:
        console.print(f"report: [bold]{escape(str(Path(s.run_dir) / s.report))}[/]")
