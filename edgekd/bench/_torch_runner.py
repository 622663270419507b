"""The ``torch`` backend: a model directory in eager PyTorch (optionally compiled or CUDA-graphed).

Options: fp32/fp16/bf16 (weights and input cast to the dtype), ``channels_last`` (NHWC), ``torch.compile``
(default mode), CUDA graphs (the forward pass captured once on a side stream and replayed: no per-kernel
launch cost, as in trtexec's ``--useCudaGraph``), CPU thread count (``torch.set_num_threads``, restored on
close). Inference runs under ``torch.inference_mode``.

Example:
    >>> with TorchRunner() as r:
    ...     r.load(target, "cpu", 1, BenchSettings(threads=2))
    ...     r.run()
"""

from __future__ import annotations

from typing import Any

from edgekd.bench._artifacts import Artifact, ArtifactKind
from edgekd.bench._runners import RUNNERS, Runner, Target, cuda_unavailable_reason
from edgekd.bench._schema import BenchSettings
from edgekd.errors import DependencyError, InvalidInputError
from edgekd.modeldir import load_model_dir

__all__ = ["TorchRunner"]

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@RUNNERS.register("torch", description="PyTorch eager / torch.compile / CUDA graphs on a model directory")
class TorchRunner(Runner):
    backend = "torch"
    kinds = frozenset({ArtifactKind.MODEL_DIR})

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = None
        self.x: Any = None
        self.out: Any = None
        self.graph: Any = None
        self.stream: Any = None
        self._threads_before: int | None = None

    @classmethod
    def unavailable(cls, device: str, settings: BenchSettings) -> str | None:
        if device == "cuda":
            return cuda_unavailable_reason()
        if settings.cuda_graphs:
            return "CUDA graphs need --device cuda"
        return None

    @classmethod
    def targets(cls, artifact: Artifact, precision: str | None) -> tuple[list[Target], str | None]:
        if artifact.kind is not ArtifactKind.MODEL_DIR:
            return [], "the torch backend runs model directories (ONNX files and bundles: use --backend ort)"
        precision = precision or "fp32"
        if precision not in _DTYPES:
            return [], f"the torch backend runs fp32/fp16/bf16, not {precision} (quantized models: ONNX on ort)"
        return [Target(artifact=artifact, file=None, precision=precision, name=artifact.name)], None

    def load(self, target: Target, device: str, batch: int, options: BenchSettings) -> None:
        import torch

        if target.artifact.input_shape is None:
            raise InvalidInputError(f"cannot tell the input shape of {target.artifact.given}")
        dtype = getattr(torch, _DTYPES[target.precision])
        if device == "cpu" and options.threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(options.threads)
        shape = (batch, *target.artifact.input_shape)
        # NHWC only exists for 4-d tensors; other inputs keep the default layout.
        fmt = torch.channels_last if options.channels_last and len(shape) == 4 else torch.contiguous_format
        model, _ = load_model_dir(target.artifact.path)
        self.model = model.eval().to(device=device, dtype=dtype, memory_format=fmt)
        self.x = torch.randn(shape, device=device).to(dtype=dtype, memory_format=fmt)
        if options.compile:
            self._compile(torch)
        if device == "cuda":
            self.stream = torch.cuda.current_stream()
        if options.cuda_graphs:
            self._capture_graph(torch)
        self.options_used = {
            "threads": torch.get_num_threads() if device == "cpu" else None,
            "channels_last": options.channels_last,
            "compile": options.compile,
            "cuda_graphs": options.cuda_graphs,
            "dtype": _DTYPES[target.precision],
        }

    def _compile(self, torch: Any) -> None:
        """``torch.compile`` compiles lazily; run once here so a missing toolchain is a clear error, not a crash."""
        self.model = torch.compile(self.model)
        try:
            with torch.inference_mode():
                self.model(self.x)
        except Exception as e:  # inductor raises many types (BackendCompilerFailed, CalledProcessError, ...)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DependencyError(
                f"torch.compile failed: {msg}", "install a C++ compiler (CPU) or triton (CUDA), or drop --compile"
            ) from e

    def _capture_graph(self, torch: Any) -> None:
        """Capture one forward pass into a CUDA graph; ``run`` then replays it on the static input."""
        if self.stream is None:
            raise DependencyError("CUDA graphs need --device cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        # Warm-up on a side stream before capture, as the CUDA-graph docs require (lazy init, autotuning).
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):
                self.model(self.x)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.out = self.model(self.x)

    def run(self) -> None:
        import torch

        if self.graph is not None:
            self.graph.replay()
            return
        with torch.inference_mode():
            self.out = self.model(self.x)

    def sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()  # GPU sync point (host timer only; CUDA events need no host sync)

    def cuda_stream(self) -> Any | None:
        return self.stream

    def close(self) -> None:
        import torch

        self.model = self.x = self.out = self.graph = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        if self.stream is not None:
            self.stream = None
            torch.cuda.empty_cache()
