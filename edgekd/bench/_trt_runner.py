"""The ``trt`` backend: a serialized TensorRT engine through the TensorRT 10.x Python API.

The engine is deserialised with ``trt.Runtime``; every I/O tensor gets a device buffer (allocated by torch,
so no extra CUDA binding package is needed) whose address is set once with
``IExecutionContext.set_tensor_address``; dynamic input shapes are fixed with ``set_input_shape`` (checked
against optimisation profile 0). :meth:`TrtRunner.run` enqueues ``execute_async_v3`` on a dedicated torch
CUDA stream, and the loop times it with CUDA events on that stream, as trtexec does.

TensorRT is imported lazily: this module loads on machines without it, and the backend then reports itself
unavailable with the reason.

Example:
    >>> with TrtRunner() as r:
    ...     r.load(target, "cuda", 8, BenchSettings())
    ...     r.run(); r.sync()
"""

from __future__ import annotations

import importlib.util
from typing import Any

from edgekd.bench._artifacts import Artifact, ArtifactKind
from edgekd.bench._runners import RUNNERS, Runner, SkipConfig, Target, cuda_unavailable_reason
from edgekd.bench._schema import BenchSettings
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError

__all__ = ["TrtRunner"]


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as e:
        raise DependencyError("TensorRT is not installed", "pip install tensorrt (needs an NVIDIA GPU)") from e
    return tensorrt


@RUNNERS.register("trt", description="native TensorRT engine (execute_async_v3, CUDA events)")
class TrtRunner(Runner):
    backend = "trt"
    kinds = frozenset({ArtifactKind.ENGINE, ArtifactKind.BUNDLE})

    def __init__(self) -> None:
        super().__init__()
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self.buffers: dict[str, Any] = {}

    @classmethod
    def unavailable(cls, device: str, settings: BenchSettings) -> str | None:
        if device != "cuda":
            return "TensorRT engines run on --device cuda"
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install tensorrt)"
        return cuda_unavailable_reason()

    @classmethod
    def targets(cls, artifact: Artifact, precision: str | None) -> tuple[list[Target], str | None]:
        files = [f for f in artifact.files if f.kind == "engine"]
        if not files:
            return [], "the trt backend runs TensorRT engines (for ONNX files use --ort-provider tensorrt)"
        chosen = [f for f in files if precision in (None, f.precision)]
        if not chosen:
            return [], f"no {precision} engine in this artifact"
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
        import torch

        trt = _trt()
        if target.file is None:
            raise ArtifactError("the trt backend needs an engine file")
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(target.file.read_bytes())
        if self.engine is None:  # TensorRT returns None (and logs) for a plan built by another version/GPU
            raise ArtifactError(
                f"TensorRT cannot deserialize {target.file}",
                "engines are tied to the TensorRT version and GPU that built them: rebuild it here",
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:
            self._set_input(trt, torch, name, batch, target.artifact.input_shape)
        for name in names:
            if name not in self.buffers:  # outputs: shapes are known once every input shape is set
                self._allocate(trt, torch, name, tuple(self.context.get_tensor_shape(name)))
        self.options_used = {"tensorrt": trt.__version__, "io_tensors": names}

    def _set_input(self, trt: Any, torch: Any, name: str, batch: int, sample: tuple[int, ...] | None) -> None:
        shape = list(self.engine.get_tensor_shape(name))
        if shape and shape[0] == -1:
            shape[0] = batch
        elif shape and shape[0] != batch:
            raise SkipConfig(f"engine input {name!r} has a fixed batch of {shape[0]}")
        for k in range(1, len(shape)):
            if shape[k] == -1:
                if sample is None or len(sample) != len(shape) - 1:
                    raise InvalidInputError(f"engine input {name!r} has a dynamic dim the artifact does not size")
                shape[k] = sample[k - 1]
        if -1 in tuple(self.engine.get_tensor_shape(name)):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                raise SkipConfig(f"shape {shape} of {name!r} is outside the engine's profile {list(lo)}..{list(hi)}")
            self.context.set_input_shape(name, shape)
        self._allocate(trt, torch, name, tuple(shape), fill=True)

    def _allocate(self, trt: Any, torch: Any, name: str, shape: tuple[int, ...], fill: bool = False) -> None:
        dtype = _torch_dtype(trt, torch, self.engine.get_tensor_dtype(name))
        buf = torch.empty(shape, dtype=dtype, device="cuda")
        if fill and dtype.is_floating_point:
            buf.normal_()
        elif fill:
            buf.zero_()
        self.buffers[name] = buf
        self.context.set_tensor_address(name, buf.data_ptr())

    def run(self) -> None:
        # Only enqueues: completion is awaited by the CUDA-event timer (or sync()).
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ArtifactError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def sync(self) -> None:
        self.stream.synchronize()  # GPU sync point

    def cuda_stream(self) -> Any | None:
        return self.stream

    def close(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()
        self.buffers = {}
        self.context = self.engine = self.stream = None


def _torch_dtype(trt: Any, torch: Any, dt: Any) -> Any:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT8: torch.int8,
        trt.DataType.INT32: torch.int32,
        trt.DataType.BOOL: torch.bool,
    }
    for attr, tdt in (("BF16", torch.bfloat16), ("INT64", torch.int64), ("UINT8", torch.uint8)):
        if hasattr(trt.DataType, attr):
            table[getattr(trt.DataType, attr)] = tdt
    if dt not in table:
        raise InvalidInputError(f"cannot allocate a TensorRT tensor of type {dt}")
    return table[dt]
