"""Rendering a :class:`BenchReport`: the Rich table, CSV, Markdown, and reading/writing the JSON.

Speedups are derived, not stored: each result is compared with the first artifact's result of the same
``(backend, device, batch)`` as ``reference p50 / p50`` (so > 1 is faster than the first artifact).

Example:
    >>> console.print(results_table(report))
    >>> write_csv(report, "bench.csv"); write_markdown(report, "bench.md")
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.table import Table

from edgekd._cpu import INT8_FLAGS
from edgekd.bench._schema import SCHEMA_VERSION, BenchReport, BenchResult, Comparison
from edgekd.errors import ArtifactError
from edgekd.modeldir import atomic_write_text, read_json, validate_file

__all__ = [
    "noise_warnings",
    "speedups",
    "results_table",
    "comparison_table",
    "write_json",
    "load_report",
    "to_csv",
    "write_csv",
    "to_markdown",
    "write_markdown",
]

_CSV_FIELDS = [
    "status",
    "artifact",
    "name",
    "backend",
    "device",
    "batch",
    "precision",
    "n",
    "mean_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "cv",
    "throughput",
    "speedup",
    "rss_peak_bytes",
    "cuda_peak_allocated_bytes",
    "size_bytes",
    "params",
    "macs",
    "achieved_gflops",
    "fraction_of_peak",
    "note",
]


def cpu_line(env) -> str:
    """``AMD EPYC (x86-avx2: avx2 fma)``: the CPU with its class and the flags that decide INT8 speed."""
    flags = " ".join(f for f, on in env.cpu.flags.items() if on and f in INT8_FLAGS)
    return f"{env.cpu.model} ({env.cpu.isa or 'unknown class'}: {flags or 'no SIMD flags'})"


def speedups(report: BenchReport) -> list[float | None]:
    """Per result: the first artifact's p50 at the same (backend, device, batch) over this p50, or None."""
    first = report.artifacts[0] if report.artifacts else (report.results[0].artifact if report.results else None)
    ref: dict[tuple[str, str, int], float] = {}
    for r in report.results:
        if r.artifact == first:
            ref.setdefault((r.backend, r.device, r.batch), r.stats.p50_ms)
    out: list[float | None] = []
    for r in report.results:
        base = ref.get((r.backend, r.device, r.batch))
        out.append(base / r.stats.p50_ms if base is not None and r.stats.p50_ms > 0 else None)
    return out


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def _mb(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def _note(r: BenchResult) -> str:
    return "; ".join(r.warnings)


def _roof(r: BenchResult) -> str:
    rf = r.roofline
    if rf.achieved_gflops is None:
        return "-"
    frac = f" ({100 * rf.fraction_of_peak:.1f}%)" if rf.fraction_of_peak is not None else ""
    return f"{rf.achieved_gflops:.1f}{frac}"


def results_table(report: BenchReport, title: str = "edgekd bench") -> Table:
    """One row per result and per skipped configuration, with speedups against the first artifact."""
    env = report.environment
    caption = f"{cpu_line(env)}; {env.cpu.threads_used or '?'} threads" + (f"; {env.gpus[0].name}" if env.gpus else "")
    t = Table(title=title, caption=caption)
    for col in (
        "artifact",
        "backend",
        "device",
        "batch",
        "prec",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "CV %",
        "samples/s",
        "speedup",
        "RSS MB",
        "GFLOP/s (% peak)",
        "note",
    ):
        t.add_column(col, justify="left" if col in ("artifact", "backend", "device", "prec", "note") else "right")
    for r, s in zip(report.results, speedups(report)):
        cv = f"{100 * r.stats.cv:.1f}" + ("!" if r.stats.high_cv else "")
        t.add_row(
            r.name,
            r.backend,
            r.device,
            str(r.batch),
            r.precision,
            _ms(r.stats.p50_ms),
            _ms(r.stats.p90_ms),
            _ms(r.stats.p99_ms),
            cv,
            f"{r.stats.throughput:,.0f}",
            "-" if s is None else f"{s:.2f}x",
            _mb(r.memory.rss_peak_bytes),
            _roof(r),
            _note(r),
        )
    for k in report.skipped:
        t.add_row(
            k.name,
            k.backend,
            k.device,
            "-" if k.batch is None else str(k.batch),
            k.precision or "-",
            *["-"] * 8,
            f"[yellow]skipped: {k.reason}[/]",
        )
    return t


def comparison_table(comparisons: list[Comparison], title: str = "baseline comparison") -> Table:
    """Side-by-side p50/p90 of two runs with ``new / base`` ratios; regressions in red."""
    t = Table(title=title)
    for col in (
        "artifact",
        "backend",
        "device",
        "batch",
        "prec",
        "p50 A",
        "p50 B",
        "p50 B/A",
        "p90 A",
        "p90 B",
        "p90 B/A",
        "status",
    ):
        t.add_column(col, justify="left" if col in ("artifact", "backend", "device", "prec", "status") else "right")
    style = {"regressed": "bold red", "improved": "green", "new": "yellow", "missing": "yellow"}
    for c in comparisons:
        status = c.status + (f" ({', '.join(c.regressed_on)})" if c.regressed_on else "")
        t.add_row(
            c.name,
            c.backend,
            c.device,
            str(c.batch),
            c.precision,
            _ms(c.base_p50_ms),
            _ms(c.new_p50_ms),
            "-" if c.p50_ratio is None else f"{c.p50_ratio:.3f}",
            _ms(c.base_p90_ms),
            _ms(c.new_p90_ms),
            "-" if c.p90_ratio is None else f"{c.p90_ratio:.3f}",
            f"[{style[c.status]}]{status}[/]" if c.status in style else status,
        )
    return t


def write_json(report: BenchReport, path: str | Path) -> None:
    """Write the report atomically as indented JSON."""
    atomic_write_text(path, report.model_dump_json(indent=2) + "\n")


def load_report(path: str | Path) -> BenchReport:
    """Read and validate a report written by ``--json``.

    Raises:
        ArtifactError: missing file, invalid JSON, a newer schema version or a schema mismatch.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"benchmark report {p} does not exist", "write one with `edgekd bench ... --json FILE`")
    hint = "pass a file written by `edgekd bench --json`"
    raw = read_json(p, hint)
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ArtifactError(f"{p} uses report schema {version}, newer than this edgekd reads", "upgrade edgekd")
    if not isinstance(raw, dict) or "environment" not in raw:
        raise ArtifactError(f"{p} is not an edgekd benchmark report (no environment section)", hint)
    return validate_file(BenchReport, raw, p, hint)


def _rows(report: BenchReport) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for r, s in zip(report.results, speedups(report)):
        rows.append(
            {
                "status": "ok",
                "artifact": r.artifact,
                "name": r.name,
                "backend": r.backend,
                "device": r.device,
                "batch": r.batch,
                "precision": r.precision,
                **r.stats.model_dump(include=set(_CSV_FIELDS)),
                "speedup": s,
                "rss_peak_bytes": r.memory.rss_peak_bytes,
                "cuda_peak_allocated_bytes": r.memory.cuda_peak_allocated_bytes,
                "size_bytes": r.model.size_bytes,
                "params": r.model.params,
                "macs": r.model.macs,
                "achieved_gflops": r.roofline.achieved_gflops,
                "fraction_of_peak": r.roofline.fraction_of_peak,
                "note": "; ".join(r.warnings),
            }
        )
    for k in report.skipped:
        rows.append(
            {
                "status": "skipped",
                "artifact": k.artifact,
                "name": k.name,
                "backend": k.backend,
                "device": k.device,
                "batch": k.batch,
                "precision": k.precision,
                "note": k.reason,
            }
        )
    return rows


def to_csv(report: BenchReport) -> str:
    """One CSV row per result (``status=ok``) and per skipped configuration (``status=skipped``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in _rows(report):
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def write_csv(report: BenchReport, path: str | Path) -> None:

    atomic_write_text(path, to_csv(report))


def to_markdown(report: BenchReport) -> str:
    """A GitHub-flavoured Markdown table with the environment line above it."""
    env = report.environment
    lines = [
        f"**edgekd bench** — {env.timestamp}, {cpu_line(env)}, {env.cpu.threads_used or '?'} threads"
        + (f", {env.gpus[0].name}" if env.gpus else "")
        + f", torch {env.versions.get('torch', '?')}, onnxruntime {env.versions.get('onnxruntime', '?')}",
        "",
    ]
    head = [
        "artifact",
        "backend",
        "device",
        "batch",
        "precision",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "CV %",
        "samples/s",
        "speedup",
        "note",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r, s in zip(report.results, speedups(report)):
        cells = [
            r.name,
            r.backend,
            r.device,
            str(r.batch),
            r.precision,
            _ms(r.stats.p50_ms),
            _ms(r.stats.p90_ms),
            _ms(r.stats.p99_ms),
            f"{100 * r.stats.cv:.1f}",
            f"{r.stats.throughput:,.0f}",
            "-" if s is None else f"{s:.2f}x",
            "; ".join(r.warnings),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    for k in report.skipped:
        cells = [
            k.name,
            k.backend,
            k.device,
            "-" if k.batch is None else str(k.batch),
            k.precision or "-",
            *["-"] * 6,
            f"skipped: {k.reason}",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(report: BenchReport, path: str | Path) -> None:

    atomic_write_text(path, to_markdown(report))


def report_json(report: BenchReport) -> dict:
    """The report as a plain dict (what ``--json`` writes)."""
    return json.loads(report.model_dump_json())


def noise_warnings(report: BenchReport) -> list[str]:
    """Plain-text warnings about figures that will not repeat (high CV, the machine's speed drifting).

    On a small machine whose every core ran the model, the drift warning suggests leaving one core free.
    """
    out, settings = [], report.settings
    noisy = [r for r in report.results if r.stats.high_cv]
    if noisy:
        out.append(
            f"{len(noisy)} result(s) vary by more than {100 * settings.cv_warn:.0f}% (CV): the machine is busy "
            "or the run too short; trust p50 over the mean, or re-run on a quiet machine with a larger --min-s"
        )
    drifting = [r for r in report.results if r.stats.high_drift]
    if drifting:
        cpu = report.environment.cpu
        cores, used = cpu.logical_cores or 1, cpu.threads_used or 0
        busy = 1 < cores <= 4 and used >= cores  # a small machine with no core left for the system
        hint = f"; all {cores} cores were in use, try --threads {cores - 1}" if busy else ""
        out.append(
            f"the machine's speed changed during {len(drifting)} result(s) (p50 of one fifth of the run vs "
            f"another > {100 * settings.drift_warn:.0f}%): these figures will not repeat; leave a core free for "
            f"the system or measure on a quieter machine{hint}"
        )
    return out
