"""edgekd.quantize: INT8 and FP16 for a deployment target, with the teacher recovering what INT8 costs.

* :data:`TARGETS`: one registry of deployment targets (:class:`QuantTarget`), each listing the INT8 schemes
  (:data:`SCHEMES`) exact on its device: ``cpu-x86`` (this x86 CPU) resolves to ``cpu-x86-vnni`` (U8S8) or
  ``cpu-x86-avx2`` (the fastest of U8S8 7-bit / U8U8 / S8S8 that passes parity there, measured),
  ``cpu-arm`` S8S8, ``tensorrt`` symmetric S8S8 (see :mod:`._targets` for why; :func:`choose_scheme`);
* PTQ: :func:`prepare_onnx` + :func:`quantize_onnx` (ONNX Runtime static QDQ quantization, calibration
  ``minmax | entropy | percentile``) and :func:`sensitivity_search` (mixed precision under an accuracy budget);
* QAT: :func:`qat_finetune` (NVIDIA Model Optimizer or PyTorch fake quantization, fine-tuned with
  distillation through the shared training loop);
* :func:`quantize_model_dir`: the whole `edgekd quantize` run, ending in a verified bundle whose manifest
  records the INT8-vs-FP32 accuracy change measured in ONNX Runtime.

Example:
    >>> result = quantize_model_dir("runs/student", "bundles/student-int8",
    ...                             QuantizeConfig(method="ptq", target="cpu-x86", calibration="entropy"))
    >>> result.metrics["int8"]["acc"] - result.metrics["fp32"]["acc"]
"""

from edgekd.quantize._api import BUDGET_METRICS, QuantizeConfig, QuantizeResult, QuantMethod, quantize_model_dir
from edgekd.quantize._choose import choose_scheme
from edgekd.quantize._data import CalibrationReader, evaluate_onnx, iterate_split, onnx_logits, split_inputs
from edgekd.quantize._fakequant import ActFakeQuant, QATConv2d, QATLinear, calibrate, insert_fake_quant
from edgekd.quantize._ptq import (
    CALIBRATION,
    WEIGHTED_OPS,
    Calibration,
    prepare_onnx,
    qdq_summary,
    quantizable_nodes,
    quantize_onnx,
)
from edgekd.quantize._qat import (
    QAT_BACKENDS,
    QATBackend,
    freeze_bn_stats,
    qat_finetune,
    resolve_backend,
    strip_fake_quant,
)
from edgekd.quantize._sensitivity import NodeError, SensitivityReport, metric_value, node_errors, sensitivity_search
from edgekd.quantize._targets import (
    SCHEMES,
    TARGETS,
    QuantScheme,
    QuantTarget,
    get_target,
    list_targets,
    resolve_target,
    target_for_isa,
)

__all__ = [
    "TARGETS",
    "SCHEMES",
    "QuantScheme",
    "QuantTarget",
    "get_target",
    "list_targets",
    "resolve_target",
    "target_for_isa",
    "choose_scheme",
    "Calibration",
    "CALIBRATION",
    "WEIGHTED_OPS",
    "prepare_onnx",
    "quantize_onnx",
    "quantizable_nodes",
    "qdq_summary",
    "CalibrationReader",
    "split_inputs",
    "iterate_split",
    "evaluate_onnx",
    "onnx_logits",
    "NodeError",
    "SensitivityReport",
    "node_errors",
    "sensitivity_search",
    "metric_value",
    "ActFakeQuant",
    "QATConv2d",
    "QATLinear",
    "insert_fake_quant",
    "calibrate",
    "QATBackend",
    "QAT_BACKENDS",
    "resolve_backend",
    "qat_finetune",
    "strip_fake_quant",
    "freeze_bn_stats",
    "QuantMethod",
    "QuantizeConfig",
    "QuantizeResult",
    "quantize_model_dir",
    "BUDGET_METRICS",
]
