"""What the TensorRT 10.x ONNX parser accepts, for the lint (no TensorRT needed to read it).

Source: ``docs/operators.md`` of onnx/onnx-tensorrt for TensorRT 10.15 (the operator support matrix,
operators marked ``Y``). Opset range: TensorRT 10.0 documents "opset 9 to opset 20" (10.15 extends it
to 24); the lint uses 9..20 so a model passes on every TensorRT 10.x and 11.x parser.

A few operators added to the parser after 10.0 (``Attention``, ``RMSNormalization``,
``RotaryEmbedding``, ``TensorScatter``) are listed: they only matter for transformer models and a
newer TensorRT is named in the finding's message.
"""

from __future__ import annotations

__all__ = ["TRT_OPSET_RANGE", "TRT_SUPPORTED_OPS", "TRT_NEWER_OPS", "QOPERATOR_OPS", "TRT_QDQ_TYPES", "TRT_SOURCE"]

TRT_SOURCE = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15); opset range from TensorRT 10.0"
TRT_OPSET_RANGE = (9, 20)

TRT_SUPPORTED_OPS = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
    "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant",
    "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace",
    "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten",
    "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool", "GlobalLpPool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample", "GroupNormalization", "GRU", "HammingWindow",
    "HannWindow", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler", "InstanceNormalization",
    "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN",
    "LSTM", "LpNormalization", "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min",
    "Mish", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad",
    "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform",
    "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape",
    "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round", "STFT", "ScaledTanh", "Scan", "Scatter",
    "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice",
    "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh",
    "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
    "Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter",
})  # fmt: skip

# Supported only by parsers newer than TensorRT 10.0 (named in the finding when used).
TRT_NEWER_OPS = frozenset({"Attention", "RMSNormalization", "RotaryEmbedding", "TensorScatter"})

# The ONNX "QOperator" quantization format: integer kernels TensorRT does not parse; use QDQ instead.
QOPERATOR_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSoftmax",
    "QLinearReduceMean", "QLinearWhere", "QLinearConvTranspose", "QGemm", "QAttention", "DynamicQuantizeLinear",
    "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QEmbedLayerNormalization", "QOrderedMatMul",
})  # fmt: skip

# Quantized types TensorRT accepts in Q/DQ (INT8 symmetric; FP8 E4M3 and INT4 weight-only on newer GPUs).
TRT_QDQ_TYPES = frozenset({"int8", "float8e4m3fn", "int4"})
