"""TensorRT engine builds with the TensorRT Python API (10.x and 11.x); ``tensorrt`` is imported lazily.

The build follows the current API: a strongly typed network (precision comes from the ONNX: build an
FP16 engine from the ``onnx-fp16`` file, an INT8 one from a QDQ file; TensorRT 11 has no FP16 or
implicit-INT8 builder flags), the ONNX parser, one optimization profile over the batch dimension, a
workspace memory-pool limit and a timing cache file that is loaded before and saved after every build,
so repeated builds on the same GPU reuse tactic timings. The build settings and versions go to a JSON
sidecar (``model.engine.json``) rather than a header glued to the plan, so the engine stays a plain
TensorRT plan file.

Example:
    >>> meta = build_engine("model.onnx", "model.engine", min_batch=1, opt_batch=8, max_batch=32,
    ...                     workspace_mb=1024, timing_cache="~/.cache/edgekd/trt.cache")
    >>> meta["tensorrt"], meta["gpu"]
    ('10.13.0', 'NVIDIA H100 80GB HBM3')
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.modeldir import atomic_write_bytes, atomic_write_text, sha256_file

__all__ = ["require_tensorrt", "tensorrt_available", "build_engine", "run_engine", "sidecar_path"]

_INSTALL_HINT = "install TensorRT on a machine with an NVIDIA GPU (pip install 'edgekd[gpu]'), or drop 'engine'"


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def _import_tensorrt() -> ModuleType:
    try:
        import tensorrt as trt
    except ImportError as e:
        raise DependencyError(
            "building a TensorRT engine needs the tensorrt package, which is not installed", _INSTALL_HINT
        ) from e
    return trt


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA setup counts as no GPU; the builder check below is authoritative
        return False


def require_tensorrt() -> ModuleType:
    """Import TensorRT and make sure a CUDA GPU can run its builder.

    Raises:
        DependencyError: TensorRT is not installed, or no CUDA GPU is available (one line, with a hint).
    """
    trt = _import_tensorrt()
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as e:  # TensorRT raises TypeError/RuntimeError when CUDA cannot be initialised
        raise DependencyError(
            f"TensorRT {trt.__version__} is installed but cannot use a CUDA GPU "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})",
            _INSTALL_HINT,
        ) from e
    if builder is None:
        raise DependencyError(f"TensorRT {trt.__version__} found no CUDA GPU", _INSTALL_HINT)
    return trt


def tensorrt_available() -> bool:
    """Whether engines can be built here (TensorRT importable and a CUDA GPU present)."""
    try:
        require_tensorrt()
    except DependencyError:
        return False
    return True


def _network_flags(trt: ModuleType) -> int:
    # STRONGLY_TYPED exists from TensorRT 9; TensorRT 11 always builds strongly typed and ignores it.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def _parse(trt: ModuleType, network: Any, logger: Any, onnx_path: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise ArtifactError(
            f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown error'}",
            f"run `edgekd lint-onnx {onnx_path}`",
        )
    return parser


def _profile_shapes(shape: list[int], batches: tuple[int, int, int]) -> tuple[list[int], ...]:
    if any(d < 0 for d in shape[1:]):
        raise InvalidInputError(
            f"input shape {shape} has dynamic dims other than the batch", "export with a fixed input size"
        )
    if shape[0] >= 0:
        return tuple(list(shape) for _ in range(3))
    return tuple([b, *shape[1:]] for b in batches)


def _add_profile(builder: Any, network: Any, config: Any, batches: tuple[int, int, int]) -> dict[str, Any]:
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = _profile_shapes(list(tensor.shape), batches)
        profile.set_shape(tensor.name, lo, opt, hi)
        shapes[tensor.name] = {"min": lo, "opt": opt, "max": hi}
    config.add_optimization_profile(profile)
    return shapes


def _load_timing_cache(config: Any, path: Path | None) -> tuple[Any, bool]:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is not trusted silently.
    config.set_timing_cache(cache, False)
    return cache, bool(data)


def _io(network: Any) -> dict[str, list[dict[str, Any]]]:
    def info(t: Any) -> dict[str, Any]:
        return {"name": t.name, "shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1].lower()}

    return {
        "inputs": [info(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [info(network.get_output(i)) for i in range(network.num_outputs)],
    }


def _gpu_info() -> dict[str, Any]:
    if not _cuda_available():
        return {"gpu": "unknown", "compute_capability": None, "cuda": None}
    import torch

    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}


def _check_batches(min_batch: int, opt_batch: int, max_batch: int, workspace_mb: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise InvalidInputError(
            f"need 1 <= min-batch <= opt-batch <= max-batch, got {min_batch}/{opt_batch}/{max_batch}"
        )
    if workspace_mb < 1:
        raise InvalidInputError(f"workspace must be >= 1 MiB, got {workspace_mb}")


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    min_batch: int = 1,
    opt_batch: int = 8,
    max_batch: int = 32,
    workspace_mb: int = 1024,
    timing_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Build a TensorRT engine from an ONNX file and write ``engine_path`` plus its JSON sidecar.

    Args:
        onnx_path: the ONNX model (its precision decides the engine's: the network is strongly typed).
        engine_path: where to write the serialized plan; the sidecar is ``<engine_path>.json``.
        min_batch, opt_batch, max_batch: the optimization profile of a dynamic batch dimension.
        workspace_mb: the builder's workspace memory-pool limit in MiB.
        timing_cache: a timing-cache file, read when present and rewritten after the build.

    Returns:
        The sidecar contents: build settings, profile shapes, IO, TensorRT/CUDA versions, GPU name, hashes.

    Raises:
        DependencyError: no TensorRT or no CUDA GPU (checked first: nothing is written).
        ArtifactError: the parser or the builder failed.
        InvalidInputError: bad batch sizes or workspace.
    """
    _check_batches(min_batch, opt_batch, max_batch, workspace_mb)
    trt = require_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    cache_path = Path(timing_cache).expanduser() if timing_cache else None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    _parse(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    shapes = _add_profile(builder, network, config, (min_batch, opt_batch, max_batch))
    cache, reused = _load_timing_cache(config, cache_path)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {onnx_path.name}", "see the TensorRT log above")
    seconds = time.perf_counter() - t0
    if cache_path is not None:
        atomic_write_bytes(cache_path, bytes(memoryview(cache.serialize())))
    atomic_write_bytes(engine_path, bytes(memoryview(plan)))
    meta = {
        "engine": engine_path.name,
        "engine_sha256": sha256_file(engine_path),
        "onnx": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "tensorrt": trt.__version__,
        **_gpu_info(),
        "strongly_typed": True,
        "profile": shapes,
        "batch": {"min": min_batch, "opt": opt_batch, "max": max_batch},
        "workspace_mb": int(workspace_mb),
        "timing_cache": str(cache_path) if cache_path else None,
        "timing_cache_reused": reused,
        "build_seconds": round(seconds, 3),
        **_io(network),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(sidecar_path(engine_path), json.dumps(meta, indent=2) + "\n")
    return meta


def run_engine(engine_path: str | os.PathLike, inputs: np.ndarray) -> np.ndarray:
    """Run one batch through a TensorRT engine (single input, first output); CUDA buffers via PyTorch.

    Raises:
        DependencyError: no TensorRT or no CUDA GPU.
        ArtifactError: the plan cannot be deserialized (another TensorRT version or GPU).
    """
    import torch

    trt = require_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    if engine is None:
        raise ArtifactError(
            f"cannot deserialize {engine_path}",
            "engines only run on the TensorRT version and GPU they were built with: rebuild it",
        )
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    in_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).cuda()
    context.set_input_shape(in_name, tuple(x.shape))
    out_dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(out_name)))).dtype
    y = torch.empty(tuple(context.get_tensor_shape(out_name)), dtype=out_dtype, device="cuda")
    context.set_tensor_address(in_name, x.data_ptr())
    context.set_tensor_address(out_name, y.data_ptr())
    stream = torch.cuda.current_stream()
    if not context.execute_async_v3(stream.cuda_stream):
        raise ArtifactError(f"TensorRT execution of {engine_path} failed")
    stream.synchronize()  # a GPU sync point: the result is read on the host next
    return y.float().cpu().numpy()
