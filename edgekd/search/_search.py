"""`edgekd search`: the most accurate student that meets a measured latency budget on this device.

1. **Latency first.** Every candidate of the space (architecture x precision x runtime) is timed with random
   weights at the budget's batch into the device latency table (``DIR/device.json``; or ``--device-table`` from
   `edgekd device profile` on the target). A predictor fitted on the table (:mod:`._predict`, held-out MAPE
   reported) covers candidates the table lacks. A candidate fits when its latency at the budget's percentile is
   at most ``budget x (1 - margin)``; candidates over it are never trained.
2. **Train only what fits**, by distillation from the teacher (logits cached once), under successive halving
   (:class:`~edgekd.search.HalvingConfig`); segments are content-hashed, so a re-run skips finished ones.
3. **The winner** (best validation metric at the last rung reached) is pruned to the budget when it runs in FP32
   on ONNX Runtime (`edgekd prune --target-latency-ms`: a model that meets it prunes nothing), quantized
   (INT8: `edgekd quantize`, parity checked) or exported (`edgekd export`, parity checked) into ``DIR/bundle``,
   and its latency is **measured again** on the bundle (`edgekd bench`), not predicted.
4. ``DIR/search.json`` records every candidate (spec, measured or predicted latency, validation metrics, how far
   it trained) and the chosen one with its measured latency; ``DIR/report.html`` + ``DIR/pareto.png`` plot
   accuracy against measured latency with the budget line.

Example:
    >>> result = run_search(SearchConfig(teacher="runs/teacher", budget_ms=0.1, batch=1), "runs/search")
    >>> result.chosen.label, result.chosen.measured_ms
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekd._io import MARKER_FILE, atomic_write_text
from edgekd.bench import BenchConfig, model_latency_ms, onnx_latency_ms, run_benchmark, width_multiple
from edgekd.data import load_data
from edgekd.errors import InvalidInputError
from edgekd.export import ExportConfig, export_bundle
from edgekd.modeldir import is_model_dir, read_card
from edgekd.prune import PruneConfig, prune_model_dir
from edgekd.quantize import QuantizeConfig, quantize_model_dir
from edgekd.search._config import Engine, SearchConfig
from edgekd.search._predict import LatencyPredictor, fit_predictor
from edgekd.search._ray import halving_with_ray
from edgekd.search._report import write_search_report
from edgekd.search._result import ArrayTask, CandidateRecord, ChosenModel, SearchResult
from edgekd.search._space import (
    PRECISION_ORDER,
    Architecture,
    Candidate,
    Precision,
    enumerate_candidates,
)
from edgekd.search._table import (
    DeviceTable,
    arch_features,
    check_shape,
    count_layers,
    profile_device,
    random_card,
    read_table,
    write_table,
)
from edgekd.search._train import Training, init_model_dir, segment_key, teacher_identity, train_segment
from edgekd.students import build_model
from edgekd.teachers import load_teacher

__all__ = ["run_search", "run_search_task", "SEARCH_FILE"]

SEARCH_FILE = "search.json"
Log = Callable[[str], None]


SEARCH_MARKER = "edgekd search directory: `edgekd search` with the same --out continues it\n"


def _prepare_out(out: Path) -> None:
    """The search directory is edgekd's (a marker): new, or an earlier search's (resumed), never other files."""
    if out.is_file():
        raise InvalidInputError(f"--out {out} is a file, not a directory", "choose another --out")
    marker = out / MARKER_FILE
    ours = marker.is_file() and marker.read_text(encoding="utf-8", errors="replace") == SEARCH_MARKER
    if out.is_dir() and any(out.iterdir()) and not ours:
        raise InvalidInputError(
            f"{out} exists and is not an edgekd search directory", "choose a new --out, or an earlier search's"
        )
    out.mkdir(parents=True, exist_ok=True)
    if not ours:
        atomic_write_text(marker, SEARCH_MARKER)


def _device_table(
    cfg: SearchConfig, out: Path, shape: list[int], classes: int, progress: bool, say: Log
) -> DeviceTable:
    """The given table, the one an earlier run of this search measured, or a new measurement."""
    if cfg.device_table:
        table = read_table(cfg.device_table)
        check_shape(table, shape, classes, cfg.device_table)
        return table
    path, settings = out / "device.json", cfg.profile_settings(shape, classes)
    wanted = {c.key for c in enumerate_candidates(cfg.resolved_space)}
    if path.is_file():
        table = read_table(path)
        if table.settings == settings.model_dump(mode="json") and wanted <= {e.key for e in table.entries}:
            say(f"device table: {path} (measured by an earlier run)")
            return table
    say(f"profiling {len(wanted)} candidates with random weights at batch {cfg.batch} ...")
    table = profile_device(cfg.resolved_space, settings, progress=progress)
    write_table(table, path)
    return table


def _latencies(
    cfg: SearchConfig, table: DeviceTable, predictor: LatencyPredictor, shape: list[int]
) -> list[CandidateRecord]:
    """Every candidate with its latency at the budget's percentile (measured, else predicted) and whether it fits."""
    limit = cfg.budget_ms * (1 - cfg.margin)
    records = []
    for c in enumerate_candidates(cfg.resolved_space):
        entry = table.lookup(c, cfg.batch)
        if entry is not None:
            ms, source, macs, params = entry.percentiles[cfg.percentile.value], "measured", entry.macs, entry.params
        else:
            model = build_model(random_card(c.arch, shape, table.num_classes).spec)
            macs, params, act = arch_features(model, shape)
            ms = predictor.predict(c.runtime, c.precision.value, macs, params, act, cfg.batch, count_layers(model))
            source = "predicted" if ms is not None else "unknown"
        fits = ms is not None and ms <= limit
        records.append(
            CandidateRecord(
                label=c.label,
                key=c.key,
                candidate=c,
                latency_ms=ms,
                latency_source=source,
                fits=fits,
                macs=macs,
                params=params,
            )
        )
    for arch_key in {r.candidate.arch.key for r in records}:
        fitting = [r for r in records if r.candidate.arch.key == arch_key and r.fits]
        if fitting:
            min(fitting, key=lambda r: (PRECISION_ORDER[r.candidate.precision], r.latency_ms)).deployed = True
    return records


