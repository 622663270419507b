"""Quantization: target schemes, calibration methods, sensitivity, QAT, bundles, CLI exit codes."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import load_data
from edgekd.distill import TrainConfig
from edgekd.errors import InvalidInputError, UnknownNameError, VerificationError
from edgekd.export import export_onnx, lint_errors, lint_onnx, ort_session, read_manifest, verify_bundle
from edgekd.modeldir import load_model_dir
from edgekd.quantize import (
    CALIBRATION,
    TARGETS,
    CalibrationReader,
    QuantizeConfig,
    get_target,
    prepare_onnx,
    qat_finetune,
    qdq_summary,
    quantizable_nodes,
    quantize_model_dir,
    quantize_onnx,
    sensitivity_search,
    split_inputs,
    strip_fake_quant,
)

from .conftest import SYNTH

runner = CliRunner()
TINY_TRAIN = TrainConfig(epochs=1, batch_size=32, lr=1e-4, warmup_epochs=0.0, max_steps_per_epoch=2)


@pytest.fixture(scope="module")
def fp32(tiny_model_dir, tmp_path_factory):
    """The tiny model's FP32 export, its ORT pre-processed form and calibration inputs."""
    model, card = load_model_dir(tiny_model_dir)
    data = load_data(SYNTH)
    work = tmp_path_factory.mktemp("q")
    export_onnx(model, card, work / "model.onnx")
    pre = prepare_onnx(work / "model.onnx", work / "model.pre.onnx")
    x, _ = split_inputs(data, "train", card.preprocess, n=64, seed=0)
    return {"pre": pre, "x": x, "data": data, "card": card, "model": model, "work": work}


def _runs(path, x) -> np.ndarray:
    out = ort_session(path).run(None, {"input": x[:7]})[0]
    assert out.shape == (7, 2) and np.isfinite(out).all()
    return out


def test_targets_registry():
    assert TARGETS.names() == ["cpu-arm", "cpu-x86", "cpu-x86-avx2", "cpu-x86-vnni", "tensorrt"]
    with pytest.raises(UnknownNameError, match="did you mean"):
        get_target("cpu-x68")


@pytest.mark.parametrize("target", ["cpu-x86", "cpu-arm", "tensorrt"])
def test_ptq_scheme_per_target(target, fp32, tmp_path):
    path = quantize_onnx(fp32["pre"], tmp_path / "q.onnx", get_target(target), CalibrationReader(fp32["x"]))
    _runs(path, fp32["x"])
    s = qdq_summary(path)
    assert s["weight_types"] == ["int8"] and s["per_channel_weights"] == len(quantizable_nodes(fp32["pre"]))
    assert s["qoperator_ops"] == [] and s["quantize_linear"] > 0
    if target == "cpu-x86":
        assert s["activation_types"] == ["uint8"] and s["bias_types"] == ["int32"]
    elif target == "cpu-arm":
        assert s["activation_types"] == ["int8"]
    else:  # TensorRT: everything int8 and symmetric, float bias, and the lint passes
        assert s["activation_types"] == ["int8"] and s["nonzero_zero_points"] == 0 and s["bias_types"] == []
        assert lint_errors(lint_onnx(path, target="tensorrt")) == []


def test_cpu_x86_file_fails_the_tensorrt_lint(fp32, tmp_path):
    path = quantize_onnx(fp32["pre"], tmp_path / "q.onnx", get_target("cpu-x86"), CalibrationReader(fp32["x"]))
    rules = {f.rule for f in lint_errors(lint_onnx(path, target="tensorrt"))}
    assert "qdq-type" in rules


def _quantized_activations(path) -> set[str]:
    """Tensors with a QuantizeLinear in a QDQ model (ORT renames a quantized graph output ``X_QuantizeLinear_Input``)."""
    graph = onnx.load(str(path)).graph
    return {n.input[0].removesuffix("_QuantizeLinear_Input") for n in graph.node if n.op_type == "QuantizeLinear"}


def _input_scale(path) -> float:
    """The scale of the QuantizeLinear on the graph input."""
    graph = onnx.load(str(path)).graph
    (q,) = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
    (scale,) = [i for i in graph.initializer if i.name == q.input[1]]
    return float(onnx.numpy_helper.to_array(scale))


