"""The ``executorch`` backend: a bundle's ExecuTorch program (``model.pte``) on the XNNPACK delegate.

Threads: XNNPACK runs on ExecuTorch's process-wide thread pool, whose only control from Python is
``_unsafe_reset_threadpool`` (:func:`~edgekd.export.set_et_threads`). :meth:`load` sizes it to ``--threads``
(default: the physical core count, the number ORT and OpenVINO get) *before* loading the program, because
resizing it under a loaded XNNPACK method corrupted the heap; :meth:`close` releases the program so the next
configuration may resize it. The count read back from the pool is recorded in ``options``.

The input tensor is made once in :meth:`load`; :meth:`run` is one synchronous ``Method.execute`` on it. The
Python runtime returns fresh output tensors per call (the cost is inside the timed figure, as it is for any
caller of this API). A batch above the program's planned bound (``extra.runtimes.executorch.max_batch``) is a
skipped configuration, not an error.

Example:
    >>> with ExecuTorchRunner() as r:
    ...     r.load(target, "cpu", 1, BenchSettings(threads=2))
    ...     r.run()
"""

from __future__ import annotations

from typing import Any

import torch

from edgekd.bench._artifacts import Artifact, ArtifactKind
from edgekd.bench._ov_runner import runtime_targets
from edgekd.bench._runners import RUNNERS, Runner, SkipConfig, Target, physical_cores
from edgekd.bench._schema import BenchSettings
from edgekd.errors import DependencyError
from edgekd.export import EXECUTORCH_EXTRA, et_threads, executorch_version, load_pte, require_executorch

__all__ = ["ExecuTorchRunner"]


@RUNNERS.register("executorch", description="ExecuTorch with the XNNPACK delegate (a bundle's model.pte)")
class ExecuTorchRunner(Runner):
    backend = "executorch"
    kinds = frozenset({ArtifactKind.BUNDLE})
    cpu_only = True  # its default device is the CPU on a CUDA machine too

    def __init__(self) -> None:
        super().__init__()
        self.program: Any = None
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    @classmethod
    def unavailable(cls, device: str, settings: BenchSettings) -> str | None:
        try:
            require_executorch()
        except DependencyError:
            return f"executorch is not installed ({EXECUTORCH_EXTRA})"
        if device != "cpu":
            return "edgekd runs ExecuTorch on its XNNPACK CPU delegate only (--device cpu)"
        return None

    @classmethod
    def targets(cls, artifact: Artifact, precision: str | None) -> tuple[list[Target], str | None]:
        return runtime_targets(artifact, precision, "executorch", "export it with --format executorch")

    def load(self, target: Target, device: str, batch: int, options: BenchSettings) -> None:
        threads = options.threads or physical_cores()
        self.program = load_pte(target.file, threads=threads)
        sample = target.artifact.input_shape
        if sample is None:
            raise SkipConfig("the bundle does not say the input shape")
        self.inputs = [torch.randn((batch, *sample), generator=torch.Generator().manual_seed(0))]
        try:
            self.program.method.execute(self.inputs)  # the first call resizes the planned tensors to this batch
        except RuntimeError as e:
            self.close()
            raise SkipConfig(f"the program does not take batch {batch} (its bound is its export's max-batch)") from e
        self.options_used = {
            "threads": et_threads(),
            "delegate": "xnnpack",
            "threadpool": "executorch process-wide pool (_unsafe_reset_threadpool before load)",
            "executorch": executorch_version(),
            "file": str(target.file),
        }

    def run(self) -> None:
        self.outputs = self.program.method.execute(self.inputs)  # kept (one reference) for readers of the result

    def close(self) -> None:
        if self.program is not None:
            self.program.release()
            self.program = None
        self.inputs, self.outputs = [], []
