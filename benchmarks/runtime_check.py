"""The independent timing check: each runtime's own API in a ten-line loop against `edgekd bench`, within 10 %?

For one bundle carrying the three runtimes (``model.onnx``, ``model.xml``, ``model.pte``; ``--bundle``, or made
from ``--model-dir`` with ``edgekd export --format onnx,openvino,executorch``), at each ``--batch``, for each
runtime, three timings alternate over ``--rounds`` rounds (the order rotates each round, so a shared machine's
drift touches all alike); each is the median of ``--iters`` host-timed calls after a warm-up:

* ``own_bound``: a ten-line loop written against the runtime's own API only (no edgekd code, the settings written
  out), the input bound once, as every edgekd runner does: ORT ``run_with_iobinding`` on bound input and output
  buffers; OpenVINO ``set_input_tensor`` once, then ``start_async()`` + ``wait()`` (what C++
  ``InferRequest::infer()`` and ``benchmark_app`` do); ExecuTorch ``Method.execute`` on one tensor;
* ``own_natural``: the documented one-liner, NumPy in and out every call: ``InferenceSession.run(None, {name: x})``,
  ``InferRequest.infer({0: x})``, ``execute([torch.from_numpy(x)])``; and for OpenVINO ``infer()`` on the bound
  tensor too (``own_infer_bound``: the call edgekd's runner made before this check);
* ``edgekd``: edgekd's runner (:data:`edgekd.bench.RUNNERS`) and timing loop (:func:`edgekd.bench.time_runner`),
  the p50 ``edgekd bench`` reports.

``ratio = own_bound / edgekd`` must lie within 10 % of 1 (``agrees``). ``api_overhead_us`` is what the one-liner
adds per call (``own_natural - own_bound``): a fixed cost of the Python binding, large against a 0.1 ms model at
batch 1, amortised at batch 32. One plain ``edgekd bench`` run of the same file (``bench_p50_ms``, not
interleaved) is recorded beside them. The compiled models' properties (threads, streams, hint, precision) are
read back from both sides, so a configuration difference would show.

Run in quiet time: ``python benchmarks/runtime_check.py --model-dir runs/pneumonia/student --threads 2
--json benchmarks/results/cpu-DATE/runtime_check.json`` (about 2 minutes). Smoke: ``--iters 50 --rounds 2``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

RUNTIMES = ("ort", "openvino", "executorch")
_OV_PROPS = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT")


def own_median_ms(call, iters: int) -> float:
    """The ten-line loop: warm up, then the median of ``iters`` host-timed calls."""
    for _ in range(max(10, iters // 10)):
        call()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def _ort_calls(bundle: Path, x: np.ndarray, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(bundle / "model.onnx"), so, providers=["CPUExecutionProvider"])
    name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    out = np.empty(sess.run(None, {name: x})[0].shape, np.float32)
    io = sess.io_binding()
    io.bind_cpu_input(name, x)
    io.bind_output(out_name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
    return {
        "bound": lambda: sess.run_with_iobinding(io),
        "natural": lambda: sess.run(None, {name: x}),
        "config": {"intra_op_num_threads": threads, "inter_op_num_threads": 1},
    }


def _ov_calls(bundle: Path, x: np.ndarray, threads: int) -> dict[str, Any]:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(bundle / "model.xml"), "CPU", config)
    natural, bound, infer = (compiled.create_infer_request() for _ in range(3))
    for req in (bound, infer):
        req.set_input_tensor(ov.Tensor(x))
    return {
        "bound": lambda: (bound.start_async(), bound.wait()),
        "natural": lambda: natural.infer({0: x}),
        "infer_bound": infer.infer,
        "config": {k: str(compiled.get_property(k)) for k in _OV_PROPS},
        "_keep": compiled,
    }


def _et_calls(bundle: Path, x: np.ndarray, threads: int) -> dict[str, Any]:
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    if portable_lib._threadpool_get_thread_count() != threads:
        portable_lib._unsafe_reset_threadpool(threads)  # before any program is loaded (see edgekd.export)
    program = Runtime.get().load_program(str(bundle / "model.pte"))
    method = program.load_method("forward")
    xt = torch.from_numpy(x)
    return {
        "bound": lambda: method.execute([xt]),
        "natural": lambda: method.execute([torch.from_numpy(x)]),
        "config": {"threadpool": int(portable_lib._threadpool_get_thread_count())},
        "_keep": (program, method),
    }


def _check(bundle: Path, runtime: str, batch: int, args) -> dict[str, Any]:
    from edgekd.bench import RUNNERS, BenchSettings, benchmark, resolve_artifact, summarize, time_runner

    art = resolve_artifact(str(bundle))
    x = np.random.default_rng(0).standard_normal((batch, *art.input_shape)).astype(np.float32)
    own = {"ort": _ort_calls, "openvino": _ov_calls, "executorch": _et_calls}[runtime](bundle, x, args.threads)
    settings = BenchSettings(threads=args.threads, warmup_s=0.0, warmup_iters=max(10, args.iters // 10), min_s=0.0)
    settings = settings.model_copy(update={"min_iters": args.iters})
    names = [k for k in ("bound", "natural", "infer_bound") if k in own] + ["edgekd"]
    times: dict[str, list[float]] = {k: [] for k in names}
    cls = RUNNERS.get(runtime)
    with cls() as runner:
        runner.load(cls.targets(art, args.precision)[0][0], "cpu", batch, settings)
        for i in range(args.rounds):
            for k in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order each round
                if k == "edgekd":
                    times[k].append(summarize(time_runner(runner, settings).times_ms, batch=batch).p50_ms)
                else:
                    times[k].append(own_median_ms(own[k], args.iters))
        used = dict(runner.options_used)
    med = {k: statistics.median(v) for k, v in times.items()}
    bench = benchmark(
        [str(bundle)],
        backends=[runtime],
        batches=(batch,),
        precision=args.precision,
        settings=BenchSettings(threads=args.threads, min_s=args.bench_s, roofline=False, keep_times=False),
    ).results[0]
    ratio = med["bound"] / med["edgekd"]
    return {
        "own_bound_ms": med["bound"],
        "own_natural_ms": med["natural"],
        **({"own_infer_bound_ms": med["infer_bound"]} if "infer_bound" in med else {}),
        "edgekd_ms": med["edgekd"],
        "ratio": ratio,
        "agrees": abs(ratio - 1) <= 0.10,
        "ratio_natural": med["natural"] / med["edgekd"],
        "api_overhead_us": 1e3 * (med["natural"] - med["bound"]),
        "bench_p50_ms": bench.stats.p50_ms,
        "bench_cv": bench.stats.cv,
        "rounds_ms": times,
        "own_config": own["config"],
        "edgekd_options": used,
    }


def _bundle(args) -> Path:
    if args.bundle:
        return Path(args.bundle)
    from edgekd.export import export_bundle

    out = Path(args.work) / "check-bundle"
    if not (args.reuse and (out / "manifest.json").is_file()):
        export_bundle(args.model_dir, out, formats="onnx,openvino,executorch", overwrite=True, log=print)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", help="a bundle with model.onnx, model.xml and model.pte")
    src.add_argument("--model-dir", help="a model directory to export to the three runtimes first")
    ap.add_argument("--work", default="runs/runtime-check")
    ap.add_argument("--reuse", action="store_true", help="keep the bundle an earlier run exported in --work")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--bench-s", type=float, default=1.0, help="min_s of the plain edgekd bench run")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--json", default="benchmarks/results/runtime_check.json")
    args = ap.parse_args()
    bundle = _bundle(args)
    load_before = environment()["load_average"]
    out: dict[str, dict[str, Any]] = {}
    for batch in (int(b) for b in args.batch.split(",")):
        for rt in args.runtimes.split(","):
            res = _check(bundle, rt, batch, args)
            out.setdefault(str(batch), {})[rt] = res
            print(
                f"batch {batch} {rt}: own {res['own_bound_ms']:.4f} ms, edgekd {res['edgekd_ms']:.4f} ms, "
                f"ratio {res['ratio']:.3f} ({'agrees' if res['agrees'] else 'DISAGREES'} within 10 %); one-liner "
                f"{res['own_natural_ms']:.4f} ms (+{res['api_overhead_us']:.1f} us per call); edgekd bench "
                f"{res['bench_p50_ms']:.4f} ms"
            )
    payload = {
        "environment": {**environment(), "load_average_before": load_before},
        "bundle": str(bundle),
        "precision": args.precision,
        "threads": args.threads,
        "iters": args.iters,
        "rounds": args.rounds,
        "check": out,
        "all_agree": all(r["agrees"] for per in out.values() for r in per.values()),
    }
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
