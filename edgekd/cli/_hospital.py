"""`edgekd label`: learning from hospital data that has few labels and changes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_DATA_OPS, app
from edgekd.cli._options import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    console,
    emit_json,
)
from edgekd.distill import DeviceName, label_images

_DATA_HELP = "Images: folder:DIR (PNG/JPEG/DICOM), dicom:DIR[,window=C/W], or a data spec whose labels are ignored."
SplitOpt = Annotated[str, typer.Option(help="Split of a labelled data spec: train | val | test | all.")]


@app.command(rich_help_panel=PANEL_DATA_OPS)
def label(
    teachers: Annotated[list[Path], typer.Argument(help="Model directories predicting the same classes.")],
    data: Annotated[str, typer.Option("--data", "-d", help=_DATA_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Soft-label file: .npz or .csv.")],
    teacher_weight: Annotated[
        list[float] | None, typer.Option(help="One per teacher, in order (normalised; default equal).")
    ] = None,
    min_confidence: Annotated[
        float, typer.Option(help="Mark images whose averaged top-1 probability is below this as abstained.")
    ] = 0.0,
    split: SplitOpt = "train",
    batch_size: Annotated[int, typer.Option()] = 256,
    device: DeviceOpt = DeviceName.AUTO,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    json_out: JsonOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Soft labels (class probabilities) for unlabelled images from one or several teachers.

    The file is a data source: train or distil on it with --data softlabels:FILE (images matched by content hash).

    Example: edgekd label runs/teacher_a runs/teacher_b --data folder:/data/unlabeled --min-confidence 0.8 --out labels.npz
    """
    check_report_path(json_out)
    report = label_images([str(t) for t in teachers], data, out, weights=teacher_weight, min_confidence=min_confidence,
                          split=split, batch_size=batch_size, device=device, overwrite=overwrite,
                          progress=not quiet)  # fmt: skip
    if not quiet and json_out != "-":
        agree = report.agreement
        console.print(f"{report.images} images labelled by {len(report.teachers)} teacher(s); {report.abstained} "
                      f"abstained (top-1 probability < {report.min_confidence:g}); mean confidence "
                      f"{report.mean_confidence:.3f}; all teachers agree on {agree['all']:.1%}; soft labels: "
                      f"[bold]{out}[/] (use --data softlabels:{out})")  # fmt: skip
        t = Table(title="labelled images per class (abstained excluded)")
        t.add_column("class")
        t.add_column("images", justify="right")
        for name, n in report.class_counts.items():
            t.add_row(name, str(n))
        console.print(t)
    emit_json(report.to_json(), json_out)
