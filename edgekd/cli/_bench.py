"""`edgekd bench ARTIFACT...` (alias of `edgekd bench run`) and `edgekd bench compare A.json B.json`.

``bench`` is a Typer sub-app whose group treats a first argument that is not a sub-command as an artifact
and routes it to ``run``, so both spellings of the issue work: ``edgekd bench runs/student`` and
``edgekd bench compare base.json new.json``. (An artifact literally named ``run`` or ``compare`` needs a
path prefix: ``./compare``.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from edgekd._io import check_report_path
from edgekd.bench import (
    BenchConfig,
    check_gate,
    compare_reports,
    comparison_table,
    enforce,
    load_report,
    noise_warnings,
    parse_fraction,
    regressions,
    results_table,
    run_benchmark,
    write_csv,
    write_markdown,
)
from edgekd.bench._runtimes import fastest_by_batch, record_fastest, runtimes_table
from edgekd.bench._schema import ComputePrecision, OrtOptLevel, OrtProvider
from edgekd.cli._app import PANEL_BENCH, app
from edgekd.cli._errors import print_warning
from edgekd.cli._options import (
    ConfigOpt,
    JsonOpt,
    QuietOpt,
    ReportOverwriteOpt,
    cli_config,
    console,
    default_text,
    emit_json,
)

__all__ = ["bench_app"]

W, M, K, OUT, G = "What to run", "Method", "Runtime options", "Output", "CI gate"


class _BenchGroup(TyperGroup):
    """Routes ``edgekd bench ARTIFACT...`` (and ``edgekd bench --flag ...``) to the ``run`` sub-command."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


