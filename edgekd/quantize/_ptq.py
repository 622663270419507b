"""Post-training static quantization with ONNX Runtime (QDQ), and inspection of the result.

The recipe ONNX Runtime recommends for CNNs:

1. :func:`prepare_onnx`: ``quant_pre_process`` (symbolic and ONNX shape inference plus graph optimisation,
   which folds batch norms into convolutions) so every tensor has a shape and the quantizer sees the fused
   graph the runtime will execute;
2. :func:`quantize_onnx`: ``quantize_static`` in QDQ format with the target's scheme
   (:mod:`._targets`), activation ranges calibrated on a few hundred training samples with one of
   :data:`CALIBRATION`. Calibration ranges are cached in a JSON file, so re-quantizing with other nodes
   excluded (sensitivity analysis) does not calibrate again.

Calibration methods (``CalibrationMethod``):

* ``minmax``: the observed minimum and maximum of each tensor;
* ``entropy``: the threshold minimising the KL divergence between the FP32 histogram and its quantized
  version (the TensorRT / Migacz 2017 method);
* ``percentile``: the 99.999th percentile of the absolute values (clips rare outliers).

Example:
    >>> pre = prepare_onnx("model.onnx", "work/model.pre.onnx")
    >>> quantize_onnx(pre, "model.int8.onnx", get_target("cpu-x86"), CalibrationReader(x), calibration="entropy")
    >>> qdq_summary("model.int8.onnx")["activation_types"]
    ['uint8']
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgekd.errors import ArtifactError
from edgekd.quantize._targets import QuantScheme

__all__ = [
    "Calibration",
    "CALIBRATION",
    "prepare_onnx",
    "quantize_onnx",
    "quantizable_nodes",
    "qdq_summary",
    "WEIGHTED_OPS",
]

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


class Calibration(str, Enum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


def _method(name: Calibration | str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        Calibration.MINMAX: CalibrationMethod.MinMax,
        Calibration.ENTROPY: CalibrationMethod.Entropy,
        Calibration.PERCENTILE: CalibrationMethod.Percentile,
    }[Calibration(name)]


CALIBRATION = tuple(c.value for c in Calibration)


def prepare_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """ORT's pre-processing for quantization (shape inference + optimisation); returns ``dst``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as e:  # onnxruntime raises assorted types from its optimiser and shape inference
        raise ArtifactError(
            f"ONNX Runtime cannot pre-process {src} for quantization: {str(e).splitlines()[0]}",
            "check that the model exports and runs in onnxruntime",
        ) from e
    return Path(dst)


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    scheme: QuantScheme,
    reader=None,
    *,
    calibration: Calibration | str = Calibration.MINMAX,
    exclude: Sequence[str] = (),
    include: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
) -> Path:
    """Quantize a pre-processed FP32 ONNX model to QDQ with ``scheme``; returns ``dst``.

    Args:
        src: the FP32 model (from :func:`prepare_onnx`).
        dst: the quantized model to write.
        scheme: the target's scheme.
        reader: a calibration data reader (may be None when ``cache`` exists).
        calibration: ``minmax``, ``entropy`` or ``percentile``.
        exclude: node names kept in FP32 (mixed precision).
        include: quantize only these nodes (sensitivity analysis of one node).
        cache: JSON file of calibrated ranges: written on the first call, reused afterwards.
    """
    from onnxruntime.quantization import quantize_static

    opts = scheme.ort_options()
    if reader is not None and hasattr(reader, "rewind"):
        reader.rewind()
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizer logs every skipped node at INFO/WARNING
    try:  # its calibrators print() progress: keep stdout clean for `--json -`
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(src),
                str(dst),
                reader,
                calibrate_method=_method(calibration),
                nodes_to_exclude=list(exclude),
                nodes_to_quantize=list(include) if include else None,
                calibration_cache_path=str(cache) if cache else None,
                **opts,
            )
    finally:
        logging.getLogger().setLevel(previous)
    return Path(dst)


def quantizable_nodes(path: str | os.PathLike) -> list[str]:
    """Names of the nodes with weights (Conv, Gemm, MatMul), in graph order: the sensitivity candidates."""
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.name]


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def qdq_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What scheme a QDQ model actually uses, read from its Q/DQ zero points.

    A Q/DQ node is on a *weight* when its input is a constant (an initializer, a ``Constant`` or the
    output of a Q on a constant, as QAT exports have it); int32 zero points belong to biases.

    Returns:
        ``activation_types``, ``weight_types`` and ``bias_types`` (sorted dtype names of the zero
        points), ``nonzero_zero_points`` (count of Q/DQ nodes with a non-zero zero point),
        ``per_channel_weights`` (count of weight DQ with a vector scale), ``qoperator_ops`` (QLinearConv
        and co. present) and the ``quantize_linear`` / ``dequantize_linear`` node counts.
    """
    model = onnx.load(str(path))
    consts = {i.name for i in model.graph.initializer}
    consts |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    types: dict[str, set[str]] = {"activation": set(), "weight": set(), "bias": set()}
    nonzero = per_channel = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        zp, scale = _initializer(model, node.input[2]), _initializer(model, node.input[1])
        if zp is None:
            continue
        on_const = node.input[0] in consts
        if on_const and node.op_type == "QuantizeLinear":
            consts.add(node.output[0])  # QAT style: float weight -> Q -> DQ
        kind = "bias" if zp.dtype == np.int32 else ("weight" if on_const else "activation")
        types[kind].add(zp.dtype.name)
        nonzero += int(np.count_nonzero(zp) > 0)
        per_channel += int(
            kind == "weight" and node.op_type == "DequantizeLinear" and scale is not None and scale.size > 1
        )
    ops = [n.op_type for n in model.graph.node]
    return {
        "activation_types": sorted(types["activation"]),
        "weight_types": sorted(types["weight"]),
        "bias_types": sorted(types["bias"]),
        "nonzero_zero_points": nonzero,
        "per_channel_weights": per_channel,
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "qoperator_ops": sorted({o for o in ops if o.startswith("QLinear") or o.endswith("Integer")}),
    }
