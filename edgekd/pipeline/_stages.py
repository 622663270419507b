"""The stages of `edgekd run`, in order, each a call of the library function that the matching command makes.

:func:`plan` turns a :class:`~edgekd.pipeline.PipelineConfig` into a list of :class:`Stage`: its name, what
it does, where its output goes in the run directory, its typed config (the stage's own config class, e.g. the
:class:`~edgekd.distill.DistillConfig` of a student, the :class:`~edgekd.export.ExportConfig` of the bundle; its
JSON goes into the key), its FP32 source and the earlier stages it reads. The executors below run one stage each,
reading the typed config (no settings dict in between):

=================  ==========================================================  ===========================
stage              what                                                        output (in the run dir)
=================  ==========================================================  ===========================
teacher[-sN]       train (:func:`~edgekd.distill.train_model`), import a       ``teacher/`` (or the given
                   checkpoint, or use a given model directory / ONNX file      path)
baseline[-sN]      the student without the teacher (same seed, schedule, aug)  ``baseline/``
student[-sN]       distillation (:func:`~edgekd.distill.distill_model`)        ``student/``
select             distilled vs baseline on validation, diagnostics, choice    ``kd.json``
pruned             :func:`~edgekd.prune.prune_model_dir` of the chosen student ``pruned/``
keep-pruned        pruned vs its parent: interleaved latency, val metric;      ``handoff/pruned.json``
                   carried forward or not (:mod:`._handoff`)
int8-TARGET        :func:`~edgekd.quantize.quantize_model_dir` per target      ``int8-cpu-x86/`` (bundle)
keep-int8-TARGET   the low-precision file vs its FP32 parent                   ``handoff/int8-cpu-x86.json``
bundle             :func:`~edgekd.export.export_bundle`                        ``bundle/``
keep-fp16          the export's FP16 file vs its FP32 parent                   ``handoff/fp16.json``
eval-NAME          metrics, ECE, operating point, logits of every artifact     ``eval/NAME.json`` + ``.npz``
bench              :func:`~edgekd.bench.benchmark` of the table's artifacts    ``bench.json``
report             the HTML report (a function the caller gives)               ``report/index.html``
=================  ==========================================================  ===========================

``-sN`` stages exist with ``seeds > 1``: seed ``seed + N``; the student of seed N distils from the teacher of
seed N when the teacher is trained here. Pruning, quantization, export and the benchmark follow seed 0.

The quantization targets and the export start from the FP32 model carried forward, which ``keep-pruned``
decides when the run gets there: such a stage names ``carry="pruned"`` and the runner fills in its
``source`` (``pruned``, or ``select``: the chosen student) before computing its key, so the key names the
model it really compresses and a flipped decision re-runs exactly the stages it changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from edgekd._io import atomic_write_text, sha256_file
from edgekd.bench import (
    bench_devices,
    compare_latency,
    model_latency_ms,
    onnx_latency_ms,
    run_benchmark,
    width_multiple,
    write_json,
)
from edgekd.distill import CacheSettings, DistillConfig, run_training
from edgekd.export import export_bundle
from edgekd.importer import import_model
from edgekd.metrics import compute_metrics, task_select_metric
from edgekd.pipeline._budget import budget_search_config, run_budget_search
from edgekd.pipeline._config import BenchSection, HandoffKeep, PipelineConfig
from edgekd.pipeline._context import (
    BENCH_FILE,
    EVAL_DIR,
    KD_FILE,
    REPORT_FILE,
    BenchStage,
    EvalStage,
    HandoffStage,
    ImportStage,
    PipelineRunner,
    PruneStage,
    QuantizeStage,
    ReferenceStage,
    SelectStage,
    Stage,
)
from edgekd.pipeline._diagnose import (
    bootstrap_gains,
    compare_students,
    diagnose,
    final_losses,
    resolve_metric,
    secondary_metrics,
)
from edgekd.pipeline._evaluate import evaluate_artifact, split_logits, write_evaluation
from edgekd.pipeline._handoff import HANDOFF_DIR, KEEP_PREFIX, decide
from edgekd.pipeline._runtimes import add_runtime_stages, bench_rows, runtime_bundle, usable_backends
from edgekd.pipeline._state import artifact_hash
from edgekd.prune import prune_model_dir
from edgekd.quantize import TARGETS, quantize_model_dir
from edgekd.teachers import load_teacher

__all__ = ["Row", "plan", "rows_of", "report_stage", "recovery_teacher"]


@dataclass(frozen=True)
class Row:
    """A line of the final table: a group of artifacts (one per seed) of the same kind.

    Attributes:
        name: the seed-0 stage (``teacher``, ``student``, ``int8-cpu-x86``, ``fp16``).
        label: what the table prints.
        stages: the stage of each seed.
        source: the stage that wrote the artifact (``bundle`` for ``fp16``).
        precision: the ONNX file of a bundle to use (``int8``/``fp16``), None for a model directory.
    """

    name: str
    label: str
    stages: tuple[str, ...]
    source: tuple[str, ...]
    precision: str | None = None
    trained: bool = False


def _suffix(i: int) -> str:
    return "" if i == 0 else f"-s{i}"


def rows_of(cfg: PipelineConfig) -> list[Row]:
    """The final table's rows, in pipeline order."""
    seeds = range(cfg.seeds)
    teacher = [f"teacher{_suffix(i)}" for i in seeds] if cfg.teacher.mode == "train" else ["teacher"]
    rows = [Row("teacher", "teacher", tuple(teacher), tuple(teacher), trained=cfg.teacher.mode == "train")]
    if cfg.distill.baseline:
        names = tuple(f"baseline{_suffix(i)}" for i in seeds)
        rows.append(Row("baseline", "student, no teacher", names, names, trained=True))
    names = tuple(f"student{_suffix(i)}" for i in seeds)
    rows.append(Row("student", "student, distilled", names, names, trained=True))
    if cfg.prune is not None:
        rows.append(Row("pruned", "pruned", ("pruned",), ("pruned",), trained=cfg.prune.recovery_epochs > 0))
    for q in cfg.quantize:
        precision = q.stage_name.split("-", 1)[0]
        rows.append(Row(q.stage_name, f"{precision.upper()} {q.target}", (q.stage_name,), (q.stage_name,), precision))
    if cfg.export is not None and "onnx-fp16" in cfg.export.formats and "fp16" not in {r.precision for r in rows}:
        rows.append(Row("fp16", "FP16 (export)", ("fp16",), ("bundle",), "fp16"))
    return rows