@pytest.mark.parametrize("method", CALIBRATION)
def test_calibration_methods_run_and_cache_every_range(method, fp32, tmp_path):
    from onnxruntime.quantization.calibrate import load_tensors_data

    scheme, cache = get_target("cpu-x86"), tmp_path / "ranges.json"
    path = quantize_onnx(
        fp32["pre"], tmp_path / "q.onnx", scheme, CalibrationReader(fp32["x"]), calibration=method, cache=cache
    )
    _runs(path, fp32["x"])
    json.loads(cache.read_text())  # plain JSON (never a pickle)
    ranges = load_tensors_data(cache)
    assert ranges.calibration_method.name.lower() == method
    quantized = _quantized_activations(path)
    assert "input" in quantized and quantized <= set(ranges.data)  # a range for every quantized activation
    for name in quantized:
        lo, hi = (float(np.asarray(v).item()) for v in ranges.data[name].range_value)
        assert np.isfinite([lo, hi]).all() and lo <= hi, name
    # The cache is reused: without a reader nothing can be calibrated, and the model comes out identical.
    again = quantize_onnx(fp32["pre"], tmp_path / "again.onnx", scheme, None, calibration=method, cache=cache)
    assert onnx.load(str(again)).SerializeToString() == onnx.load(str(path)).SerializeToString()


def test_minmax_cache_holds_the_calibration_extremes_and_sets_the_scales(fp32, tmp_path):
    from onnxruntime.quantization.calibrate import TensorData, load_tensors_data, save_tensors_data

    x, scheme, cache = fp32["x"], get_target("cpu-x86"), tmp_path / "ranges.json"
    path = quantize_onnx(fp32["pre"], tmp_path / "q.onnx", scheme, CalibrationReader(x), cache=cache)
    ranges = load_tensors_data(cache)
    lo, hi = (float(np.asarray(v).item()) for v in ranges.data["input"].range_value)
    assert (lo, hi) == pytest.approx((float(x.min()), float(x.max())))  # minmax: the extremes of the data seen
    assert lo < 0 < hi and _input_scale(path) == pytest.approx((hi - lo) / 255)  # uint8, asymmetric
    # Re-quantizing takes the ranges from the cache: widen the input's range there and its scale follows.
    ranges.data["input"] = TensorData(lowest=np.float32(2 * lo), highest=np.float32(2 * hi))
    save_tensors_data(ranges, cache)
    wide = quantize_onnx(fp32["pre"], tmp_path / "wide.onnx", scheme, None, cache=cache)
    assert _input_scale(wide) == pytest.approx(2 * (hi - lo) / 255)


