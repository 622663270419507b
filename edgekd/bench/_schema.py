"""Typed records of a benchmark: settings in, results out (the ``--json`` schema, version 1).

Every number a benchmark prints is a field of one of these pydantic models, so the JSON file, the
Rich table, the CSV/Markdown exports and the CI gate read the same values. The JSON written by
``edgekd bench --json`` is :class:`BenchReport` (``schema_version: 1``); a reader refuses a newer
version rather than misreading it.

Example:
    >>> report = BenchReport.model_validate_json(Path("bench.json").read_text())
    >>> [(r.name, r.backend, r.batch, r.stats.p50_ms) for r in report.results]
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "SCHEMA_VERSION",
    "Backend",
    "BenchDevice",
    "ComputePrecision",
    "OrtOptLevel",
    "OrtProvider",
    "BenchSettings",
    "Stats",
    "MemoryInfo",
    "ArtifactInfo",
    "Roofline",
    "CpuInfo",
    "GpuInfo",
    "Environment",
    "BenchResult",
    "SkippedRun",
    "BenchReport",
    "Comparison",
    "BudgetViolation",
]

SCHEMA_VERSION = 1


class Backend(str, Enum):
    """Inference engines a runner exists for."""

    TORCH = "torch"
    ORT = "ort"
    TRT = "trt"
    OPENVINO = "openvino"
    EXECUTORCH = "executorch"


class BenchDevice(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"


class ComputePrecision(str, Enum):
    """Compute precision: the torch dtype, or which file of a bundle to run (``int8`` only for files)."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class OrtOptLevel(str, Enum):
    """ONNX Runtime graph optimisation level (``GraphOptimizationLevel.ORT_ENABLE_*``)."""

    ALL = "all"
    EXTENDED = "extended"
    BASIC = "basic"
    DISABLE = "disable"