def recovery_teacher(cfg: PipelineConfig, teacher_of: Callable[[int], str]) -> str | None:
    """The stage whose model teaches pruning recovery: the teacher with ``prune.recovery_teacher: teacher``, else
    None (the unpruned parent, as in `edgekd prune`). The one place this is decided: the ``pruned`` stage reads
    it and hashes it."""
    if cfg.prune is None or cfg.prune.recovery_teacher != "teacher":
        return None
    return teacher_of(0)


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The stages of a run, in execution order (see the module docstring)."""
    seeds = range(cfg.seeds)
    stages: list[Stage] = []
    teacher_of = _teacher_stages(cfg, stages)
    if cfg.distill.baseline:
        stages += [_train_stage(cfg, f"baseline{_suffix(i)}", "train", cfg.seed + i, ()) for i in seeds]
    if cfg.budget is not None:  # the student is searched for under the latency budget (pipeline/_budget.py)
        stages.append(_budget_stage(cfg, teacher_of(0)))
    else:
        stages += [_train_stage(cfg, f"student{_suffix(i)}", "distill", cfg.seed + i, (teacher_of(i),)) for i in seeds]
    students = tuple(f"student{_suffix(i)}" for i in seeds)
    baselines = tuple(f"baseline{_suffix(i)}" for i in seeds) if cfg.distill.baseline else ()
    select = SelectStage(
        metric=cfg.distill.metric,
        keep=cfg.distill.keep,
        augment=cfg.student.train.augment,
        samples=cfg.distill.diagnose_samples,
        seed=cfg.seed,
    )
    stages.append(
        Stage("select", "select", KD_FILE, select, _select, (teacher_of(0), *students, *baselines), uses_data=True)
    )
    carry = None  # the stage whose hand-off decision picks the FP32 source of quantization and export
    if cfg.prune is not None:
        teacher = recovery_teacher(cfg, teacher_of)
        prune = PruneStage(prune=cfg.prune.prune_config(cfg.seed), recovery_teacher=teacher)
        inputs = ("select", teacher) if teacher else ("select",)
        stages.append(Stage("pruned", "prune", "pruned", prune, _prune, inputs, source="select", uses_data=True))
        stages.append(_keep_stage(cfg, "pruned", None, cfg.prune.handoff_keep, None, ("select", "pruned"), None))
        carry = "pruned"
    source, deps = (None, ()) if carry else ("select", ("select",))
    for q in cfg.quantize:
        quantize = QuantizeStage(quantize=q.quantize_config(cfg.seed), target_sensitivity=cfg.target_sensitivity)
        stages.append(
            Stage(
                q.stage_name,
                "quantize",
                q.stage_name,
                quantize,
                _quantize,
                deps,
                source=source,
                carry=carry,
                uses_data=True,
            )
        )
        device = "cuda" if q.method.value == "fp16" or TARGETS.get(q.target).gpu else "cpu"
        precision = q.stage_name.split("-", 1)[0]
        stages.append(_keep_stage(cfg, q.stage_name, precision, q.keep, device, (q.stage_name, *deps), carry))
    if cfg.export is not None:
        export = cfg.export.export_config(cfg.data, cfg.target_sensitivity)
        stages.append(
            Stage("bundle", "export", "bundle", export, _export, deps, source=source, carry=carry, uses_data=True)
        )
        if any(r.name == "fp16" and r.source == ("bundle",) for r in rows_of(cfg)):
            stages.append(
                _keep_stage(
                    cfg, "fp16", "fp16", cfg.export.keep, "cuda", ("bundle", *deps), carry, child_source="bundle"
                )
            )
    for row in rows_of(cfg):
        for stage, src in zip(row.stages, row.source):
            ev = EvalStage(precision=row.precision, target_sensitivity=cfg.target_sensitivity)
            inputs = (src, "select") if src == "pruned" or row.precision else (src,)
            stages.append(
                Stage(
                    f"eval-{stage}",
                    "evaluate",
                    f"{EVAL_DIR}/{stage}.json",
                    ev,
                    _evaluate,
                    inputs,
                    source=src,
                    uses_data=True,
                )
            )
    if cfg.bench is not None:
        rows = [(r.stages[0], r.source[0], r.precision) for r in rows_of(cfg)]
        bench = BenchStage(rows=rows, bench=cfg.bench.bench_config())
        stages.append(Stage("bench", "bench", BENCH_FILE, bench, _bench, tuple(dict.fromkeys(s for _, s, _ in rows))))
    return add_runtime_stages(cfg, stages, rows_of(cfg))  # runtime bundles when bench.backends lists openvino...


def report_stage(cfg: PipelineConfig, stages: list[Stage]) -> Stage:
    """The last stage: the HTML report over every evaluation, the benchmark and the KD comparison."""
    deps = tuple(s.name for s in stages if s.kind in ("evaluate", "bench", "select", "handoff"))
    return Stage("report", "report", REPORT_FILE, cfg.report, _report, deps)


# ---------------------------------------------------------------------------------------------------------------
# Teacher, baseline and student


def _teacher_stages(cfg: PipelineConfig, stages: list[Stage]) -> Callable[[int], str]:
    t = cfg.teacher
    if t.mode == "train":
        stages += [_train_stage(cfg, f"teacher{_suffix(i)}", "train", cfg.seed + i, ()) for i in range(cfg.seeds)]
        return lambda i: f"teacher{_suffix(i)}"
    if t.mode == "import":
        imp = ImportStage(
            model=t.model,
            checkpoint=str(Path(t.checkpoint).resolve()),
            data=cfg.data,
            checkpoint_sha256=_file_hash(t.checkpoint),
            small_input=t.small_input,
            input_size=t.input_size,
            channels=t.channels,
            intended_use=cfg.intended_use,
        )
        stages.append(Stage("teacher", "import", "teacher", imp, _import, uses_data=True))
    else:
        path = t.path.removeprefix("onnx:")
        ref = ReferenceStage(path=str(Path(path).resolve()), onnx=t.path.startswith("onnx:") or path.endswith(".onnx"))
        stages.append(Stage("teacher", "reference", ref.path, ref, _reference))
    return lambda i: "teacher"


def _file_hash(path: str | None) -> str | None:
    return sha256_file(path) if path and Path(path).is_file() else None


def _train_stage(cfg: PipelineConfig, name: str, kind: str, seed: int, teachers: tuple[str, ...]) -> Stage:
    """A training (``teachers`` empty) or distillation stage; ``teachers`` and the cache are named by stage here and
    resolved to paths in the run directory when it runs (a moved run directory keeps its keys)."""
    section = cfg.teacher if name.startswith("teacher") else cfg.student
    cache = CacheSettings(dir=f"teacher_cache/{name}", topk=cfg.distill.cache_topk)
    run = DistillConfig(
        student=section.model,
        data=cfg.data,
        teachers=list(teachers),
        losses=list(cfg.distill.losses) if teachers else ["ce:1"],
        cache=cache if teachers and cfg.distill.cache_teacher else None,
        small_input=section.small_input,
        channels=section.channels,
        input_size=section.input_size,
        pretrained=section.pretrained,
        train=section.train.model_copy(update={"seed": seed}),
        intended_use=cfg.intended_use,
    )
    return Stage(name, kind, name, run, _train, teachers, uses_data=True, resumable=True)


def _budget_stage(cfg: PipelineConfig, teacher: str) -> Stage:
    assert cfg.budget is not None
    train = cfg.student.train.model_copy(update={"seed": cfg.seed})
    search = budget_search_config(cfg.budget, data=cfg.data, teacher=teacher, losses=cfg.distill.losses, train=train)
    return Stage("student", "search", "student", search, run_budget_search, (teacher,), uses_data=True)


def _train(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    run = st.config
    assert isinstance(run, DistillConfig)
    cache = run.cache.model_copy(update={"dir": str(r.path(run.cache.dir))}) if run.cache else None
    run = run.model_copy(
        update={
            "teachers": [r.teacher_ref(t) for t in run.teachers],
            "cache": cache,
            "trust_pickle": r.cfg.teacher.trust_pickle,
            "download": r.cfg.download,
            "resume": resume,
        }
    )
    card = run_training(run, r.path(st.output), data=r.data, overwrite=True, progress=r.progress, command=r.command(st))
    return {
        "val": _scalars(card.metrics.get("val", {})),
        "test": _scalars(card.metrics.get("test", {})),
        "best_epoch": card.metrics.get("best_epoch", {}).get("epoch"),
        "params": card.params,
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _import(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    t = st.config
    assert isinstance(t, ImportStage)
    card = import_model(
        t.checkpoint,
        model=t.model,
        data=t.data,
        out=r.path(st.output),
        small_input=t.small_input,
        in_chans=3 if t.channels.value == "repeat" else None,
        input_size=t.input_size,
        trust_pickle=r.cfg.teacher.trust_pickle,
        intended_use=t.intended_use,
    )
    return {"params": card.params}


def _reference(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    teacher = r.load(st.name)  # checks that it loads and fits the data
    return {"kind": teacher.kind, "num_classes": teacher.num_classes}


# ---------------------------------------------------------------------------------------------------------------
# Distillation against the baseline


def _select(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    s = st.config
    assert isinstance(s, SelectStage)
    students = [n for n in st.inputs if n.startswith("student")]
    baselines = [n for n in st.inputs if n.startswith("baseline")]
    models = {"student": r.load("student"), **({"baseline": r.load("baseline")} if baselines else {})}
    teacher_card = r.card(st.inputs[0])
    diagnosis = diagnose(
        r.load(st.inputs[0]),
        models,
        r.data,
        augment=s.augment,
        seed=s.seed,
        samples=s.samples,
        teacher_params=teacher_card.params if teacher_card else None,
        student_params=r.card("student").params,
        losses=final_losses(r.path("student")),
    )
    metric = resolve_metric(s.metric, r.data.task)  # `auto`: the task's deciding metric
    secondary = secondary_metrics(metric, r.data.task)
    cis: dict[str, tuple[float, float]] = {}
    if baselines:  # every metric on the same bootstrap draws of the validation set
        y = split_logits(models["student"], r.data, "val")[1]
        cis = bootstrap_gains(
            [split_logits(r.load(n), r.data, "val")[0] for n in students],
            [split_logits(r.load(n), r.data, "val")[0] for n in baselines],
            y,
            r.data.task,
            [metric, *secondary],
            seed=s.seed,
        )
    cmp = compare_students(
        [r.card(n) for n in students],
        [r.card(n) for n in baselines] or None,
        metric=metric,
        keep=s.keep.value,
        diagnosis=diagnosis,
        val_ci=cis.get(metric),
        secondary=secondary,
        secondary_ci=cis,
    )
    record = {
        **cmp.model_dump(mode="json"),
        "chosen_path": cmp.chosen,
        "chosen_sha256": artifact_hash(r.path(cmp.chosen)),
    }
    atomic_write_text(r.path(st.output), json.dumps(record, indent=2) + "\n")
    return {"chosen": cmp.chosen, "helps": cmp.helps, "message": cmp.message, "gain_val": cmp.gain_val}


# ---------------------------------------------------------------------------------------------------------------
# Compression, export, evaluation, benchmark, report


def _prune(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    s = st.config
    assert isinstance(s, PruneStage)
    teacher = r.teacher_ref(s.recovery_teacher) if s.recovery_teacher else None
    report = prune_model_dir(
        r.final_fp32(st.source or "select"),
        r.path(st.output),
        s.prune.model_copy(update={"teacher": teacher}),
        data=r.data,
        latency=model_latency_ms,
        width_probe=width_multiple,
        overwrite=True,
        progress=r.progress,
        command=r.command(st),
    )
    return {
        "macs_kept": report.after.macs / report.before.macs,
        "params": report.after.params,
        "target_met": report.target_met,
        "test": _scalars(report.metrics_after.get("test", {})),
    }


def _quantize(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    s = st.config
    assert isinstance(s, QuantizeStage) and st.source is not None
    res = quantize_model_dir(
        r.final_fp32(st.source),
        r.path(st.output),
        s.quantize,
        data=r.data,
        latency=onnx_latency_ms,
        overwrite=True,
        progress=r.progress,
        command=r.command(st),
        target_sensitivity=s.target_sensitivity,
    )
    return {"delta": res.delta, "sizes": res.sizes, "precision": res.precision}


def _export(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    assert st.source is not None
    manifest = export_bundle(
        r.final_fp32(st.source), r.path(st.output), st.config, overwrite=True, command=r.command(st), log=r.log
    )
    return {"files": [f.name for f in manifest.model_files()]}


def _keep_stage(
    cfg: PipelineConfig,
    child: str,
    precision: str | None,
    keep: HandoffKeep,
    device: str | None,
    inputs: tuple[str, ...],
    carry: str | None,
    *,
    child_source: str | None = None,
) -> Stage:
    """``keep-CHILD``: is ``child`` (a row; its file of ``precision``) carried forward over its FP32 parent?"""
    bench = (cfg.bench or BenchSection()).bench_config()
    handoff = HandoffStage(
        child=child,
        child_source=child_source or child,
        precision=precision,
        keep=keep,
        device=device,
        metric=cfg.student.train.select_metric,
        handoff=cfg.handoff,
        bench=bench,
    )
    return Stage(
        KEEP_PREFIX + child,
        "handoff",
        f"{HANDOFF_DIR}/{child}.json",
        handoff,
        _keep,
        inputs,
        source=None if carry else "select",
        carry=carry,
        uses_data=True,
    )


def _val_metrics(r: PipelineRunner, path: Path, onnx: bool) -> dict[str, Any]:
    """The metrics of `edgekd eval` on the validation split (cached per artifact within the run)."""
    key = (str(path.resolve()), artifact_hash(path))
    if key not in r.val_cache:
        model = load_teacher(f"onnx:{path}" if onnx else str(path), data=r.data)
        r.val_cache[key] = compute_metrics(*split_logits(model, r.data, "val"), r.data.task)
    return r.val_cache[key]


def _deciding(metric: str, parent: dict[str, Any], child: dict[str, Any]) -> tuple[str, float | None, float | None]:
    """The run's deciding metric on validation, or accuracy when it is ``loss`` or undefined there (NaN)."""
    vals = (parent.get(metric), child.get(metric))
    if all(isinstance(v, float) and v == v for v in vals):
        return metric, vals[0], vals[1]
    return "acc", parent.get("acc"), child.get("acc")


