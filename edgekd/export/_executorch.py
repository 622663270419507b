"""ExecuTorch programs in a bundle (``--format executorch``): ``model.pte`` lowered to XNNPACK.

ExecuTorch runs a program made by ``torch.export`` from the PyTorch model, not from ONNX, so the bundle's
source model directory (``manifest.extra.source``, or ``extra.quantization.source`` for a quantized bundle)
is exported again; its weights must still hash to what the bundle recorded. The flow is the one the
ExecuTorch docs give for XNNPACK: ``torch.export.export`` -> ``to_edge_transform_and_lower(...,
partitioner=[XnnpackPartitioner()])`` -> ``to_executorch()``.

**Batch dimension.** The batch is exported dynamic, ``Dim("batch", min=1, max=max_batch)``, and ExecuTorch
plans memory for the upper bound: the program accepts any batch in ``[1, upper bound]`` and refuses a larger
one (``set_inputs`` fails). Measured with executorch 1.5.1 / torch 2.14.1 on conv nets: the XNNPACK lowering
guards the batch at 16, so an example batch below 16 narrows the bound to 15 whatever ``max`` says, and an
example batch of 16 with ``max=16`` makes the program static (only batch 16 runs: "Failed to resize output
tensor"). edgekd therefore traces at batch 16 with ``max = max(max_batch, 17)`` for ``max_batch >= 16``, at
``max_batch`` itself below 16 (the bound is then ``max_batch``), and exports a fixed batch of 1 for
``max_batch = 1``; it records the bound the program really has (read back from its input tensor spec) as
``extra.runtimes.executorch.max_batch``. A model that cannot export with a dynamic batch is exported at a fixed
batch 1 (recorded).

**INT8** (a bundle with an INT8 ONNX file from ``edgekd quantize --method ptq``): PT2E quantization with the
XNNPACK quantizer (``XNNPACKQuantizer`` + ``get_symmetric_quantization_config(is_per_channel=True)``: INT8
symmetric per-channel weights, INT8 affine activations), ``torchao``'s ``prepare_pt2e`` / ``convert_pt2e``,
calibrated on the very samples the ONNX INT8 file was calibrated on: the quantize run's data, its
``calib_samples`` and its seeded subset of the train split, chosen by the same rule as
``edgekd.quantize.split_inputs`` (the manifest does not record the quantize seed: its default, 0, is
assumed and recorded). QAT bundles are refused: their INT8 file holds QAT-tuned weights a PTQ program would
not reproduce.

Each program is parity-checked against the bundle's stored PyTorch logits with the ONNX tolerances.

Example:
    >>> manifest = add_executorch("bundles/student", max_batch=32)
    >>> manifest.extra["runtimes"]["executorch"]["max_batch"]
    32
"""

from __future__ import annotations

import gc
import os
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.data import load_data
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.export._bundle import BundleFile
from edgekd.export._manifest import Manifest, read_manifest
from edgekd.export._onnx import _prepare
from edgekd.export._parity import ParityResult
from edgekd.export._runtimes import bundle_card, extend_bundle, require_parity, runtime_parity, stored_reference
from edgekd.export._types import Precision
from edgekd.modeldir import WEIGHTS_FILE, ModelCard, load_model_dir, sha256_file
from edgekd.specs import Task

__all__ = [
    "EXECUTORCH_EXTRA",
    "require_executorch",
    "export_pte",
    "load_pte",
    "run_pte",
    "set_et_threads",
    "et_threads",
    "calibration_samples",
    "executorch_parity",
    "add_executorch",
    "ET_USAGE",
    "MIN_TRACE_BATCH",
    "verify_executorch",
    "executorch_version",
    "LoadedProgram",
]

EXECUTORCH_EXTRA = "pip install 'edgekd[executorch]'"
MIN_TRACE_BATCH = 16  # an example batch below this narrows the XNNPACK program's batch bound to 15 (see above)

