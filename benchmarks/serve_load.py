"""How much does `edgekd serve` cost over calling ONNX Runtime in-process? A bounded load test on loopback.

The demo's INT8 bundle (``runs/demo/int8`` from ``make demo``; ``--bundle`` for another) is served by the real
command (``edgekd serve`` in a subprocess, uvicorn) twice: without micro-batching (``--max-batch 1``) and with
it (``--max-batch 32 --max-delay-ms 5``). ``--clients`` concurrent keep-alive HTTP/1.1 connections (a small
asyncio client in this process, so that the client's own cost stays low) send a fixed number of Open Inference
Protocol requests with binary tensor data, built from real preprocessed PneumoniaMNIST test images:

* batch-1 requests (one image each) against both servers: p50 / p99 latency per request, images/s;
* batch-32 requests against the batching server.

Each is compared with in-process ONNX Runtime (same file, same intra-op threads) at the same batch: the ratio
is server images/s over in-process images/s (goal >= 0.7). For the batching server the in-process figure at
the batch size the server actually formed (its ``/metrics`` batch histogram) is given too. Because wall-clock
throughput on a shared machine measures the neighbours as well, the same ratios are also given in CPU seconds
per image (in-process over server process), which do not depend on other load. The first response
of every run is checked against the in-process output. Server and client CPU seconds are recorded: on a small
machine the client competes with the server for the same cores.

Without ``runs/demo/int8`` and without ``--bundle``, a *stand-in* is built the way ``make demo`` builds its INT8
bundle, only with almost no training (weights do not change the speed): small:resnet8x4 on PneumoniaMNIST,
pruned to half its MACs (``--round-to 8``), PTQ for cpu-x86. The JSON says which was used.

    python benchmarks/serve_load.py                      # writes runs/bench/serve_load.json
    python benchmarks/serve_load.py --bundle runs/demo/int8 --clients 16 --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data import Preprocess, load_data  # noqa: E402
from edgekd.export import read_manifest  # noqa: E402
from edgekd.serve import HEADER_LENGTH  # noqa: E402

DEMO_INT8 = Path("runs/demo/int8")


def edgekd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from edgekd.cli import main; main()", *args]


def stand_in_bundle(work: Path) -> Path:
    """The demo's INT8 recipe with a few training steps (reused when already built)."""
    steps = [
        (
            "student",
            [
                "train",
                "--model",
                "small:resnet8x4",
                "--data",
                "pneumoniamnist",
                "--epochs",
                "1",
                "--max-steps-per-epoch",
                "10",
                "--batch-size",
                "128",
            ],
        ),
        (
            "pruned",
            [
                "prune",
                str(work / "student"),
                "--target-macs",
                "0.5",
                "--steps",
                "1",
                "--round-to",
                "8",
                "--recovery-epochs",
                "0",
            ],
        ),
        ("int8", ["quantize", str(work / "pruned"), "--method", "ptq", "--target", "cpu-x86"]),
    ]
    for out, args in steps:
        if not any((work / out / marker).is_file() for marker in ("edgekd.json", "manifest.json")):
            print(f"stand-in: edgekd {' '.join(args)}", flush=True)
            subprocess.run(edgekd(*args, "--out", str(work / out), "--overwrite", "--quiet"), check=True)
    return work / "int8"


def inputs(bundle: Path, n: int) -> np.ndarray:
    """``n`` real test images with the bundle's own preprocessing."""
    raw = json.loads((bundle / "preprocess.json").read_text())
    pre = Preprocess.model_validate({k: v for k, v in raw.items() if k in Preprocess.model_fields})
    test = load_data("pneumoniamnist").test
    images = np.stack([test[i % len(test)][0].numpy() for i in range(n)])
    return pre.numpy(images)


