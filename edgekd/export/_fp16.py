"""FP32 -> FP16 conversion of an ONNX graph with FP32 inputs and outputs kept for the caller.

The same recipe as onnxconverter-common's ``convert_float_to_float16(keep_io_types=True)``, written
with plain ``onnx`` helpers:

1. every float32 graph input gets a ``Cast(to=float16)`` and every float32 graph output a
   ``Cast(to=float32)``, so callers keep feeding and reading float32;
2. float32 initializers and ``Constant`` values become float16 (clipped to +-65504), ``Cast(to=float)``
   becomes ``Cast(to=float16)``;
3. ops that need float32 inputs (``Resize`` scales, Q/DQ scales before opset 19, ``Range``, ...) stay
   in float32 behind ``Cast`` nodes (:data:`FP32_OPS`).

TensorRT 11 removed the FP16 builder flag: a strongly typed network takes its precision from the ONNX,
so this file is what an FP16 TensorRT engine is built from.

Example:
    >>> to_fp16("model.onnx", "model.fp16.onnx")
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import InvalidInputError
from edgekd.export._types import load_onnx

__all__ = ["to_fp16", "FP32_OPS"]

FP32, FP16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
# Ops kept in float32: inputs that the ONNX spec types as float only, or that lose meaning in FP16.
FP32_OPS = frozenset(
    {
        "Resize",
        "Upsample",
        "Range",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "NonMaxSuppression",
        "RoiAlign",
        "TopK",
        "CumSum",
        "Multinomial",
        "EyeLike",
        "STFT",
        "DFT",
    }
)


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of all float32 tensors (graph inputs/outputs, initializers, inferred intermediates)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {i.name for i in g.initializer if i.data_type == FP32}
    for v in [*g.input, *g.output, *g.value_info]:
        if v.type.tensor_type.elem_type == FP32:
            out.add(v.name)
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type == FP32:
            out.update(node.output)
    return out


def _to_fp16_tensor(t: TensorProto) -> TensorProto:
    arr = numpy_helper.to_array(t).astype(np.float32)
    return numpy_helper.from_array(np.clip(arr, -FP16_MAX, FP16_MAX).astype(np.float16), t.name)


def _convert_node_attrs(node: onnx.NodeProto) -> None:
    """Float32 constants and casts inside an FP16 region become float16."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == FP32:
            a.t.CopyFrom(_to_fp16_tensor(a.t))
        if node.op_type == "Cast" and a.name == "to" and a.i == FP32:
            a.i = FP16


def _rename_inputs(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for n in nodes:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


def _wrap_io(graph: onnx.GraphProto, floats: set[str]) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Casts at the graph boundary so the graph's own inputs and outputs stay float32."""
    head, tail = [], []
    for v in graph.input:
        if v.name in floats and v.type.tensor_type.elem_type == FP32:
            new = f"{v.name}__fp16"
            _rename_inputs(list(graph.node), v.name, new)
            floats.add(new)
            head.append(helper.make_node("Cast", [v.name], [new], to=FP16, name=f"{v.name}__cast_fp16"))
    for v in graph.output:
        if v.type.tensor_type.elem_type == FP32:
            new = f"{v.name}__fp16"
            for n in graph.node:
                n.output[:] = [new if o == v.name else o for o in n.output]
            _rename_inputs(list(graph.node), v.name, new)
            floats.add(new)
            tail.append(helper.make_node("Cast", [new], [v.name], to=FP32, name=f"{v.name}__cast_fp32"))
    return head, tail


def _keep_fp32(
    node: onnx.NodeProto, floats: set[str], inits: dict[str, TensorProto], fp32_inits: set[str]
) -> list[onnx.NodeProto]:
    """Surround an FP32-only node with casts; returns the nodes that replace it."""
    before, after = [], []
    for i, name in enumerate(node.input):
        if not name or name not in floats:
            continue
        if name in inits:
            fp32_inits.add(name)  # initializers feeding this node stay float32
            continue
        cast = f"{name}__to_fp32__{node.name or node.op_type}_{i}"
        before.append(helper.make_node("Cast", [name], [cast], to=FP32, name=f"{cast}__cast"))
        node.input[i] = cast
    for j, name in enumerate(node.output):
        if name in floats:
            raw = f"{name}__fp32"
            node.output[j] = raw
            after.append(helper.make_node("Cast", [raw], [name], to=FP16, name=f"{raw}__cast"))
    return [*before, node, *after]


def _convert_initializers(graph: onnx.GraphProto, fp32_inits: set[str], fp16_users: set[str]) -> None:
    """Initializers become float16 unless only float32 nodes read them (shared ones are duplicated)."""
    extra = []
    for idx, t in enumerate(graph.initializer):
        if t.data_type != FP32:
            continue
        if t.name in fp32_inits and t.name in fp16_users:
            copy = onnx.TensorProto()
            copy.CopyFrom(_to_fp16_tensor(t))
            copy.name = f"{t.name}__fp16"
            extra.append(copy)
            for n in graph.node:
                if n.op_type not in FP32_OPS:
                    _rename_inputs([n], t.name, copy.name)
        elif t.name not in fp32_inits:
            graph.initializer[idx].CopyFrom(_to_fp16_tensor(t))
    graph.initializer.extend(extra)


def _convert_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise InvalidInputError("FP16 conversion of graphs with sub-graphs (If/Loop/Scan) is not supported")
    floats = _float_tensors(model)
    inits = {t.name: t for t in graph.initializer}
    head, tail = _wrap_io(graph, floats)
    nodes, fp32_inits, fp16_users = [], set(), set()
    for node in graph.node:
        if node.op_type in FP32_OPS:
            nodes.extend(_keep_fp32(node, floats, inits, fp32_inits))
        else:
            _convert_node_attrs(node)
            fp16_users.update(i for i in node.input if i in inits)
            nodes.append(node)
    _convert_initializers(graph, fp32_inits, fp16_users)
    graph.ClearField("node")
    graph.node.extend([*head, *nodes, *tail])
    graph.ClearField("value_info")  # stale float32 annotations; re-inferred below
    return onnx.shape_inference.infer_shapes(model)


def to_fp16(src_onnx: str | os.PathLike, dst_onnx: str | os.PathLike) -> None:
    """Write an FP16 copy of ``src_onnx`` to ``dst_onnx``: FP16 weights and compute, FP32 inputs/outputs.

    Args:
        src_onnx: the float32 ONNX model.
        dst_onnx: where to write the FP16 model (``onnx.checker`` is run on it).

    Raises:
        ArtifactError: ``src_onnx`` is missing or unreadable.
        InvalidInputError: the graph has sub-graphs (control flow), which this converter does not handle.
    """
    model = onnx.ModelProto()
    model.CopyFrom(load_onnx(src_onnx))
    converted = _convert_graph(model)
    onnx.checker.check_model(converted)
    Path(dst_onnx).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(converted, str(dst_onnx))
