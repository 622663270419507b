"""`edgekd serve`: the Open Inference Protocol server, checked with tritonclient, httpx and real ONNX Runtime.

The module-scoped server is the real command (`edgekd serve` in a subprocess, uvicorn on a free loopback
port); servers that need other settings run in-process with :func:`edgekd.serve.running_server` (the same
uvicorn server in a thread). Every result is compared with an ``onnxruntime.InferenceSession`` made here.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import Preprocess, load_data
from edgekd.errors import InvalidInputError
from edgekd.export import export_bundle
from edgekd.quantize import QuantizeConfig, quantize_model_dir
from edgekd.serve import (
    HEADER_LENGTH,
    MicroBatcher,
    ProtocolError,
    QueueFullError,
    ServeConfig,
    TensorSpec,
    encode_infer_response,
    load_models,
    parse_infer_request,
    running_server,
)

from .conftest import SYNTH

runner = CliRunner()
KEY = "k" * 12 + "-secret-token"
INPUT = TensorSpec("input", "FP32", (-1, 1, 16, 16))
OUTPUT = TensorSpec("logits", "FP32", (-1, 2))


# --------------------------------------------------------------------------- shared fixtures (also used by
# test_predict.py and test_triton.py): bundles are built once per session under pytest's base temp dir.


def tiny_bundles(tmp_path_factory, model_dir: str) -> dict[str, Path]:
    """``fp32``: ONNX + FP16 ONNX bundle; ``int8``: a PTQ (cpu-x86) bundle; both of the tiny binary model."""
    root = tmp_path_factory.getbasetemp() / "serve-bundles"
    out = {"fp32": root / "fp32", "int8": root / "int8"}
    if not (out["fp32"] / "manifest.json").is_file():
        export_bundle(model_dir, out["fp32"], formats="onnx,onnx-fp16", n_samples=32)
    if not (out["int8"] / "manifest.json").is_file():
        quantize_model_dir(model_dir, out["int8"], QuantizeConfig(target="cpu-x86", calib_samples=64), progress=False)
    return out


def synthetic_images(n: int = 6) -> list[np.ndarray]:
    """Raw ``uint8 [1, 16, 16]`` test images of the data the tiny model was trained on."""
    ds = load_data(SYNTH).test
    return [ds[i][0].numpy() for i in range(n)]


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[0]).save(buf, format="PNG")
    return buf.getvalue()


def ort_reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def preprocess_of(bundle: Path) -> Preprocess:
    raw = json.loads((bundle / "preprocess.json").read_text())
    return Preprocess.model_validate({k: v for k, v in raw.items() if k in Preprocess.model_fields})


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    return tiny_bundles(tmp_path_factory, tiny_model_dir)


def _edgekd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from edgekd.cli import main; main()", *args]


@pytest.fixture(scope="module")
def server(bundles):
    """`edgekd serve INT8 tiny32=FP32 --port 0` in a subprocess; yields (host:port, process)."""
    cmd = _edgekd(
        "serve",
        str(bundles["int8"]),
        f"tiny32={bundles['fp32']}",
        "--port",
        "0",
        "--max-body-mb",
        "0.05",
        "--max-delay-ms",
        "2",
        "--threads",
        "1",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            pytest.fail(f"edgekd serve exited {proc.returncode}: {''.join(lines)} {proc.stderr.read()}")
        lines.append(line)
        if m := re.search(r"listening on http://(127\.0\.0\.1:\d+)/v2", line):
            break
    yield m.group(1), proc, "".join(lines)
    proc.terminate()
    proc.wait(20)


# --------------------------------------------------------------------------- the protocol codec


def test_json_request_nested_or_flat_data_and_response_roundtrip():
    x = np.arange(2 * 256, dtype=np.float32).reshape(2, 1, 16, 16) / 100
    for data in (x.tolist(), x.reshape(-1).tolist()):
        body = json.dumps(
            {"id": "r1", "inputs": [{"name": "input", "shape": [2, 1, 16, 16], "datatype": "FP32", "data": data}]}
        ).encode()
        req = parse_infer_request(body, None, [INPUT], [OUTPUT], max_batch=4)
        np.testing.assert_array_equal(req.inputs["input"], x)
        assert req.id == "r1" and req.rows == 2 and req.outputs == [("logits", False)]
    out, headers = encode_infer_response("m", "1", req, {"logits": np.array([[1.5, -2.0], [0.25, 3.0]], np.float32)})
    resp = json.loads(out)
    assert headers["Content-Type"] == "application/json"
    assert resp == {
        "model_name": "m",
        "model_version": "1",
        "id": "r1",
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [2, 2], "data": [1.5, -2.0, 0.25, 3.0]}],
    }


def test_binary_request_and_response_decode_with_tritonclient():
    """tritonclient builds the binary request and decodes our binary response: both directions checked."""
    x = np.random.RandomState(0).randn(3, 1, 16, 16).astype(np.float32)
    inp = triton_http.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    body, json_size = triton_http._utils._get_inference_request(  # the exact bytes the client would POST
        inputs=[inp],
        request_id="7",
        outputs=None,
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        custom_parameters=None,
    )
    req = parse_infer_request(body, json_size, [INPUT], [OUTPUT], max_batch=8)
    np.testing.assert_array_equal(req.inputs["input"], x)
    assert req.outputs == [("logits", True)]  # no outputs named: binary_data_output
    logits = np.random.RandomState(1).randn(3, 2).astype(np.float32)
    out, headers = encode_infer_response("m", "1", req, {"logits": logits})
    result = triton_http.InferResult.from_response_body(out, header_length=int(headers[HEADER_LENGTH]))
    np.testing.assert_array_equal(result.as_numpy("logits"), logits)
    assert result.get_response()["id"] == "7"


@pytest.mark.parametrize("datatype", ["FP16", "UINT8", "INT64", "FP64", "BOOL"])
def test_typed_tensors_decode_to_their_dtype(datatype):
    spec = TensorSpec("input", datatype, (-1, 2))
    x = (np.arange(4).reshape(2, 2) % 2).astype(
        {"FP16": np.float16, "UINT8": np.uint8, "INT64": np.int64, "FP64": np.float64, "BOOL": np.bool_}[datatype]
    )
    raw = x.astype(x.dtype.newbyteorder("<")).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": [2, 2], "datatype": datatype, "parameters": {"binary_data_size": len(raw)}}
            ]
        }
    ).encode()
    got = parse_infer_request(head + raw, len(head), [spec], [OUTPUT], max_batch=4).inputs["input"]
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, x)
    as_json = json.dumps({"inputs": [{"name": "input", "shape": [2, 2], "datatype": datatype, "data": x.tolist()}]})
    np.testing.assert_array_equal(
        parse_infer_request(as_json.encode(), None, [spec], [OUTPUT], max_batch=4).inputs["input"], x
    )


def _err(body: dict | bytes, header: int | None = None, inputs=(INPUT,)) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ProtocolError) as e:
        parse_infer_request(raw, header, list(inputs), [OUTPUT], max_batch=4)
    assert e.value.status == 400
    return e.value.message


def _t(**kw) -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [0.0] * 256, **kw}]}


def test_invalid_requests_name_the_problem():
    assert "not valid JSON" in _err(b"{nope")
    assert "non-empty 'inputs'" in _err({"inputs": []})
    assert "unknown input 'x'" in _err(_t(name="x"))
    assert "datatype INT8 does not match the model's FP32" in _err(_t(datatype="INT8", data=[0] * 256))
    assert "datatype 'BYTES' is not supported" in _err(_t(datatype="BYTES"))
    assert "shape [1, 3, 16, 16] does not match" in _err(_t(shape=[1, 3, 16, 16]))
    assert "255 values for shape" in _err(_t(data=[0.0] * 255))
    assert "holds strings" in _err(_t(data=["1"] * 256))
    assert "outside 1..4" in _err(_t(shape=[5, 1, 16, 16], data=[0.0] * 1280))
    assert "ragged" in _err(_t(data=[[0.0], [0.0, 1.0]]))
    binary = {
        "inputs": [
            {"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "parameters": {"binary_data_size": 1024}}
        ]
    }
    head = json.dumps(binary).encode()
    assert "exceeds the 10 bytes" in _err(head + b"0" * 10, len(head))
    assert "not claimed" in _err(head + b"0" * 1030, len(head))
    assert "does not fit" in _err(head, len(head) + 5)
    two = TensorSpec("mask", "UINT8", (-1, 4))
    assert "missing input 'mask'" in _err(_t(), inputs=(INPUT, two))


# --------------------------------------------------------------------------- micro-batching


def test_micro_batcher_groups_requests_and_returns_each_its_rows():
    calls: list[int] = []

    async def main() -> list[dict]:
        b = MicroBatcher(
            lambda f: {"y": f["x"] * 2},
            max_batch=4,
            max_delay_s=0.2,
            max_queue=16,
            on_batch=lambda rows, _s: calls.append(rows),
        )
        await b.start()
        reqs = [{"x": np.full((1 + i % 2, 3), i, np.float32)} for i in range(6)]  # 9 rows in 6 requests
        outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        await b.stop()
        return [dict(req=r, out=o) for r, o in zip(reqs, outs)]

    results = asyncio.run(main())
    for r in results:
        np.testing.assert_array_equal(r["out"]["y"], r["req"]["x"] * 2)
    assert sum(calls) == 9 and max(calls) <= 4 and len(calls) < 6  # batched, never above max_batch


def test_micro_batcher_refuses_when_the_queue_is_full():
    async def main() -> None:
        b = MicroBatcher(lambda f: f, max_batch=8, max_delay_s=0.5, max_queue=2)
        await b.start()
        first = [asyncio.ensure_future(b.submit({"x": np.zeros((1, 1))})) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFullError):
            await b.submit({"x": np.zeros((1, 1))})
        assert all(len(r["x"]) == 1 for r in await asyncio.gather(*first))  # the queued ones still complete
        await b.stop()

    asyncio.run(main())


# --------------------------------------------------------------------------- the real server: tritonclient


@pytest.mark.slow
def test_tritonclient_health_metadata_and_infer_equal_onnxruntime(server, bundles):
    url, _, banner = server
    assert "small_tinycnn" in banner and "model.int8.onnx (int8" in banner and "tiny32" in banner
    client = triton_http.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "edgekd"
    meta = client.get_model_metadata("small_tinycnn")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 16, 16]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}]
    assert client.is_model_ready("tiny32") and client.is_model_ready("small_tinycnn", "1")
    x = preprocess_of(bundles["int8"]).numpy(np.stack(synthetic_images(5)))
    for name, onnx_file in (
        ("small_tinycnn", bundles["int8"] / "model.int8.onnx"),
        ("tiny32", bundles["fp32"] / "model.onnx"),
    ):
        ref = ort_reference(onnx_file, x)
        for binary in (True, False):
            inp = triton_http.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = triton_http.InferRequestedOutput("logits", binary_data=binary)
            res = client.infer(name, [inp], outputs=[out], request_id="abc")
            np.testing.assert_array_equal(res.as_numpy("logits"), ref)
            assert res.get_response()["id"] == "abc"
    client.close()


@pytest.mark.slow
def test_unknown_model_and_wrong_dtype_are_tritonclient_errors(server):
    client = triton_http.InferenceServerClient(server[0])
    with pytest.raises(triton_http.InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    inp = triton_http.InferInput("input", [1, 1, 16, 16], "FP16")
    inp.set_data_from_numpy(np.zeros((1, 1, 16, 16), np.float16))
    with pytest.raises(triton_http.InferenceServerException, match="datatype FP16 does not match the model's FP32"):
        client.infer("tiny32", [inp])
    client.close()


BAD_REQUESTS = [
    (
        "wrong shape",
        "/v2/models/tiny32/infer",
        dict(json=_t(shape=[1, 1, 8, 8], data=[0.0] * 64)),
        400,
        "does not match the model's [-1, 1, 16, 16]",
    ),
    (
        "wrong dtype",
        "/v2/models/tiny32/infer",
        dict(json=_t(datatype="UINT8", data=[0] * 256)),
        400,
        "datatype UINT8 does not match",
    ),
    ("garbage body", "/v2/models/tiny32/infer", dict(content=b"\x89PNG garbage"), 400, "not valid JSON"),
    (
        "oversized body",
        "/v2/models/tiny32/infer",
        dict(content=b"[" + b"0.5," * 40000 + b"0]"),
        413,
        "exceeds the 52,428-byte limit",
    ),
    (
        "oversized gzip",
        "/v2/models/tiny32/infer",
        dict(content=gzip.compress(b" " * 200000), headers={"Content-Encoding": "gzip"}),
        413,
        "decompressed body exceeds",
    ),
    ("unknown model", "/v2/models/nope/infer", dict(json=_t()), 404, "unknown model 'nope'; served models"),
    ("unknown version", "/v2/models/tiny32/versions/9/infer", dict(json=_t()), 404, "has no version '9'"),
    (
        "bad header length",
        "/v2/models/tiny32/infer",
        dict(json=_t(), headers={HEADER_LENGTH: "x"}),
        400,
        "must be a byte count",
    ),
    (
        "not an image",
        "/v2/models/tiny32/classify",
        dict(content=b"hello", headers={"Content-Type": "image/png"}),
        400,
        "not a readable image",
    ),
    (
        "DICOM without an image",
        "/v2/models/tiny32/classify",
        dict(content=b"\0" * 128 + b"DICM" + b"\0" * 8, headers={"Content-Type": "application/dicom"}),
        415,
        "DICOM",
    ),
    (
        "text body",
        "/v2/models/tiny32/classify",
        dict(content=b"x", headers={"Content-Type": "text/plain"}),
        415,
        "is not an image type",
    ),
    ("unknown route", "/v2/everything", dict(json={}), 404, "Not Found"),
]


@pytest.mark.slow
@pytest.mark.parametrize("what,path,kwargs,status,message", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, what, path, kwargs, status, message):
    base = f"http://{server[0]}"
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post(path, **kwargs)
        assert r.status_code == status, r.text
        assert message in r.json()["error"]
        ok = c.post("/v2/models/tiny32/infer", json=_t())
        assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 2]


@pytest.mark.slow
def test_classify_png_gives_the_bundle_preprocessed_probabilities_and_fhir(server, bundles):
    image = synthetic_images(1)[0]
    x = preprocess_of(bundles["fp32"]).numpy(image[None])
    logits = ort_reference(bundles["fp32"] / "model.onnx", x)[0]
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    with httpx.Client(base_url=f"http://{server[0]}", timeout=30) as c:
        r = c.post("/v2/models/tiny32/classify", content=png_bytes(image), headers={"Content-Type": "image/png"})
        body = r.json()
        assert r.status_code == 200 and body["label"] == f"class_{int(p.argmax())}"
        np.testing.assert_allclose([body["probabilities"]["class_0"], body["probabilities"]["class_1"]], p, atol=1e-6)
        assert body["threshold"] == 0.5 and "no operating threshold" in body["threshold_source"]
        assert "not a diagnosis" in body["disclaimer"]
        r = c.post(
            "/v2/models/tiny32/classify?format=fhir", content=png_bytes(image), headers={"Content-Type": "image/png"}
        )
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    report = DiagnosticReport.model_validate(r.json())
    assert r.headers["content-type"] == "application/fhir+json" and report.status == "preliminary"
    assert "not a diagnosis" in report.conclusion


@pytest.mark.slow
def test_metrics_count_requests_batches_and_errors(server):
    with httpx.Client(base_url=f"http://{server[0]}", timeout=30) as c:
        c.post("/v2/models/tiny32/infer", json=_t(shape=[1, 1, 2, 2], data=[0.0] * 4))
        c.post("/v2/models/tiny32/infer", json=_t())
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}  # Prometheus' own parser
    requests = {
        (s.labels["model"], s.labels["endpoint"], s.labels["code"]): s.value
        for s in families["edgekd_requests"].samples
        if s.name == "edgekd_requests_total"
    }
    assert requests[("tiny32", "infer", "400")] >= 1 and requests[("tiny32", "infer", "200")] >= 1
    batch = [s for s in families["edgekd_batch_size"].samples if s.name == "edgekd_batch_size_count"]
    assert any(s.labels["model"] == "tiny32" and s.value >= 1 for s in batch)
    lat = [s for s in families["edgekd_request_duration_seconds"].samples if s.labels.get("le") == "+Inf"]
    assert lat and families["edgekd_queue_depth"].type == "gauge"


# --------------------------------------------------------------------------- in-process servers: batching,
# queue limits, API key


def _post_many(url: str, bodies: list[dict], headers: dict | None = None) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * len(bodies)

    def send(i: int) -> None:
        out[i] = httpx.post(f"{url}/v2/models/small_tinycnn/infer", json=bodies[i], headers=headers, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out  # type: ignore[return-value]


@pytest.mark.slow
def test_concurrent_requests_are_micro_batched_and_each_gets_its_own_rows(bundles):
    models = load_models([str(bundles["int8"])], threads=1)
    images = preprocess_of(bundles["int8"]).numpy(np.stack(synthetic_images(6)))
    ref = ort_reference(bundles["int8"] / "model.int8.onnx", images)
    bodies = [_t(data=images[i].reshape(-1).tolist()) for i in range(6)]
    with running_server(models, ServeConfig(port=0, max_batch=8, max_delay_ms=300)) as url:
        replies = _post_many(url, bodies)
        metrics = httpx.get(f"{url}/metrics").text
    for i, r in enumerate(replies):
        assert r.status_code == 200
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], ref[i], rtol=0, atol=1e-6)
    buckets = {
        float(s.labels["le"]): s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.name == "edgekd_batch_size_bucket"
    }
    calls, single = buckets[float("inf")], buckets[1.0]
    assert calls < 6 and single < calls  # fewer model calls than requests, and some held several rows


@pytest.mark.slow
def test_a_full_queue_answers_503_and_the_queued_request_completes(bundles):
    models = load_models([str(bundles["int8"])], verify=False)
    with running_server(models, ServeConfig(port=0, max_batch=8, max_delay_ms=1500, max_queue=1)) as url:
        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.extend(_post_many(url, [_t()])))
        t.start()
        deadline = time.monotonic() + 10
        while 'edgekd_queue_depth{model="small_tinycnn"} 1' not in httpx.get(f"{url}/metrics").text:
            assert time.monotonic() < deadline, "the first request never queued"
            time.sleep(0.02)
        busy = httpx.post(f"{url}/v2/models/small_tinycnn/infer", json=_t(), timeout=30)
        t.join()
    assert busy.status_code == 503 and "queue is full" in busy.json()["error"]
    assert first[0].status_code == 200


@pytest.mark.slow
def test_api_key_is_required_except_for_health_probes(bundles):
    models = load_models([str(bundles["int8"])], verify=False)
    with running_server(models, ServeConfig(port=0, api_key=KEY)) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": KEY}):
            r = httpx.get(f"{url}/v2/models/small_tinycnn", headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"]
            assert r.headers["www-authenticate"].startswith("Bearer")
        assert httpx.post(f"{url}/v2/models/small_tinycnn/infer", json=_t()).status_code == 401
        assert httpx.get(f"{url}/metrics").status_code == 401
        client = triton_http.InferenceServerClient(url.removeprefix("http://"))
        auth = {"Authorization": f"Bearer {KEY}"}
        assert client.get_model_metadata("small_tinycnn", headers=auth)["name"] == "small_tinycnn"
        inp = triton_http.InferInput("input", [1, 1, 16, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 1, 16, 16), np.float32))
        assert client.infer("small_tinycnn", [inp], headers=auth).as_numpy("logits").shape == (1, 2)
        client.close()


# --------------------------------------------------------------------------- start-up refusals (CLI, exit codes)


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def test_serve_and_predict_help_have_examples():
    for cmd in ("serve", "predict"):
        r = run(cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output


def test_binding_beyond_loopback_needs_an_api_key(bundles, monkeypatch):
    monkeypatch.delenv("EDGEKD_API_KEY", raising=False)
    r = run("serve", bundles["int8"], "--host", "0.0.0.0")
    assert r.exit_code == 3 and "needs an API key" in r.output
    r = run("serve", bundles["int8"], "--api-key", "short")
    assert r.exit_code == 3 and "at least 16" in r.output
    with pytest.raises(InvalidInputError, match="needs an API key"):
        ServeConfig(host="10.1.2.3").check()
    assert ServeConfig(host="10.1.2.3", api_key=KEY).check().host == "10.1.2.3"


def test_a_tampered_bundle_refuses_to_start(bundles, tmp_path):
    bad = Path(shutil.copytree(bundles["int8"], tmp_path / "bad"))
    (bad / "labels.json").write_text('{"task": "binary", "labels": ["healthy", "sick"]}\n')
    r = run("serve", bad, "--port", "0")
    assert r.exit_code == 6 and "labels.json" in r.output and "listening" not in r.output


def test_start_up_refusals_exit_with_their_codes(bundles, tiny_model_dir):
    r = run("serve", tiny_model_dir, "--port", "0")
    assert r.exit_code == 4 and "not a bundle" in r.output and "edgekd export" in r.output
    r = run("serve", bundles["int8"], bundles["int8"], "--port", "0")
    assert r.exit_code == 3 and "both be served as 'small_tinycnn'" in r.output
    r = run("serve", bundles["int8"], bundles["fp32"], "--model-name", "x")
    assert r.exit_code == 3 and "NAME=BUNDLE" in r.output
    r = run("serve", bundles["int8"], "--precision", "fp16", "--port", "0")
    assert r.exit_code == 3 and "has no fp16 ONNX file" in r.output
    r = run("serve", bundles["int8"], "--max-batch", "0")
    assert r.exit_code == 3 and "--max-batch must be >= 1" in r.output


def test_missing_serve_packages_exit_5_naming_the_extra(bundles, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` -> ImportError, even where installed
    r = run("serve", bundles["int8"], "--port", "0")
    assert r.exit_code == 5 and "pip install 'edgekd[serve]'" in r.output