def _halving(
    cfg: SearchConfig,
    archs: list[Architecture],
    out: Path,
    bundle,
    deadline: float,
    progress: bool,
    say: Log,
    task: ArrayTask | None = None,
) -> tuple[list[Training], int, bool]:
    """Successive halving over ``archs``: every rung trains the survivors one segment further, keeps the best.

    With ``task`` (one job of an array), only the ``task.index``-th survivor of rung ``task.rung`` is trained;
    the earlier rungs must be finished (their segments are read, never trained here)."""
    teacher_id = teacher_identity(cfg.teacher)
    parents = {a.key: (init_model_dir(a, bundle, out / "init" / a.key, cfg.train.seed), "init") for a in archs}
    survivors, trainings, reached = list(archs), [], 0
    for rung in range(len(cfg.halving.rungs) if task is None else task.rung + 1):
        done = []
        mine = survivors if task is None or rung < task.rung else survivors[task.index : task.index + 1]
        for arch in mine:
            if time.monotonic() > deadline:
                say(f"time limit reached at rung {rung}: choosing among what has trained")
                return trainings, reached, True
            parent_dir, parent_key = parents[arch.key]
            key = segment_key(arch, cfg, bundle.spec, teacher_id, rung, parent_key)
            if task is not None and rung < task.rung and not is_model_dir(out / "trainings" / key):
                raise InvalidInputError(
                    f"rung {rung} is not finished ({arch.label} has not trained)",
                    f"run the array of rung {rung} first (--rung {rung} --task 0..{len(survivors) - 1})",
                )
            t = train_segment(arch, rung, parent_dir, key, out, cfg, bundle, progress=progress)
            say(
                f"rung {rung} ({t.epochs} epochs) {arch.label}: val {cfg.train.select_metric} {t.score:.4f}"
                + (" (trained before)" if t.reused else f" ({t.seconds:.0f} s)")
            )
            trainings.append(t)
            if t.failed:
                say(f"  {arch.label} stops: {t.failed}")
                continue
            done.append(t)
            parents[arch.key] = (Path(t.dir), key)
        reached = rung + 1
        keep = max(1, math.ceil(len(done) / cfg.halving.eta))
        best = {t.arch for t in sorted(done, key=lambda t: (-t.score, t.label))[:keep]}
        if cfg.halving.keep_alternatives:  # the zoo models as they are go the whole way
            best |= {t.arch for t in done} & set(_alternatives(cfg))
        survivors = [a for a in survivors if a.key in best]
    return trainings, reached, False


def _winner(trainings: list[Training]) -> Training | None:
    """The best validation score among the furthest-trained architectures (ties: the earlier label)."""
    ok = [t for t in trainings if not t.failed]
    if not ok:
        return None
    top = max(t.rung for t in ok)
    return min((t for t in ok if t.rung == top), key=lambda t: (-t.score, t.label))


def _copy_model(src: Path, dst: Path) -> Path:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint", "teacher_cache"))
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


