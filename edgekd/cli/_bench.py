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
    BenchSettings,
    benchmark,
    check_budget,
    compare_reports,
    comparison_table,
    enforce,
    load_report,
    noise_warnings,
    parse_fraction,
    regressions,
    results_table,
    write_csv,
    write_markdown,
)
from edgekd.bench._schema import OrtOptLevel, OrtProvider, Precision
from edgekd.cli._app import PANEL_BENCH, app
from edgekd.cli._errors import print_warning
from edgekd.cli._options import JsonOpt, QuietOpt, console, emit_json
from edgekd.errors import InvalidInputError

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


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidInputError(f"empty list {value!r}", "give comma-separated values, e.g. 1,8,32")
    return items


def _batches(value: str) -> list[int]:
    out = []
    for v in _split(value) or []:
        if not v.isdigit() or int(v) < 1:
            raise InvalidInputError(f"--batch needs positive integers, got {v!r}", "e.g. --batch 1,8,32")
        out.append(int(v))
    return out


@bench_app.command("run")
def run_cmd(
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
            help="Comma list of torch, ort, trt. Default: "
            "what fits each artifact; unavailable ones are skipped with a "
            "reason (asked for explicitly: exit 5).",
            rich_help_panel=W,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Comma list of cpu, cuda (default: cuda when present; engines: cuda).", rich_help_panel=W),
    ] = None,
    batch: Annotated[str, typer.Option(help="Comma list of batch sizes.", rich_help_panel=W)] = "1",
    precision: Annotated[
        Precision | None,
        typer.Option(
            help="torch: compute dtype; ONNX/engines: which file of a bundle (default: all).", rich_help_panel=W
        ),
    ] = None,
    warmup_s: Annotated[float, typer.Option(help="Minimum warm-up time.", rich_help_panel=M)] = 1.0,
    warmup_iters: Annotated[int, typer.Option(help="Minimum warm-up iterations.", rich_help_panel=M)] = 10,
    min_s: Annotated[float, typer.Option(help="Minimum timed duration.", rich_help_panel=M)] = 3.0,
    min_iters: Annotated[int, typer.Option(help="Minimum timed iterations.", rich_help_panel=M)] = 50,
    max_s: Annotated[
        float | None, typer.Option(help="Cap on the timed phase (slow models).", rich_help_panel=M)
    ] = None,
    cv_warn: Annotated[
        str, typer.Option(help="Warn when the coefficient of variation exceeds this.", rich_help_panel=M)
    ] = "10%",
    drift_warn: Annotated[
        str,
        typer.Option(
            help="Warn when the p50 of one fifth of the run differs from another's by more than this.",
            rich_help_panel=M,
        ),
    ] = "10%",  # fmt: skip
    roofline: Annotated[
        bool,
        typer.Option(
            "--roofline/--no-roofline",
            help="Measure this machine's matmul peak (~1 s) and report achieved FLOP/s against it.",
            rich_help_panel=M,
        ),
    ] = True,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads (torch and ORT intra-op; default: physical cores).", rich_help_panel=K),
    ] = None,
    channels_last: Annotated[bool, typer.Option(help="torch: NHWC memory format.", rich_help_panel=K)] = False,
    compile: Annotated[
        bool, typer.Option("--compile", help="torch: torch.compile the model.", rich_help_panel=K)
    ] = False,
    cuda_graphs: Annotated[
        bool, typer.Option(help="torch on CUDA: replay a captured CUDA graph.", rich_help_panel=K)
    ] = False,
    ort_opt_level: Annotated[
        OrtOptLevel, typer.Option(help="ONNX Runtime graph optimisation level.", rich_help_panel=K)
    ] = OrtOptLevel.ALL,
    ort_provider: Annotated[
        OrtProvider, typer.Option(help="ONNX Runtime execution provider (auto: by --device).", rich_help_panel=K)
    ] = OrtProvider.AUTO,
    json_out: JsonOpt = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write CSV.", rich_help_panel=OUT)] = None,
    markdown_out: Annotated[
        Path | None, typer.Option("--markdown", help="Also write a Markdown table.", rich_help_panel=OUT)
    ] = None,
    times: Annotated[
        bool, typer.Option("--times/--no-times", help="Keep per-iteration times in the JSON.", rich_help_panel=OUT)
    ] = True,
    baseline: Annotated[
        Path | None, typer.Option(help="Baseline JSON to compare with (p50 and p90).", rich_help_panel=G)
    ] = None,
    max_regression: Annotated[
        str, typer.Option(help="Allowed slow-down against --baseline, e.g. 10% or 0.1.", rich_help_panel=G)
    ] = "10%",
    min_abs_ms: Annotated[
        float, typer.Option(help="A regression must also exceed this many ms (noise floor).", rich_help_panel=G)
    ] = 0.05,
    budget_ms: Annotated[
        float | None, typer.Option(help="Fail (exit 7) when a p90 latency exceeds this.", rich_help_panel=G)
    ] = None,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Skip the bundle hash check (a warning is printed).", rich_help_panel=OUT),
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Benchmark artifacts on backends, devices and batch sizes; exit 7 when a gate fails.

    Example: edgekd bench runs/teacher runs/student --batch 1,32 --json bench.json --baseline base.json --max-regression 10%
    """

    for path in (json_out, csv_out, markdown_out):
        check_report_path(path)
    if no_verify:
        print_warning("--no-verify: bundle files are run without checking their sha256 against the manifest")
    settings = _settings(
        BenchSettings,
        warmup_s=warmup_s,
        warmup_iters=warmup_iters,
        min_s=min_s,
        min_iters=min_iters,
        max_s=max_s,
        cv_warn=parse_fraction(cv_warn),
        drift_warn=parse_fraction(drift_warn),
        threads=threads,
        channels_last=channels_last,
        compile=compile,
        cuda_graphs=cuda_graphs,
        ort_opt_level=ort_opt_level,
        ort_provider=ort_provider,
        roofline=roofline,
        keep_times=times,
    )
    report = benchmark(
        artifacts,
        backends=_split(backend),
        devices=_split(device),
        batches=_batches(batch),
        precision=precision.value if precision else None,
        settings=settings,
        progress=not quiet,
        verify=not no_verify,
    )
    show = json_out != "-"
    if show:
        console.print(results_table(report))
        for warning in noise_warnings(report):
            console.print(f"[yellow]warning:[/] {warning}")
    _write_outputs(report, json_out, csv_out, markdown_out)
    _gate(report, baseline, parse_fraction(max_regression), min_abs_ms, budget_ms, show)


def _settings(model: Any, **values: Any) -> Any:
    """Validate the method/runtime flags (e.g. ``--min-iters 0``) into a one-line error, exit 3."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err.get("loc") else "a setting"
        raise InvalidInputError(f"invalid {flag}: {err['msg']}") from None