class OrtProvider(str, Enum):
    """ONNX Runtime execution provider; ``auto`` is CPU on ``--device cpu`` and CUDA on ``--device cuda``."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    TENSORRT = "tensorrt"


class BenchSettings(BaseModel):
    """How to measure (trtexec/MLPerf method) and how to configure the runners.

    Warm-up runs until *both* ``warmup_s`` and ``warmup_iters`` are reached; the timed phase runs until
    *both* ``min_s`` and ``min_iters`` are reached (``max_s`` optionally caps it, for very slow models).

    Attributes:
        warmup_s, warmup_iters: minimum warm-up time and count.
        min_s, min_iters: minimum timed duration and count.
        max_s: stop the timed phase after this long even if ``min_iters`` is not reached (None: never).
        cv_warn: warn when the coefficient of variation exceeds this fraction.
        drift_warn: warn when the p50 of one fifth of the run differs from another's by more than this
            fraction (the machine's speed changed during the run; see :func:`~edgekd.bench.p50_drift`).
        threads: CPU threads for torch / ONNX Runtime intra-op (None: the physical core count).
        channels_last: torch NHWC memory format.
        compile: ``torch.compile`` the model.
        cuda_graphs: capture the torch forward pass in a CUDA graph (CUDA only).
        ort_opt_level: ONNX Runtime graph optimisation level.
        ort_provider: ONNX Runtime execution provider.
        roofline: measure this machine's peak matmul throughput for the roofline columns.
        keep_times: keep every per-iteration time in the results (``times_ms``).
        include_hostname: record the host name in the environment.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    warmup_s: float = Field(1.0, ge=0)
    warmup_iters: int = Field(10, ge=0)
    min_s: float = Field(3.0, ge=0)
    min_iters: int = Field(50, ge=1)
    max_s: float | None = Field(None, gt=0)
    cv_warn: float = Field(0.10, gt=0)
    drift_warn: float = Field(0.10, gt=0)
    threads: int | None = Field(None, ge=1)
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    ort_opt_level: OrtOptLevel = OrtOptLevel.ALL
    ort_provider: OrtProvider = OrtProvider.AUTO
    roofline: bool = True
    keep_times: bool = True
    include_hostname: bool = True


class Stats(BaseModel):
    """Summary of the per-iteration latencies of one configuration (milliseconds).

    Percentiles use numpy's ``linear`` method; ``std`` is the sample standard deviation (``ddof=1``);
    ``cv = std / mean``; ``throughput = batch / mean`` in samples per second. ``p50_drift`` is the largest
    over the smallest median of five consecutive slices of the run (None for short runs): how much the
    machine's speed changed during the measurement.
    """

    n: int
    total_s: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    cv: float
    throughput: float
    high_cv: bool = False
    p50_drift: float | None = None
    high_drift: bool = False
    warmup_iters: int = 0
    warmup_s: float = 0.0


class MemoryInfo(BaseModel):
    """Peak memory of one configuration.

    ``rss_peak_bytes`` is the process's peak resident set (Linux ``VmHWM``, reset before loading the
    model, so it covers this configuration only; elsewhere the largest sampled RSS).
    ``cuda_peak_allocated_bytes`` is ``torch.cuda.max_memory_allocated`` (torch's allocator only: ORT
    and TensorRT allocate outside it, so for them ``cuda_used_delta_bytes`` gives the device-wide change).
    """

    rss_peak_bytes: int | None = None
    rss_before_bytes: int | None = None
    rss_peak_is_exact: bool = False
    cuda_peak_allocated_bytes: int | None = None
    cuda_used_delta_bytes: int | None = None


class ArtifactInfo(BaseModel):
    """What was run: file, size, params and MACs (per sample) when derivable, input shapes, lineage."""

    kind: str
    file: str | None = None
    size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    input_shape: list[int] | None = None
    git_revision: str | None = None
    git_revision_source: str | None = None


class Roofline(BaseModel):
    """Achieved FLOP/s against this machine's measured fp32 matmul peak (``2 * MACs * batch / p50``)."""

    peak_gflops: float | None = None
    peak_dtype: str = "fp32"
    achieved_gflops: float | None = None
    fraction_of_peak: float | None = None


class CpuInfo(BaseModel):
    model: str
    flags: dict[str, bool] = Field(default_factory=dict)
    isa: str | None = None  # the INT8 instruction-set class (edgekd._cpu): x86-vnni, x86-avx2, arm64-dotprod, ...
    physical_cores: int | None = None
    logical_cores: int | None = None
    threads_used: int | None = None


class GpuInfo(BaseModel):
    name: str
    driver: str | None = None
    cuda: str | None = None
    capability: str | None = None
    memory_bytes: int | None = None


class Environment(BaseModel):
    """The machine and software every number was measured on."""

    timestamp: str
    hostname: str | None = None
    platform: str
    python: str
    cpu: CpuInfo
    gpus: list[GpuInfo] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    ort_providers: list[str] = Field(default_factory=list)
    git_revision: str | None = None
    peak_gflops: dict[str, float] = Field(default_factory=dict)


class BenchResult(BaseModel):
    """One measured configuration: (artifact name, backend, device, batch, precision)."""

    artifact: str
    name: str
    backend: str
    device: str
    batch: int
    precision: str
    options: dict[str, Any] = Field(default_factory=dict)
    stats: Stats
    memory: MemoryInfo = Field(default_factory=MemoryInfo)
    model: ArtifactInfo
    roofline: Roofline = Field(default_factory=Roofline)
    warnings: list[str] = Field(default_factory=list)
    times_ms: list[float] | None = None

    def key(self) -> tuple[str, str, str, int, str]:
        """The identity a baseline comparison matches on."""
        return (self.name, self.backend, self.device, self.batch, self.precision)


class SkippedRun(BaseModel):
    """A configuration that was not run, and why."""

    artifact: str
    name: str
    backend: str
    device: str
    batch: int | None = None
    precision: str | None = None
    reason: str


class BenchReport(BaseModel):
    """The ``--json`` document: environment, settings, the artifacts in command order, results and skips.

    Speedups are not stored: they are derived from ``results`` against the first artifact when rendering.
    """

    schema_version: int = SCHEMA_VERSION
    environment: Environment
    settings: BenchSettings
    artifacts: list[str] = Field(default_factory=list)
    results: list[BenchResult] = Field(default_factory=list)
    skipped: list[SkippedRun] = Field(default_factory=list)
    # The resolved BenchConfig of `edgekd bench` / run_benchmark (backends, batches, gate...); None otherwise.
    config: dict[str, Any] | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is newer than this edgekd reads ({SCHEMA_VERSION}); upgrade edgekd")
        return v


class Comparison(BaseModel):
    """One configuration of a baseline against a new run; ratios are ``new / base`` (> 1 is slower)."""

    name: str
    backend: str
    device: str
    batch: int
    precision: str
    status: str  # "ok" | "regressed" | "improved" | "new" | "missing"
    base_p50_ms: float | None = None
    new_p50_ms: float | None = None
    p50_ratio: float | None = None
    base_p90_ms: float | None = None
    new_p90_ms: float | None = None
    p90_ratio: float | None = None
    regressed_on: list[str] = Field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} [{self.backend}/{self.device}/b{self.batch}/{self.precision}]"


class BudgetViolation(BaseModel):
    """A result whose p90 latency exceeds the ``--budget-ms`` budget."""

    name: str
    backend: str
    device: str
    batch: int
    precision: str
    p90_ms: float
    budget_ms: float

    @property
    def label(self) -> str:
        return f"{self.name} [{self.backend}/{self.device}/b{self.batch}/{self.precision}]"
