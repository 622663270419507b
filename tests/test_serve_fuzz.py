"""The server, fuzzed: Schemathesis from its OpenAPI schema, hypothesis-generated tensors, bounded memory, the
intended use at the HTTP boundary, and a SIGTERM that drains before the process stops (then a restart serves).

Everything runs on loopback (127.0.0.1). The bundle is the INT8 bundle of ``test_trust.py`` (a drift reference,
an operating point and an intended use: chest CR/DX), so the OOD outputs and the 422 refusals are exercised too.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import onnxruntime as ort
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from edgekd.serve import ServeConfig, load_models, running_server

from .test_trust import pydicom_file, trusted_bundles

NAME = "tiny"
SHAPE = (1, 16, 16)
DTYPES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
    "INT8": np.int8,
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return trusted_bundles(tmp_path_factory)["int8"]


@pytest.fixture(scope="module")
def url(bundle):
    models = load_models([f"{NAME}={bundle}"], threads=1)
    with running_server(models, ServeConfig(port=0, max_batch=8, max_delay_ms=1, max_body_mb=16)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _fuzz(op, mode, seen: dict[str, set[int]]) -> None:
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        response = case.call_and_validate(
            checks=[not_a_server_error, status_code_conformance, content_type_conformance]
        )
        seen.setdefault(op.label, set()).add(response.status_code)

    try:
        run()
    except Unsatisfiable:  # negative data for an operation with no parameter or body: nothing to get wrong
        if mode is not GenerationMode.NEGATIVE:
            raise


@pytest.mark.slow
def test_openapi_fuzz_no_server_error(url):
    """Every operation of the served OpenAPI schema, with Schemathesis-generated valid and invalid requests
    (positive and negative data): never a 5xx, only documented statuses and content types.

    Driven through each operation's hypothesis strategy: Schemathesis' own pytest plugin does not run under
    pytest 9 here (``'Function' object has no attribute '_nodeid'``)."""
    api = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [op.ok() for op in api.get_all_operations()]
    assert len(operations) >= 12
    seen: dict[str, set[int]] = {}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(op, mode, seen)
    assert all(max(codes) < 500 for codes in seen.values()), seen
    assert 200 in seen["POST /v2/models/{name}/infer"] | seen["GET /v2/models/{name}"]


def _request(arr: np.ndarray, datatype: str, shape: list[int], binary: bool) -> tuple[bytes, dict[str, str]]:
    t: dict = {"name": "input", "shape": shape, "datatype": datatype}
    if binary:
        raw = arr.tobytes()
        t["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps({"inputs": [t], "parameters": {"binary_data_output": True}}).encode()
        return head + raw, {"Inference-Header-Content-Length": str(len(head))}
    t["data"] = arr.reshape(-1).tolist()
    return json.dumps({"inputs": [t]}, allow_nan=True).encode(), {"Content-Type": "application/json"}


tensors = st.fixed_dictionaries(
    {
        "batch": st.integers(0, 10),
        "dims": st.one_of(st.just(list(SHAPE)), st.lists(st.integers(0, 12), min_size=0, max_size=3)),
        "datatype": st.sampled_from(sorted(DTYPES)),
        "fill": st.sampled_from(["normal", "zeros", "nan", "inf", "huge", "tiny"]),
        "binary": st.booleans(),
        "gzip": st.booleans(),
        "truncate": st.sampled_from([0, 0, 0, 1, 7]),
    }
)


def _array(spec: dict) -> np.ndarray:
    shape = [spec["batch"], *spec["dims"]]
    n = int(np.prod(shape)) if shape else 1
    rng = np.random.default_rng(n)
    base = {
        "normal": rng.normal(size=n),
        "zeros": np.zeros(n),
        "nan": np.full(n, np.nan),
        "inf": np.full(n, np.inf),
        "huge": np.full(n, 3e38),
        "tiny": np.full(n, 1e-40),
    }[spec["fill"]]
    dtype = DTYPES[spec["datatype"]]
    with np.errstate(all="ignore"):
        arr = base if dtype in (np.float32, np.float16, np.float64) else np.nan_to_num(base, posinf=1, neginf=-1)
        return arr.astype(dtype).reshape(shape)


@given(spec=tensors)
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_tensors_get_4xx_or_the_right_answer(spec, client, bundle):
    arr = _array(spec)
    body, headers = _request(arr, spec["datatype"], list(arr.shape), spec["binary"])
    if spec["truncate"]:
        body = body[: -spec["truncate"]]
    if spec["gzip"]:
        body, headers = gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
    r = client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers)
    assert r.status_code < 500, r.text
    valid = (
        spec["datatype"] == "FP32"
        and list(arr.shape[1:]) == list(SHAPE)
        and 1 <= spec["batch"] <= 8
        and not spec["truncate"]
    )
    assert (r.status_code == 200) == valid, (r.status_code, r.text[:200])
    if not valid:
        assert "error" in r.json()
        return
    if spec["binary"]:
        head = int(r.headers["Inference-Header-Content-Length"])
        meta = json.loads(r.content[:head])
        sizes = [o["parameters"]["binary_data_size"] for o in meta["outputs"]]
        blobs = np.split(np.frombuffer(r.content[head:], np.uint8), np.cumsum(sizes)[:-1])
        out = {o["name"]: b.view(DTYPES[o["datatype"]]).reshape(o["shape"]) for o, b in zip(meta["outputs"], blobs)}
    else:
        out = {
            o["name"]: np.array(o["data"], dtype=DTYPES[o["datatype"]]).reshape(o["shape"]) for o in r.json()["outputs"]
        }
    assert set(out) == {"logits", "ood_score", "out_of_distribution"} and out["ood_score"].shape == (spec["batch"],)
    ref = ort.InferenceSession(str(bundle / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    expected = ref.run(None, {"input": arr})[0]
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-5)
    if spec["fill"] in ("nan", "inf", "huge"):
        assert out["out_of_distribution"].all()  # nothing like the validation images


def _mixed(client: httpx.Client, i: int) -> int:
    x = np.random.default_rng(i).normal(size=(1 + i % 4, *SHAPE)).astype(np.float32)
    kind = i % 5
    if kind == 0:
        body, headers = _request(x, "FP32", list(x.shape), binary=True)
    elif kind == 1:
        body, headers = _request(x, "FP32", list(x.shape), binary=False)
    elif kind == 2:
        body, headers = _request(x[:, :, :8], "FP32", [len(x), 1, 16, 16], binary=False)  # wrong element count
    elif kind == 3:
        body, headers = os.urandom(64 + i % 512), {"Content-Type": "application/json"}
    else:
        return client.post(
            f"/v2/models/{NAME}/classify", content=os.urandom(300), headers={"Content-Type": "image/png"}
        ).status_code
    return client.post(f"/v2/models/{NAME}/infer", content=body, headers=headers).status_code


@pytest.mark.slow
def test_memory_stays_bounded_under_mixed_valid_and_invalid_requests(client):
    proc = psutil.Process()
    statuses = [_mixed(client, i) for i in range(300)]  # warm-up: allocator pools, caches, ORT arenas
    before = proc.memory_info().rss
    statuses += [_mixed(client, i) for i in range(300, 1500)]
    grown = (proc.memory_info().rss - before) / 2**20
    assert max(statuses) < 500 and statuses.count(200) >= 400
    assert grown < 40, f"RSS grew {grown:.1f} MiB over 1200 requests"


# -- the intended use at the HTTP boundary --------------------------------------------------------------------------


def test_classify_refuses_out_of_scope_dicom_with_422_and_answers_chest_cr(client, bundle):
    chest, hand, seg = (pydicom_file(n) for n in ("RG1_UNCI.dcm", "RG3_UNCI.dcm", "liver_1frame.dcm"))
    headers = {"Content-Type": "application/dicom"}
    r = client.post(f"/v2/models/{NAME}/classify", content=chest.read_bytes(), headers=headers)
    assert r.status_code == 200 and r.json()["intended_use"] == "in-scope", r.text
    assert isinstance(r.json()["ood_score"], float) and "operating point" in r.json()["threshold_source"]
    r = client.post(f"/v2/models/{NAME}/classify", content=hand.read_bytes(), headers=headers)
    assert r.status_code == 422 and "BodyPartExamined EXTREMITY" in r.json()["error"]
    r = client.post(f"/v2/models/{NAME}/classify", content=seg.read_bytes(), headers=headers)
    assert r.status_code == 422 and "segmentation" in r.json()["error"]
    models = load_models([f"{NAME}={bundle}"], threads=1)
    with running_server(models, ServeConfig(port=0, allow_out_of_scope=True)) as base:
        r = httpx.post(f"{base}/v2/models/{NAME}/classify", content=hand.read_bytes(), headers=headers)
        assert (
            r.status_code == 200 and r.json()["intended_use"] == "out-of-scope" and "out of scope" in r.json()["flags"]
        )
        r = httpx.post(f"{base}/v2/models/{NAME}/classify?format=fhir", content=hand.read_bytes(), headers=headers)
        assert r.status_code == 200 and "out-of-scope" in {t["code"] for t in r.json()["meta"]["tag"]}
        assert (
            httpx.post(f"{base}/v2/models/{NAME}/classify", content=seg.read_bytes(), headers=headers).status_code
            == 422
        )


def test_model_metadata_lists_the_ood_outputs(client):
    meta = client.get(f"/v2/models/{NAME}").json()
    assert [o["name"] for o in meta["outputs"]] == ["logits", "ood_score", "out_of_distribution"]
    assert meta["outputs"][2] == {"name": "out_of_distribution", "datatype": "BOOL", "shape": [-1]}


# -- SIGTERM drains, then a restart serves again ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(bundle, port: int, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "from edgekd.cli import main; main()",
        "serve",
        f"{NAME}={bundle}",
        "--port",
        str(port),
        "--threads",
        "1",
        *extra,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"},
    )
    for line in proc.stdout:
        if re.search(r"listening on http://127\.0\.0\.1:\d+/v2", line):
            return proc
    proc.wait(10)
    pytest.fail(f"edgekd serve exited {proc.returncode}")


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_readiness_first_and_a_restart_serves(bundle):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    x = np.zeros((1, *SHAPE), np.float32)
    body, headers = _request(x, "FP32", list(x.shape), binary=False)
    proc = _start(bundle, port, "--drain-s", "2", "--max-delay-ms", "1500", "--max-batch", "32")
    try:
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
        results: dict[str, httpx.Response] = {}
        # waits ~1.5 s in the micro-batcher for other requests: in flight when the signal comes
        slow = threading.Thread(
            target=lambda: results.update(
                r=httpx.post(f"{base}/v2/models/{NAME}/infer", content=body, headers=headers, timeout=30)
            )
        )
        slow.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{base}/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False  # readiness goes false first
        during = httpx.post(f"{base}/v2/models/{NAME}/infer", content=body, headers=headers, timeout=30)
        assert during.status_code == 200  # still answering while the load balancer notices
        slow.join(30)
        assert results["r"].status_code == 200 and results["r"].json()["outputs"][0]["name"] == "logits"
        proc.wait(30)
        assert time.monotonic() - t0 >= 1.9  # the drain period was honoured
        assert proc.returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), proc.returncode
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/v2/health/live", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
    again = _start(bundle, port, "--drain-s", "0")
    try:
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
        assert httpx.post(f"{base}/v2/models/{NAME}/infer", content=body, headers=headers).status_code == 200
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(30)
