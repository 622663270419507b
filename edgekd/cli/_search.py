"""`edgekd search` and `edgekd device profile`: the most accurate student under a latency budget (thin)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from edgekd._io import check_report_path
from edgekd.cli._app import PANEL_BENCH, PANEL_PIPELINE, app
from edgekd.cli._options import NOT_CONFIG, ConfigOpt, JsonOpt, QuietOpt, cli_config, config_option, console, emit_json
from edgekd.cli._render import fmt
from edgekd.errors import InvalidInputError
from edgekd.search import (
    ArrayTask,
    Engine,
    Percentile,
    ProfileSettings,
    SearchConfig,
    SearchResult,
    fit_predictor,
    load_space,
    profile_device,
    run_search,
    run_search_task,
    write_table,
)

S, B, R = "Search", "Budget", "Run"
# Options whose name is not their SearchConfig field.
_FIELDS = {
    "budget_ms": "budget_ms",
    "backend": "backends",
    "space": "space",
    "time_limit": "time_limit_s",
    "seed": "train.seed",
    "threads": "profile.threads",
}


def _opt(path: str, help: str, panel: str, *decls: str, **kwargs: object) -> object:
    return config_option(*decls, model=SearchConfig, path=path, help=help, rich_help_panel=panel, **kwargs)


@app.command(rich_help_panel=PANEL_PIPELINE)
def search(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="Search directory (re-running resumes it).")],
    data: Annotated[str | None, _opt("data", "Data spec.", S, "--data", "-d")] = None,
    teacher: Annotated[str | None, _opt("teacher", "Teacher model directory (or onnx:FILE).", S, "--teacher")] = None,
    budget_ms: Annotated[
        float | None, _opt("budget_ms", "Latency budget of one batch, in ms.", B, "--budget-ms")
    ] = None,
    batch: Annotated[int | None, _opt("batch", "Batch size the budget is for.", B, "--batch")] = None,
    percentile: Annotated[Percentile | None, _opt("percentile", "Percentile the budget bounds.", B)] = None,
    backend: Annotated[
        str | None, _opt("backends", "Runtimes: ort,openvino,executorch (default: the space's).", B, "--backend")
    ] = None,
    target: Annotated[str | None, _opt("target", "INT8 quantization target (edgekd quantize --help).", B)] = None,
    space: Annotated[
        Path | None, typer.Option("--space", help="YAML file narrowing or extending the space.", rich_help_panel=S)
    ] = None,
    device_table: Annotated[
        str | None, _opt("device_table", "Latency table from `edgekd device profile` on the target.", B)
    ] = None,
    time_limit: Annotated[
        str | None, _opt("time_limit_s", "Stop starting trainings after this long (30m, 1h).", R, "--time-limit")
    ] = None,
    seed: Annotated[int | None, _opt("train.seed", "Random seed.", R, "--seed")] = None,
    engine: Annotated[
        Engine | None, _opt("engine", "Who trains the candidates: local (in sequence) | ray (Ray Tune ASHA).", R)
    ] = None,
    rung: Annotated[
        int | None,
        typer.Option("--rung", help="Array job: train only rung R's --task (0-based).", rich_help_panel="Array jobs"),
    ] = None,
    task: Annotated[
        int | None,
        typer.Option(
            "--task",
            help="Array job: which architecture of --rung (e.g. $SLURM_ARRAY_TASK_ID); then stop.",
            rich_help_panel="Array jobs",
        ),
    ] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --json report.", rich_help_panel="Output")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Find the most accurate student that meets a latency budget measured on this device.

    Every candidate (zoo family x width x depth x precision x runtime) is timed with random weights first; only
    those within the budget are distilled from the teacher (successive halving); the winner is pruned to the
    budget, quantized or exported with parity checks, and timed again. Writes DIR/search.json, DIR/model,
    DIR/bundle, DIR/report.html and DIR/pareto.png.

    Example: edgekd search --data pneumoniamnist --teacher runs/teacher --budget-ms 0.1 --batch 1 --out runs/search

    Example: edgekd search ... --rung 0 --task $SLURM_ARRAY_TASK_ID   (one job of an array: examples/slurm_search.sh)

    Example: edgekd search --teacher runs/teacher --budget-ms 1.5 --batch 32 --space examples/search-space.yaml
    --device-table jetson.json --time-limit 30m --out runs/search32
    """
    check_report_path(json_out, overwrite=overwrite)
    flags = {k: v for k, v in locals().items() if k not in NOT_CONFIG | {"ctx", "rung", "task"}}
    cfg = cli_config(ctx, SearchConfig, config, flags, _FIELDS, section="budget")
    say = (lambda _m: None) if quiet or json_out == "-" else (lambda m: console.print(m, highlight=False))
    if (rung is None) != (task is None):
        raise InvalidInputError("--rung and --task go together", "e.g. --rung 0 --task $SLURM_ARRAY_TASK_ID")
    if rung is not None and task is not None:
        done = run_search_task(cfg, out, ArrayTask(rung=rung, index=task), progress=not quiet, log=say)
        emit_json([t.model_dump() for t in done], json_out)
        return
    result = run_search(cfg, out, progress=not quiet, log=say)
    if not quiet and json_out != "-":
        _render(result, out)
    emit_json(result, json_out)