def _write_outputs(report: Any, json_out: str | None, csv_out: Path | None, markdown_out: Path | None) -> None:

    emit_json(report, json_out)
    if csv_out is not None:
        write_csv(report, csv_out)
    if markdown_out is not None:
        write_markdown(report, markdown_out)


def _gate(
    report: Any, baseline: Path | None, max_regression: float, min_abs_ms: float, budget_ms: float | None, show: bool
) -> None:
    """Compare with the baseline and the budget; print what failed; raise RegressionError (exit 7)."""
    regressed = []
    if baseline is not None:
        comps = compare_reports(load_report(baseline), report, max_regression=max_regression, min_abs_ms=min_abs_ms)
        if show:
            console.print(comparison_table(comps, title=f"against {baseline} (B/A > 1 is slower)"))
        regressed = regressions(comps)
    over = check_budget(report, budget_ms) if budget_ms is not None else []
    enforce(regressed, over, max_regression=max_regression, min_abs_ms=min_abs_ms)


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
) -> None:
    """Side-by-side p50/p90 of two benchmark reports with B/A ratios; optionally a regression gate.

    Example: edgekd bench compare base.json new.json --max-regression 10%
    """

    threshold = parse_fraction(max_regression) if max_regression is not None else 0.10
    comps = compare_reports(load_report(base), load_report(new), max_regression=threshold, min_abs_ms=min_abs_ms)
    if json_out != "-":
        console.print(comparison_table(comps, title=f"A = {base}, B = {new} (B/A > 1 is slower)"))
    emit_json([c.model_dump() for c in comps], json_out)
    if max_regression is not None:
        enforce(regressions(comps), [], max_regression=threshold, min_abs_ms=min_abs_ms)
