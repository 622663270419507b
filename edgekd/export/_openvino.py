"""OpenVINO IR in a bundle (``--format openvino``): ``model.xml`` + ``model.bin`` from the bundle's checked ONNX.

Each FP32 and INT8 ONNX file of a bundle is converted with ``openvino.convert_model`` (no second export from
PyTorch: the IR is made from the very graph whose parity was checked) and saved with ``openvino.save_model``:

* **FP32 stays FP32**: ``save_model`` compresses weights to FP16 by default; edgekd passes
  ``compress_to_fp16=False`` so an FP32 file holds the FP32 weights it was checked with. FP16 ONNX files are
  not converted (an FP16 IR is what the default compression gives; ship ``onnx-fp16`` for that).
* **INT8 from edgekd's own QDQ model**: OpenVINO runs QuantizeLinear/DequantizeLinear pairs of an ONNX model
  as INT8 layers, so ``model.int8.onnx`` becomes ``model.int8.xml``: one calibration serves ONNX Runtime and
  OpenVINO alike.
* **Inference precision is pinned**: the CPU plugin computes in BF16 by default on CPUs with AVX512-BF16 or
  AMX (``INFERENCE_PRECISION_HINT``), which moves FP32 logits by ~1e-3, beyond the FP32 tolerance. Every
  edgekd compile (parity, ``edgekd bench``, ``predict``, ``serve``) sets ``INFERENCE_PRECISION_HINT=f32``,
  ``INFERENCE_NUM_THREADS``, ``PERFORMANCE_HINT=LATENCY`` and ``NUM_STREAMS=1`` (:func:`ov_config`).

Each IR is parity-checked against the bundle's stored PyTorch logits (``parity.npz``) at batch 1 and 7 with
the ONNX tolerances, then joins the bundle (see :func:`~edgekd.export._runtimes.extend_bundle`).

Example:
    >>> manifest = add_openvino("bundles/student")
    >>> [(f.name, f.precision.value) for f in manifest.files if f.kind == "openvino"]
    [('model.xml', 'fp32')]
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.export._bundle import BundleFile
from edgekd.export._manifest import Manifest, read_manifest
from edgekd.export._parity import ParityResult
from edgekd.export._runtimes import extend_bundle, require_parity, runtime_parity, stored_reference
from edgekd.export._types import Precision

__all__ = [
    "OPENVINO_EXTRA",
    "require_openvino",
    "ov_config",
    "compile_openvino",
    "run_openvino",
    "convert_to_openvino",
    "openvino_parity",
    "add_openvino",
    "OV_USAGE",
    "verify_openvino",
]

OPENVINO_EXTRA = "pip install 'edgekd[openvino]'"
_CONVERTED = (Precision.FP32, Precision.INT8)

OV_USAGE = """\
import json, numpy as np, openvino as ov
pre = json.load(open("preprocess.json"))
x = ...  # float32 [N, C, H, W], preprocessed as preprocess.json says (see the ONNX Runtime example)
core = ov.Core()
model = core.compile_model("{model}", "CPU", {{"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                            "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1}})
logits = model.create_infer_request().infer({{0: x}})[0]
# many calls, lower latency: request = model.create_infer_request(); request.set_input_tensor(ov.Tensor(x));
# request.start_async(); request.wait(); logits = request.get_output_tensor(0).data  (runs on the model's stream)
"""


def require_openvino(what: str = "the openvino runtime") -> Any:
    """The ``openvino`` module, or a :class:`~edgekd.errors.DependencyError` naming the extra (exit 5)."""
    try:
        import openvino
    except ImportError as e:
        raise DependencyError(f"{what} needs the openvino package", OPENVINO_EXTRA) from e
    return openvino


def ov_config(threads: int, *, latency: bool = True) -> dict[str, Any]:
    """The CPU plugin properties of every edgekd compile: ``threads`` threads, one stream, FP32 compute."""
    if threads < 1:
        raise InvalidInputError(f"OpenVINO threads must be >= 1, got {threads}")
    return {
        "INFERENCE_NUM_THREADS": int(threads),
        "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": "f32",
    }


def compile_openvino(xml: str | os.PathLike, *, threads: int = 2, device: str = "CPU") -> Any:
    """A compiled OpenVINO model of ``xml`` with :func:`ov_config` (raises ArtifactError on a bad file)."""
    ov = require_openvino()
    try:
        return ov.Core().compile_model(str(xml), device, ov_config(threads))
    except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
        raise ArtifactError(f"OpenVINO cannot load {xml}: {str(e).strip().splitlines()[0]}") from e


def infer_openvino(request: Any, x: np.ndarray) -> np.ndarray:
    """One synchronous inference of ``x`` on an infer request; a copy of the first output as float32.

    The input is copied into the request's own input tensor (a new tensor only when the shape changes), then
    ``start_async()`` + ``wait()``: the inference runs on the compiled model's CPU stream, the executor that
    ``INFERENCE_NUM_THREADS`` / ``NUM_STREAMS`` configure. Python's ``request.infer({0: x})`` (and ``infer()``)
    runs OpenVINO's synchronous pipeline instead (in the calling thread, as ``IAsyncInferRequest::infer`` reads),
    and was measured slower: on a loaded 2-vCPU VM, OpenVINO 2026.4, a 47 k-parameter model with a dynamic batch,
    2 threads, interleaved medians at batch 32: 0.55-0.59 ms this way (a new input tensor each call included),
    0.6-3.9 ms through ``infer``; at batch 1 about 0.05 vs 0.08-0.12 ms (``benchmarks/runtime_check.py`` measures it).
    """
    ov = require_openvino()
    x = np.ascontiguousarray(x, dtype=np.float32)
    tensor = request.get_input_tensor()
    if tuple(tensor.shape) != x.shape:
        request.set_input_tensor(ov.Tensor(ov.Type.f32, ov.Shape(list(x.shape))))
        tensor = request.get_input_tensor()
    tensor.data[...] = x
    request.start_async()
    request.wait()
    return np.array(request.get_output_tensor(0).data, dtype=np.float32)


def run_openvino(compiled: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``inputs`` through a compiled model in chunks of ``batch_size``; the first output as float32."""
    request = compiled.create_infer_request()
    outs = [infer_openvino(request, inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs)


def _ir_name(onnx_name: str) -> str:
    return onnx_name.removesuffix(".onnx") + ".xml"


def convert_to_openvino(onnx_path: str | os.PathLike, xml: str | os.PathLike) -> tuple[Path, Path]:
    """``onnx_path`` -> ``xml`` + its ``.bin``, weights kept at the ONNX file's precision (no FP16 compression)."""
    ov = require_openvino("--format openvino")
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml), compress_to_fp16=False)
    except Exception as e:  # conversion errors are OpenVINO's own types
        raise ArtifactError(f"OpenVINO cannot convert {onnx_path}: {str(e).strip().splitlines()[0]}") from e
    return Path(xml), Path(xml).with_suffix(".bin")


