"""``benchmark()``: artifacts x backends x devices x batches -> one :class:`BenchReport`.

The plan is built first (which runner runs which file of which artifact where), so that an unavailable
backend is known before anything is timed: when the user *asked* for it (``backends=`` or ``devices=``
given) that is an error (:class:`~edgekd.errors.DependencyError`, exit 5); when it was only a default it
becomes a skipped row with the reason. Each configuration then gets a fresh runner: load, warm-up, timed
loop, close, with its memory peak tracked around it.

Example:
    >>> report = benchmark(["runs/teacher", "runs/student", "runs/student-int8.onnx"], batches=(1, 32))
    >>> [(r.name, r.backend, r.batch, round(r.stats.p50_ms, 3)) for r in report.results]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgekd._progress import stderr_console
from edgekd.bench import _et_runner, _ort_runner, _ov_runner, _torch_runner, _trt_runner  # noqa: F401 (registers)
from edgekd.bench._artifacts import Artifact, ArtifactKind, resolve_artifact
from edgekd.bench._env import capture_environment
from edgekd.bench._memory import MemoryProbe
from edgekd.bench._onnxinfo import onnx_size_bytes, read_onnx_info
from edgekd.bench._roofline import measure_peak_flops, roofline_for
from edgekd.bench._runners import RUNNERS, SkipConfig, Target, cuda_unavailable_reason, physical_cores
from edgekd.bench._schema import (
    ArtifactInfo,
    BenchDevice,
    BenchReport,
    BenchResult,
    BenchSettings,
    ComputePrecision,
    SkippedRun,
)
from edgekd.bench._stats import summarize
from edgekd.bench._timing import time_runner
from edgekd.errors import DependencyError, InvalidInputError
from edgekd.modeldir import load_model_dir
from edgekd.students import count_macs, count_params

__all__ = ["benchmark", "default_backends", "run_config"]


@dataclass(frozen=True)
class _Planned:
    target: Target
    backend: str
    device: str
    batch: int


def default_backends(artifact: Artifact) -> list[str]:
    """What fits an artifact: model dir -> torch, ort; ONNX -> ort; bundle -> ort (+ trt, openvino, executorch for
    their files); engine -> trt."""
    if artifact.kind is ArtifactKind.MODEL_DIR:
        return ["torch", "ort"]
    kinds = {f.kind for f in artifact.files}
    pairs = (("ort", "onnx"), ("trt", "engine"), ("openvino", "openvino"), ("executorch", "executorch"))
    return [b for b, k in pairs if k in kinds]


def _default_devices(backend: str) -> list[str]:
    if backend == "trt":
        return ["cuda"]
    if getattr(RUNNERS.get(backend), "cpu_only", False):  # openvino, executorch: CPU runners, CUDA or not
        return ["cpu"]
    return ["cuda"] if cuda_unavailable_reason() is None else ["cpu"]


def _validate(
    artifacts: Sequence[str],
    backends: Sequence[str] | None,
    devices: Sequence[str] | None,
    batches: Sequence[int],
    precision: str | None,
) -> None:
    if not artifacts:
        raise InvalidInputError("no artifact to benchmark", "pass model directories, ONNX files, bundles or engines")
    for b in backends or ():
        RUNNERS.get(b)  # an unknown name raises UnknownNameError with suggestions
    for d in devices or ():
        if d not in {x.value for x in BenchDevice}:
            raise InvalidInputError(f"unknown device {d!r}", "use cpu or cuda")
    if not batches or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in batches):
        raise InvalidInputError(f"batch sizes must be positive integers, got {list(batches)}")
    if precision is not None and precision not in {p.value for p in ComputePrecision}:
        raise InvalidInputError(f"unknown precision {precision!r}", "use fp32, fp16, bf16 or int8")


def _unique_names(arts: list[Artifact]) -> None:
    """Artifacts sharing a last path component get as many parent components as it takes to tell them apart.

    ``runs/a/model`` and ``runs/b/model`` become ``a/model`` and ``b/model``; the same path twice gets ``#2``.
    """
    parts = [a.path.resolve().parts for a in arts]
    for i, a in enumerate(arts):
        clash = [p for j, p in enumerate(parts) if j != i and p[-1:] == parts[i][-1:] and p != parts[i]]
        k = 1
        while any(p[-k:] == parts[i][-k:] for p in clash) and k < len(parts[i]):
            k += 1
        if clash:
            a.name = "/".join(parts[i][-k:])
    used: set[str] = set()
    for a in arts:
        base, n = a.name, 2
        while a.name in used:
            a.name, n = f"{base}#{n}", n + 1
        used.add(a.name)


def _ensure_macs(art: Artifact) -> None:
    """Count MACs of a model directory whose card does not store them (one forward pass at batch 1)."""
    if art.kind is not ArtifactKind.MODEL_DIR or art.macs is not None or art.input_shape is None:
        return

    model, _ = load_model_dir(art.path)
    art.macs = count_macs(model, (1, *art.input_shape))
    art.params = art.params if art.params is not None else count_params(model)


def _plan(
    arts: list[Artifact],
    backends: Sequence[str] | None,
    devices: Sequence[str] | None,
    batches: Sequence[int],
    precision: str | None,
    settings: BenchSettings,
) -> tuple[list[_Planned], list[SkippedRun]]:
    """Which runner runs which file where; unavailable explicit requests raise, defaulted ones are skipped."""
    planned: list[_Planned] = []
    skipped: list[SkippedRun] = []
    fitted: dict[str, bool] = {}
    for art in arts:
        for backend in backends or default_backends(art):
            runner_cls = RUNNERS.get(backend)
            targets, why = runner_cls.targets(art, precision)
            fitted[backend] = fitted.get(backend, False) or bool(targets)
            for device in devices or _default_devices(backend):
                reason = runner_cls.unavailable(device, settings)
                if reason and backends is not None:
                    raise DependencyError(f"backend {backend} on {device} is unavailable: {reason}")
                if reason or not targets:
                    skipped.append(
                        SkippedRun(
                            artifact=art.given,
                            name=art.name,
                            backend=backend,
                            device=device,
                            precision=precision,
                            reason=reason or why or "not applicable",
                        )
                    )
                    continue
                planned += [_Planned(t, backend, device, b) for t in targets for b in batches]
    _check_requests(planned, skipped, backends, devices, fitted)
    return planned, skipped


def _check_requests(
    planned: list[_Planned],
    skipped: list[SkippedRun],
    backends: Sequence[str] | None,
    devices: Sequence[str] | None,
    fitted: dict[str, bool],
) -> None:
    """An explicit backend that fits no artifact, or an explicit device nothing can run on, is an error."""
    for backend, ok in fitted.items():
        if backends is not None and not ok:
            reasons = {s.reason for s in skipped if s.backend == backend}
            raise InvalidInputError(f"backend {backend} runs none of the artifacts: {'; '.join(sorted(reasons))}")
    for device in devices or ():
        if not any(p.device == device for p in planned):
            reasons = {s.reason for s in skipped if s.device == device}
            raise DependencyError(f"nothing can run on {device}: {'; '.join(sorted(reasons))}")


def _model_info(p: _Planned) -> ArtifactInfo:
    art, target = p.target.artifact, p.target
    macs, size = art.macs, art.size_bytes
    if target.file is not None and art.kind is ArtifactKind.BUNDLE:
        size = onnx_size_bytes(target.file) if target.file.suffix == ".onnx" else target.file.stat().st_size
        if macs is None and target.file.suffix == ".onnx":
            macs = read_onnx_info(target.file).macs
    return ArtifactInfo(
        kind=art.kind.value,
        file=str(target.file) if target.file else str(art.path),
        size_bytes=size,
        params=art.params,
        macs=macs,
        input_shape=[p.batch, *art.input_shape] if art.input_shape else None,
        git_revision=art.git_revision,
        git_revision_source=art.git_revision_source,
    )


def run_config(p: _Planned, settings: BenchSettings, peak_gflops: float | None) -> BenchResult:
    """Load, warm up, time and close one configuration with a fresh runner.

    Raises:
        SkipConfig: the configuration cannot run (e.g. a fixed batch in the file).
    """
    probe = MemoryProbe(p.device)
    probe.start()
    with RUNNERS.get(p.backend)() as runner:
        runner.load(p.target, p.device, p.batch, settings)
        probe.sample()
        timing = time_runner(runner, settings)
        memory = probe.finish(cuda_allocator=p.backend == "torch")
        options = dict(runner.options_used)
    stats = summarize(
        timing.times_ms,
        batch=p.batch,
        cv_warn=settings.cv_warn,
        drift_warn=settings.drift_warn,
        warmup_iters=timing.warmup_iters,
        warmup_s=timing.warmup_s,
        total_s=timing.total_s,
    )
    warnings = []
    if stats.high_cv:
        warnings.append(f"high CV {100 * stats.cv:.0f}% > {100 * settings.cv_warn:.0f}%")
    if stats.high_drift:
        warnings.append(f"p50 drifted {100 * (stats.p50_drift - 1):.0f}% during the run")
    if stats.n < settings.min_iters:
        warnings.append(f"only {stats.n} iterations (max_s cap)")
    info = _model_info(p)
    return BenchResult(
        artifact=p.target.artifact.given,
        name=p.target.name,
        backend=p.backend,
        device=p.device,
        batch=p.batch,
        precision=p.target.precision,
        options=options,
        stats=stats,
        memory=memory,
        model=info,
        roofline=roofline_for(info.macs, p.batch, stats.p50_ms, peak_gflops),
        warnings=warnings,
        times_ms=timing.times_ms if settings.keep_times else None,
    )


def benchmark(
    artifacts: Sequence[str],
    *,
    backends: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    precision: str | None = None,
    settings: BenchSettings | None = None,
    progress: bool = False,
    verify: bool = True,
) -> BenchReport:
    """Benchmark artifacts on backends, devices and batch sizes.

    An explicitly requested backend that is unavailable raises; a defaulted one is skipped with its reason
    (in ``report.skipped``). A requested device on which nothing can run raises.

    Args:
        artifacts: model directories, ONNX files, bundles, TensorRT engines (the first is the speedup reference).
        backends: ``torch``/``ort``/``trt``; None picks what fits each artifact and skips unavailable ones.
        devices: ``cpu``/``cuda``; None picks CUDA when available (TensorRT: CUDA).
        batches: batch sizes.
        precision: ``fp32``/``fp16``/``bf16`` for torch; for ONNX/engines, which file of a bundle (None: all).
        settings: method and runner options (default :class:`BenchSettings`).
        progress: show a progress bar on stderr.
        verify: re-hash bundles against their manifests before running them (a tampered bundle raises
            :class:`~edgekd.errors.VerificationError`, exit 6); turn off only for files you trust.

    Returns:
        The report: environment, settings (threads resolved), results in plan order, skipped configurations.

    Raises:
        InvalidInputError: bad names or values (exit 3); ArtifactError: unreadable artifacts (exit 4);
        DependencyError: an explicitly requested backend/device is unavailable, or nothing could run (exit 5).
    """
    settings = settings or BenchSettings()
    _validate(artifacts, backends, devices, batches, precision)
    arts = [resolve_artifact(str(a), verify=verify) for a in artifacts]
    _unique_names(arts)
    settings = settings.model_copy(update={"threads": settings.threads or physical_cores()})
    planned, skipped = _plan(arts, backends, devices, batches, precision, settings)
    if not planned:
        reasons = "; ".join(sorted({s.reason for s in skipped})) or "no configuration"
        # Missing packages/GPUs are exit 5; a request the artifacts cannot satisfy (a precision) is exit 3.
        unavailable = any(RUNNERS.get(s.backend).unavailable(s.device, settings) for s in skipped)
        err = DependencyError if unavailable else InvalidInputError
        raise err(f"nothing could be benchmarked: {reasons}")
    for art in {id(p.target.artifact): p.target.artifact for p in planned}.values():
        _ensure_macs(art)
    env = capture_environment(threads=settings.threads, include_hostname=settings.include_hostname)
    for art in arts:  # no revision in the lineage: the working tree's, marked as such
        if art.git_revision is None and env.git_revision:
            art.git_revision, art.git_revision_source = env.git_revision, "cwd"
    peaks = (
        {d: measure_peak_flops(d, threads=settings.threads) for d in sorted({p.device for p in planned})}
        if settings.roofline
        else {}
    )
    env.peak_gflops = peaks
    results = _run_all(planned, settings, peaks, skipped, progress)
    return BenchReport(
        environment=env, settings=settings, artifacts=[a.given for a in arts], results=results, skipped=skipped
    )


def _run_all(
    planned: list[_Planned], settings: BenchSettings, peaks: dict[str, float], skipped: list[SkippedRun], progress: bool
) -> list[BenchResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: list[BenchResult] = []
    bar = Progress(
        TextColumn("bench {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr_console,
        disable=not progress,
        transient=True,
    )
    with bar:
        task = bar.add_task("", total=len(planned))
        for p in planned:
            bar.update(task, description=f"{p.target.name} {p.backend}/{p.device}/b{p.batch}")
            try:
                results.append(run_config(p, settings, peaks.get(p.device)))
            except SkipConfig as e:
                skipped.append(
                    SkippedRun(
                        artifact=p.target.artifact.given,
                        name=p.target.name,
                        backend=p.backend,
                        device=p.device,
                        batch=p.batch,
                        precision=p.target.precision,
                        reason=str(e),
                    )
                )
            bar.advance(task)
    return results