ET_USAGE = """\
import json, torch
from executorch.runtime import Runtime
pre = json.load(open("preprocess.json"))
x = ...  # float32 [N, C, H, W], N <= {max_batch}, preprocessed as preprocess.json says (see the ONNX Runtime example)
method = Runtime.get().load_program("{model}").load_method("forward")
logits = method.execute([torch.from_numpy(x)])[0]
"""


def require_executorch(what: str = "the ExecuTorch runtime") -> Any:
    """The ``executorch`` package, or a :class:`~edgekd.errors.DependencyError` naming the extra (exit 5)."""
    try:
        import executorch
        import executorch.runtime  # noqa: F401  (the runtime extension: a partial install lacks it)
    except ImportError as e:
        raise DependencyError(f"{what} needs the executorch package ({e})", EXECUTORCH_EXTRA) from e
    return executorch


def executorch_version() -> str:
    """The installed executorch version."""
    from importlib.metadata import version

    return version("executorch")


# --- runtime -----------------------------------------------------------------------------------------------

_LIVE: list[int] = [0]  # programs loaded by load_pte and not yet released: the thread pool is shared by them


def et_threads() -> int:
    """Threads of ExecuTorch's (process-wide) thread pool, which XNNPACK's kernels run on."""
    require_executorch()
    from executorch.extension.pybindings import portable_lib

    return int(portable_lib._threadpool_get_thread_count())


def set_et_threads(threads: int) -> None:
    """Resize ExecuTorch's process-wide thread pool (the only thread control its Python runtime has).

    The pool may only be resized while no program is loaded: resizing it under a live XNNPACK method
    corrupted the heap in a test (executorch 1.5.1, ``malloc(): unsorted double linked list corrupted``), so
    with a program loaded a different count is refused.

    Raises:
        InvalidInputError: ``threads < 1``, or another count while a program is loaded.
    """
    if threads < 1:
        raise InvalidInputError(f"ExecuTorch threads must be >= 1, got {threads}")
    if et_threads() == threads:
        return
    if _LIVE[0] > 0:
        gc.collect()  # programs nobody holds any more (a finished predict) are released when collected
    if _LIVE[0] > 0:
        raise InvalidInputError(
            f"cannot resize ExecuTorch's thread pool to {threads} while {_LIVE[0]} program(s) are loaded "
            f"(it has {et_threads()})",
            "use one thread count per process for ExecuTorch",
        )
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(int(threads))


def _forget_program() -> None:
    _LIVE[0] -= 1


class LoadedProgram:
    """A loaded ``.pte`` and its ``forward`` method; :meth:`release` frees them (call it, or use ``with``)."""

    def __init__(self, path: str | os.PathLike, threads: int | None) -> None:
        require_executorch()
        from executorch.runtime import Runtime

        if threads is not None:
            set_et_threads(threads)
        try:
            self.program = Runtime.get().load_program(str(path))
            self.method = self.program.load_method("forward")
        except Exception as e:  # the runtime raises RuntimeError with its own error codes
            raise ArtifactError(f"ExecuTorch cannot load {path}: {str(e).strip().splitlines()[0]}") from e
        _LIVE[0] += 1
        self._released = weakref.finalize(self, _forget_program)  # also when dropped without release()
        self.path = Path(path)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
        return self.method.execute([t])[0].detach().numpy()

    def release(self) -> None:
        if self.method is not None:
            self.method = self.program = None
            gc.collect()  # the pybind objects free the XNNPACK runtime when collected
            self._released()

    def __enter__(self) -> LoadedProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def load_pte(path: str | os.PathLike, *, threads: int | None = None) -> LoadedProgram:
    """Load a program (``threads``: resize the thread pool first; None leaves it as it is)."""
    return LoadedProgram(path, threads)