def in_process(path: Path, x: np.ndarray, batch: int, threads: int, min_s: float) -> dict[str, float]:
    """Images/s of sequential ``session.run`` calls at ``batch`` (warm-up, then at least ``min_s`` seconds)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    chunks = [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]
    for c in chunks[:20]:
        sess.run(None, {"input": c})
    t0, cpu0, done, times = time.perf_counter(), time.process_time(), 0, []
    while time.perf_counter() - t0 < min_s or done < 50:
        t = time.perf_counter()
        sess.run(None, {"input": chunks[done % len(chunks)]})
        times.append(time.perf_counter() - t)
        done += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {
        "batch": batch,
        "calls": done,
        "images_per_s": done * batch / wall,
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "cpu_ms_per_image": cpu / (done * batch) * 1e3,
    }


def request_body(x: np.ndarray) -> tuple[bytes, int]:
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return head + raw, len(head)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def _load(
    host: str, port: int, path: str, bodies: list[tuple[bytes, int]], clients: int, n_requests: int
) -> dict[str, Any]:
    """``clients`` keep-alive connections sending ``n_requests`` in total; per-request latency in seconds."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    first: list[bytes] = []
    counter = iter(range(n_requests))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        for i in counter:
            body, hlen = bodies[i % len(bodies)]
            req = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/octet-stream\r\n"
                f"{HEADER_LENGTH}: {hlen}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            t = time.perf_counter()
            writer.write(req)
            status, headers, payload = await _read_response(reader)
            latencies.append(time.perf_counter() - t)
            if status != 200:
                errors[status] = errors.get(status, 0) + 1
            elif i == 0:
                first.append(payload[int(headers[HEADER_LENGTH.lower()]) :])
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {
        "requests": n_requests,
        "wall_s": wall,
        "requests_per_s": n_requests / wall,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "errors": errors,
        "first_logits": first[0] if first else b"",
    }


