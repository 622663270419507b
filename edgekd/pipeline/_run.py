"""`edgekd run`: every stage from data to a reviewed edge bundle, into one run directory, skipping what is done.

:func:`run_pipeline` resolves the configuration, saves it as ``RUN/pipeline.yaml``, and runs the stages of
:func:`~edgekd.pipeline.plan` in order, each into its own directory or file of the run directory. Before a
stage runs, its key (its settings and the hashes of the outputs it reads, see :mod:`._state`) is compared
with the stage's record: an unchanged stage is skipped, an interrupted training stage resumes from its
checkpoint, anything else runs again and replaces its earlier output. At the end the final table
(:class:`RunSummary`, also ``RUN/summary.json``) is built from the evaluations, the benchmark and the hand-off
decisions (:mod:`._handoff`: which artifact each deployment target gets, re-checked against the final benchmark), the report
is written by the function the caller gives (the CLI passes :func:`edgekd.report.write_report`), and a
regression against the configured benchmark baseline raises :class:`~edgekd.errors.RegressionError` (exit 7)
after everything is written.

The run directory belongs to edgekd (it holds a ``.edgekd`` marker): running the same pipeline into it again
continues it; a folder that edgekd did not create is refused.

Example:
    >>> from edgekd.report import write_report
    >>> summary = run_pipeline("examples/pneumonia.yaml", "runs/pneumonia", report=write_report)
    >>> [(r.label, r.test.get("auroc"), r.latency["32"].speedup) for r in summary.rows]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, Field
from rich.markup import escape

from edgekd._io import MARKER_FILE, atomic_write_text
from edgekd._progress import stderr_console
from edgekd.bench import check_gate, load_report
from edgekd.errors import ArtifactError, InvalidInputError, RegressionError
from edgekd.pipeline._budget import SEARCH_DIR
from edgekd.pipeline._config import PipelineConfig, config_from_mapping, load_pipeline_config
from edgekd.pipeline._context import (
    BENCH_FILE,
    CONFIG_FILE,
    EVAL_DIR,
    KD_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    PipelineRunner,
    ReportFn,
    StageOutcome,
    onnx_file,
)
from edgekd.pipeline._handoff import KEEP_PREFIX, HandoffDecision, HandoffSummary, handoff_targets, recheck
from edgekd.pipeline._runtimes import bench_artifacts
from edgekd.pipeline._stages import Row, plan, report_stage, rows_of
from edgekd.quantize import TARGETS
from edgekd.search import SEARCH_FILE
from edgekd.specs import package_versions

__all__ = ["run_pipeline", "prepare_run_dir", "build_summary", "RunSummary", "TableRow", "Latency"]

SUMMARY_SCHEMA = "edgekd.run/1"


class Latency(BaseModel):
    """One batch size of a row: p50/p90 of one batch (ms) and the p50 speedup against the teacher.

    With several backends measured (``bench.backends: [ort, openvino, executorch]``) ``backend`` is the row's
    fastest at this batch (by p50, on the first device measured), ``runtimes`` every backend's p50 there, and the
    speedup is the teacher's fastest over the row's fastest on the same device.
    """

    batch: int
    backend: str
    device: str
    p50_ms: float
    p90_ms: float
    speedup: float | None = None
    runtimes: dict[str, float] = Field(default_factory=dict)


class TableRow(BaseModel):
    """One line of the final table; metric figures are means over seeds, ``spread`` their standard deviations.

    Attributes:
        name, label: the stage and what the table prints.
        artifact: the seed-0 model directory or ONNX file, relative to the run directory.
        seeds: how many seeds the figures average.
        test, val: scalar metrics (acc, auroc, ece, ...) of the test and validation splits.
        operating_point: threshold (chosen on val for the target sensitivity), sensitivity and specificity on test.
        spread: standard deviation over seeds of the same keys (``test.auroc``...).
        params, macs, size_bytes: of the seed-0 artifact (MACs per sample).
        latency: by batch size (as a string, JSON keys), from the benchmark.
        eval: the evaluation JSON (``eval/NAME.json``); history: training curves (``history.jsonl``) per seed.
        handoff: the deployment targets this row is the hand-off for (``RunSummary.handoff``).
    """

    name: str
    label: str
    kind: str
    artifact: str
    seeds: int = 1
    test: dict[str, float] = Field(default_factory=dict)
    val: dict[str, float] = Field(default_factory=dict)
    operating_point: dict[str, float] = Field(default_factory=dict)
    spread: dict[str, float] = Field(default_factory=dict)
    params: int | None = None
    macs: int | None = None
    size_bytes: int | None = None
    latency: dict[str, Latency] = Field(default_factory=dict)
    eval: list[str] = Field(default_factory=list)
    history: list[str] = Field(default_factory=list)
    stages: list[str] = Field(default_factory=list)
    handoff: list[str] = Field(default_factory=list)


class RunSummary(BaseModel):
    """The final table and everything the report needs (``RUN/summary.json``; the ``--json`` of `edgekd run`).

    ``handoff`` holds every hand-off decision (with its interleaved measurements), the hand-off per deployment
    target, and the lines of the final benchmark's re-check (a hand-off slower than the chosen student).
    """

    schema_: str = Field(SUMMARY_SCHEMA, alias="schema")
    name: str
    run_dir: str
    config: str = CONFIG_FILE
    data: str
    task: str
    label_names: list[str]
    seeds: int
    target_sensitivity: float
    rows: list[TableRow]
    kd: dict[str, Any] = Field(default_factory=dict)
    handoff: HandoffSummary = Field(default_factory=HandoffSummary)
    bench: str | None = None
    search: str | None = None  # a budget run: the search's search.json, relative to the run directory
    regressions: list[str] = Field(default_factory=list)
    stages: list[StageOutcome] = Field(default_factory=list)
    report: str | None = None
    report_settings: dict[str, Any] = Field(default_factory=dict)
    gradcam: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)

    model_config = {"populate_by_name": True}

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def prepare_run_dir(root: Path) -> Path:
    """Create the run directory, or accept one that edgekd created; refuse a folder holding other files."""
    if root.is_file():
        raise InvalidInputError(f"--out {root} is a file, not a directory", "choose another --out")
    if root.is_dir() and any(root.iterdir()) and not (root / MARKER_FILE).is_file():
        raise InvalidInputError(
            f"--out {root} holds files that `edgekd run` did not write",
            "choose another --out (a run directory is edgekd's; re-running continues it)",
        )
    root.mkdir(parents=True, exist_ok=True)
    if not (root / MARKER_FILE).is_file():
        atomic_write_text(root / MARKER_FILE, "edgekd run directory: `edgekd run` continues it\n")
    if not os.access(root, os.W_OK | os.X_OK):
        raise ArtifactError(f"--out {root}: cannot write there (permission denied)", "choose another --out")
    return root


def _resolve(config: PipelineConfig | str | os.PathLike, overrides: Sequence[str]) -> PipelineConfig:
    if isinstance(config, PipelineConfig):
        if overrides:
            return config_from_mapping(config.resolved(), overrides=overrides)
        return config
    return load_pipeline_config(config, overrides)


def run_pipeline(
    config: PipelineConfig | str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    report: ReportFn | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> RunSummary:
    """Run a pipeline into ``run_dir`` (default ``runs/NAME``), skipping unchanged stages (module docstring).

    Args:
        config: a :class:`PipelineConfig` or a YAML file.
        run_dir: the run directory (created, or continued when edgekd created it).
        overrides: ``KEY=VALUE`` items applied to the configuration (``--set``).
        report: writes the HTML report of the run directory (e.g. :func:`edgekd.report.write_report`); None:
            no report.
        progress: progress bars.
        log: called with one line (Rich markup) per stage; default: stderr.

    Returns:
        The final table (also written to ``RUN/summary.json``).

    Raises:
        InvalidInputError: an invalid configuration (key and line named), an unusable run directory (exit 3).
        ArtifactError: a missing input file (exit 4); the errors of every stage's library function.
        RegressionError: the benchmark regressed against ``regression.baseline`` (exit 7), after the report.
    """
    cfg = _resolve(config, overrides)
    root = prepare_run_dir(Path(run_dir) if run_dir is not None else Path("runs") / cfg.name)
    log = log or (lambda line: stderr_console.print(line))
    if cfg.regression is not None and cfg.regression.baseline:
        if not Path(cfg.regression.baseline).is_file():
            raise ArtifactError(
                f"regression.baseline {cfg.regression.baseline} does not exist",
                "write one with `edgekd bench ... --json FILE` or remove regression.baseline",
            )
    atomic_write_text(root / CONFIG_FILE, yaml.safe_dump(cfg.resolved(), sort_keys=False))
    runner = PipelineRunner(cfg, root, report=report, progress=progress, log=log)
    stages = plan(cfg)
    runner.stages = {s.name: s for s in stages}
    for st in stages:
        runner.execute(st)
    summary = build_summary(runner)
    for line in summary.handoff.recheck:  # the hand-off is slower than the student in the final benchmark
        log(f"[yellow]{escape(line)}[/]")
    atomic_write_text(root / SUMMARY_FILE, json.dumps(summary.dump(), indent=2) + "\n")
    if report is not None and cfg.report.enabled:
        st = report_stage(cfg, stages)
        runner.stages[st.name] = st
        runner.execute(st)
        summary.stages = list(runner.outcomes)
        summary.gradcam = _gradcam_means(root / Path(REPORT_FILE).parent / "gradcam.json")
        atomic_write_text(root / SUMMARY_FILE, json.dumps(summary.dump(), indent=2) + "\n")
    if summary.regressions:
        raise RegressionError(
            f"benchmark regressed against {cfg.regression.baseline}: {'; '.join(summary.regressions[:3])}",
            f"see {root / BENCH_FILE} and the report",
        )
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The final table


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def _row(runner: PipelineRunner, row: Row) -> TableRow:
    evals = [json.loads(runner.path(f"{EVAL_DIR}/{s}.json").read_text()) for s in row.stages]
    first = evals[0]
    out = TableRow(
        name=row.name,
        label=row.label,
        kind=first.get("kind", "model_dir"),
        artifact=first["artifact"],
        seeds=len(evals),
        params=first.get("params"),
        macs=first.get("macs"),
        size_bytes=first.get("size_bytes"),
        eval=[f"{EVAL_DIR}/{s}.json" for s in row.stages],
        stages=list(row.stages),
    )
    for split in ("test", "val"):
        keys = [k for k, v in first[split].items() if isinstance(v, (int, float)) and k != "n"]
        for k in keys:
            mean, std = _mean_std([e[split].get(k, math.nan) for e in evals])
            getattr(out, split)[k] = mean
            if len(evals) > 1:
                out.spread[f"{split}.{k}"] = std
    if "operating_point" in first:
        for k, get in (
            ("threshold", lambda e: e["operating_point"]["threshold"]),
            ("sensitivity", lambda e: e["operating_point"]["test"]["sensitivity"]),
            ("specificity", lambda e: e["operating_point"]["test"]["specificity"]),
        ):
            mean, std = _mean_std([get(e) for e in evals])
            out.operating_point[k] = mean
            if len(evals) > 1:
                out.spread[f"operating_point.{k}"] = std
        out.operating_point["target_sensitivity"] = first["operating_point"]["target_sensitivity"]
    if row.trained:
        out.history = [
            runner.rel(runner.path(runner.stages[s].output) / "history.jsonl")
            for s in row.stages
            if (runner.path(runner.stages[s].output) / "history.jsonl").is_file()
        ]
    return out


def _latencies(runner: PipelineRunner, rows: list[TableRow]) -> None:
    path = runner.path(BENCH_FILE)
    if not path.is_file():
        return
    report = load_report(path)
    row_of = bench_artifacts(runner)  # a runtime bundle's results belong to the row it was made from
    measured: dict[str, dict[int, list[Any]]] = {}
    for r in report.results:
        art = runner.rel(Path(r.artifact))
        measured.setdefault(row_of.get(art, art), {}).setdefault(r.batch, []).append(r)
    by_artifact = {art: {b: _fastest(b, rs) for b, rs in per.items()} for art, per in measured.items()}
    ref = by_artifact.get(rows[0].artifact, {})
    for row in rows:
        for batch, lat in sorted(by_artifact.get(row.artifact, {}).items()):
            base = ref.get(batch)
            if base is not None and base.device == lat.device and lat.p50_ms > 0:  # fastest vs fastest
                lat.speedup = base.p50_ms / lat.p50_ms
            row.latency[str(batch)] = lat


def _fastest(batch: int, results: list[Any]) -> Latency:
    """A row's results at one batch: the fastest backend on the first device measured, every backend's p50 there."""
    device = results[0].device
    here = [r for r in results if r.device == device]
    best = min(here, key=lambda r: r.stats.p50_ms)
    return Latency(
        batch=batch,
        backend=best.backend,
        device=device,
        p50_ms=best.stats.p50_ms,
        p90_ms=best.stats.p90_ms,
        runtimes={r.backend: r.stats.p50_ms for r in here},
    )


def _regressions(runner: PipelineRunner) -> list[str]:
    reg, path = runner.cfg.regression, runner.path(BENCH_FILE)
    if reg is None or not path.is_file():
        return []
    gate = check_gate(load_report(path), reg, enforce_it=False)
    out = [f"{c.label} p50 x{c.p50_ratio:.2f}" for c in gate.regressed]
    return out + [f"{v.label} p90 {v.p90_ms:.2f} ms > {v.budget_ms:g} ms" for v in gate.over_budget]


def _gradcam_means(path: Path) -> dict[str, Any]:
    """The report's mean Grad-CAM agreement with the teacher per model, and the layers (``report/gradcam.json``)."""
    if not path.is_file():
        return {}
    cams = json.loads(path.read_text())
    return {k: cams[k] for k in ("mean", "layers", "images") if k in cams}


