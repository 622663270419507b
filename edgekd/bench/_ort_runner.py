"""The ``ort`` backend: ONNX Runtime on the CPU, CUDA or TensorRT execution provider.

The session is configured explicitly, because ORT's defaults depend on the machine: ``intra_op_num_threads``
(default: the physical core count, so a result says how many threads it used), ``inter_op_num_threads=1``,
sequential execution, and the graph optimisation level. Inputs are bound once with an IOBinding as
``OrtValue`` on the target device, and outputs are re-bound to the buffers of the first run, so a timed call
copies nothing between host and device and allocates no output. ORT's ``Run`` synchronises the execution
provider's stream before it returns, so the host clock around it times finished work.

A model directory runs as a temporary fp32 ONNX export (see :func:`~edgekd.bench._artifacts.onnx_for_model_dir`).

Example:
    >>> with OrtRunner() as r:
    ...     r.load(target, "cpu", 32, BenchSettings(threads=4))
    ...     r.run()
"""

from __future__ import annotations

import tempfile
from typing import Any

import numpy as np

from edgekd.bench._artifacts import Artifact, ArtifactKind, onnx_for_model_dir
from edgekd.bench._runners import RUNNERS, Runner, SkipConfig, Target, cuda_unavailable_reason, physical_cores
from edgekd.bench._schema import BenchSettings, OrtOptLevel, OrtProvider
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError

__all__ = ["OrtRunner", "make_session_options", "resolve_providers"]

_PROVIDER_NAMES = {
    OrtProvider.CPU: "CPUExecutionProvider",
    OrtProvider.CUDA: "CUDAExecutionProvider",
    OrtProvider.TENSORRT: "TensorrtExecutionProvider",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise DependencyError("onnxruntime is not installed", "pip install onnxruntime (or onnxruntime-gpu)") from e
    return onnxruntime


def make_session_options(threads: int, opt_level: OrtOptLevel = OrtOptLevel.ALL) -> Any:
    """Explicit ONNX Runtime session options: ``threads`` intra-op threads, 1 inter-op, sequential."""
    ort = _ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        OrtOptLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        OrtOptLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        OrtOptLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        OrtOptLevel.DISABLE: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[OrtOptLevel(opt_level)]
    so.log_severity_level = 3  # errors only: provider fallback is detected and reported below
    return so


def _provider_for(device: str, provider: OrtProvider) -> OrtProvider:
    if provider is OrtProvider.AUTO:
        return OrtProvider.CUDA if device == "cuda" else OrtProvider.CPU
    return provider


def resolve_providers(device: str, provider: OrtProvider, precision: str) -> list[Any]:
    """The provider list for a session (the requested one first, then its fallbacks)."""
    p = _provider_for(device, provider)
    if p is OrtProvider.CPU:
        return ["CPUExecutionProvider"]
    if p is OrtProvider.CUDA:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    cache = tempfile.gettempdir() + "/edgekd-ort-trt-cache"
    trt_opts = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": cache,
        "trt_fp16_enable": "True" if precision == "fp16" else "False",
    }
    return [("TensorrtExecutionProvider", trt_opts), "CUDAExecutionProvider", "CPUExecutionProvider"]


