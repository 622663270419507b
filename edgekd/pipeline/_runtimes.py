"""The pipeline across runtimes: ``bench.backends`` may list ``ort``, ``openvino``, ``executorch`` (and ``trt``).

OpenVINO, ExecuTorch and TensorRT run files of a bundle (``model.xml``, ``model.pte``, an engine), not model
directories, so when ``bench.backends`` names one of them every benchmarked row gets a **runtime bundle**: a
``runtimes-NAME`` stage right after the stage that made the row's artifact writes ``runtimes/NAME/``:

* a model directory (teacher, baseline, student, pruned) is exported with
  :func:`~edgekd.export.export_bundle` to ``onnx`` plus the runtimes' formats (each file parity-checked against
  PyTorch like any export; ExecuTorch's batch bound is the largest benchmarked batch or more);
* an INT8 bundle of ``edgekd quantize`` gets the same runtimes added to a copy of it
  (:func:`~edgekd.export.add_openvino`, :func:`~edgekd.export.add_executorch`): the OpenVINO IR of the very QDQ
  graph, the ExecuTorch PT2E program calibrated on the quantize stage's own calibration subset (its seed is the
  run's); a QAT bundle gets no ExecuTorch INT8 program (PT2E quantizes FP32 models), only the IR;
* an FP16 file (GPU) and an ONNX teacher get none: ONNX Runtime (and TensorRT) run them as before.

The ``keep-NAME`` stages then time parent and child on their runtime bundles, every runtime interleaved, and
decide on each side's fastest runtime per batch (:func:`~edgekd.pipeline._handoff.best_of_runtimes`); the
``bench`` stage benchmarks each row's runtime bundle at the row's precision (:func:`bench_rows`: one
:func:`~edgekd.bench.benchmark` per precision, merged into one ``bench.json``), and the final table shows each
row's fastest runtime and the per-runtime p50s. With only ``ort`` / ``torch`` listed none of this happens: the
plan, the keys and the outputs are what they were.

Example:
    >>> runtime_formats(["ort", "openvino", "executorch"])
    ['openvino', 'executorch']
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.markup import escape

from edgekd._io import atomic_dir
from edgekd.bench import (
    RUNNERS,
    BenchConfig,
    BenchReport,
    ComputePrecision,
    SkippedRun,
    resolve_artifact,
    run_benchmark,
)
from edgekd.errors import InvalidInputError, VerificationError
from edgekd.export import ExportConfig, add_executorch, add_openvino, export_bundle, read_manifest
from edgekd.pipeline._config import PipelineConfig
from edgekd.pipeline._context import HandoffStage, PipelineRunner, ReferenceStage, Stage

__all__ = [
    "RUNTIME_FORMATS",
    "RUNTIMES_PREFIX",
    "RUNTIMES_DIR",
    "RuntimesStage",
    "runtime_formats",
    "add_runtime_stages",
    "runtime_bundle",
    "bench_rows",
    "bench_artifacts",
    "usable_backends",
]

RUNTIME_FORMATS = {"openvino": "openvino", "executorch": "executorch", "trt": "engine"}  # backend -> export format
RUNTIMES_PREFIX = "runtimes-"
RUNTIMES_DIR = "runtimes"


class RuntimesStage(BaseModel):
    """``runtimes-NAME``: the runtime files of one row (its artifact at ``precision``; None: a model directory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    row: str
    precision: str | None
    formats: list[str]
    max_batch: int
    n_samples: int
    data: str
    calib_seed: int


def runtime_formats(backends: Sequence[str] | None) -> list[str]:
    """The export formats the benchmark's backends need beyond ONNX (empty: no runtime bundles)."""
    return [RUNTIME_FORMATS[b] for b in backends or () if b in RUNTIME_FORMATS]


def _row_formats(cfg: PipelineConfig, row: str, precision: str | None, formats: list[str]) -> list[str]:
    """What a row can carry: FP32 model directories all of them; a PTQ INT8 bundle OpenVINO and ExecuTorch; a QAT
    INT8 bundle OpenVINO only; FP16 files none (OpenVINO converts FP32/INT8 graphs, ExecuTorch exports FP32)."""
    if precision is None:
        return formats
    if precision != "int8":
        return []
    q = next(q for q in cfg.quantize if q.stage_name == row)
    keep = ("openvino", "executorch") if q.method.value == "ptq" else ("openvino",)
    return [f for f in formats if f in keep]


def add_runtime_stages(cfg: PipelineConfig, stages: list[Stage], rows: Sequence[Any]) -> list[Stage]:
    """``stages`` with a ``runtimes-NAME`` stage after each benchmarked row's source stage, and the hand-off stages
    reading them (their keys then hash the runtime bundles they time). Unchanged without runtime backends."""
    bench = cfg.bench.bench_config() if cfg.bench is not None else None
    formats = runtime_formats(bench.backends if bench else None)
    if not formats or bench is None:
        return stages
    by_source = {}
    for row in rows:
        src, precision = row.source[0], row.precision
        st = next(s for s in stages if s.name == src)
        if isinstance(st.config, ReferenceStage) and st.config.onnx:
            continue  # an ONNX teacher: ONNX Runtime runs it as it is
        fmts = _row_formats(cfg, src, precision, formats)
        if fmts:
            by_source[src] = _runtimes_stage(cfg, src, precision, fmts, bench)
    out: list[Stage] = []
    for st in stages:
        if isinstance(st.config, HandoffStage):  # it times the runtime bundles of its child and possible parents
            reads = (*st.inputs, st.config.child_source, st.carry, "student", "baseline")
            extra = tuple(RUNTIMES_PREFIX + n for n in by_source if n in reads)
            st = replace(st, inputs=tuple(dict.fromkeys((*st.inputs, *extra))))
        elif st.kind == "bench":  # it benchmarks them
            st = replace(st, inputs=tuple(dict.fromkeys((*st.inputs, *(RUNTIMES_PREFIX + n for n in by_source)))))
        out.append(st)
        if st.name in by_source:
            out.append(by_source[st.name])
    return out


def _runtimes_stage(cfg: PipelineConfig, src: str, precision: str | None, fmts: list[str], bench: BenchConfig) -> Stage:
    n = cfg.export.n_samples if cfg.export is not None else 64
    rt = RuntimesStage(
        row=src,
        precision=precision,
        formats=fmts if precision else ["onnx", *fmts],
        max_batch=max(32, *bench.batches),
        n_samples=n,
        data=cfg.data,
        calib_seed=cfg.seed,
    )
    out = f"{RUNTIMES_DIR}/{src}"
    return Stage(RUNTIMES_PREFIX + src, "runtimes", out, rt, _runtimes, (src,), uses_data=True)


def _runtimes(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    """Export a row's model directory with the runtimes' formats, or add them to a copy of its INT8 bundle."""
    s = st.config
    assert isinstance(s, RuntimesStage)
    src, out = r.path(r.stages[s.row].output), r.path(st.output)
    if s.precision is None:
        cfg = ExportConfig(formats=s.formats, n_samples=s.n_samples, max_batch=s.max_batch, data=s.data)
        manifest = export_bundle(src, out, cfg, overwrite=True, command=r.command(st), log=r.log)
        failed: dict[str, str] = {}
    else:
        manifest, failed = _add_runtimes(r, src, out, s)
    files = [f.name for f in manifest.model_files()]
    return {"files": files, "parity": [p.summary() for p in manifest.parity], "failed": failed}


def _add_runtimes(r: PipelineRunner, src: Path, out: Path, s: RuntimesStage) -> tuple[Any, dict[str, str]]:
    """A copy of an INT8 bundle with each runtime added; a runtime whose INT8 file fails parity is left out (one
    line, and the benchmark skips that runtime for this row) instead of stopping the run: the FP32 and the other
    runtimes' figures still stand, and INT8 parity near the decision boundary is a property of the model."""
    failed: dict[str, str] = {}
    with atomic_dir(out, overwrite=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        adders = {
            "openvino": lambda: add_openvino(tmp, log=r.log),
            "executorch": lambda: add_executorch(tmp, max_batch=s.max_batch, calib_seed=s.calib_seed, log=r.log),
        }
        for name in [f for f in s.formats if f in adders]:
            try:
                adders[name]()
            except VerificationError as e:  # the bundle is unchanged by a failed runtime (extend_bundle is atomic)
                failed[name] = e.message
                r.log(f"[yellow]{escape(s.row)}: no {name} file: {escape(e.message)}[/]")
        manifest = read_manifest(tmp)
    return manifest, failed


def runtime_bundle(r: PipelineRunner, stage: str) -> Path | None:
    """The runtime bundle of row stage ``stage`` when the run makes one."""
    st = r.stages.get(RUNTIMES_PREFIX + stage)
    return r.path(st.output) if st is not None else None


def usable_backends(backends: Sequence[str] | None, devices: Sequence[str], cfg: BenchConfig) -> list[str]:
    """The backends of ``backends`` that run on one of ``devices`` here (OpenVINO/ExecuTorch are CPU runners: a
    CUDA-only comparison leaves them out instead of failing on them)."""
    settings = cfg.settings()
    return [b for b in backends or ("ort",) if any(RUNNERS.get(b).unavailable(d, settings) is None for d in devices)]


def _group_backends(paths: list[str], precision: str | None, backends: list[str]) -> tuple[list[str], list[str]]:
    """The backends that run one of ``paths`` at ``precision``, and the reasons of those that run none."""
    arts = [resolve_artifact(p, verify=False) for p in paths]
    keep, why = [], []
    for b in backends:
        found = [RUNNERS.get(b).targets(a, precision) for a in arts]
        if any(t for t, _ in found):
            keep.append(b)
        else:
            why.append(f"{b}: {next((w for _, w in found if w), 'not applicable')}")
    return keep, why


def _merge(reports: list[BenchReport], order: list[str], cfg: BenchConfig) -> BenchReport:
    first = reports[0]
    return first.model_copy(
        update={
            "artifacts": order,
            "results": [x for rep in reports for x in rep.results],
            "skipped": [x for rep in reports for x in rep.skipped],
            "config": cfg.model_dump(mode="json"),
        }
    )


def bench_rows(
    r: PipelineRunner, rows: Sequence[tuple[str, str, str | None]], cfg: BenchConfig, progress: bool
) -> BenchReport:
    """The final benchmark of the table's rows: each row's runtime bundle at its precision on the runtimes, its
    model directory on ``torch`` when listed, every other artifact as before; one report (plan order per group)."""
    backends = list(cfg.backends or ("ort",))
    runtime = [b for b in backends if b != "torch"]
    groups: dict[tuple[str | None, tuple[str, ...]], list[str]] = {}
    order: list[str] = []
    for _row, source, precision in rows:
        bundle = runtime_bundle(r, source)
        plain = str(r.artifact_path(source, precision))
        if bundle is not None:
            groups.setdefault((precision or "fp32", tuple(runtime)), []).append(str(bundle))
            order.append(str(bundle))
            if "torch" in backends and precision is None:
                groups.setdefault((None, ("torch",)), []).append(plain)
                order.append(plain)
        else:
            groups.setdefault((None, tuple(backends)), []).append(plain)
            order.append(plain)
    reports, skipped = [], []
    for (precision, names), paths in groups.items():
        usable, why = _group_backends(paths, precision, list(names))
        skipped += [
            SkippedRun(artifact=p, name=Path(p).name, backend=w.split(":")[0], device="-", reason=w)
            for p in paths
            for w in why
        ]
        if not usable:
            continue
        which = ComputePrecision(precision) if precision else cfg.precision  # a runtime bundle: the row's files
        group = cfg.model_copy(update={"backends": usable, "precision": which})
        reports.append(run_benchmark(paths, group, progress=progress))
    if not reports:
        raise InvalidInputError(
            f"bench: no backend of {backends} runs the table's artifacts",
            "; ".join(sorted({x.reason for x in skipped})),
        )
    report = _merge(reports, order, cfg)
    return report.model_copy(update={"skipped": report.skipped + skipped})


def bench_artifacts(r: PipelineRunner) -> dict[str, str]:
    """``{runtime bundle (relative to the run): the row's artifact}`` for the final table's latency columns."""
    out = {}
    for st in r.stages.values():
        if st.kind == "runtimes" and isinstance(st.config, RuntimesStage):
            plain = r.artifact_path(st.config.row, st.config.precision)
            out[r.rel(r.path(st.output))] = r.rel(plain)
    return out
