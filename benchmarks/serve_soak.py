"""A bounded soak of `edgekd serve` on loopback: mixed valid and invalid requests for ``--seconds`` (10 minutes).

The real command (``edgekd serve`` in a subprocess, 127.0.0.1 only, 1 ONNX Runtime thread, micro-batching) serves
an INT8 bundle with a drift reference, an operating point and an intended use (chest CR/DX): ``--bundle``, or a
stand-in built here (small:resnet8 trained for a few steps on PneumoniaMNIST, PTQ for cpu-x86 with
``--target-sensitivity 0.95``, ``--intended-use 'modality=CR,DX body_part=CHEST'``). ``--clients`` concurrent
keep-alive clients (httpx, asyncio) send a weighted mix of request kinds, each with the status it must get:

============================  ======  ==========================================================================
kind                          status  what
============================  ======  ==========================================================================
infer-binary (batch 1)        200     binary tensor data; logits checked against in-process ONNX Runtime
infer-json (batch 4)          200     JSON tensors; logits checked, ``ood_score`` / ``out_of_distribution`` present
classify-png                  200     a PneumoniaMNIST test image as PNG
classify-dicom-chest          200     pydicom-data's chest CR (RG1_UNCI.dcm), when pydicom-data is installed
classify-dicom-hand           422     pydicom-data's hand CR (RG3_UNCI.dcm): outside the intended use
classify-dicom-seg            422     a DICOM segmentation: never classified
infer-wrong-dtype             400     FP64 for an FP32 input
infer-wrong-shape             400     a 3-channel tensor for a 1-channel model
infer-truncated               400     binary data shorter than its binary_data_size
garbage                       400     random bytes as JSON
oversized                     413     a body over ``--max-body-mb``
gzip-bomb                     413     a small gzip body that inflates past the limit
unknown-model                 404
health / metrics              200     readiness and Prometheus text
============================  ======  ==========================================================================

A response with another status, or a valid inference whose values differ from in-process ONNX Runtime, is
*wrong*; a request that gets no response (connection error, timeout) is *lost*. The JSON (default
``benchmarks/results/serve_soak.json``) holds the request and status counts per kind, wrong and lost counts,
latency p50/p99 (all requests, and valid inferences alone), the server's RSS sampled every 0.5 s (start, peak,
end), the server's CPU seconds, and the environment. At the end the server gets SIGTERM and must drain and exit.

    python benchmarks/serve_soak.py                 # 600 s
    python benchmarks/serve_soak.py --seconds 60 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data import Preprocess, load_data  # noqa: E402
from edgekd.export import read_manifest  # noqa: E402

NAME = "soak"
STAND_IN = Path("runs/bench/soak")


def edgekd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from edgekd.cli import main; main()", *args]


def stand_in_bundle(work: Path) -> Path:
    steps = [
        (
            "model",
            [
                "train",
                "--model",
                "small:resnet8",
                "--data",
                "pneumoniamnist",
                "--epochs",
                "1",
                "--max-steps-per-epoch",
                "30",
                "--batch-size",
                "128",
                "--intended-use",
                "modality=CR,DX body_part=CHEST",
            ],
        ),
        (
            "int8",
            ["quantize", str(work / "model"), "--method", "ptq", "--target", "cpu-x86", "--target-sensitivity", "0.95"],
        ),
    ]
    for out, args in steps:
        if not any((work / out / marker).is_file() for marker in ("edgekd.json", "manifest.json")):
            print(f"stand-in: edgekd {' '.join(args)}", flush=True)
            subprocess.run(edgekd(*args, "--out", str(work / out), "--overwrite", "--quiet"), check=True)
    return work / "int8"


def _dicom(name: str) -> bytes | None:
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name, download=False)
    except Exception:  # pydicom-data not installed: the DICOM kinds are left out (recorded)
        return None
    return Path(path).read_bytes() if path else None


class Payloads:
    """Request bodies of every kind and the in-process ONNX Runtime answers of the valid ones."""

    def __init__(self, bundle: Path, max_body: int) -> None:
        m = read_manifest(bundle)
        raw = json.loads((bundle / "preprocess.json").read_text())
        pre = Preprocess.model_validate({k: v for k, v in raw.items() if k in Preprocess.model_fields})
        test = load_data("pneumoniamnist").test
        images = [test[i][0].numpy() for i in range(64)]
        self.x = np.concatenate([pre.numpy(im[None]) for im in images])
        onnx_file = bundle / m.model_files()[0].name
        self.ref = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(
            None, {"input": self.x}
        )[0]
        self.pngs = []
        for im in images[:16]:
            buf = io.BytesIO()
            Image.fromarray(im[0]).save(buf, format="PNG")
            self.pngs.append(buf.getvalue())
        self.dicom = {
            k: _dicom(f) for k, f in (("chest", "RG1_UNCI.dcm"), ("hand", "RG3_UNCI.dcm"), ("seg", "liver_1frame.dcm"))
        }
        self.max_body = max_body
        self.bomb = gzip.compress(b"\0" * (max_body + 1024))

    @staticmethod
    def binary(x: np.ndarray, datatype: str = "FP32", size_delta: int = 0) -> tuple[bytes, dict[str, str]]:
        raw = np.ascontiguousarray(x).tobytes()
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(x.shape),
                        "datatype": datatype,
                        "parameters": {"binary_data_size": len(raw) + size_delta},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        return head + raw, {"Inference-Header-Content-Length": str(len(head))}

    @staticmethod
    def as_json(x: np.ndarray, datatype: str = "FP32") -> tuple[bytes, dict[str, str]]:
        body = {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.reshape(-1).tolist()}]
        }
        return json.dumps(body).encode(), {"Content-Type": "application/json"}


# kind -> (weight, expected status)
KINDS = {
    "infer-binary": (30, 200),
    "infer-json": (12, 200),
    "classify-png": (10, 200),
    "classify-dicom-chest": (3, 200),
    "classify-dicom-hand": (3, 422),
    "classify-dicom-seg": (2, 422),
    "infer-wrong-dtype": (5, 400),
    "infer-wrong-shape": (5, 400),
    "infer-truncated": (5, 400),
    "garbage": (6, 400),
    "oversized": (2, 413),
    "gzip-bomb": (2, 413),
    "unknown-model": (5, 404),
    "health": (5, 200),
    "metrics": (5, 200),
}


def _request(kind: str, p: Payloads, rng: random.Random) -> tuple[str, str, bytes | None, dict[str, str], Any]:
    """(method, path, body, headers, check) for one request of ``kind``; ``check(response)`` -> right or not."""
    infer, classify = f"/v2/models/{NAME}/infer", f"/v2/models/{NAME}/classify"
    i = rng.randrange(len(p.x) - 4)
    if kind == "infer-binary":
        body, h = p.binary(p.x[i : i + 1])
        return "POST", infer, body, h, lambda r: _binary_logits_ok(r, p.ref[i : i + 1])
    if kind == "infer-json":
        body, h = p.as_json(p.x[i : i + 4])
        return "POST", infer, body, h, lambda r: _json_logits_ok(r, p.ref[i : i + 4])
    if kind == "classify-png":
        return "POST", classify, p.pngs[i % len(p.pngs)], {"Content-Type": "image/png"}, lambda r: "label" in r.json()
    if kind.startswith("classify-dicom-"):
        return "POST", classify, p.dicom[kind.rsplit("-", 1)[1]], {"Content-Type": "application/dicom"}, None
    if kind == "infer-wrong-dtype":
        return ("POST", infer, *p.binary(p.x[i : i + 1].astype(np.float64), "FP64"), None)
    if kind == "infer-wrong-shape":
        return ("POST", infer, *p.as_json(np.repeat(p.x[i : i + 1], 3, axis=1)), None)
    if kind == "infer-truncated":
        return ("POST", infer, *p.binary(p.x[i : i + 1], size_delta=16), None)
    if kind == "garbage":
        return "POST", infer, os.urandom(rng.randrange(1, 4096)), {"Content-Type": "application/json"}, None
    if kind == "oversized":
        return "POST", infer, b"{" + b" " * p.max_body, {"Content-Type": "application/json"}, None
    if kind == "gzip-bomb":
        return "POST", infer, p.bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, None
    if kind == "unknown-model":
        return ("POST", "/v2/models/nope/infer", *p.binary(p.x[i : i + 1]), None)
    return "GET", "/v2/health/ready" if kind == "health" else "/metrics", None, {}, None


def _binary_logits_ok(r: httpx.Response, ref: np.ndarray) -> bool:
    head = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(r.content[:head])
    out = meta["outputs"][0]
    logits = np.frombuffer(r.content[head : head + out["parameters"]["binary_data_size"]], np.float32)
    names = [o["name"] for o in meta["outputs"]]
    return out["name"] == "logits" and "ood_score" in names and np.allclose(logits.reshape(ref.shape), ref, atol=1e-5)


def _json_logits_ok(r: httpx.Response, ref: np.ndarray) -> bool:
    outs = {o["name"]: o for o in r.json()["outputs"]}
    return "out_of_distribution" in outs and np.allclose(
        np.array(outs["logits"]["data"]).reshape(ref.shape), ref, atol=1e-5
    )


async def _client(
    url: str, p: Payloads, kinds: list[str], weights: list[int], until: float, seed: int, log: dict[str, Any]
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while time.monotonic() < until:
            kind = rng.choices(kinds, weights)[0]
            method, path, body, headers, check = _request(kind, p, rng)
            t0 = time.perf_counter()
            try:
                r = await client.request(method, path, content=body, headers=headers)
            except httpx.HTTPError as e:
                log["lost"][kind] += 1
                log["lost_reasons"][type(e).__name__] += 1
                continue
            dt = time.perf_counter() - t0
            log["latency"].append(dt)
            log["status"][kind][r.status_code] += 1
            ok = r.status_code == KINDS[kind][1] and (check is None or r.status_code != 200 or check(r))
            if not ok:
                log["wrong"][kind] += 1
            if kind in ("infer-binary", "infer-json") and r.status_code == 200:
                log["valid_latency"].append(dt)


def _sample_rss(proc: psutil.Process, stop: threading.Event, samples: list[float]) -> None:
    while not stop.is_set():
        try:
            mb = sum(q.memory_info().rss for q in [proc, *proc.children(recursive=True)]) / 2**20
        except psutil.Error:
            return
        if mb > 0:
            samples.append(mb)
        stop.wait(0.5)


def _start_server(bundle: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = edgekd(
        "serve",
        f"{NAME}={bundle}",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--threads",
        str(args.threads),
        "--max-batch",
        "32",
        "--max-delay-ms",
        "5",
        "--max-body-mb",
        str(args.max_body_mb),
        "--drain-s",
        "1",
    )
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"},
    )
    for line in proc.stdout:
        print(line.rstrip(), flush=True)
        if m := re.search(r"listening on (http://127\.0\.0\.1:\d+)/v2", line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return proc, m.group(1)
    raise SystemExit(f"edgekd serve exited {proc.wait()}")


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="an INT8 bundle (default: a stand-in built in runs/bench/soak)")
    ap.add_argument("--seconds", type=float, default=600.0, help="how long to send requests (default 600)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent keep-alive clients")
    ap.add_argument("--threads", type=int, default=1, help="server ONNX Runtime threads")
    ap.add_argument(
        "--max-body-mb", type=float, default=16.0, help="the server's body limit (the DICOM files are 7 MB)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_soak.json"))
    args = ap.parse_args()
    bundle = args.bundle or stand_in_bundle(STAND_IN)
    payloads = Payloads(bundle, int(args.max_body_mb * 1024 * 1024))
    kinds = [k for k in KINDS if not k.startswith("classify-dicom-") or payloads.dicom[k.rsplit("-", 1)[1]]]
    weights = [KINDS[k][0] for k in kinds]
    proc, url = _start_server(bundle, args)
    ps = psutil.Process(proc.pid)
    stop, rss = threading.Event(), []
    sampler = threading.Thread(target=_sample_rss, args=(ps, stop, rss), daemon=True)
    sampler.start()
    cpu0 = ps.cpu_times()
    log: dict[str, Any] = {
        "latency": [],
        "valid_latency": [],
        "status": defaultdict(Counter),
        "wrong": Counter(),
        "lost": Counter(),
        "lost_reasons": Counter(),
    }
    t0 = time.monotonic()
    print(f"soak: {args.seconds:g} s, {args.clients} clients, kinds {', '.join(kinds)}", flush=True)

    async def run_all() -> None:
        until = time.monotonic() + args.seconds
        await asyncio.gather(
            *(_client(url, payloads, kinds, weights, until, args.seed * 100 + c, log) for c in range(args.clients))
        )

    asyncio.run(run_all())
    elapsed = time.monotonic() - t0
    cpu1 = ps.cpu_times()
    stop.set()
    sampler.join(5)
    proc.send_signal(signal.SIGTERM)
    t_term = time.monotonic()
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "did not exit within 60 s of SIGTERM (killed)"
    status = {k: dict(sorted(v.items())) for k, v in sorted(log["status"].items())}
    totals = Counter()
    for v in log["status"].values():
        totals.update(v)
    result = {
        "what": "edgekd serve soak on 127.0.0.1: mixed valid and invalid requests (benchmarks/serve_soak.py)",
        "bundle": str(bundle),
        "stand_in": args.bundle is None,
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "server_threads": args.threads,
        "requests": int(sum(totals.values()) + sum(log["lost"].values())),
        "responses": int(sum(totals.values())),
        "requests_per_s": round(sum(totals.values()) / elapsed, 1),
        "status_counts": dict(sorted(totals.items())),
        "status_by_kind": status,
        "expected_status": {k: KINDS[k][1] for k in kinds},
        "wrong": dict(log["wrong"]),
        "wrong_total": int(sum(log["wrong"].values())),
        "lost": dict(log["lost"]),
        "lost_total": int(sum(log["lost"].values())),
        "lost_reasons": dict(log["lost_reasons"]),
        "server_errors_5xx": int(sum(n for s, n in totals.items() if s >= 500)),
        "latency_ms": {
            "p50": _pct(log["latency"], 50),
            "p99": _pct(log["latency"], 99),
            "max": _pct(log["latency"], 100),
        },
        "valid_infer_latency_ms": {"p50": _pct(log["valid_latency"], 50), "p99": _pct(log["valid_latency"], 99)},
        "server_rss_mb": {
            "start": round(rss[0], 1) if rss else None,
            "peak": round(max(rss), 1) if rss else None,
            "end": round(rss[-1], 1) if rss else None,
            "samples": len(rss),
            "every_30_s": [round(v, 1) for v in rss[::60]],
        },
        "server_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 1),
        "sigterm": {"returncode": rc, "exit_s": round(time.monotonic() - t_term, 2)},
        "environment": environment(),
    }
    write_json(args.out, result)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("requests", "status_counts", "wrong_total", "lost_total", "latency_ms", "server_rss_mb")
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
