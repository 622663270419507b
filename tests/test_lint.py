"""The TensorRT compatibility lint on small graphs built with onnx.helper, on exports and on ORT-quantized models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import UnknownNameError
from edgekd.export import LINT_RULES, lint_errors, lint_onnx, resolve_profile
from edgekd.export._types import onnx_io

PROFILE = {"min_batch": 1, "opt_batch": 8, "max_batch": 32}


def _model(nodes, inits=(), *, opset=17, in_shape=("batch", 3, 8, 8), out_shape=None, extra_opsets=()):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _qdq(zp_dtype=np.int8, zp=0, *, with_zp=True):
    inits = [_init("s", np.float32(0.1))]
    q_in, dq_in = ["input", "s"], ["xq", "s"]
    if with_zp:
        inits.append(_init("zp", np.array(zp, dtype=zp_dtype)))
        q_in, dq_in = [*q_in, "zp"], [*dq_in, "zp"]
    nodes = [
        helper.make_node("QuantizeLinear", q_in, ["xq"], name="q0"),
        helper.make_node("DequantizeLinear", dq_in, ["xd"], name="dq0"),
        helper.make_node("Relu", ["xd"], ["logits"], name="relu0"),
    ]
    return _model(nodes, inits)


def _conv_with_weight_dq(axis, scales, *, op="Conv"):
    w = np.random.default_rng(0).integers(-5, 5, size=(4, 3, 3, 3)).astype(np.int8)
    inits = [
        _init("w_q", w),
        _init("w_s", np.asarray(scales, np.float32)),
        _init("w_zp", np.zeros(np.asarray(scales).shape, np.int8)),
    ]
    dq = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="w_dq", axis=axis)
    conv = helper.make_node(op, ["input", "w"], ["logits"], name="conv0", pads=[1, 1, 1, 1])
    return _model([dq, conv], inits)


def _rules(findings, severity="error"):
    return {(f.rule, f.node) for f in findings if f.severity == severity}


def test_clean_graph_has_no_findings():
    model = _model([helper.make_node("Relu", ["input"], ["logits"], name="r")])
    assert lint_onnx(model, profile=PROFILE) == []


def test_clean_export_passes(tmp_path, tiny_model_dir):
    from edgekd.export import export_onnx
    from edgekd.modeldir import load_model_dir

    model, card = load_model_dir(tiny_model_dir)
    export_onnx(model, card, tmp_path / "m.onnx")
    assert lint_errors(lint_onnx(tmp_path / "m.onnx", profile=PROFILE)) == []


def test_symmetric_int8_qdq_passes():
    assert lint_errors(lint_onnx(_qdq(np.int8, 0), profile=PROFILE)) == []


def test_asymmetric_uint8_qdq_is_flagged_with_node_names():
    findings = lint_onnx(_qdq(np.uint8, 128), profile=PROFILE)
    errors = _rules(findings)
    assert ("qdq-type", "q0") in errors and ("qdq-type", "dq0") in errors
    assert ("qdq-zero-point", "q0") in errors and ("qdq-zero-point", "dq0") in errors
    assert all(f.op_type in ("QuantizeLinear", "DequantizeLinear") for f in lint_errors(findings))
    assert "asymmetric" in str(findings[0])


def test_int8_nonzero_zero_point_is_flagged():
    errors = _rules(lint_onnx(_qdq(np.int8, 3), profile=PROFILE))
    assert errors == {("qdq-zero-point", "q0"), ("qdq-zero-point", "dq0")}


def test_quantize_without_zero_point_warns_uint8():
    findings = lint_onnx(_qdq(with_zp=False), profile=PROFILE)
    assert ("qdq-zero-point", "q0") in _rules(findings, "warning")
    assert ("qdq-type", "q0") in _rules(findings)


def test_non_constant_or_negative_scale_is_flagged():
    nodes = [
        helper.make_node("Abs", ["input"], ["s_dyn"], name="abs"),
        helper.make_node("ReduceMax", ["s_dyn"], ["s"], name="rmax", keepdims=0),
        helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["xq"], name="q_dyn"),
        helper.make_node("DequantizeLinear", ["xq", "neg", "zp"], ["logits"], name="dq_neg"),
    ]
    inits = [_init("zp", np.int8(0)), _init("neg", np.float32(-0.5))]
    errors = _rules(lint_onnx(_model(nodes, inits), profile=PROFILE))
    assert ("qdq-scale", "q_dyn") in errors and ("qdq-scale", "dq_neg") in errors


def test_int32_bias_dequantize_is_flagged():
    inits = [_init("b_q", np.arange(4, dtype=np.int32)), _init("b_s", np.float32(0.01)), _init("b_zp", np.int32(0))]
    nodes = [
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b"], name="bias_dq"),
        helper.make_node("Add", ["input", "b"], ["logits"], name="add"),
    ]
    findings = lint_errors(lint_onnx(_model(nodes, inits, in_shape=("batch", 4)), profile=PROFILE))
    assert [(f.rule, f.node) for f in findings] == [("qdq-type", "bias_dq")]
    assert "bias" in findings[0].message


def test_qlinearconv_model_is_flagged():
    inits = [
        _init(n, v)
        for n, v in [
            ("xs", np.float32(0.1)),
            ("xz", np.uint8(128)),
            ("w", np.ones((4, 3, 3, 3), np.uint8)),
            ("ws", np.float32(0.1)),
            ("wz", np.uint8(0)),
            ("ys", np.float32(0.1)),
            ("yz", np.uint8(128)),
        ]
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"], name="q_in"),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], name="qconv"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["logits"], name="dq_out"),
    ]
    findings = lint_onnx(_model(nodes, inits), profile=PROFILE)
    assert ("qoperator", "qconv") in _rules(findings)
    assert any(f.op_type == "QLinearConv" and "QDQ" in f.message for f in findings)


def test_unsupported_and_custom_ops_are_flagged():
    nodes = [
        helper.make_node("Det", ["input"], ["d"], name="det0"),
        helper.make_node("FusedConv", ["d"], ["logits"], name="fused0", domain="com.microsoft"),
    ]
    model = _model(nodes, in_shape=(2, 3, 3), extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    errors = _rules(lint_onnx(model, profile=PROFILE))
    assert errors == {("unsupported-op", "det0"), ("custom-op", "fused0")}


def test_unnamed_nodes_get_a_readable_name():
    model = _model([helper.make_node("Det", ["input"], ["logits"])], in_shape=(2, 3, 3))
    (finding,) = lint_errors(lint_onnx(model, profile=PROFILE))
    assert finding.node == "<Det #0>" and finding.op_type == "Det"


@pytest.mark.parametrize("opset,ok", [(8, False), (9, True), (17, True), (20, True), (21, False)])
def test_opset_range(opset, ok):
    model = _model([helper.make_node("Relu", ["input"], ["logits"], name="r")], opset=opset)
    rules = {f.rule for f in lint_errors(lint_onnx(model, profile=PROFILE))}
    assert ("opset-range" not in rules) is ok


def test_per_channel_weight_axis():
    assert lint_onnx(_conv_with_weight_dq(0, [0.1] * 4), profile=PROFILE) == []
    wrong = lint_onnx(_conv_with_weight_dq(1, [0.1] * 3), profile=PROFILE)
    assert ("qdq-weight-axis", "w_dq") in _rules(wrong)
    assert "output-channel axis is 0" in lint_errors(wrong)[0].message
    per_tensor = lint_onnx(_conv_with_weight_dq(1, 0.1), profile=PROFILE)
    assert lint_errors(per_tensor) == [] and ("qdq-weight-axis", "w_dq") in _rules(per_tensor, "warning")


def test_dynamic_dims_need_the_profile():
    relu = [helper.make_node("Relu", ["input"], ["logits"], name="r")]
    # Dynamic batch: covered by a batch profile, a warning without one.
    assert lint_onnx(_model(relu), profile=PROFILE) == []
    assert _rules(lint_onnx(_model(relu)), "warning") == {("dynamic-shape", "<input input>")}
    # A dynamic spatial dim is not covered by a batch profile ...
    dyn_hw = _model(relu, in_shape=("batch", 3, "h", 8))
    assert ("dynamic-shape", "<input input>") in _rules(lint_onnx(dyn_hw, profile=PROFILE))
    # ... but is by explicit per-input shapes.
    shapes = {"input": {"min": [1, 3, 8, 8], "opt": [4, 3, 16, 8], "max": [8, 3, 32, 8]}}
    assert lint_onnx(dyn_hw, profile=shapes) == []


def test_bad_profiles_are_flagged():
    relu = [helper.make_node("Relu", ["input"], ["logits"], name="r")]
    bad = lint_onnx(_model(relu), profile={"min_batch": 8, "opt_batch": 4, "max_batch": 32})
    assert ("profile", "<input input>") in _rules(bad)
    fixed = {"input": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [4, 3, 8, 8]}}
    assert ("profile", "<input input>") in _rules(lint_onnx(_model(relu, in_shape=(1, 3, 8, 8)), profile=fixed))
    unknown = {"image": {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [1, 3, 8, 8]}}
    assert ("profile", "<profile image>") in _rules(lint_onnx(_model(relu), profile=unknown))


def test_resolve_profile_fills_the_batch_dim():
    inputs, _ = onnx_io(_model([helper.make_node("Relu", ["input"], ["logits"], name="r")]))
    assert resolve_profile(PROFILE, inputs) == {"input": ([1, 3, 8, 8], [8, 3, 8, 8], [32, 3, 8, 8])}


def test_unknown_target_suggests():
    with pytest.raises(UnknownNameError, match="lint target"):
        lint_onnx(_model([helper.make_node("Relu", ["input"], ["logits"])]), target="tensorrtx")


def test_missing_file_is_an_artifact_error(tmp_path):
    from edgekd.errors import ArtifactError

    with pytest.raises(ArtifactError, match="does not exist"):
        lint_onnx(tmp_path / "nope.onnx")


def test_failed_shape_inference_warns_and_keeps_what_it_inferred():
    # A Q without zero point quantizes to uint8: only shape inference types xq, so only it lets the lint see
    # that dq0 dequantizes uint8. The Reshape beside it has a 4-d shape input, which strict inference rejects.
    model = _qdq(with_zp=False)
    model.graph.node.append(helper.make_node("Reshape", ["input", "input"], ["bad"], name="bad_reshape"))
    model.ir_version = 8  # what onnxruntime loads; onnx 1.23 writes IR 14 by default
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    findings = lint_onnx(model, profile=PROFILE)
    (warning,) = [f for f in findings if f.rule == "shape-inference"]
    assert (warning.severity, warning.node, warning.op_type) == ("warning", "<model>", "")
    assert warning.rule in LINT_RULES
    assert "InferenceError" in warning.message and "shape input must be 1D" in warning.message
    # Linting went on, with the types the lenient pass still inferred for the other nodes.
    assert {("qdq-type", "q0"), ("qdq-type", "dq0")} <= _rules(findings)
    assert ("qdq-zero-point", "q0") in _rules(findings, "warning")


def test_shape_inference_that_cannot_run_at_all_warns(monkeypatch):
    def too_large(model, *args, **kwargs):
        raise ValueError("This protobuf of onnx model is too large (>2GB). Call check_model with model path instead.")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", too_large)
    findings = lint_onnx(_qdq(np.uint8, 128), profile=PROFILE)
    (warning,) = [f for f in findings if f.rule == "shape-inference"]
    assert warning.severity == "warning" and "ValueError: This protobuf of onnx model is too large" in warning.message
    assert "every tensor" in warning.message
    # The checks on constants (the uint8 zero point) do not need inference and still run.
    assert {("qdq-type", "q0"), ("qdq-zero-point", "q0"), ("qdq-zero-point", "dq0")} <= _rules(findings)


def _ort_quantize(tmp_path, tiny_model_dir, **kw):
    """Quantize the tiny model with ONNX Runtime static quantization (a few calibration samples)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    from edgekd.export import export_onnx, make_samples
    from edgekd.modeldir import load_model_dir

    model, card = load_model_dir(tiny_model_dir)
    export_onnx(model, card, tmp_path / "fp32.onnx")
    batches = iter([{"input": s[None]} for s in make_samples(card, n=4).inputs])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    out = tmp_path / "int8.onnx"
    quantize_static(
        str(tmp_path / "fp32.onnx"),
        str(out),
        Reader(),
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        **kw,
    )
    return onnx.load(str(out))


def test_ort_qdq_symmetric_model_passes_and_qoperator_fails(tmp_path, tiny_model_dir):
    from onnxruntime.quantization import QuantFormat

    opts = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    qdq = _ort_quantize(tmp_path, tiny_model_dir, quant_format=QuantFormat.QDQ, extra_options=opts)
    assert lint_errors(lint_onnx(qdq, profile=PROFILE)) == []
    qop = _ort_quantize(tmp_path, tiny_model_dir, quant_format=QuantFormat.QOperator, extra_options=opts)
    assert "qoperator" in {f.rule for f in lint_errors(lint_onnx(qop, profile=PROFILE))}
