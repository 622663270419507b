"""What a benchmark needs to know about an ONNX file without running it: inputs, precision, MACs.

MACs are counted from the graph after shape inference at batch 1, with the same convention as
:func:`edgekd.students.count_macs` (only the matrix products: ``Conv`` = output elements x
``C_in / groups x kH x kW``, ``Gemm``/``MatMul`` = ``M x N x K``, and their integer/QLinear forms);
normalisation, activations and pooling are not counted. When a shape cannot be inferred the count
is ``None`` rather than a guess.

Example:
    >>> info = read_onnx_info("model.onnx")
    >>> info.inputs[0].shape, info.precision, info.macs
    (['batch', 1, 28, 28], 'fp32', 2097152)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import ArtifactError, DependencyError

__all__ = ["OnnxInput", "OnnxInfo", "read_onnx_info", "onnx_size_bytes"]

_CONV = {"Conv", "ConvInteger", "QLinearConv"}
_MATMUL = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}
_INT8_OPS = {"QuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear"}


@dataclass(frozen=True)
class OnnxInput:
    """One graph input: its name, its shape (``int`` or a symbolic ``str`` per dim) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class OnnxInfo:
    inputs: tuple[OnnxInput, ...]
    precision: str
    macs: int | None


def _onnx():
    try:
        import onnx
    except ImportError as e:  # a declared dependency, but be clear if it is missing
        raise DependencyError("the onnx package is needed to read ONNX files", "pip install onnx") from e
    return onnx


def onnx_size_bytes(path: str | Path) -> int:
    """Size on disk of an ONNX file plus the external-data files beside it that it references."""
    path = Path(path)
    total = path.stat().st_size
    try:
        model = _onnx().load(str(path), load_external_data=False)
    except Exception:  # size is informative only; a malformed file fails later with a clear error
        return total
    seen: set[str] = set()
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location" and entry.value not in seen:
                seen.add(entry.value)
                ext = path.parent / entry.value
                if ext.is_file():
                    total += ext.stat().st_size
    return total


def read_onnx_info(path: str | Path) -> OnnxInfo:
    """Read inputs, precision and MACs of an ONNX file.

    Raises:
        ArtifactError: the file is not a readable ONNX model.
    """
    onnx = _onnx()
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ArtifactError(f"{path} is not a readable ONNX model: {str(e).splitlines()[0] if str(e) else e}") from e
    inits = {i.name for i in model.graph.initializer}
    inputs = tuple(_graph_input(onnx, vi) for vi in model.graph.input if vi.name not in inits)
    ops = {n.op_type for n in model.graph.node}
    if ops & _INT8_OPS:
        precision = "int8"
    elif any(i.dtype == "float16" for i in inputs) or _has_fp16_weights(onnx, model):
        precision = "fp16"
    else:
        precision = "fp32"
    return OnnxInfo(inputs=inputs, precision=precision, macs=_count_macs(onnx, model, inputs))


def _graph_input(onnx, vi) -> OnnxInput:
    t = vi.type.tensor_type
    dims: list[int | str] = []
    for d in t.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "float32"
    return OnnxInput(name=vi.name, shape=tuple(dims), dtype=dtype)


def _has_fp16_weights(onnx, model) -> bool:
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def _count_macs(onnx, model, inputs: tuple[OnnxInput, ...]) -> int | None:
    """MACs per sample, or None when an input shape is not concrete or inference fails."""
    model = _at_batch_one(onnx, model, inputs)
    if model is None:
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference is best effort: no MACs rather than a wrong number
        return None
    shapes = _value_shapes(inferred)
    total = 0
    for node in inferred.graph.node:
        macs = _node_macs(node, shapes)
        if macs is None:
            return None
        total += macs
    return total


def _at_batch_one(onnx, model, inputs):
    """A copy of ``model`` whose first dim is 1 and every other input dim concrete (or None)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = {i.name for i in inputs}
    for vi in m.graph.input:
        if vi.name not in names:
            continue
        dims = vi.type.tensor_type.shape.dim
        for k, d in enumerate(dims):
            if k == 0:
                d.Clear()
                d.dim_value = 1
            elif not d.HasField("dim_value"):
                return None
    return m


def _value_shapes(model) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    vis = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    for vi in vis:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        out[init.name] = list(init.dims)
    return out


def _node_macs(node, shapes: dict[str, list[int]]) -> int | None:
    if node.op_type in _CONV:
        w_idx = 3 if node.op_type == "QLinearConv" else 1
        w, y = shapes.get(node.input[w_idx]), shapes.get(node.output[0])
        if w is None or y is None:
            return None
        # Output elements x (C_in / groups x kH x kW): the weight holds C_out x C_in/groups x k...
        return math.prod(y) * math.prod(w[1:])
    if node.op_type in _MATMUL:
        a_idx, b_idx = (0, 3) if node.op_type == "QLinearMatMul" else (0, 1)
        a, b, y = shapes.get(node.input[a_idx]), shapes.get(node.input[b_idx]), shapes.get(node.output[0])
        if a is None or b is None or y is None:
            return None
        trans_a = any(att.name == "transA" and att.i for att in node.attribute)
        k = a[-2] if (node.op_type == "Gemm" and trans_a) else a[-1]
        return math.prod(y) * k
    return 0