def openvino_parity(
    xml: str | os.PathLike,
    precision: Precision,
    task,
    x: np.ndarray,
    ref: np.ndarray,
    *,
    threads: int = 2,
    sample_source: str = "",
) -> ParityResult:
    """Parity of an IR with reference logits at batch 1 and 7 (see :func:`~edgekd.export._runtimes.runtime_parity`)."""
    compiled = compile_openvino(xml, threads=threads)
    return runtime_parity(
        lambda s, b: run_openvino(compiled, s, b), Path(xml).name, precision, task, x, ref, sample_source=sample_source
    )


def _sources(m: Manifest, bundle: Path) -> list[tuple[Path, Precision]]:
    onnx = [(bundle / f.name, f.precision or Precision.FP32) for f in m.files if f.kind == "onnx"]
    chosen = [(p, prec) for p, prec in onnx if prec in _CONVERTED]
    if not chosen:
        have = ", ".join(sorted({prec.value for _, prec in onnx})) or "none"
        raise InvalidInputError(
            f"bundle {bundle} has no FP32 or INT8 ONNX file to convert (it has {have})",
            "export it with --format onnx (or quantize it) first",
        )
    return chosen


def add_openvino(bundle: str | os.PathLike, *, threads: int = 2, log: Callable[[str], None] | None = None) -> Manifest:
    """Convert a bundle's FP32/INT8 ONNX files to OpenVINO IR, parity-check them and add them to the bundle.

    Args:
        bundle: a bundle written by ``edgekd export`` or ``edgekd quantize`` (it must store ``parity.npz``).
        threads: CPU threads of the parity runs.
        log: called with one line per step.

    Returns:
        The updated manifest (files of kind ``openvino`` and ``openvino-weights``).

    Raises:
        DependencyError: openvino is not installed (exit 5).
        VerificationError: an IR fails parity (exit 6; the bundle is unchanged).
    """
    say = log or (lambda _msg: None)
    ov = require_openvino("--format openvino")
    root = Path(bundle)
    m = read_manifest(root)
    x, ref = stored_reference(root)
    source = f"parity.npz ({len(x)} stored samples)"
    files: list[BundleFile] = []
    parity: list[ParityResult] = []
    with tempfile.TemporaryDirectory(prefix="edgekd-openvino-") as tmp:
        for onnx_path, precision in _sources(m, root):
            xml, weights = convert_to_openvino(onnx_path, Path(tmp) / _ir_name(onnx_path.name))
            res = require_parity(
                openvino_parity(xml, precision, m.task, x, ref, threads=threads, sample_source=source), "openvino"
            )
            say(res.summary())
            parity.append(res)
            files += [
                BundleFile(source=xml, name=xml.name, kind="openvino", precision=precision),
                BundleFile(source=weights, name=weights.name, kind="openvino-weights"),
            ]
        model = next(f.name for f in files if f.kind == "openvino")
        info = {
            "files": [f.name for f in files if f.kind == "openvino"],
            "converted_from": [p.name for p, _ in _sources(m, root)],
            "compress_to_fp16": False,
            "config": ov_config(threads),
            "device": "CPU",
            "usage": OV_USAGE.format(model=model),
        }
        return extend_bundle(root, files, parity, runtime="openvino", info=info, versions={"openvino": ov.__version__})


