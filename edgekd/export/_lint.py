"""A TensorRT compatibility lint for ONNX models that runs without TensorRT or a GPU.

Rules (``target="tensorrt"``; the op list and opset range are documented in :mod:`._trt_ops`):

====================  =======  =================================================================
rule                  level    what it checks
====================  =======  =================================================================
``opset-range``       error    the default-domain opset lies in the parser's range (9..20)
``unsupported-op``    error    every op is in the TensorRT ONNX parser's support matrix
``custom-op``         error    no ops from other domains (com.microsoft, ai.onnx.ml: need plugins)
``qoperator``         error    no QOperator-format ops (QLinearConv, ConvInteger, ...): use QDQ
``qdq-type``          error    Q/DQ quantized type is INT8 (or FP8/INT4), not UINT8 or INT32
``qdq-zero-point``    error    Q/DQ zero points are all zero (symmetric); warning when absent on Q
``qdq-scale``         error    Q/DQ scales are positive build-time constants
``qdq-weight-axis``   error    per-channel weight DQ feeding Conv/Gemm/MatMul uses the output-channel
                               axis; warning for per-tensor weight scales
``dynamic-shape``     error    every dynamic input dim is covered by the optimization profile;
                               warning when a dynamic batch has no profile yet
``profile``           error    the profile is well formed (1 <= min <= opt <= max, known inputs)
``shape-inference``   warning  ONNX shape inference succeeds in strict mode; when it fails the
                               type-based checks (``qdq-type``) see only what could be inferred
====================  =======  =================================================================

Example:
    >>> findings = lint_onnx("model.int8.onnx", target="tensorrt", profile={"min_batch": 1, "max_batch": 32})
    >>> [f.rule for f in findings if f.severity == "error"]
    []
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Literal

import numpy as np
import onnx
from onnx import numpy_helper
from pydantic import BaseModel, ConfigDict

from edgekd.errors import ArtifactError, InvalidInputError, UnknownNameError
from edgekd.export._trt_ops import (
    QOPERATOR_OPS,
    TRT_NEWER_OPS,
    TRT_OPSET_RANGE,
    TRT_QDQ_TYPES,
    TRT_SOURCE,
    TRT_SUPPORTED_OPS,
)
from edgekd.export._types import TensorInfo, load_onnx, onnx_dtype_name, onnx_io

__all__ = ["Finding", "lint_onnx", "lint_errors", "resolve_profile", "LINT_TARGETS", "LINT_RULES"]

LINT_TARGETS = ("tensorrt",)
LINT_RULES = (
    "opset-range",
    "unsupported-op",
    "custom-op",
    "qoperator",
    "qdq-type",
    "qdq-zero-point",
    "qdq-scale",
    "qdq-weight-axis",
    "dynamic-shape",
    "profile",
    "shape-inference",
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_QDQ = ("QuantizeLinear", "DequantizeLinear")
Shapes = tuple[list[int], list[int], list[int]]


class Finding(BaseModel):
    """One lint result, naming the node it is about."""

    model_config = ConfigDict(frozen=True)

    severity: Literal["error", "warning"]
    rule: str
    node: str
    op_type: str
    message: str

    def __str__(self) -> str:
        where = f"{self.node} ({self.op_type})" if self.op_type else self.node
        return f"{self.severity}: [{self.rule}] {where}: {self.message}"


def lint_errors(findings: list[Finding]) -> list[Finding]:
    """Only the findings of severity ``error``."""
    return [f for f in findings if f.severity == "error"]


class _Graph:
    """Index of one graph: constants, producers and inferred element types.

    ``findings`` holds a ``shape-inference`` warning when inference failed: the element types it would
    have given (used by the ``qdq-type`` rule) are then missing, so a clean result proves less.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model, self.graph = model, model.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in self.graph.node:
            for out in node.output:
                self.producer[out] = node
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.types = {t.name: onnx_dtype_name(t.data_type) for t in self.graph.initializer}
        self.findings: list[Finding] = []
        inferred = self._infer(model)
        if inferred is not None:
            for v in [*inferred.input, *inferred.output, *inferred.value_info]:
                if v.type.tensor_type.elem_type:
                    self.types.setdefault(v.name, onnx_dtype_name(v.type.tensor_type.elem_type))

    def _infer(self, model: onnx.ModelProto) -> onnx.GraphProto | None:
        """Strict shape inference; on failure a warning, then what the lenient mode can still infer.

        The lenient mode never raises for a bad node (it skips it and its outputs stay untyped), so only
        strict mode can tell that inference failed; the lenient pass keeps the types of every other node.
        """
        # onnx raises InferenceError for a bad graph, ValueError for a proto over 2 GB, and others besides.
        try:
            return onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
        except Exception as e:
            strict = e
        try:
            inferred: onnx.GraphProto | None = onnx.shape_inference.infer_shapes(model).graph
            lost = "the outputs of the nodes it failed on"
        except Exception as e:
            inferred, lost = None, f"every tensor (lenient inference failed too: {_describe(e)})"
        msg = (
            f"ONNX shape inference failed ({_describe(strict)}); "
            f"element types are unknown for {lost}, so qdq-type checks on them are skipped"
        )
        self.findings.append(_warn("shape-inference", "<model>", None, msg))
        return inferred

    def nodes(self) -> Iterator[tuple[str, onnx.NodeProto]]:
        for i, node in enumerate(self.graph.node):
            yield node.name or f"<{node.op_type} #{i}>", node