@RUNNERS.register("ort", description="ONNX Runtime (CPU, CUDA, TensorRT execution providers)")
class OrtRunner(Runner):
    backend = "ort"
    kinds = frozenset({ArtifactKind.MODEL_DIR, ArtifactKind.ONNX, ArtifactKind.BUNDLE})

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None
        self.binding: Any = None
        self.device = "cpu"

    @classmethod
    def unavailable(cls, device: str, settings: BenchSettings) -> str | None:
        try:
            ort = _ort()
        except DependencyError as e:
            return e.message
        p = _provider_for(device, settings.ort_provider)
        if (device == "cpu") != (p is OrtProvider.CPU):
            return f"--ort-provider {p.value} does not run on --device {device}"
        if device == "cuda" and (reason := cuda_unavailable_reason()):
            return reason
        if _PROVIDER_NAMES[p] not in ort.get_available_providers():
            return f"onnxruntime has no {_PROVIDER_NAMES[p]} here (install onnxruntime-gpu for CUDA/TensorRT)"
        return None

    @classmethod
    def targets(cls, artifact: Artifact, precision: str | None) -> tuple[list[Target], str | None]:
        if artifact.kind is ArtifactKind.MODEL_DIR:
            if precision not in (None, "fp32"):
                return [], f"ort runs a model directory as an fp32 ONNX export, not {precision} (export one first)"
            return [Target(artifact=artifact, file=None, precision="fp32", name=artifact.name)], None
        files = [f for f in artifact.files if f.kind == "onnx"]
        if not files:
            return [], "no ONNX file in this artifact (engines run on --backend trt)"
        chosen = [f for f in files if precision in (None, f.precision)]
        if not chosen:
            have = ", ".join(sorted({f.precision for f in files}))
            return [], f"no {precision} ONNX file in this artifact (it has {have})"
        bundle = artifact.kind is ArtifactKind.BUNDLE
        return [
            Target(
                artifact=artifact,
                file=f.path,
                precision=f.precision,
                name=f"{artifact.name}/{f.path.name}" if bundle else artifact.name,
            )
            for f in chosen
        ], None

    def load(self, target: Target, device: str, batch: int, options: BenchSettings) -> None:
        ort = _ort()
        path = target.file if target.file is not None else onnx_for_model_dir(target.artifact)
        threads = options.threads or physical_cores()
        providers = resolve_providers(device, options.ort_provider, target.precision)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=make_session_options(threads, options.ort_opt_level), providers=providers
            )
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            raise ArtifactError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}") from e
        wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if self.session.get_providers()[0] != wanted:  # ORT falls back silently; a benchmark must not
            raise DependencyError(
                f"onnxruntime could not start {wanted} (it fell back to {self.session.get_providers()[0]})",
                "check the CUDA/TensorRT libraries",
            )
        self.device = device
        self._bind(ort, batch, target.artifact.input_shape)
        self.options_used = {
            "threads": threads,
            "inter_op_threads": 1,
            "providers": self.session.get_providers(),
            "opt_level": OrtOptLevel(options.ort_opt_level).value,
            "onnx_file": str(path),
        }

    def _bind(self, ort: Any, batch: int, sample_shape: tuple[int, ...] | None) -> None:
        """Bind device-resident inputs once, run once, and re-bind the outputs to the buffers it produced."""
        rng = np.random.default_rng(0)
        self.binding = self.session.io_binding()
        for inp in self.session.get_inputs():
            shape = _concrete_shape(inp.name, inp.shape, batch, sample_shape)
            dtype = _np_dtype(inp.type)
            arr = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
            self.binding.bind_ortvalue_input(inp.name, ort.OrtValue.ortvalue_from_numpy(arr, self.device, 0))
        for out in self.session.get_outputs():
            self.binding.bind_output(out.name, self.device)
        self.session.run_with_iobinding(self.binding)
        for out, value in zip(self.session.get_outputs(), self.binding.get_outputs()):
            self.binding.bind_ortvalue_output(out.name, value)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def sync(self) -> None:
        if self.device != "cpu":
            self.binding.synchronize_outputs()  # device sync point (Run already synced; this makes it explicit)

    def close(self) -> None:
        self.binding = None
        self.session = None


def _np_dtype(ort_type: str) -> np.dtype:
    names = {
        "tensor(float)": "float32",
        "tensor(float16)": "float16",
        "tensor(double)": "float64",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
        "tensor(int8)": "int8",
        "tensor(uint8)": "uint8",
        "tensor(bool)": "bool",
        "tensor(bfloat16)": "float32",
    }
    if ort_type not in names:
        raise InvalidInputError(f"cannot make benchmark inputs of type {ort_type}")
    return np.dtype(names[ort_type])


def _concrete_shape(name: str, shape: list[Any], batch: int, sample: tuple[int, ...] | None) -> tuple[int, ...]:
    """The input shape at ``batch``: symbolic dims come from the artifact's per-sample shape."""
    if not shape:
        return ()
    first = shape[0]
    if isinstance(first, int) and first > 0 and first != batch:
        raise SkipConfig(f"input {name!r} has a fixed batch of {first} (export with a dynamic batch)")
    dims: list[int] = [batch]
    for k, d in enumerate(shape[1:]):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif sample is not None and len(sample) == len(shape) - 1:
            dims.append(int(sample[k]))
        else:
            raise InvalidInputError(
                f"input {name!r} has a symbolic dim {d!r} and the artifact does not say its size",
                "export with a fixed image size, or benchmark the bundle (its manifest knows)",
            )
    return tuple(dims)
