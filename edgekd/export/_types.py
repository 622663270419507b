"""Types shared by the export modules: :class:`Precision`, :class:`TensorInfo` and ONNX helpers.

Example:
    >>> inputs, outputs = onnx_io("bundle/model.onnx")
    >>> inputs[0].name, inputs[0].shape, inputs[0].dtype
    ('input', ['batch', 1, 28, 28], 'float32')
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict

from edgekd.errors import ArtifactError

__all__ = [
    "Precision",
    "TensorInfo",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "load_onnx",
    "onnx_io",
    "onnx_dtype_name",
    "static_batch",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class Precision(str, Enum):
    """Numeric precision of a model file (what its weights and compute use).

    ``fp32`` is checked against PyTorch by maximum absolute logit error; ``fp16`` and ``int8`` by top-1
    agreement, with the logit error reported (see :data:`edgekd.export.TOLERANCES`).
    """

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class TensorInfo(BaseModel):
    """Name, shape and dtype of a graph input or output; symbolic dims are strings (``"batch"``)."""

    model_config = ConfigDict(frozen=True)

    name: str
    shape: list[int | str]
    dtype: str


def load_onnx(path_or_model: str | os.PathLike | onnx.ModelProto, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from a path (a :class:`onnx.ModelProto` is returned unchanged).

    Raises:
        ArtifactError: the file does not exist or is not a readable ONNX model.
    """
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    path = Path(path_or_model)
    if not path.is_file():
        raise ArtifactError(f"ONNX file {path} does not exist", "check the path")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as e:  # protobuf raises its own DecodeError types for corrupt files
        raise ArtifactError(f"{path} is not a readable ONNX model: {str(e).splitlines()[0] if str(e) else e}") from e


def onnx_dtype_name(elem_type: int) -> str:
    """``onnx.TensorProto.FLOAT`` -> ``"float32"`` (numpy naming); unknown types keep the ONNX name."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _value_info(v: onnx.ValueInfoProto) -> TensorInfo:
    tt = v.type.tensor_type
    dims: list[int | str] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorInfo(name=v.name, shape=dims, dtype=onnx_dtype_name(tt.elem_type))


def onnx_io(path_or_model: str | os.PathLike | onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Graph inputs (initializers excluded) and outputs of an ONNX model."""
    model = load_onnx(path_or_model, load_weights=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [_value_info(v) for v in model.graph.input if v.name not in inits]
    return inputs, [_value_info(v) for v in model.graph.output]


def static_batch(info: TensorInfo) -> int | None:
    """The fixed batch size of an input, or ``None`` when the batch dimension is dynamic."""
    first = info.shape[0] if info.shape else None
    return first if isinstance(first, int) and first > 0 else None
