"""Runtimes side by side: one row per (model file, precision, batch), one p50 column per runtime, the fastest
marked; and the record of the fastest runtime in a bundle, which ``edgekd predict`` / ``serve`` default to.

A bundle's files of one precision run on different runtimes under different names (``model.onnx`` on ort,
``model.xml`` on openvino, ``model.pte`` on executorch), so rows are keyed by the bundle, the precision, the
device and the batch. "Fastest" compares p50 latencies measured in the same run, with the same threads.

Example:
    >>> console.print(runtimes_table(report))
    >>> record_fastest("bundles/student", report)   # manifest.extra.fastest_runtime
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.table import Table

from edgekd.bench._report import cpu_line
from edgekd.bench._schema import BenchReport, BenchResult
from edgekd.errors import ArtifactError
from edgekd.modeldir import atomic_write_text

__all__ = ["fastest_by_batch", "runtimes_table", "record_fastest", "RUNTIME_BACKENDS"]

RUNTIME_BACKENDS = ("ort", "openvino", "executorch", "trt")  # backends that run a bundle's files


def _groups(report: BenchReport) -> dict[tuple[str, str, str, int], dict[str, BenchResult]]:
    out: dict[tuple[str, str, str, int], dict[str, BenchResult]] = defaultdict(dict)
    for r in report.results:
        if r.backend in RUNTIME_BACKENDS:
            out[(r.artifact, r.precision, r.device, r.batch)].setdefault(r.backend, r)
    return out


def fastest_by_batch(report: BenchReport) -> list[dict[str, Any]]:
    """Per (artifact, precision, device, batch) measured on two or more runtimes: each p50 and the fastest."""
    rows = []
    for (artifact, precision, device, batch), by in _groups(report).items():
        if len(by) < 2:
            continue
        best = min(by.values(), key=lambda r: r.stats.p50_ms)
        rows.append(
            {
                "artifact": artifact,
                "precision": precision,
                "device": device,
                "batch": batch,
                "p50_ms": {b: r.stats.p50_ms for b, r in by.items()},
                "fastest": best.backend,
                "files": {b: Path(r.model.file or "").name for b, r in by.items()},
            }
        )
    return rows


def runtimes_table(report: BenchReport, title: str = "runtimes side by side (p50 ms, * fastest)") -> Table | None:
    """The side-by-side table, or None when no configuration ran on two runtimes."""
    rows = fastest_by_batch(report)
    if not rows:
        return None
    backends = [b for b in RUNTIME_BACKENDS if any(b in r["p50_ms"] for r in rows)]
    env = report.environment
    t = Table(title=title, caption=f"{cpu_line(env)}; {env.cpu.threads_used or '?'} threads, same run")
    for col in ("artifact", "prec", "device", "batch", *backends, "fastest"):
        t.add_column(col, justify="right" if col in backends or col == "batch" else "left")
    for r in rows:
        cells = []
        for b in backends:
            v = r["p50_ms"].get(b)
            cells.append("-" if v is None else (f"[bold green]{v:.3f} *[/]" if b == r["fastest"] else f"{v:.3f}"))
        t.add_row(Path(r["artifact"]).name, r["precision"], r["device"], str(r["batch"]), *cells, r["fastest"])
    return t


def record_fastest(bundle: str | os.PathLike, report: BenchReport) -> dict[str, Any]:
    """Store the fastest runtime per batch of ``bundle`` (measured in ``report``) as ``manifest.extra.fastest_runtime``.

    ``edgekd predict`` and ``edgekd serve`` run the bundle on the runtime fastest at batch 1 (predict) or at
    the largest batch measured (serve) unless ``--runtime`` says otherwise. The manifest is rewritten
    atomically; it is not among the hashed files, so the bundle still verifies.

    Raises:
        ArtifactError: ``bundle`` is not a bundle or the report holds no side-by-side result of it.
    """
    root = Path(bundle)
    path = root / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"{bundle} is not a bundle", "pass a directory written by `edgekd export`")
    same = [r for r in fastest_by_batch(report) if Path(r["artifact"]).resolve() == root.resolve()]
    if not same:
        raise ArtifactError(
            f"the benchmark has no result of {bundle} on two or more runtimes",
            "benchmark it with --backend ort,openvino,executorch",
        )
    record = {
        "by_batch": {
            str(r["batch"]): {"runtime": r["fastest"], "precision": r["precision"], "p50_ms": r["p50_ms"]} for r in same
        },
        "cpu": report.environment.cpu.model,
        "isa": report.environment.cpu.isa,
        "threads": report.environment.cpu.threads_used,
        "measured": report.environment.timestamp,
    }
    manifest = json.loads(path.read_text())
    manifest.setdefault("extra", {})["fastest_runtime"] = record
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return record