bench_app = typer.Typer(
    name="bench",
    cls=_BenchGroup,
    help="Latency and throughput of model directories, ONNX files, bundles and TensorRT engines, with a CI gate.\n\n"
    "Example: edgekd bench runs/teacher runs/student runs/student-int8.onnx --batch 1,32 --json bench.json",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(bench_app, name="bench", rich_help_panel=PANEL_BENCH)


# Options whose name is not their BenchConfig field.
_FIELDS = {
    "backend": "backends",
    "device": "devices",
    "batch": "batches",
    "times": "keep_times",
    "no_verify": "verify",
    "baseline": "gate.baseline",
    "max_regression": "gate.max_regression",
    "min_abs_ms": "gate.min_abs_ms",
    "budget_ms": "gate.budget_ms",
}


@bench_app.command("run")
def run_cmd(
    ctx: typer.Context,
    artifacts: Annotated[
        list[str],
        typer.Argument(
            help="Model directories, ONNX files, bundles (BUNDLE or "
            "BUNDLE/NAME.onnx), TensorRT engines; the first is the speedup "
            "reference.",
            show_default=False,
        ),
    ],
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            "-b",
            help="Comma list of torch, ort, trt, openvino, executorch. Default: "
            "what fits each artifact; unavailable ones are skipped with a "
            "reason (asked for explicitly: exit 5).",
            rich_help_panel=W,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Comma list of cpu, cuda (default: cuda when present; engines: cuda).", rich_help_panel=W),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(help=f"Comma list of batch sizes {default_text(BenchConfig, 'batches')}.", rich_help_panel=W),
    ] = None,
    precision: Annotated[
        ComputePrecision | None,
        typer.Option(
            help="torch: compute dtype; ONNX/engines: which file of a bundle (default: all).", rich_help_panel=W
        ),
    ] = None,
    warmup_s: Annotated[
        float | None,
        typer.Option(help=f"Minimum warm-up time {default_text(BenchConfig, 'warmup_s')}.", rich_help_panel=M),
    ] = None,
    warmup_iters: Annotated[
        int | None,
        typer.Option(
            help=f"Minimum warm-up iterations {default_text(BenchConfig, 'warmup_iters')}.", rich_help_panel=M
        ),
    ] = None,
    min_s: Annotated[
        float | None,
        typer.Option(help=f"Minimum timed duration {default_text(BenchConfig, 'min_s')}.", rich_help_panel=M),
    ] = None,
    min_iters: Annotated[
        int | None,
        typer.Option(help=f"Minimum timed iterations {default_text(BenchConfig, 'min_iters')}.", rich_help_panel=M),
    ] = None,
    max_s: Annotated[
        float | None, typer.Option(help="Cap on the timed phase (slow models).", rich_help_panel=M)
    ] = None,
    cv_warn: Annotated[
        str | None,
        typer.Option(
            help=f"Warn when the coefficient of variation exceeds this {default_text(BenchConfig, 'cv_warn')}.",
            rich_help_panel=M,
        ),
    ] = None,
    drift_warn: Annotated[
        str | None,
        typer.Option(
            help="Warn when the p50 of one fifth of the run differs from another's by more than this "
            f"{default_text(BenchConfig, 'drift_warn')}.",
            rich_help_panel=M,
        ),
    ] = None,
    roofline: Annotated[
        bool | None,
        typer.Option(
            "--roofline/--no-roofline",
            help="Measure this machine's matmul peak (~1 s) and report achieved FLOP/s against it (default: on).",
            rich_help_panel=M,
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads (torch and ORT intra-op; default: physical cores).", rich_help_panel=K),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last", help="torch: NHWC memory format (default: off).", rich_help_panel=K
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile", help="torch: torch.compile the model (default: off).", rich_help_panel=K
        ),
    ] = None,
    cuda_graphs: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="torch on CUDA: replay a captured CUDA graph (default: off).",
            rich_help_panel=K,
        ),
    ] = None,
    ort_opt_level: Annotated[
        OrtOptLevel | None,
        typer.Option(
            help=f"ONNX Runtime graph optimisation level {default_text(BenchConfig, 'ort_opt_level')}.",
            rich_help_panel=K,
        ),
    ] = None,
    ort_provider: Annotated[
        OrtProvider | None,
        typer.Option(help="ONNX Runtime execution provider (default auto: by --device).", rich_help_panel=K),
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    overwrite: ReportOverwriteOpt = False,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write CSV.", rich_help_panel=OUT)] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Also write a Markdown table.", rich_help_panel=OUT)
    ] = None,
    times: Annotated[
        bool | None,
        typer.Option(
            "--times/--no-times", help="Keep per-iteration times in the JSON (default: on).", rich_help_panel=OUT
        ),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="Baseline JSON to compare with (p50 and p90).", rich_help_panel=G)
    ] = None,
    max_regression: Annotated[
        str | None,
        typer.Option(
            help=f"Allowed slow-down against --baseline, e.g. 10% or 0.1 {default_text(BenchConfig, 'gate.max_regression')}.",
            rich_help_panel=G,
        ),
    ] = None,
    min_abs_ms: Annotated[
        float | None,
        typer.Option(
            help=f"A regression must also exceed this many ms (noise floor) {default_text(BenchConfig, 'gate.min_abs_ms')}.",
            rich_help_panel=G,
        ),
    ] = None,
    budget_ms: Annotated[
        float | None, typer.Option(help="Fail (exit 7) when a p90 latency exceeds this.", rich_help_panel=G)
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Skip the bundle hash check (a warning is printed).", rich_help_panel=OUT),
    ] = False,
    record: Annotated[
        bool,
        typer.Option(
            "--record",
            help="Store the fastest runtime per batch in each bundle (predict/serve default).",
            rich_help_panel=OUT,
        ),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Benchmark artifacts on backends, devices and batch sizes; exit 7 when a gate fails.

    Flags override the --config YAML file (its keys are the fields of edgekd.bench.BenchConfig, the gate under
    gate:; a bench: section is read when present), which overrides the defaults.

    Example: edgekd bench runs/teacher runs/student --batch 1,32 --json bench.json --baseline base.json --max-regression 10%
    """

    for flag, path in (("--json", json_out), ("--csv", csv_out), ("--markdown", markdown_out)):
        check_report_path(path, flag, overwrite=overwrite, inputs=(baseline, config))
    flags = {
        "backend": backend,
        "device": device,
        "batch": batch,
        "precision": precision,
        "warmup_s": warmup_s,
        "warmup_iters": warmup_iters,
        "min_s": min_s,
        "min_iters": min_iters,
        "max_s": max_s,
        "cv_warn": cv_warn,
        "drift_warn": drift_warn,
        "roofline": roofline,
        "threads": threads,
        "channels_last": channels_last,
        "compile": compile,
        "cuda_graphs": cuda_graphs,
        "ort_opt_level": ort_opt_level,
        "ort_provider": ort_provider,
        "times": times,
        "no_verify": not no_verify,
        "baseline": str(baseline) if baseline else None,
        "max_regression": max_regression,
        "min_abs_ms": min_abs_ms,
        "budget_ms": budget_ms,
    }
    cfg = cli_config(ctx, BenchConfig, config, flags, _FIELDS, section="bench")
    if not cfg.verify:
        print_warning("--no-verify: bundle files are run without checking their sha256 against the manifest")
    report = run_benchmark(artifacts, cfg, progress=not quiet)
    show = json_out != "-"
    if show:
        console.print(results_table(report))
        if (side := runtimes_table(report)) is not None:
            console.print(side)
        for warning in noise_warnings(report):
            console.print(f"[yellow]warning:[/] {warning}")
    _write_outputs(report, json_out, csv_out, markdown_out)
    for bundle in {r.artifact for r in report.results} if record else ():
        if (Path(bundle) / "manifest.json").is_file() and any(
            b.get("artifact") == bundle for b in fastest_by_batch(report)
        ):
            record_fastest(bundle, report)
    gate = check_gate(report, cfg.gate, enforce_it=False)
    if show and cfg.gate.baseline is not None:
        title = f"against {cfg.gate.baseline} (B/A > 1 is slower)"
        console.print(comparison_table(gate.comparisons, title=title))
    enforce(gate.regressed, gate.over_budget, max_regression=cfg.gate.max_regression, min_abs_ms=cfg.gate.min_abs_ms)


def _write_outputs(report: Any, json_out: str | None, csv_out: Path | None, markdown_out: Path | None) -> None:

    emit_json(report, json_out)
    if csv_out is not None:
        write_csv(report, csv_out)
    if markdown_out is not None:
        write_markdown(report, markdown_out)


@bench_app.command("compare")
def compare_cmd(
    base: Annotated[Path, typer.Argument(help="Baseline report (A), written by `edgekd bench --json`.")],
    new: Annotated[Path, typer.Argument(help="Report to compare (B).")],
    max_regression: Annotated[
        str | None,
        typer.Option(
            help="Gate: exit 7 when B is slower than A by more than this (and --min-abs-ms) on p50 or p90.",
            rich_help_panel=G,
        ),
    ] = None,
    min_abs_ms: Annotated[float, typer.Option(help="Absolute noise floor for a regression.", rich_help_panel=G)] = 0.05,
    json_out: JsonOpt = None,
    overwrite: ReportOverwriteOpt = False,
) -> None:
    """Side-by-side p50/p90 of two benchmark reports with B/A ratios; optionally a regression gate.

    Example: edgekd bench compare base.json new.json --max-regression 10%
    """

    check_report_path(json_out, overwrite=overwrite, inputs=(base, new))
    threshold = parse_fraction(max_regression) if max_regression is not None else 0.10
    comps = compare_reports(load_report(base), load_report(new), max_regression=threshold, min_abs_ms=min_abs_ms)
    if json_out != "-":
        console.print(comparison_table(comps, title=f"A = {base}, B = {new} (B/A > 1 is slower)"))
    emit_json([c.model_dump() for c in comps], json_out)
    if max_regression is not None:
        enforce(regressions(comps), [], max_regression=threshold, min_abs_ms=min_abs_ms)