def test_sensitivity_keeps_nodes_in_fp32(fp32, tmp_path):
    data, card = fp32["data"], fp32["card"]
    x_val, y_val = split_inputs(data, "val", card.preprocess)
    nodes = quantizable_nodes(fp32["pre"])
    # An unreachable budget (INT8 must beat FP32 by 100 points) keeps every weighted node in FP32, worst first.
    report = sensitivity_search(
        fp32["pre"],
        tmp_path / "mixed.onnx",
        get_target("cpu-x86"),
        CalibrationReader(fp32["x"]),
        x_val=x_val,
        y_val=y_val,
        task=data.task,
        work=tmp_path,
        max_drop=-100.0,
        max_nodes=2,
    )
    assert len(report.nodes) == len(nodes) and report.nodes[0].error >= report.nodes[-1].error
    assert report.fp32_nodes == [e.node for e in report.nodes[:2]] and not report.budget_met
    graph = onnx.load(str(tmp_path / "mixed.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    for node in (n for n in graph.node if n.name in report.fp32_nodes):
        assert inits[node.input[1]].data_type == onnx.TensorProto.FLOAT  # float weight, no DequantizeLinear
    relaxed = sensitivity_search(
        fp32["pre"],
        tmp_path / "full.onnx",
        get_target("cpu-x86"),
        CalibrationReader(fp32["x"]),
        x_val=x_val,
        y_val=y_val,
        task=data.task,
        work=tmp_path / "w2",
        max_drop=100.0,
    )
    assert relaxed.budget_met and relaxed.fp32_nodes == []


@pytest.mark.parametrize("target", ["tensorrt", "cpu-x86"])
def test_qat_one_epoch_exports(target, fp32, tmp_path):
    data, card = fp32["data"], fp32["card"]  # labels only here; KD is covered through the API below
    qat, record = qat_finetune(
        fp32["model"],
        card,
        data,
        get_target(target),
        TINY_TRAIN,
        tmp_path / "qat",
        calib=fp32["x"],
        backend="torch",
        progress=False,
    )
    assert record["backend"] == "torch" and len(record["history"]) == 1 and record["freeze_bn"]
    tuned = dict(qat.named_modules())
    bns = [(m, tuned[n]) for n, m in fp32["model"].named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(torch.equal(a.running_var, b.running_var) for a, b in bns)  # statistics frozen
    path = tmp_path / "qat.onnx"
    export_onnx(qat, card, path)
    _runs(path, fp32["x"])
    s = qdq_summary(path)
    if target == "tensorrt":
        assert s["activation_types"] == ["int8"] and s["nonzero_zero_points"] == 0
        assert lint_errors(lint_onnx(path, target="tensorrt")) == []
    else:
        assert s["activation_types"] == ["uint8"]
    plain = strip_fake_quant(qat, card)
    with torch.no_grad():
        assert plain(torch.from_numpy(fp32["x"][:4])).shape == (4, 2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None, reason="nvidia-modelopt is not installed")
def test_qat_modelopt_backend_exports_for_tensorrt(fp32, tmp_path):
    data, card = fp32["data"], fp32["card"]
    qat, record = qat_finetune(
        fp32["model"],
        card,
        data,
        get_target("tensorrt"),
        TINY_TRAIN,
        tmp_path / "qat",
        calib=fp32["x"],
        backend="modelopt",
        progress=False,
    )
    assert record["backend"] == "modelopt"
    export_onnx(qat, card, tmp_path / "qat.onnx")
    _runs(tmp_path / "qat.onnx", fp32["x"])
    assert lint_errors(lint_onnx(tmp_path / "qat.onnx", target="tensorrt")) == []


def test_quantize_model_dir_writes_verified_bundle(tiny_model_dir, tmp_path):
    out = tmp_path / "bundle"
    result = quantize_model_dir(
        tiny_model_dir, out, QuantizeConfig(target="tensorrt", calib_samples=64), progress=False
    )
    assert set(result.metrics) == {"fp32", "int8"} and "acc" in result.delta and result.lint_errors == []
    assert result.qdq["nonzero_zero_points"] == 0
    manifest = read_manifest(out)
    assert [f.name for f in manifest.model_files()] == ["model.int8.onnx", "model.onnx"]
    quant = manifest.extra["quantization"]
    assert quant["method"] == "ptq" and quant["target"] == "tensorrt" and "acc" in quant["delta"]
    assert QuantizeConfig.model_validate(quant["config"]).calib_samples == 64  # the resolved config, saved
    assert [p.precision.value for p in manifest.parity] == ["int8", "fp32"] and all(p.passed for p in manifest.parity)
    assert manifest.lineage["stage"] == "quantize" and manifest.target == "tensorrt"
    assert verify_bundle(out).ok


def test_quantize_qat_with_kd_through_the_api(tiny_model_dir, tmp_path):
    cfg = QuantizeConfig(method="qat", target="cpu-x86", qat_backend="torch", calib_samples=64, train=TINY_TRAIN)
    result = quantize_model_dir(tiny_model_dir, tmp_path / "b", cfg, progress=False)
    assert result.qat["backend"] == "torch" and result.qat["teacher"] == str(tiny_model_dir)
    assert "kd" in result.qat["history"][0] and result.qdq["activation_types"] == ["uint8"]
    # The delta is against the input model; the shipped FP32 reference is the QAT-tuned source of the INT8 file.
    assert set(result.metrics) == {"fp32", "int8", "fp32_qat_tuned"}
    assert read_manifest(tmp_path / "b").extra["quantization"]["fp32_reference"] == "qat-tuned"
    assert verify_bundle(tmp_path / "b").ok


def test_failed_check_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    import edgekd.quantize._api as api

    def failing(*args):
        raise VerificationError("planted failure")

    monkeypatch.setattr(api, "_verify", failing)
    with pytest.raises(VerificationError):
        quantize_model_dir(tiny_model_dir, tmp_path / "b", QuantizeConfig(calib_samples=32), progress=False)
    assert not (tmp_path / "b").exists()


def test_config_checks():
    with pytest.raises(InvalidInputError, match="GPU targets"):
        QuantizeConfig(method="fp16", target="cpu-x86").check()
    with pytest.raises(InvalidInputError, match="budget metric"):
        QuantizeConfig(metric="loss").check()
    with pytest.raises(UnknownNameError):
        QuantizeConfig(qat_backend="tensorflow").check()


def test_cli_quantize_json_and_exit_codes(tiny_model_dir, tmp_path):
    res = runner.invoke(
        app,
        [
            "quantize",
            tiny_model_dir,
            "--out",
            str(tmp_path / "b"),
            "--target",
            "cpu-x86",
            "--calibration",
            "percentile",
            "--calib-samples",
            "32",
            "--json",
            "-",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["precision"] == "int8" and payload["qdq"]["activation_types"] == ["uint8"]
    assert payload["calibration"] == {"method": "percentile", "samples": 32}

    bad = runner.invoke(app, ["quantize", tiny_model_dir, "--out", str(tmp_path / "x"), "--target", "cpu-x68"])
    assert bad.exit_code == 3 and "cpu-x86" in bad.output and not (tmp_path / "x").exists()
    missing = runner.invoke(app, ["quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "y")])
    assert missing.exit_code == 4
    fp16_cpu = runner.invoke(app, ["quantize", tiny_model_dir, "--out", str(tmp_path / "z"), "--method", "fp16"])
    assert fp16_cpu.exit_code == 3
