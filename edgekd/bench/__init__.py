"""edgekd.bench: latency and throughput of model directories, ONNX files, bundles and TensorRT engines.

Measured like trtexec and MLPerf (STYLE.md point 12): warm-up by time and count, timed iterations until both
a minimum duration and a minimum count are met, the device synchronised inside the timer (CUDA events on
GPU), every per-iteration time kept; p50/p90/p95/p99, mean, std, CV and throughput; peak memory; the
environment recorded with every number; roofline context from a measured matmul peak. A CI gate compares a
run with a baseline (p50 and p90, relative threshold *and* absolute floor) or with a latency budget.

Backends are runners with one contract (``load / run / sync / close``) in the :data:`RUNNERS` registry:
``torch`` (eager, ``torch.compile``, CUDA graphs), ``ort`` (ONNX Runtime CPU/CUDA/TensorRT providers),
``trt`` (native TensorRT 10 engines). :func:`compare_latency` times a compressed model against its parent,
interleaved over short rounds (the figure that decides whether a compression step made it faster).

Channel widths the target runs fast are measured too (:func:`cached_width_probe`, :func:`width_multiple`): a
second-long probe of conv workloads at widths that are and are not multiples of 1..32, cached per device, which
`edgekd prune --round-to auto` rounds channel counts to.

Example:
    >>> from edgekd.bench import BenchSettings, benchmark, compare_reports, load_report
    >>> report = benchmark(["runs/teacher", "runs/student"], batches=(1, 32),
    ...                    settings=BenchSettings(min_s=2, min_iters=100))
    >>> report.results[0].stats.p50_ms
    >>> bad = [c for c in compare_reports(load_report("base.json"), report, max_regression=0.1, min_abs_ms=0.05)
    ...        if c.status == "regressed"]
"""

from edgekd.bench._api import benchmark, default_backends
from edgekd.bench._artifacts import Artifact, ArtifactKind, resolve_artifact
from edgekd.bench._compare import LatencyComparison, PairLatency, RoundTiming, bench_devices, compare_latency
from edgekd.bench._config import BenchConfig, GateConfig, GateResult, check_gate, run_benchmark
from edgekd.bench._env import capture_environment
from edgekd.bench._gate import check_budget, compare_reports, enforce, parse_fraction, regressions
from edgekd.bench._latency import model_latency_ms, onnx_latency_ms
from edgekd.bench._report import (
    comparison_table,
    load_report,
    noise_warnings,
    results_table,
    speedups,
    to_csv,
    to_markdown,
    write_csv,
    write_json,
    write_markdown,
)
from edgekd.bench._roofline import measure_peak_flops
from edgekd.bench._runners import RUNNERS, Runner, SkipConfig, Target
from edgekd.bench._schema import (
    SCHEMA_VERSION,
    Backend,
    BenchReport,
    BenchResult,
    BenchSettings,
    BudgetViolation,
    Comparison,
    ComputePrecision,
    Environment,
    OrtOptLevel,
    OrtProvider,
    SkippedRun,
    Stats,
)
from edgekd.bench._stats import p50_drift, summarize
from edgekd.bench._timing import Timing, time_runner
from edgekd.bench._widths import (
    WIDTH_BACKENDS,
    WIDTH_CANDIDATES,
    ConvProbeBackend,
    WidthProbe,
    cache_dir,
    cached_width_probe,
    choose_multiple,
    probe_spatial,
    probe_widths,
    width_multiple,
)

__all__ = [
    "benchmark",
    "run_benchmark",
    "check_gate",
    "BenchConfig",
    "GateConfig",
    "GateResult",
    "compare_latency",
    "bench_devices",
    "LatencyComparison",
    "PairLatency",
    "RoundTiming",
    "model_latency_ms",
    "onnx_latency_ms",
    "width_multiple",
    "cached_width_probe",
    "probe_widths",
    "probe_spatial",
    "choose_multiple",
    "cache_dir",
    "WidthProbe",
    "ConvProbeBackend",
    "WIDTH_BACKENDS",
    "WIDTH_CANDIDATES",
    "noise_warnings",
    "default_backends",
    "compare_reports",
    "regressions",
    "enforce",
    "check_budget",
    "parse_fraction",
    "measure_peak_flops",
    "capture_environment",
    "summarize",
    "p50_drift",
    "time_runner",
    "Timing",
    "resolve_artifact",
    "Artifact",
    "ArtifactKind",
    "RUNNERS",
    "Runner",
    "Target",
    "SkipConfig",
    "load_report",
    "write_json",
    "write_csv",
    "write_markdown",
    "to_csv",
    "to_markdown",
    "results_table",
    "comparison_table",
    "speedups",
    "SCHEMA_VERSION",
    "Backend",
    "BenchReport",
    "BenchResult",
    "BenchSettings",
    "BudgetViolation",
    "Comparison",
    "Environment",
    "OrtOptLevel",
    "OrtProvider",
    "ComputePrecision",
    "SkippedRun",
    "Stats",
]

# Names this package exported before each name meant one thing (edgekd.export.Precision is a file's precision,
# edgekd.serve.Skipped an input `edgekd predict` skipped); still importable, with a DeprecationWarning.
_RENAMED = {"Precision": "ComputePrecision", "Skipped": "SkippedRun"}


def __getattr__(name: str) -> object:
    if name in _RENAMED:
        import warnings

        new = _RENAMED[name]
        warnings.warn(f"edgekd.bench.{name} is deprecated; use edgekd.bench.{new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