def _fp32_onnx(runner: PipelineRunner) -> str | None:
    """The export bundle's FP32 ONNX file (the carried FP32 model, as shipped), when the run made one."""
    if "bundle" not in runner.records or not runner.path("bundle").is_dir():
        return None
    try:
        return runner.rel(onnx_file(runner.path("bundle"), "fp32"))
    except FileNotFoundError:  # a bundle of engines only: no FP32 ONNX file to name
        return None


def _handoff(runner: PipelineRunner, rows: list[TableRow]) -> HandoffSummary:
    """The hand-off decisions, the hand-off per deployment target (rows marked), and the final re-check."""
    cfg = runner.cfg
    decisions = {}
    for st in runner.stages.values():
        if st.kind == "handoff" and st.name in runner.records:
            d = HandoffDecision.model_validate(runner.records[st.name].result)
            decisions[d.stage] = d
    if "select" not in runner.records:
        return HandoffSummary(decisions=list(decisions.values()))
    start = runner.chosen()
    fp32 = runner.carried("pruned") if cfg.prune is not None else "select"
    targets = [
        (q.target, "cuda" if q.method.value == "fp16" or TARGETS.get(q.target).gpu else "cpu", q.stage_name)
        for q in cfg.quantize
    ]
    if KEEP_PREFIX + "fp16" in runner.stages:  # the export's FP16 file (a GPU artifact)
        targets.append(("fp16", "cuda", "fp16"))
    handoffs = handoff_targets(targets, decisions, start if fp32 == "select" else fp32, _fp32_onnx(runner))
    for row in rows:
        row.handoff = [t.target for t in handoffs if t.stage == row.name]
    lines = recheck(handoffs, {r.name: r.latency for r in rows}, {r.name: r.label for r in rows}, start)
    return HandoffSummary(decisions=list(decisions.values()), targets=handoffs, recheck=lines)


