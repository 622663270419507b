"""ONNX Runtime, OpenVINO and ExecuTorch side by side on the demo's student (FP32 and PTQ INT8).

Trains the demo's student (``small:resnet8`` on the bundled PneumoniaMNIST, as ``examples/pneumonia.yaml``;
fewer epochs unless ``--epochs``), or takes ``--model-dir``; exports it to a bundle with all three runtimes
(``--format onnx,openvino,executorch``), quantizes it (``edgekd quantize``, PTQ for ``cpu-x86``) and adds the
OpenVINO and ExecuTorch INT8 files to that bundle (one calibration); then

1. one ``edgekd bench`` run of both bundles on ``ort,openvino,executorch`` at batch 1 and 32, same threads
   (the side-by-side table: fastest per batch);
2. the independent check: for each runtime a ten-line timing loop written against the runtime's own API on the
   FP32 file (median of ``--iters`` calls after a warm-up), interleaved ``--rounds`` times with edgekd's runner
   and timing loop (what ``edgekd bench`` runs) on the same file, batch and threads: the ratio of the medians
   (within 10 %?);
3. decisions of ``edgekd predict`` on the whole test split through each runtime against ORT's.

Superseded for acceptance by ``benchmarks/runtimes_demo.py`` (the demo's own models) and
``benchmarks/runtime_check.py`` (the independent check with bound inputs, which edgekd's runners use; the loop
below times OpenVINO's ``infer`` one-liners, which cost more per call than the inference: see the README).

Run: ``python benchmarks/runtimes.py --json benchmarks/results/cpu-DATE/runtimes.json``. The machine is named in
the JSON; on a shared machine the figures carry its load (``load_average``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.bench import BenchSettings, benchmark  # noqa: E402
from edgekd.bench._runtimes import fastest_by_batch  # noqa: E402
from edgekd.export import export_bundle, ov_config  # noqa: E402
from edgekd.quantize import QuantizeConfig, quantize_model_dir  # noqa: E402
from edgekd.serve import predict  # noqa: E402


def _model(work: Path, epochs: int, given: str | None) -> Path:
    if given:
        return Path(given)
    from edgekd.distill import RunSettings, TrainConfig, train_model

    out = work / "student"
    if not (out / "edgekd.json").is_file():
        cfg = TrainConfig(epochs=epochs, batch_size=128, lr=0.002, augment="medical", class_weighting="balanced")
        train_model(RunSettings(student="small:resnet8", data="pneumoniamnist", train=cfg), out, progress=False)
    return out


def _own_calls(bundle: Path, batch: int, threads: int) -> dict:
    """One inference call per runtime, each written against the runtime's own API only (no edgekd code)."""
    x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
    import openvino as ov

    compiled = ov.Core().compile_model(str(bundle / "model.xml"), "CPU", ov_config(threads))
    req, preset = compiled.create_infer_request(), compiled.create_infer_request()
    preset.set_input_tensor(ov.Tensor(x))  # the tensor set once, as edgekd's runner does
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)  # before loading: the pool may not be resized under a program
    program = Runtime.get().load_program(str(bundle / "model.pte"))
    method = program.load_method("forward")
    xt = torch.from_numpy(x)
    return {
        "ort": lambda: sess.run(None, {"input": x}),
        "openvino": lambda: req.infer({0: x}),  # numpy in, a dict of outputs back: the documented one-liner
        "openvino-preset": preset.infer,
        "executorch": lambda: method.execute([xt]),
        "_keep": (program, method),
    }


def _own_median_ms(call, iters: int) -> float:
    """The ten-line loop: warm up, then the median of ``iters`` host-timed calls."""
    for _ in range(max(10, iters // 10)):
        call()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def _independent_check(bundle: Path, batch: int, threads: int, iters: int, rounds: int) -> dict:
    """Own-API loop vs edgekd's runner + timing loop, interleaved in ``rounds`` (a shared machine drifts)."""
    from edgekd.bench import RUNNERS, resolve_artifact, summarize, time_runner

    calls = _own_calls(bundle, batch, threads)
    art = resolve_artifact(str(bundle))
    settings = BenchSettings(threads=threads, warmup_s=0.1, warmup_iters=10, min_s=0.2, min_iters=iters)
    out = {}
    for rt in ("ort", "openvino", "openvino-preset", "executorch"):
        cls = RUNNERS.get(rt.removesuffix("-preset"))
        target = cls.targets(art, "fp32")[0][0]
        own, ours = [], []
        with cls() as runner:
            runner.load(target, "cpu", batch, settings)
            for _ in range(rounds):
                own.append(_own_median_ms(calls[rt], iters))
                ours.append(summarize(time_runner(runner, settings).times_ms, batch=batch).p50_ms)
        out[rt] = {
            "own_api_median_ms": statistics.median(own),
            "edgekd_p50_ms": statistics.median(ours),
            "ratio": statistics.median(own) / statistics.median(ours),
            "rounds_own_ms": own,
            "rounds_edgekd_ms": ours,
        }
    return out


def _agreement(bundle: Path, precision: str) -> dict[str, float]:
    res = {}
    ref = None
    for runtime in ("ort", "openvino", "executorch"):
        p = predict(
            bundle,
            [],
            data="pneumoniamnist",
            split="test",
            precision=precision,
            runtime=runtime,
            batch=32,
            progress=False,
        )
        decisions = [q.decision or q.label for q in p.predictions]
        ref = decisions if ref is None else ref
        res[runtime] = float(np.mean([a == b for a, b in zip(ref, decisions)]))
        res["n"] = len(decisions)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/runtimes")
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-s", type=float, default=2.0)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reuse", action="store_true", help="keep the bundles of an earlier run in --work")
    ap.add_argument("--json", default="benchmarks/results/runtimes.json")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    md = _model(work, args.epochs, args.model_dir)
    fp32, q, q_rt = work / "fp32", work / "int8", work / "int8-runtimes"
    if not (args.reuse and (q_rt / "manifest.json").is_file()):
        export_bundle(md, fp32, formats="onnx,openvino,executorch", overwrite=True, log=print)
        quantize_model_dir(md, q, QuantizeConfig(method="ptq", target="cpu-x86"), progress=False, overwrite=True)
        export_bundle(q, q_rt, formats="openvino,executorch", overwrite=True, log=print)
    settings = BenchSettings(threads=args.threads, min_s=args.min_s, min_iters=50, roofline=False, keep_times=False)
    report = benchmark(
        [str(fp32), str(q_rt)], backends=["ort", "openvino", "executorch"], batches=(1, 32), settings=settings
    )
    check = {str(b): _independent_check(fp32, b, args.threads, args.iters, args.rounds) for b in (1, 32)}
    payload = {
        "environment": environment(),
        "threads": args.threads,
        "model": str(md),
        "side_by_side": fastest_by_batch(report),
        "independent_check": check,
        "agreement_vs_ort": {"fp32": _agreement(fp32, "fp32"), "int8": _agreement(q_rt, "int8")},
        "bench": report.model_dump(mode="json"),
    }
    for row in payload["side_by_side"]:
        print(
            row["artifact"],
            row["precision"],
            "b",
            row["batch"],
            {k: round(v, 4) for k, v in row["p50_ms"].items()},
            "fastest:",
            row["fastest"],
        )
    print(
        "independent check (own API / edgekd):",
        {b: {rt: round(v["ratio"], 3) for rt, v in c.items()} for b, c in check.items()},
    )
    print("agreement:", payload["agreement_vs_ort"])
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
