"""OpenVINO: IR in the bundle with parity, a mismatch caught, the bench backend, predict agreeing with ORT.

Real OpenVINO (``edgekd[openvino]``, part of ``dev``) on the tiny model of the conftest.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekd.bench import BenchSettings, benchmark
from edgekd.bench._runtimes import fastest_by_batch
from edgekd.cli import app
from edgekd.errors import DependencyError
from edgekd.export import Precision, export_bundle, read_manifest, verify_bundle
from edgekd.export._openvino import openvino_parity, require_openvino
from edgekd.export._runtimes import stored_reference
from edgekd.quantize import QuantizeConfig, quantize_model_dir
from edgekd.serve import load_model, predict

from .conftest import SYNTH

ov = pytest.importorskip("openvino", reason="edgekd[openvino] is not installed")
runner = CliRunner()
FAST = BenchSettings(warmup_s=0, warmup_iters=2, min_s=0.05, min_iters=5, threads=1, roofline=False)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("ov") / "fp32"
    export_bundle(tiny_model_dir, out, formats="onnx,openvino")
    return out


@pytest.fixture(scope="module")
def int8(tmp_path_factory, tiny_model_dir) -> Path:
    """A PTQ INT8 bundle from `edgekd quantize`, then `edgekd export BUNDLE --format openvino` (one calibration)."""
    root = tmp_path_factory.mktemp("ov-int8")
    quantize_model_dir(tiny_model_dir, root / "q", QuantizeConfig(calib_samples=64), progress=False)
    r = runner.invoke(app, ["export", str(root / "q"), "--format", "openvino", "--out", str(root / "q-ov")])
    assert r.exit_code == 0, r.output
    return root / "q-ov"


def test_fp32_ir_joins_the_bundle_with_parity_hashes_and_usage(fp32):
    m = read_manifest(fp32)
    files = {f.name: f for f in m.files}
    assert files["model.xml"].kind == "openvino" and files["model.xml"].precision is Precision.FP32
    assert files["model.bin"].kind == "openvino-weights" and files["model.bin"].sha256
    res = next(p for p in m.parity if p.file == "model.xml")
    assert res.passed and res.max_abs <= 1e-4 and res.batch_sizes == [1, 7]
    assert m.versions["openvino"] == ov.__version__
    info = m.extra["runtimes"]["openvino"]
    assert info["compress_to_fp16"] is False and info["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    card = (fp32 / "MODEL_CARD.md").read_text()
    assert "How to run it with openvino" in card and 'compile_model("model.xml"' in card
    # FP32 kept FP32: no FP16 constant in the saved IR
    types = {
        op.get_output_element_type(0).get_type_name()
        for op in ov.Core().read_model(fp32 / "model.xml").get_ops()
        if op.get_type_name() == "Constant"
    }
    assert "f16" not in types and "f32" in types
    check = verify_bundle(fp32)
    assert check.ok and {"model.onnx", "model.xml"} <= {p.file for p in check.parity}


def test_int8_ir_comes_from_the_qdq_onnx_and_passes_int8_parity(int8):
    m = read_manifest(int8)
    names = {f.name: f for f in m.files}
    assert names["model.int8.xml"].precision is Precision.INT8 and "model.xml" in names
    res = next(p for p in m.parity if p.file == "model.int8.xml")
    assert res.passed and res.top1_agreement >= 0.99
    assert m.extra["runtimes"]["openvino"]["converted_from"] == ["model.int8.onnx", "model.onnx"]
    assert verify_bundle(int8).ok


def test_corrupt_weights_fail_parity(fp32, tmp_path):
    """Weights scaled in the IR (read, change the largest FP32 constant, save): parity must fail."""
    model = ov.Core().read_model(fp32 / "model.xml")
    consts = [
        op
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "f32"
    ]
    big = max(consts, key=lambda op: op.get_data().size)
    bad = ov.opset13.constant(big.get_data() * 1.5 + 0.1)
    for target in list(big.output(0).get_target_inputs()):
        target.replace_source_output(bad.output(0))
    ov.save_model(model, tmp_path / "model.xml", compress_to_fp16=False)
    x, ref = stored_reference(fp32)
    res = openvino_parity(tmp_path / "model.xml", Precision.FP32, read_manifest(fp32).task, x, ref)
    assert not res.passed and res.max_abs > 1e-4


def test_bench_backend_side_by_side_records_its_config(fp32):
    report = benchmark([str(fp32)], backends=["ort", "openvino"], batches=(1, 4), settings=FAST)
    ov_rows = [r for r in report.results if r.backend == "openvino"]
    assert {r.batch for r in ov_rows} == {1, 4}
    props = ov_rows[0].options["properties"]
    assert props["INFERENCE_NUM_THREADS"] == "1" and props["NUM_STREAMS"] == "1"
    assert "LATENCY" in props["PERFORMANCE_HINT"] and ov_rows[0].options["openvino"] == ov.__version__
    rows = fastest_by_batch(report)
    assert len(rows) == 2 and all(r["fastest"] in ("ort", "openvino") for r in rows)
    assert set(rows[0]["files"].values()) == {"model.onnx", "model.xml"}


def test_cli_bench_prints_the_side_by_side_table_and_records_the_fastest(fp32, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(fp32, bundle)
    out = tmp_path / "bench.json"
    r = runner.invoke(
        app,
        [
            "bench",
            str(bundle),
            "--backend",
            "ort,openvino",
            "--threads",
            "1",
            "--min-s",
            "0.05",
            "--min-iters",
            "5",
            "--warmup-s",
            "0",
            "--no-roofline",
            "--json",
            str(out),
            "--record",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "runtimes side by side" in r.output
    data = json.loads(out.read_text())
    assert {x["backend"] for x in data["results"]} == {"ort", "openvino"}
    fastest = read_manifest(bundle).extra["fastest_runtime"]["by_batch"]["1"]["runtime"]
    assert load_model(bundle).info.runtime == fastest  # predict/serve default to the recorded fastest
    assert verify_bundle(bundle).ok  # the manifest is not a hashed file: the record keeps the bundle valid


def _decisions(bundle: Path, runtime: str, precision: str) -> list[str]:
    res = predict(bundle, [], data=SYNTH, split="test", precision=precision, runtime=runtime, progress=False)
    assert res.model.runtime == runtime
    return [p.decision or p.label for p in res.predictions]


@pytest.mark.parametrize("which,precision,floor", [("fp32", "fp32", 1.0), ("int8", "int8", 0.99)])
def test_predict_through_openvino_agrees_with_ort(which, precision, floor, fp32, int8):
    bundle = fp32 if which == "fp32" else int8
    ort, ovd = _decisions(bundle, "ort", precision), _decisions(bundle, "openvino", precision)
    assert len(ort) >= 20 and np.mean([a == b for a, b in zip(ort, ovd)]) >= floor
    info = load_model(bundle, runtime="openvino", precision=precision).info
    assert info.file.endswith(".xml") and info.runtime_source == "given; IO, OOD features from " + (
        "model.onnx" if precision == "fp32" else "model.int8.onnx"
    )


def test_missing_openvino_is_exit_5_naming_the_extra(monkeypatch, tiny_model_dir, tmp_path, fp32):
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(DependencyError) as e:
        require_openvino("--format openvino")
    assert e.value.exit_code == 5 and "edgekd[openvino]" in str(e.value)
    r = runner.invoke(app, ["export", tiny_model_dir, "--format", "openvino", "--out", str(tmp_path / "b")])
    assert r.exit_code == 5 and "edgekd[openvino]" in r.output and not (tmp_path / "b").exists()
    r = runner.invoke(app, ["bench", str(fp32), "--backend", "openvino", "--min-s", "0.01", "--no-roofline"])
    assert r.exit_code == 5 and "edgekd[openvino]" in r.output
    r = runner.invoke(app, ["predict", str(fp32), "--data", SYNTH, "--runtime", "openvino"])
    assert r.exit_code == 5 and "edgekd[openvino]" in r.output


def test_triton_export_writes_the_openvino_backend_config(fp32, tmp_path):
    from edgekd.export import parse_triton_config

    r = runner.invoke(app, ["export", str(fp32), "--format", "triton,openvino", "--out", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.output
    entry = next((tmp_path / "repo").iterdir())
    text = (entry / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in text and "onnxruntime" not in text
    assert sorted(p.name for p in (entry / "1").iterdir()) == ["model.bin", "model.xml"]
    parsed = parse_triton_config(text)
    if parsed is not None:  # tritonclient[grpc] (dev) parses it with Triton's own protobuf
        assert parsed.backend == "openvino" and parsed.parameters["NUM_STREAMS"].string_value == "1"
    assert (entry / "1" / "model.xml").read_bytes() == (fp32 / "model.xml").read_bytes()


@pytest.mark.slow  # a server subprocess: ~15 s
def test_serve_runtime_openvino_answers_tritonclient_like_ort(fp32):
    import os
    import re
    import subprocess

    import tritonclient.http as triton_http

    from edgekd.export import safe_model_name

    from .test_serve import ort_reference, preprocess_of, synthetic_images

    cmd = [
        sys.executable,
        "-c",
        "from edgekd.cli import main; main()",
        "serve",
        str(fp32),
        "--runtime",
        "openvino",
        "--port",
        "0",
        "--threads",
        "1",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "300"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not (m := re.search(r"listening on http://(127\.0\.0\.1:\d+)/v2", lines[-1] if lines else "")):
            line = proc.stdout.readline()
            assert line, f"edgekd serve exited: {''.join(lines)} {proc.stderr.read()}"
            lines.append(line)
        assert "runtime: openvino" in "".join(lines) and "model.xml" in "".join(lines)
        client = triton_http.InferenceServerClient(m.group(1))
        x = preprocess_of(fp32).numpy(np.stack(synthetic_images(5)))
        inp = triton_http.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        got = client.infer(safe_model_name(read_manifest(fp32).name), [inp]).as_numpy("logits")
        np.testing.assert_allclose(got, ort_reference(fp32 / "model.onnx", x), atol=1e-4)
        client.close()
    finally:
        proc.terminate()
        proc.wait(20)


def test_format_openvino_alone_ships_the_onnx_graph_it_came_from(tiny_model_dir, tmp_path):
    m = export_bundle(tiny_model_dir, tmp_path / "b", formats="openvino", n_samples=8)
    assert [f.name for f in m.model_files()] == ["model.onnx", "model.xml"]
    assert m.inputs and m.inputs[0].name == "input"  # the IO description comes from the shipped ONNX graph