def _final_model(
    cfg: SearchConfig, win: Training, rec: CandidateRecord, out: Path, bundle, say: Log
) -> tuple[Path, dict | None]:
    """``DIR/model``: the winner, pruned to the budget as a last step when it is an FP32 ONNX Runtime model."""
    c = rec.candidate
    if not (cfg.resolved_space.prune and c.precision is Precision.FP32 and c.runtime == "ort"):
        return _copy_model(Path(win.dir), out / "model"), None
    prune_cfg = PruneConfig.build(
        None,
        {
            "target": {"latency_ms": cfg.budget_ms, "batch": cfg.batch},
            "latency_margin": cfg.margin,
            "teacher": cfg.teacher,
            "train.augment": cfg.train.augment,
            "train.class_weighting": cfg.train.class_weighting,
            "train.seed": cfg.train.seed,
            "recovery_epochs": 1,
            "latency_s": max(1.0, 2 * cfg.profile.min_s),
        },
    )
    report = prune_model_dir(
        win.dir,
        out / "model",
        prune_cfg,
        data=bundle,
        latency=model_latency_ms,
        width_probe=width_multiple,
        overwrite=True,
        progress=False,
    )
    say(f"pruned to the budget: MACs kept {report.after.macs / report.before.macs:.3f}")
    return out / "model", {"macs_kept": report.after.macs / report.before.macs, "target_met": report.target_met}


def _bundle(cfg: SearchConfig, model: Path, c: Candidate, out: Path, bundle) -> Path:
    """``DIR/bundle``: INT8 through `edgekd quantize` (parity checked), the others through `edgekd export`."""
    dst = out / "bundle"
    if c.precision is Precision.INT8:
        qcfg = QuantizeConfig(target=cfg.target, kd=False)
        quantize_model_dir(model, dst, qcfg, data=bundle, latency=onnx_latency_ms, overwrite=True, progress=False)
    else:
        formats = (
            {"fp32": ["onnx"], "fp16": ["onnx", "onnx-fp16"]}[c.precision.value] if c.runtime == "ort" else [c.runtime]
        )
        export_bundle(model, dst, ExportConfig(formats=formats), overwrite=True)
    return dst


def _remeasure(cfg: SearchConfig, bundle_dir: Path, c: Candidate) -> tuple[float, dict[str, Any]]:
    """The bundle's latency measured again, `edgekd bench` style, at the budget's batch and percentile."""
    p = cfg.profile
    bench = BenchConfig(
        backends=[c.runtime],
        devices=["cpu"],
        batches=[cfg.batch],
        precision=None,
        min_s=max(1.0, p.min_s),
        min_iters=max(50, p.min_iters),
        threads=p.threads,
        roofline=False,
        keep_times=False,
        include_hostname=False,
    )
    report = run_benchmark([bundle_dir], bench)
    want = c.precision.value
    result = next((r for r in report.results if r.precision == want), report.results[0])
    ms = getattr(result.stats, f"{cfg.percentile.value}_ms")
    return float(ms), {
        "precision": result.precision,
        "p50_ms": result.stats.p50_ms,
        "p90_ms": result.stats.p90_ms,
        "threads": result.options.get("threads"),
        "cpu": report.environment.cpu.model,
    }


def _merge_trainings(records: list[CandidateRecord], trainings: list[Training]) -> None:
    """Each candidate gets its architecture's furthest training (epochs and metrics)."""
    best: dict[str, Training] = {}
    for t in trainings:
        if t.failed:
            continue
        if t.arch not in best or t.rung > best[t.arch].rung:
            best[t.arch] = t
    for r in records:
        t = best.get(r.candidate.arch.key)
        if t is not None:
            r.trained_epochs, r.val, r.test = t.epochs, t.val, t.test


def _alternatives(cfg: SearchConfig) -> list[str]:
    """The hand-configured choices: each family's zoo model as it is (width 1, its own depth)."""
    out = []
    for fam in cfg.resolved_space.families:
        model, kwargs = fam.knob()(1.0, None)
        if model == fam.model:
            out.append(Architecture(family=fam.model, model=model, kwargs=kwargs).key)
    return out


def _measured(cfg: SearchConfig, out: Path, progress: bool, say: Log):
    """Data, table, predictor and every candidate's latency; the architectures that fit (refused when none)."""
    bundle = load_data(cfg.data, seed=cfg.train.seed)
    load_teacher(cfg.teacher, data=bundle)  # a wrong teacher fails now, not after the device is profiled
    _prepare_out(out)
    shape = [bundle.channels, *bundle.image_size]
    table = _device_table(cfg, out, shape, bundle.num_classes, progress, say)
    at_batch = [e for e in table.entries if e.batch == cfg.batch] or table.entries
    predictor = fit_predictor(at_batch, percentile=cfg.percentile.value, seed=cfg.train.seed)
    if predictor.holdout_mape is not None:
        say(f"latency predictor: {predictor.holdout_mape:.1f} % MAPE on {predictor.n_holdout} held-out candidates")
    records = _latencies(cfg, table, predictor, shape)
    fitting = {r.candidate.arch.key: r.candidate.arch for r in records if r.deployed}
    if not fitting:
        fastest = min((r for r in records if r.latency_ms is not None), key=lambda r: r.latency_ms or 0.0)
        raise InvalidInputError(
            f"no candidate meets {cfg.budget_ms:g} ms at batch {cfg.batch} ({cfg.percentile.value}, margin "
            f"{cfg.margin:.0%}): the fastest is {fastest.label} at {fastest.latency_ms:.4g} ms",
            "raise --budget-ms, lower --batch, or add smaller families to --space",
        )
    say(f"{len(fitting)} of {len({r.candidate.arch.key for r in records})} architectures fit")
    return bundle, table, predictor, records, list(fitting.values())