def run_pte(program: LoadedProgram, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``inputs`` through a loaded program in chunks of ``batch_size``; float32 logits."""
    outs = [program(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs).astype(np.float32)


# --- export ------------------------------------------------------------------------------------------------


def _export(net: nn.Module, x: torch.Tensor, max_batch: int) -> tuple[Any, bool]:
    """``torch.export`` with a dynamic batch in ``[1, max_batch]``; a fixed batch of 1 when that fails."""
    if max_batch < 2:
        return torch.export.export(net, (x[:1],)), False
    dims = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}}
    try:
        return torch.export.export(net, (x,), dynamic_shapes=dims), True
    except Exception:  # a model whose graph specialises the batch: export it for batch 1 (recorded)
        return torch.export.export(net, (x[:1],)), False


def _quantize_pt2e(net: nn.Module, x: torch.Tensor, max_batch: int, calib: np.ndarray) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exported, _ = _export(net, x, max_batch)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), 32):  # the batches of edgekd's ONNX calibration reader
            prepared(torch.from_numpy(np.ascontiguousarray(calib[i : i + 32], dtype=np.float32)))
    return convert_pt2e(prepared)


def _input_bound(program: Any) -> int | None:
    """The batch the program's memory is planned for (its input's upper bound), from the program itself."""
    plan = program.executorch_program.execution_plan[0]
    sizes = plan.values[plan.inputs[0]].val.sizes
    return int(sizes[0]) if sizes else None


def export_pte(
    model: nn.Module,
    card: ModelCard,
    out: str | os.PathLike,
    *,
    max_batch: int = 32,
    calibration: np.ndarray | None = None,
) -> dict[str, Any]:
    """Export ``model`` to an XNNPACK ``.pte`` (INT8 through PT2E when ``calibration`` is given).

    Args:
        model: the PyTorch model (a copy is put in eval mode).
        card: its card (input size and channels).
        out: the ``.pte`` path.
        max_batch: the largest batch the program must accept.
        calibration: preprocessed float32 calibration inputs; given: an INT8 program.

    Returns:
        What was made: ``dynamic_batch``, ``max_batch`` (the bound read back from the program), ``bytes``,
        ``delegated`` (whether XNNPACK took the graph), ``quantizer``.

    Raises:
        DependencyError: executorch is not installed (exit 5).
        ArtifactError: export or lowering failed, or the program cannot take ``max_batch``.
    """
    require_executorch("--format executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if max_batch < 1:
        raise InvalidInputError(f"--max-batch must be >= 1, got {max_batch}")
    pre = card.preprocess
    # the batch guard at 16 (module docstring): trace at 16 with a bound above it, or below 16 at the bound itself
    trace, bound_asked = (
        (MIN_TRACE_BATCH, max(max_batch, MIN_TRACE_BATCH + 1))
        if max_batch >= MIN_TRACE_BATCH
        else (max(1, max_batch), max_batch)
    )
    x = torch.zeros((trace, pre.in_chans, *pre.input_size))
    net = _prepare(model)
    try:
        if calibration is not None:
            net = _quantize_pt2e(net, x, bound_asked, calibration)
        exported, dynamic = _export(net, x, bound_asked)
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        delegated = any("lowered_module" in n.name for n in lowered.exported_program().graph.nodes)
        program = lowered.to_executorch()
    except Exception as e:  # torch.export / EXIR raise many types; the first line says what failed
        raise ArtifactError(f"ExecuTorch export failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    Path(out).write_bytes(program.buffer)
    bound = _input_bound(program) if dynamic else 1
    if dynamic and bound is not None and bound < max_batch:
        raise ArtifactError(
            f"the ExecuTorch program takes batches up to {bound}, not {max_batch}", "pass a smaller --max-batch"
        )
    return {
        "dynamic_batch": dynamic,
        "max_batch": bound,
        "trace_batch": trace if dynamic else 1,
        "bytes": len(program.buffer),
        "delegated": delegated,
        "backend": "xnnpack",
        "quantizer": "XNNPACKQuantizer(get_symmetric_quantization_config(is_per_channel=True))"
        if calibration is not None
        else None,
    }


def calibration_samples(card: ModelCard, data: str, n: int, *, seed: int = 0) -> np.ndarray:
    """The calibration inputs of ``edgekd quantize``: ``n`` seeded random train samples (``split_inputs``'s rule)."""
    bundle = load_data(data, seed=seed)
    ds = bundle.split("train")
    total = len(ds)
    idx = np.arange(total) if n >= total else np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    images = torch.stack([torch.as_tensor(ds[int(i)][0]) for i in idx])
    return card.preprocess(images).numpy().astype(np.float32)


def executorch_parity(
    pte: str | os.PathLike,
    precision: Precision,
    task: Task,
    x: np.ndarray,
    ref: np.ndarray,
    *,
    threads: int | None = None,
    sample_source: str = "",
) -> ParityResult:
    """Parity of a program with reference logits at batch 1 and 7."""
    with load_pte(pte, threads=threads) as prog:
        return runtime_parity(
            lambda s, b: run_pte(prog, s, b), Path(pte).name, precision, task, x, ref, sample_source=sample_source
        )


def verify_executorch(
    path: Path, precision: Precision, task: Task, x: np.ndarray, ref: np.ndarray, results: list[ParityResult]
) -> str | None:
    """``edgekd verify``: re-run a program's parity (appended to ``results``); the reason when it cannot run."""
    try:
        require_executorch()
    except DependencyError:
        return f"executorch is not installed: {EXECUTORCH_EXTRA}"
    results.append(executorch_parity(path, precision, task, x, ref, sample_source=f"parity.npz ({len(x)} samples)"))
    return None


# --- the bundle --------------------------------------------------------------------------------------------


def _source(m: Manifest, model_dir: str | os.PathLike | None) -> tuple[Path, dict[str, Any] | None]:
    """The model directory the bundle was made from, checked against the recorded weights hash."""
    quant = m.extra.get("quantization") if isinstance(m.extra.get("quantization"), dict) else None
    recorded = quant.get("source") if quant else m.extra.get("source")
    src = Path(model_dir or recorded or "")
    if not str(src) or not (src / WEIGHTS_FILE).is_file():
        raise ArtifactError(
            f"the bundle's source model directory {str(src) or '(none recorded)'} is not there",
            "ExecuTorch exports from PyTorch: pass the model directory with --source",
        )
    want = m.extra.get("source_sha256") or (m.lineage.get("parent_sha256") if quant else None)
    if want and sha256_file(src / WEIGHTS_FILE) != want:
        raise ArtifactError(
            f"{src} is not the model the bundle was made from (its weights hash differs)",
            "pass the model directory the bundle was exported from",
        )
    return src, quant


def _calibration(card: ModelCard, quant: dict[str, Any], seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    if quant.get("method") != "ptq" or quant.get("precision") != "int8":
        raise InvalidInputError(
            f"an ExecuTorch INT8 program is made for PTQ INT8 bundles, not {quant.get('method')}",
            "ship the FP32 model: export the model directory with --format executorch",
        )
    n = int((quant.get("calibration") or {}).get("samples", 256))
    x = calibration_samples(card, quant["data"], n, seed=seed)
    return x, {
        "data": quant["data"],
        "split": "train",
        "samples": len(x),
        "seed": seed,
        "seed_source": "assumed: the quantize default (the manifest does not record it)",
        "onnx_calibration": (quant.get("calibration") or {}).get("method"),
    }


def add_executorch(
    bundle: str | os.PathLike,
    *,
    model_dir: str | os.PathLike | None = None,
    max_batch: int = 32,
    calib_seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Export a bundle's source model to ExecuTorch (FP32, and INT8 for a PTQ INT8 bundle) and add the programs.

    Args:
        bundle: a bundle from ``edgekd export`` or ``edgekd quantize`` (it must store ``parity.npz``).
        model_dir: the source model directory (default: the one the manifest records).
        max_batch: the largest batch the programs accept.
        calib_seed: the seed of the quantize run whose calibration subset is reproduced.
        threads: ExecuTorch threads of the parity runs (None: leave the pool as it is).
        log: called with one line per step.

    Raises:
        DependencyError: executorch is not installed (exit 5).
        ArtifactError: the source model is missing or not the bundle's; export failed (exit 4).
        VerificationError: a program fails parity (exit 6; the bundle is unchanged).
    """
    say = log or (lambda _msg: None)
    require_executorch("--format executorch")
    root = Path(bundle)
    m = read_manifest(root)
    src, quant = _source(m, model_dir)
    model, _ = load_model_dir(src)
    card = bundle_card(root, m)
    x, ref = stored_reference(root)
    have = {f.precision for f in m.files if f.kind == "onnx"}
    info: dict[str, Any] = {"source": str(src), "programs": {}}
    files, parity = [], []
    with tempfile.TemporaryDirectory(prefix="edgekd-executorch-") as tmp:
        for precision, name in ((Precision.INT8, "model.int8.pte"), (Precision.FP32, "model.pte")):
            if precision not in have:
                continue
            calib = None
            if precision is Precision.INT8:
                calib, info["calibration"] = _calibration(card, quant or {}, calib_seed)
            made = export_pte(model, card, Path(tmp) / name, max_batch=max_batch, calibration=calib)
            res = require_parity(
                executorch_parity(
                    Path(tmp) / name,
                    precision,
                    m.task,
                    x,
                    ref,
                    threads=threads,
                    sample_source=f"parity.npz ({len(x)} stored samples)",
                ),
                "executorch",
            )
            say(res.summary())
            files.append(BundleFile(source=Path(tmp) / name, name=name, kind="executorch", precision=precision))
            parity.append(res)
            info["programs"][name] = made
        if not files:
            raise InvalidInputError(f"bundle {root} has no FP32 or INT8 ONNX file to match", "re-export it")
        bound = min(p["max_batch"] or 1 for p in info["programs"].values())
        info.update(
            files=[f.name for f in files],
            max_batch=bound,
            backend="xnnpack",
            usage=ET_USAGE.format(model=files[0].name, max_batch=bound),
        )
        versions = {"executorch": executorch_version()}
        return extend_bundle(root, files, parity, runtime="executorch", info=info, versions=versions)


def write_executorch(job: Any) -> list[BundleFile]:
    """The ``executorch`` entry of the table of formats: ``model.pte`` (FP32) of the model being exported (a
    :class:`~edgekd.export._formats.FileJob`), batch bound ``cfg.max_batch``, parity-checked on the export's
    parity samples. A fake-quantized (QAT) model is refused: ExecuTorch INT8 comes from PT2E quantization of an
    FP32 model (export it, quantize it with ``edgekd quantize``, then add ``--format executorch`` to that bundle)."""
    require_executorch("--format executorch")
    if job.exporter.get("fake_quant"):
        raise InvalidInputError(
            "--format executorch exports FP32 models, not fake-quantized (QAT) ones",
            "quantize the FP32 model with `edgekd quantize --method ptq`, then export that bundle",
        )
    job.ship(job.onnx_files()[0])  # the bundle's IO description, OOD features and predict/serve need an ONNX graph
    path = job.work / "model.pte"
    made = export_pte(job.model, job.card, path, max_batch=job.cfg.max_batch)
    res = executorch_parity(
        path, Precision.FP32, job.card.task, job.samples.inputs, job.ref, sample_source=job.samples.source
    )
    job.say(require_parity(res, "executorch").summary())
    job.parity.append(res)
    job.extra.setdefault("runtimes", {})["executorch"] = {
        "source": "the exported model",
        "programs": {path.name: made},
        "files": [path.name],
        "max_batch": made["max_batch"],
        "backend": "xnnpack",
        "usage": ET_USAGE.format(model=path.name, max_batch=made["max_batch"]),
    }
    job.versions["executorch"] = executorch_version()
    return [BundleFile(source=path, name=path.name, kind="executorch", precision=Precision.FP32)]