def _timed_pair(
    r: PipelineRunner, source: str, s: HandoffStage, parent: Path, child: Path
) -> tuple[Path, Path, tuple[str | None, str | None]]:
    """What the hand-off times: both runtime bundles at their precisions when the run made them (every runtime of
    ``bench.backends``), else the FP32 model directory and the child's file, as they are."""
    parent_rt = runtime_bundle(r, r.chosen() if source == "select" else source)
    child_rt = runtime_bundle(r, s.child_source)
    if parent_rt is not None and child_rt is not None:
        return parent_rt, child_rt, ("fp32", s.precision or "fp32")
    return parent, child, (None, None)


def _keep(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    s, source = st.config, st.source
    assert isinstance(s, HandoffStage) and source is not None
    parent_path, child_path = r.final_fp32(source), r.artifact_path(s.child_source, s.precision)
    timed = _timed_pair(r, source, s, parent_path, child_path)
    bench = s.bench
    devices = bench_devices(bench.backends, bench.devices, bench.settings())
    targeted = [d for d in devices if s.device in (None, d)]
    backends = usable_backends(bench.backends, targeted, bench) if bench.backends else None
    comparison, unmeasured = None, None
    if targeted and backends != []:
        comparison = compare_latency(
            str(timed[0]),
            str(timed[1]),
            backends=backends,
            devices=targeted,
            batches=bench.batches,
            settings=bench.settings(),
            rounds=s.handoff.rounds,
            precisions=timed[2],
        )
        if not comparison.results:
            unmeasured = "; ".join(sorted({x.reason for x in comparison.skipped})) or "nothing ran"
    elif targeted:
        unmeasured = f"none of bench.backends ({', '.join(bench.backends or ())}) runs on {', '.join(targeted)} here"
    else:
        unmeasured = f"{s.device} is not among the bench devices ({', '.join(devices) or 'none'})"
    metric, parent_val, child_val = _deciding(
        task_select_metric(s.metric, r.data.task),  # a segmenter's hand-off is judged on Dice
        _val_metrics(r, parent_path, False),
        _val_metrics(r, child_path, s.precision is not None),
    )
    d = decide(
        stage=s.child,
        parent=r.chosen() if source == "select" else source,
        keep=s.keep.value,
        metric=metric,
        parent_val=parent_val,
        child_val=child_val,
        max_drop=s.handoff.max_drop,
        latency=comparison.results if comparison else (),
        unmeasured=unmeasured,
        target_device=s.device,
    )
    d = d.model_copy(update={"parent_artifact": r.rel(parent_path), "child_artifact": r.rel(child_path)})
    record = {
        **d.model_dump(mode="json"),
        "comparison": comparison.model_dump(mode="json", exclude={"results"}) if comparison else None,
    }
    atomic_write_text(r.path(st.output), json.dumps(record, indent=2) + "\n")
    r.log(f"[{'green' if d.kept else 'yellow'}]{escape(d.line)}[/]")
    return d.model_dump(mode="json")


def _evaluate(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    s = st.config
    assert isinstance(s, EvalStage) and st.source is not None
    name = st.name.removeprefix("eval-")
    model, info = r.artifact(name, st.source, s.precision)
    res = evaluate_artifact(model, r.data, s.target_sensitivity)
    write_evaluation(res, r.path(st.output), {"stage": name, **info})
    return {"test": _scalars(res["test"]), "val": _scalars(res["val"])}


def _bench(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    s = st.config
    assert isinstance(s, BenchStage)
    if any(x.kind == "runtimes" for x in r.stages.values()):  # each row's runtime bundle on every runtime
        report = bench_rows(r, s.rows, s.bench, r.progress)
    else:
        paths = [str(r.artifact_path(source, precision)) for _, source, precision in s.rows]
        report = run_benchmark(paths, s.bench, progress=r.progress)
    write_json(report, r.path(st.output))
    return {"results": len(report.results), "skipped": len(report.skipped)}


def _report(r: PipelineRunner, st: Stage, resume: bool) -> dict[str, Any]:
    path = r.write_report()
    return {"path": str(path)}