def _render(result: SearchResult, out: Path) -> None:
    t = Table(title=f"search: {result.budget_ms:g} ms {result.percentile} at batch {result.batch}")
    for col in ("candidate", "ms", "latency", "fits", "epochs", "val auroc"):
        t.add_column(col, justify="right")
    for r in sorted(result.candidates, key=lambda r: r.latency_ms or 0.0):
        if r.deployed or not r.fits:
            t.add_row(
                r.label,
                fmt(r.latency_ms),
                r.latency_source,
                "yes" if r.fits else "no",
                fmt(r.trained_epochs or None),
                fmt(r.val.get("auroc")),
            )
    console.print(t)
    c = result.chosen
    if c is not None:
        verdict = "[green]meets[/]" if c.meets_budget else "[red]misses[/]"
        console.print(
            f"chosen {c.label}: measured again {c.measured_ms:.4g} ms ({verdict} the budget), "
            f"test auroc {fmt(c.test.get('auroc'))}; bundle {c.bundle}"
        )
    console.print(f"report: {out / 'report.html'}")


device_app = typer.Typer(
    name="device",
    help="Measure this device for `edgekd search` (no data, no teacher, no training).\n\n"
    "Example: edgekd device profile --batch 1,32 --out device.json",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(device_app, name="device", rich_help_panel=PANEL_BENCH)


@device_app.command("profile")
def device_profile(
    out: Annotated[Path, typer.Option("--out", "-o", help="The device latency table (JSON) to write.")],
    space: Annotated[Path | None, typer.Option("--space", help="Space YAML (default: the search's default).")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1",
    input_shape: Annotated[str, typer.Option("--input-shape", help="C,H,W of the model input.")] = "1,28,28",
    classes: Annotated[int, typer.Option("--classes", help="Classifier outputs.")] = 2,
    target: Annotated[str, typer.Option("--target", help="INT8 quantization target.")] = "cpu-x86",
    threads: Annotated[int | None, typer.Option("--threads", help="Runtime threads (default: physical cores).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Time every candidate of a search space on this device with random weights, into a device latency table.

    Run it on the target (a Jetson, an ARM box) and pass the file to `edgekd search --device-table` elsewhere.

    Example: edgekd device profile --space examples/search-space.yaml --batch 1,32 --out device.json
    """
    from edgekd.search import default_space

    settings = ProfileSettings.build(
        None,
        {
            "batches": [int(b) for b in batch.split(",") if b.strip()],
            "input_shape": [int(s) for s in input_shape.replace("x", ",").split(",") if s.strip()],
            "num_classes": classes,
            "target": target,
            "threads": threads,
        },
    )
    table = profile_device(load_space(space) if space else default_space(), settings, progress=not quiet)
    write_table(table, out)
    pred = fit_predictor(table.entries)
    mape = f"{pred.holdout_mape:.1f} %" if pred.holdout_mape is not None else "n/a (under 8 entries)"
    console.print(
        f"{len(table.entries)} measurements on {table.device['cpu']['model']} -> {out}; "
        f"predictor MAPE on {pred.n_holdout} held-out: {mape}"
    )