def _batch_totals(host: str, port: int) -> tuple[float, float]:
    """(rows, model calls) so far, from the server's /metrics batch-size histogram of model "m"."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    get = lambda name: float(m.group(1)) if (m := re.search(rf'{name}{{model="m"}} (\S+)', text)) else 0.0  # noqa: E731
    return get("edgekd_batch_size_sum"), get("edgekd_batch_size_count")


def serve_and_load(
    args, bundle: Path, x: np.ndarray, ref: np.ndarray, *, max_batch: int, request_batches: list[int]
) -> dict[str, Any]:
    cmd = edgekd(
        "serve",
        str(bundle),
        "--model-name",
        "m",
        "--port",
        "0",
        "--threads",
        str(args.threads),
        "--max-batch",
        str(max_batch),
        "--max-delay-ms",
        str(args.max_delay_ms),
        "--max-queue",
        "4096",
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        while not (m := re.search(r"listening on http://([\d.]+):(\d+)", line := proc.stdout.readline())):
            if not line:
                raise SystemExit(f"edgekd serve exited with {proc.wait()}")
        host, port = m.group(1), int(m.group(2))
        server = psutil.Process(proc.pid)
        out: dict[str, Any] = {"max_batch": max_batch, "max_delay_ms": args.max_delay_ms, "runs": []}
        for batch in request_batches:
            bodies = [request_body(x[i : i + batch]) for i in range(0, len(x) - batch + 1, batch)][:64]
            n = args.requests if batch == 1 else max(args.clients * 4, args.requests // batch)
            asyncio.run(_load(host, port, "/v2/models/m/infer", bodies, args.clients, min(n, 200)))  # warm-up
            cpu0, client0, (rows0, calls0) = sum(server.cpu_times()[:2]), time.process_time(), _batch_totals(host, port)
            res = asyncio.run(_load(host, port, "/v2/models/m/infer", bodies, args.clients, n))
            rows, calls = _batch_totals(host, port)
            res["mean_formed_batch"] = (rows - rows0) / max(calls - calls0, 1)
            res["server_cpu_s"] = sum(server.cpu_times()[:2]) - cpu0
            res["client_cpu_s"] = time.process_time() - client0
            got = np.frombuffer(res.pop("first_logits"), dtype="<f4").reshape(batch, -1)
            res["first_response_max_abs_diff"] = float(np.abs(got - ref[:batch]).max())
            res.update(
                request_batch=batch,
                images_per_s=res["requests_per_s"] * batch,
                server_cpu_ms_per_image=res["server_cpu_s"] / (n * batch) * 1e3,
            )
            out["runs"].append(res)
            print(
                f"  max-batch {max_batch}, request batch {batch}: p50 {res['p50_ms']:.2f} ms, p99 "
                f"{res['p99_ms']:.2f} ms, {res['images_per_s']:.0f} img/s, model calls of "
                f"{res['mean_formed_batch']:.1f} rows, errors {res['errors']}",
                flush=True,
            )
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=None, help="INT8 bundle (default: runs/demo/int8, else a stand-in)")
    p.add_argument("--work", default="runs/bench/serve_load_work", help="where a stand-in bundle is built")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=2000, help="batch-1 requests per run")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads, server and in-process")
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--min-s", type=float, default=3.0, help="seconds of each in-process measurement")
    p.add_argument("--out", default="runs/bench/serve_load.json")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    t_start, load_start = time.perf_counter(), os.getloadavg()
    bundle = Path(args.bundle) if args.bundle else DEMO_INT8
    source = "given" if args.bundle else "make demo"
    if not (bundle / "manifest.json").is_file():
        if args.bundle:
            raise SystemExit(f"{bundle} is not a bundle")
        bundle, source = stand_in_bundle(Path(args.work)), "stand-in (demo recipe, 10 training steps)"
    manifest = read_manifest(bundle)
    file = next(f.name for f in manifest.model_files() if f.kind == "onnx")
    x = inputs(bundle, 512)
    ref = ort.InferenceSession(str(bundle / file), providers=["CPUExecutionProvider"]).run(None, {"input": x[:32]})[0]
    print(f"bundle {bundle} ({source}): {file}, {manifest.params} params, {manifest.macs} MACs", flush=True)
    local = {b: in_process(bundle / file, x, b, args.threads, args.min_s) for b in (1, 32)}
    print(
        f"  in-process ORT: {local[1]['images_per_s']:.0f} img/s at batch 1, "
        f"{local[32]['images_per_s']:.0f} img/s at batch 32",
        flush=True,
    )
    plain = serve_and_load(args, bundle, x, ref, max_batch=1, request_batches=[1])
    batching = serve_and_load(args, bundle, x, ref, max_batch=32, request_batches=[1, 32])
    formed = max(1, round(batching["runs"][0]["mean_formed_batch"]))
    local[formed] = local.get(formed) or in_process(bundle / file, x, formed, args.threads, args.min_s)
    ratios = {
        "no_batching_batch1_vs_ort_batch1": plain["runs"][0]["images_per_s"] / local[1]["images_per_s"],
        "micro_batching_batch1_vs_ort_batch1": batching["runs"][0]["images_per_s"] / local[1]["images_per_s"],
        f"micro_batching_batch1_vs_ort_formed_batch{formed}": batching["runs"][0]["images_per_s"]
        / local[formed]["images_per_s"],
        "batch32_requests_vs_ort_batch32": batching["runs"][1]["images_per_s"] / local[32]["images_per_s"],
    }
    # CPU seconds per image do not depend on what else runs on the machine: in-process over server is the
    # throughput ratio the server would reach where CPU is the limit and nothing else competes for it.
    cpu = lambda run, ref: local[ref]["cpu_ms_per_image"] / run["server_cpu_ms_per_image"]  # noqa: E731
    cpu_ratios = {
        "no_batching_batch1_vs_ort_batch1": cpu(plain["runs"][0], 1),
        "micro_batching_batch1_vs_ort_batch1": cpu(batching["runs"][0], 1),
        "batch32_requests_vs_ort_batch32": cpu(batching["runs"][1], 32),
    }
    for k, v in ratios.items():
        print(
            f"  ratio {k}: {v:.2f} (CPU per image: {cpu_ratios[k]:.2f})" if k in cpu_ratios else f"  ratio {k}: {v:.2f}"
        )
    write_json(
        args.out,
        {
            "benchmark": "serve_load",
            "bundle": str(bundle),
            "bundle_source": source,
            "file": file,
            "params": manifest.params,
            "macs": manifest.macs,
            "clients": args.clients,
            "threads": args.threads,
            "in_process_ort": {str(k): v for k, v in sorted(local.items())},
            "no_batching": plain,
            "micro_batching": batching,
            "ratios": ratios,
            "cpu_per_image_ratios": cpu_ratios,
            "goal_ratio": 0.7,
            "seconds": time.perf_counter() - t_start,
            "load_average_start": load_start,
            "environment": environment(),
        },
    )


if __name__ == "__main__":
    main()