def _describe(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _finding(severity: str, rule: str, name: str, node: onnx.NodeProto | None, message: str) -> Finding:
    return Finding(severity=severity, rule=rule, node=name, op_type=node.op_type if node else "", message=message)


def _err(rule: str, name: str, node: onnx.NodeProto | None, message: str) -> Finding:
    return _finding("error", rule, name, node, message)


def _warn(rule: str, name: str, node: onnx.NodeProto | None, message: str) -> Finding:
    return _finding("warning", rule, name, node, message)


def _check_opset(model: onnx.ModelProto) -> list[Finding]:
    lo, hi = TRT_OPSET_RANGE
    version = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if version is None or lo <= version <= hi:
        return []
    msg = f"opset {version} is outside the TensorRT ONNX parser's range {lo}..{hi} ({TRT_SOURCE}); re-export with --opset 17"
    return [_err("opset-range", "<model>", None, msg)]


def _check_op(name: str, node: onnx.NodeProto) -> Finding | None:
    op = node.op_type
    if op in QOPERATOR_OPS:
        return _err(
            "qoperator",
            name,
            node,
            f"{op} is a QOperator-format op that TensorRT does not "
            "parse; quantize in QDQ format (QuantizeLinear/DequantizeLinear around float ops)",
        )
    if node.domain not in _DEFAULT_DOMAINS:
        return _err(
            "custom-op",
            name,
            node,
            f"op {node.domain}::{op} is outside the ONNX domain; TensorRT needs a plugin for it",
        )
    if op not in TRT_SUPPORTED_OPS:
        return _err("unsupported-op", name, node, f"{op} is not supported by the TensorRT ONNX parser")
    if op in TRT_NEWER_OPS:
        return _warn("unsupported-op", name, node, f"{op} needs TensorRT 10.15 or later")
    return None


def _check_ops(g: _Graph) -> list[Finding]:
    return [f for name, node in g.nodes() if (f := _check_op(name, node)) is not None]


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def _qdq_type(g: _Graph, node: onnx.NodeProto) -> str | None:
    zp = _input(node, 2)
    if zp:
        return g.types.get(zp) or (g.consts[zp].dtype.name if zp in g.consts else None)
    if node.op_type == "DequantizeLinear":
        x = _input(node, 0)
        return g.types.get(x) or (g.consts[x].dtype.name if x in g.consts else None)
    attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
    return onnx_dtype_name(attr) if attr else "uint8"  # ONNX default of QuantizeLinear without a zero point


def _type_message(dtype: str) -> str:
    if dtype == "uint8":
        return (
            "uint8 Q/DQ is asymmetric quantization; TensorRT needs int8 with zero point 0 "
            "(quantize activations and weights as symmetric QInt8)"
        )
    if dtype == "int32":
        return "int32 DequantizeLinear (a quantized bias) is not parsed by TensorRT; keep biases in float"
    return f"quantized type {dtype} is not supported by TensorRT Q/DQ (int8, fp8 e4m3, int4)"


def _check_qdq_node(g: _Graph, name: str, node: onnx.NodeProto) -> list[Finding]:
    out: list[Finding] = []
    dtype = _qdq_type(g, node)
    if dtype is not None and dtype not in TRT_QDQ_TYPES:
        out.append(_err("qdq-type", name, node, _type_message(dtype)))
    zp = _input(node, 2)
    if zp and zp in g.consts and np.any(g.consts[zp].astype(np.float64) != 0):
        vals = np.unique(g.consts[zp])[:4].tolist()
        out.append(
            _err(
                "qdq-zero-point",
                name,
                node,
                f"zero point {vals} is not 0: asymmetric quantization; TensorRT supports symmetric Q/DQ only",
            )
        )
    elif zp and zp not in g.consts:
        out.append(_err("qdq-zero-point", name, node, "zero point is not a constant"))
    elif not zp and node.op_type == "QuantizeLinear" and dtype == "uint8":
        out.append(_warn("qdq-zero-point", name, node, "no zero point: ONNX then quantizes to uint8"))
    scale = _input(node, 1)
    if scale not in g.consts:
        out.append(_err("qdq-scale", name, node, "scale is not a build-time constant (initializer)"))
    elif not np.all(np.isfinite(g.consts[scale])) or np.any(g.consts[scale] <= 0):
        out.append(_err("qdq-scale", name, node, "scale must be finite and positive"))
    return out


def _check_qdq(g: _Graph) -> list[Finding]:
    return [f for name, node in g.nodes() if node.op_type in _QDQ for f in _check_qdq_node(g, name, node)]


def _weight_source(g: _Graph, dq: onnx.NodeProto) -> np.ndarray | None:
    """The constant weight behind a DequantizeLinear (directly, or through a QuantizeLinear)."""
    x = _input(dq, 0)
    if x in g.consts:
        return g.consts[x]
    q = g.producer.get(x)
    if q is not None and q.op_type == "QuantizeLinear" and _input(q, 0) in g.consts:
        return g.consts[_input(q, 0)]
    return None


def _expected_axis(consumer: onnx.NodeProto, rank: int) -> int:
    op = consumer.op_type
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if op == "MatMul":
        return rank - 1
    return 0  # Conv: [out_channels, in_channels / groups, *kernel]


def _check_weight_axes(g: _Graph) -> list[Finding]:
    out: list[Finding] = []
    for name, node in g.nodes():
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        dq = g.producer.get(_input(node, 1))
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        weight, scale = _weight_source(g, dq), g.consts.get(_input(dq, 1))
        if weight is None or scale is None:
            continue
        dq_name = dq.name or f"<DequantizeLinear for {name}>"
        if scale.size == 1:
            out.append(
                _warn(
                    "qdq-weight-axis",
                    dq_name,
                    dq,
                    f"per-tensor weight scale for {name}; per-channel scales keep more accuracy",
                )
            )
            continue
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        axis = axis + weight.ndim if axis < 0 else axis
        want = _expected_axis(node, weight.ndim)
        if axis != want or scale.size != weight.shape[want]:
            out.append(
                _err(
                    "qdq-weight-axis",
                    dq_name,
                    dq,
                    f"per-channel weight axis {axis} "
                    f"({scale.size} scales) for {name} ({node.op_type}); the output-channel axis is "
                    f"{want} with {weight.shape[want]} channels",
                )
            )
    return out


def _dynamic_dims(info: TensorInfo) -> list[int]:
    return [i for i, d in enumerate(info.shape) if not isinstance(d, int) or d <= 0]


def resolve_profile(profile: dict | None, inputs: list[TensorInfo]) -> dict[str, Shapes]:
    """Turn a profile into ``{input: (min, opt, max)}`` shapes.

    Accepted forms: ``{"min_batch": 1, "opt_batch": 8, "max_batch": 32}`` (fills the batch dim of every
    input whose only dynamic dim is the batch) or ``{"input": {"min": [...], "opt": [...], "max": [...]}}``.

    Raises:
        InvalidInputError: a malformed profile.
    """
    if not profile:
        return {}
    if any(k.endswith("_batch") for k in profile):
        b = [int(profile.get(k, profile.get("opt_batch", 1))) for k in ("min_batch", "opt_batch", "max_batch")]
        out = {}
        for info in inputs:
            if _dynamic_dims(info) == [0]:
                shapes = tuple([v, *info.shape[1:]] for v in b)
                out[info.name] = shapes
        return out
    try:
        return {name: (list(s["min"]), list(s["opt"]), list(s["max"])) for name, s in profile.items()}
    except (KeyError, TypeError) as e:
        raise InvalidInputError(
            f"malformed optimization profile {profile!r}",
            'use {"min_batch": 1, "opt_batch": 8, "max_batch": 32} or '
            '{"input": {"min": [...], "opt": [...], "max": [...]}}',
        ) from e


def _check_shapes(info: TensorInfo, shapes: Shapes) -> list[Finding]:
    lo, opt, hi = shapes
    name = f"<input {info.name}>"
    if not len(lo) == len(opt) == len(hi) == len(info.shape):
        return [
            _err(
                "profile",
                name,
                None,
                f"profile ranks {len(lo)}/{len(opt)}/{len(hi)} differ from the input's rank {len(info.shape)}",
            )
        ]
    out = []
    for i, d in enumerate(info.shape):
        if not 1 <= lo[i] <= opt[i] <= hi[i]:
            out.append(
                _err("profile", name, None, f"dim {i}: need 1 <= min <= opt <= max, got {lo[i]}/{opt[i]}/{hi[i]}")
            )
        elif isinstance(d, int) and d > 0 and not lo[i] == hi[i] == d:
            out.append(
                _err("profile", name, None, f"dim {i} is fixed at {d} but the profile asks for {lo[i]}..{hi[i]}")
            )
    return out


def _check_dynamic(inputs: list[TensorInfo], profile: dict | None) -> list[Finding]:
    shapes = resolve_profile(profile, inputs)
    out = [
        _err("profile", f"<profile {n}>", None, f"the profile names {n!r}, which is not a graph input")
        for n in shapes
        if n not in {i.name for i in inputs}
    ]
    for info in inputs:
        dyn, name = _dynamic_dims(info), f"<input {info.name}>"
        if info.name in shapes:
            out += _check_shapes(info, shapes[info.name])
        elif dyn == [0] and not profile:
            out.append(
                _warn(
                    "dynamic-shape",
                    name,
                    None,
                    "dynamic batch: the engine build needs an optimization profile (min/opt/max batch)",
                )
            )
        elif dyn:
            dims = ", ".join(f"{i} ({info.shape[i]})" for i in dyn)
            out.append(
                _err("dynamic-shape", name, None, f"dynamic dims {dims} are not covered by the optimization profile")
            )
        elif profile and any(k.endswith("_batch") for k in profile) and int(profile.get("max_batch", 1)) > 1:
            out.append(
                _warn("dynamic-shape", name, None, f"static shape {info.shape}: the profile's batch range is ignored")
            )
    return out


def lint_onnx(
    path_or_model: str | os.PathLike | onnx.ModelProto, *, target: str = "tensorrt", profile: dict | None = None
) -> list[Finding]:
    """Check an ONNX model against what a deployment target accepts.

    Args:
        path_or_model: an ``.onnx`` path or a loaded :class:`onnx.ModelProto`.
        target: the deployment target; only ``"tensorrt"`` (TensorRT 10.x/11.x) is known.
        profile: the optimization profile the engine will be built with (see :func:`resolve_profile`).

    Returns:
        Findings, errors first; empty for a clean model.

    Raises:
        UnknownNameError: an unknown target.
        ArtifactError: the file is missing or unreadable.
    """
    if target not in LINT_TARGETS:
        raise UnknownNameError("lint target", target, LINT_TARGETS)
    model = load_onnx(path_or_model)
    try:
        g = _Graph(model)
        inputs, _ = onnx_io(model)
        findings = [
            *g.findings,
            *_check_opset(model),
            *_check_ops(g),
            *_check_qdq(g),
            *_check_weight_axes(g),
            *_check_dynamic(inputs, profile),
        ]
    except (ValueError, TypeError, KeyError, IndexError) as e:
        _raise_if_malformed(path_or_model, model, e)
        raise  # a well-formed model the lint cannot handle: a bug, reported as one
    return sorted(findings, key=lambda f: f.severity != "error")


def _raise_if_malformed(where: object, model: onnx.ModelProto, cause: BaseException) -> None:
    """Bytes that parse as protobuf but break the ONNX spec (undefined dtypes, tensor sizes that do not match
    their shape) fail inside the lint; the ONNX checker tells them apart from a lint bug."""
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, TypeError) as e:
        name = where if not isinstance(where, onnx.ModelProto) else "the model"
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtifactError(f"{name} is not a valid ONNX model: {reason}", "re-export it") from cause
