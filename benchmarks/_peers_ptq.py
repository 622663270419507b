"""The INT8 peers of `peers.py`: NNCF and ONNX Runtime's ``quantize_static`` on the FP32 ONNX edgekd quantized.

All three quantizers get the same FP32 ONNX file (the ``model.onnx`` of edgekd's bundle: the exact source of
edgekd's INT8 file) and the same calibration samples (``edgekd.quantize.split_inputs(data, "train", pre, n=N,
seed=0)``: what `edgekd quantize` draws). Every INT8 file is evaluated by the same function
(``edgekd.quantize.evaluate_onnx``, ONNX Runtime, test split) and timed back to back with ``edgekd.bench``.

* NNCF (``nncf.quantize``): its defaults (preset ``performance``, ``target_device ANY``, fast bias correction),
  ``subset_size`` set to the number of calibration samples so it sees exactly those;
  ``nncf.quantize_with_accuracy_control`` is NNCF's counterpart of edgekd's sensitivity search (it reverts the
  quantizers that cost most until a validation metric is within ``max_drop``), given the same metric, budget and
  validation samples.
* ONNX Runtime: ``quantize_static(fp32, out, reader)`` with every default (QDQ, ``QInt8`` activations and
  weights, per-tensor, MinMax), no ``quant_pre_process``: what a user calling it directly gets. It has no
  accuracy-aware search.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgekd.export import INPUT_NAME
from edgekd.quantize import CalibrationReader, metric_value, qdq_summary

__all__ = ["peer_versions", "quantize_nncf", "quantize_nncf_accuracy_control", "quantize_ort_defaults", "fp32_nodes"]


def peer_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("nncf", "onnxruntime"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


@contextlib.contextmanager
def _quiet():
    """NNCF and ORT's quantizer log every node and print progress bars: keep the benchmark's output readable."""
    loggers = [logging.getLogger(), logging.getLogger("nncf")]  # nncf's own handler writes to the real stdout
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, previous):
            lg.setLevel(level)


def _nncf_dataset(x: np.ndarray):
    import nncf

    return nncf.Dataset([x[i : i + 1] for i in range(len(x))], lambda item: {INPUT_NAME: item})


def quantize_nncf(fp32: Path, dst: Path, calib: np.ndarray) -> dict[str, Any]:
    """``nncf.quantize`` with its defaults; returns the call record and the time it took."""
    import nncf

    t0 = time.perf_counter()
    with _quiet():
        q = nncf.quantize(onnx.load(str(fp32)), _nncf_dataset(calib), subset_size=len(calib))
    onnx.save(q, str(dst))
    return {
        "call": f"nncf.quantize(onnx.load(fp32), nncf.Dataset(<{len(calib)} samples, batch 1>), "
        f"subset_size={len(calib)})",
        "seconds": time.perf_counter() - t0,
        "qdq": qdq_summary(dst),
    }


def _validation_fn(task, metric: str):
    """NNCF's ``validation_fn(model, data) -> float``: the metric edgekd's search uses, through ONNX Runtime."""
    import onnxruntime as ort

    def validate(model: onnx.ModelProto, items) -> float:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        logits, targets = [], []
        for x, y in items:
            logits.append(sess.run(None, {INPUT_NAME: x})[0])
            targets.append(y)
        return metric_value(np.concatenate(logits), np.concatenate(targets), task, metric)

    return validate


def quantize_nncf_accuracy_control(
    fp32: Path,
    dst: Path,
    calib: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    task,
    metric: str,
    max_drop_points: float,
) -> dict[str, Any]:
    """``nncf.quantize_with_accuracy_control`` with edgekd's budget: ``max_drop`` points -> absolute fraction."""
    import nncf

    batches = [(x_val[i : i + 256], y_val[i : i + 256]) for i in range(0, len(x_val), 256)]
    t0 = time.perf_counter()
    with _quiet():
        q = nncf.quantize_with_accuracy_control(
            onnx.load(str(fp32)),
            _nncf_dataset(calib),
            nncf.Dataset(batches),
            validation_fn=_validation_fn(task, metric),
            max_drop=max_drop_points / 100.0,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=len(calib),
        )
    onnx.save(q, str(dst))
    return {
        "call": f"nncf.quantize_with_accuracy_control(onnx.load(fp32), calibration (<{len(calib)} samples>), "
        f"validation (<{len(x_val)} val samples>), validation_fn=<val {metric} via ORT>, "
        f"max_drop={max_drop_points / 100.0}, drop_type=nncf.DropType.ABSOLUTE, "
        f"subset_size={len(calib)})",
        "seconds": time.perf_counter() - t0,
        "qdq": qdq_summary(dst),
        "fp32_nodes": fp32_nodes(dst),
    }


def quantize_ort_defaults(fp32: Path, dst: Path, calib: np.ndarray) -> dict[str, Any]:
    """``onnxruntime.quantization.quantize_static`` with every default (no pre-processing)."""
    from onnxruntime.quantization import quantize_static

    t0 = time.perf_counter()
    with _quiet():
        quantize_static(str(fp32), str(dst), CalibrationReader(calib, batch_size=32))
    return {
        "call": f"onnxruntime.quantization.quantize_static(fp32, out, CalibrationReader(<{len(calib)} samples>, "
        "batch_size=32))  # defaults: QDQ, QInt8 activations and weights, per_channel=False, MinMax",
        "seconds": time.perf_counter() - t0,
        "qdq": qdq_summary(dst),
    }


def fp32_nodes(path: Path) -> list[str]:
    """Weighted nodes (Conv, Gemm, MatMul) whose weight is not dequantized: the ones left in FP32."""
    graph = onnx.load(str(path)).graph
    dq_out = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [
        n.name
        for n in graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] not in dq_out
    ]