def run_search(cfg: SearchConfig, out: str | Path, *, progress: bool = False, log: Log | None = None) -> SearchResult:
    """Search ``cfg.space`` for the most accurate student within ``cfg.budget_ms`` (see the module docstring).

    Raises:
        InvalidInputError: no candidate fits the budget (the message names the fastest), a table for another
            input, or ``out`` holding other files (exit 3).
        ArtifactError: unreadable teacher, data or table (exit 4); DependencyError: a runtime is missing (exit 5).
        VerificationError: the winner's bundle fails parity (exit 6).
    """
    say, out, start = log or (lambda _m: None), Path(out), time.monotonic()
    bundle, table, predictor, records, fitting = _measured(cfg, out, progress, say)
    deadline = start + cfg.time_limit_s
    if cfg.engine is Engine.RAY:
        left = max(1.0, deadline - time.monotonic())
        trainings, reached, timed_out = halving_with_ray(cfg, fitting, out, bundle, left, say)
    else:
        trainings, reached, timed_out = _halving(cfg, fitting, out, bundle, deadline, progress, say)
    _merge_trainings(records, trainings)
    chosen = _choose(cfg, records, trainings, out, bundle, say)
    result = SearchResult(
        budget_ms=cfg.budget_ms,
        batch=cfg.batch,
        percentile=cfg.percentile.value,
        margin=cfg.margin,
        device=table.device,
        predictor=predictor,
        candidates=records,
        trainings=trainings,
        rungs_reached=reached,
        time_limit_reached=timed_out,
        chosen=chosen,
        alternatives=_alternatives(cfg),
        wall_s=time.monotonic() - start,
        config=cfg.model_dump(mode="json"),
    )
    atomic_write_text(out / SEARCH_FILE, result.model_dump_json(indent=2) + "\n")
    write_search_report(result, out)
    return result


def run_search_task(
    cfg: SearchConfig, out: str | Path, task: ArrayTask, *, progress: bool = False, log: Log | None = None
) -> list[Training]:
    """One job of an array: train the ``task.index``-th surviving architecture of rung ``task.rung`` (nothing when
    the rung has fewer), then stop; a plain :func:`run_search` afterwards finds every finished segment."""
    say, out = log or (lambda _m: None), Path(out)
    bundle, _table, _pred, _records, fitting = _measured(cfg, out, progress, say)
    trainings, _, _ = _halving(cfg, fitting, out, bundle, float("inf"), progress, say, task=task)
    return [t for t in trainings if t.rung == task.rung]


def _choose(
    cfg: SearchConfig, records: list[CandidateRecord], trainings: list[Training], out: Path, bundle, say: Log
) -> ChosenModel | None:
    """The winner through prune / quantize / export, and its latency measured again on its bundle."""
    win = _winner(trainings)
    if win is None:
        return None
    rec = next(r for r in records if r.candidate.arch.key == win.arch and r.deployed)
    say(f"winner {rec.label}: val {cfg.train.select_metric} {win.score:.4f}, table {rec.latency_ms:.4g} ms")
    model, pruned = _final_model(cfg, win, rec, out, bundle, say)
    bundle_dir = _bundle(cfg, model, rec.candidate, out, bundle)
    ms, bench = _remeasure(cfg, bundle_dir, rec.candidate)
    say(
        f"measured again on {bundle_dir}: {ms:.4g} ms ({cfg.percentile.value}, batch {cfg.batch}) "
        + ("meets" if ms <= cfg.budget_ms else "MISSES")
        + f" the {cfg.budget_ms:g} ms budget"
    )

    card = read_card(model)
    return ChosenModel(
        label=rec.label,
        candidate=rec.candidate,
        model_dir=str(model),
        bundle=str(bundle_dir),
        table_ms=rec.latency_ms,
        measured_ms=ms,
        meets_budget=ms <= cfg.budget_ms,
        pruned=pruned,
        val=card.metrics.get("val", {}),
        test=card.metrics.get("test", {}),
        bench=bench,
    )