def verify_openvino(
    path: Path, precision: Precision, task, x: np.ndarray, ref: np.ndarray, results: list[ParityResult]
) -> str | None:
    """``edgekd verify``: re-run an IR's parity (appended to ``results``); the reason when it cannot run."""
    try:
        require_openvino()
    except DependencyError:
        return f"openvino is not installed: {OPENVINO_EXTRA}"
    results.append(openvino_parity(path, precision, task, x, ref, sample_source=f"parity.npz ({len(x)} samples)"))
    return None


def write_openvino(job: Any) -> list[BundleFile]:
    """The ``openvino`` entry of the table of formats: an IR of each FP32/INT8 ONNX graph of the bundle being
    written (a :class:`~edgekd.export._formats.FileJob`), parity-checked on the export's own parity samples."""
    ov = require_openvino("--format openvino")
    files: list[BundleFile] = []
    for onnx in [f for f in job.onnx_files() if f.precision in _CONVERTED]:
        job.ship(onnx)  # the IR ships with the graph it was converted from (IO description, OOD features, Triton)
        xml, weights = convert_to_openvino(onnx.source, job.work / _ir_name(onnx.name))
        res = openvino_parity(
            xml, onnx.precision, job.card.task, job.samples.inputs, job.ref, sample_source=job.samples.source
        )
        job.say(require_parity(res, "openvino").summary())
        job.parity.append(res)
        files += [
            BundleFile(source=xml, name=xml.name, kind="openvino", precision=onnx.precision),
            BundleFile(source=weights, name=weights.name, kind="openvino-weights"),
        ]
    names = [f.name for f in files if f.kind == "openvino"]
    job.extra.setdefault("runtimes", {})["openvino"] = {
        "files": names,
        "converted_from": [n.removesuffix(".xml") + ".onnx" for n in names],
        "compress_to_fp16": False,
        "config": ov_config(2),
        "device": "CPU",
        "usage": OV_USAGE.format(model=names[0] if names else "model.xml"),
    }
    job.versions["openvino"] = ov.__version__
    return files