def _search_file(runner: PipelineRunner) -> str | None:
    rel = f"{SEARCH_DIR}/{SEARCH_FILE}"
    return rel if runner.cfg.budget is not None and runner.path(rel).is_file() else None


def build_summary(runner: PipelineRunner) -> RunSummary:
    """The final table from the evaluations, the benchmark, the hand-off decisions and the KD comparison."""
    cfg, data = runner.cfg, runner.data
    rows = [_row(runner, r) for r in rows_of(cfg)]
    _latencies(runner, rows)
    kd_path = runner.path(KD_FILE)
    return RunSummary(
        name=cfg.name,
        run_dir=str(runner.root),
        data=data.spec,
        task=data.task.value,
        label_names=list(data.label_names),
        seeds=cfg.seeds,
        target_sensitivity=cfg.target_sensitivity,
        rows=rows,
        kd=json.loads(kd_path.read_text()) if kd_path.is_file() else {},
        handoff=_handoff(runner, rows),
        bench=BENCH_FILE if runner.path(BENCH_FILE).is_file() else None,
        search=_search_file(runner),
        regressions=_regressions(runner),
        stages=list(runner.outcomes),
        report=REPORT_FILE if cfg.report.enabled and runner.report_fn else None,
        report_settings=cfg.report.model_dump(mode="json"),
        augment={"preset": cfg.student.train.augment, "seed": cfg.seed},
        versions=package_versions(),
    )
