"""The ``openvino`` backend: a bundle's OpenVINO IR (``model.xml``) on OpenVINO's CPU plugin.

Configured explicitly, like ONNX Runtime, because the plugin's defaults depend on the machine
(:func:`~edgekd.export.ov_config`): ``INFERENCE_NUM_THREADS`` (``--threads``, default the physical core count,
the same number ORT gets), ``PERFORMANCE_HINT=LATENCY``, ``NUM_STREAMS=1`` (one request at a time, as the
timing loop issues them) and ``INFERENCE_PRECISION_HINT=f32`` (the plugin would otherwise compute FP32 files
in BF16 on AVX512-BF16/AMX CPUs). The properties the compiled model reports back are recorded in the result's
``options``. The input tensor is set on the infer request once in :meth:`load`; :meth:`run` is
``start_async()`` + ``wait()`` on it: synchronous for the caller, run on the compiled model's CPU stream (the
executor the properties above configure), with no per-call dict of NumPy output copies. Python's ``infer()``
runs OpenVINO's synchronous pipeline in the calling thread instead and measured slower and far noisier on a
loaded 2-vCPU VM (batch 32: 0.6-3.4 ms against 0.55 ms, interleaved); edgekd's runner timed ``infer()`` before,
and an own-API loop that called ``infer({0: x})`` "agreed" with it by paying the same cost.
``benchmarks/runtime_check.py`` times both ways against this runner.

Example:
    >>> with OpenVinoRunner() as r:
    ...     r.load(target, "cpu", 32, BenchSettings(threads=2))
    ...     r.run()
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekd.bench._artifacts import Artifact, ArtifactKind
from edgekd.bench._runners import RUNNERS, Runner, SkipConfig, Target, physical_cores
from edgekd.bench._schema import BenchSettings
from edgekd.errors import DependencyError
from edgekd.export import OPENVINO_EXTRA, compile_openvino, require_openvino

__all__ = ["OpenVinoRunner", "runtime_targets"]

_REPORTED = (
    "INFERENCE_NUM_THREADS",
    "PERFORMANCE_HINT",
    "NUM_STREAMS",
    "INFERENCE_PRECISION_HINT",
    "ENABLE_CPU_PINNING",
    "ENABLE_HYPER_THREADING",
    "EXECUTION_MODE_HINT",
)


def runtime_targets(
    artifact: Artifact, precision: str | None, kind: str, export_hint: str
) -> tuple[list[Target], str | None]:
    """The files of ``kind`` of a bundle at ``precision`` (what the openvino and executorch runners run)."""
    files = [f for f in artifact.files if f.kind == kind]
    if not files:
        return [], f"no {kind} file in this artifact ({export_hint})"
    chosen = [f for f in files if precision in (None, f.precision)]
    if not chosen:
        have = ", ".join(sorted({f.precision for f in files}))
        return [], f"no {precision} {kind} file in this artifact (it has {have})"
    return [
        Target(artifact=artifact, file=f.path, precision=f.precision, name=f"{artifact.name}/{f.path.name}")
        for f in chosen
    ], None


@RUNNERS.register("openvino", description="OpenVINO CPU plugin (a bundle's model.xml)")
class OpenVinoRunner(Runner):
    backend = "openvino"
    kinds = frozenset({ArtifactKind.BUNDLE})
    cpu_only = True  # its default device is the CPU on a CUDA machine too

    def __init__(self) -> None:
        super().__init__()
        self.compiled: Any = None
        self.request: Any = None

    @classmethod
    def unavailable(cls, device: str, settings: BenchSettings) -> str | None:
        try:
            require_openvino()
        except DependencyError:
            return f"openvino is not installed ({OPENVINO_EXTRA})"
        if device != "cpu":
            return "edgekd runs OpenVINO on its CPU plugin only (--device cpu)"
        return None

    @classmethod
    def targets(cls, artifact: Artifact, precision: str | None) -> tuple[list[Target], str | None]:
        return runtime_targets(artifact, precision, "openvino", "export it with --format openvino")

    def load(self, target: Target, device: str, batch: int, options: BenchSettings) -> None:
        ov = require_openvino()
        threads = options.threads or physical_cores()
        self.compiled = compile_openvino(target.file, threads=threads)
        port = self.compiled.inputs[0]
        shape = port.get_partial_shape()
        if shape[0].is_static and shape[0].get_length() != batch:
            raise SkipConfig(f"the IR has a fixed batch of {shape[0].get_length()} (export with a dynamic batch)")
        sample = target.artifact.input_shape or tuple(d.get_length() for d in list(shape)[1:])
        x = np.random.default_rng(0).standard_normal((batch, *sample)).astype(np.float32)
        self.request = self.compiled.create_infer_request()
        self.request.set_input_tensor(ov.Tensor(x))
        self.request.infer()  # the first call allocates the outputs for this shape
        self.options_used = {
            "threads": threads,
            "device": "CPU",
            "properties": {k: str(self.compiled.get_property(k)) for k in _REPORTED},
            "openvino": ov.__version__,
            "file": str(target.file),
        }

    def run(self) -> None:
        self.request.start_async()
        self.request.wait()  # the CPU plugin's inference is done when wait() returns

    def close(self) -> None:
        self.request = None
        self.compiled = None
