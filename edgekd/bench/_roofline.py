"""Roofline context: how far a model's achieved FLOP/s is from this machine's matmul peak.

The peak is *measured*, not looked up: square fp32 matrix products (``2 n^3`` FLOPs), ``n`` from 512 (CUDA:
4096) doubled while one product takes under ~20 ms, best of three runs per size; on the CPU both
``torch.matmul`` (MKL/oneDNN) and ONNX Runtime's ``MatMul`` (MLAS, the kernels the ``ort`` backend runs)
are measured with the benchmark's thread count and the best figure kept, because either library can be
the faster one on a given CPU. On CUDA, TF32 is switched off so the figure is true fp32, and the time comes
from CUDA events. The whole measurement takes about a second and is cached per (device, threads).

A result's achieved throughput is ``2 * MACs * batch / p50`` (the same MAC convention as
:func:`edgekd.students.count_macs`); ``fraction_of_peak`` is that over the peak. Convolutions with few
channels, depthwise layers and small batches are memory or launch bound, so fractions of a few percent
are normal for edge models; fp16/INT8 models (and Winograd convolutions) may exceed an fp32 matmul peak.

Example:
    >>> measure_peak_flops("cpu", threads=4)  # GFLOP/s
    412.7
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgekd.bench._schema import Roofline

__all__ = ["measure_peak_flops", "roofline_for", "clear_peak_cache"]

_CACHE: dict[tuple[str, int | None], float] = {}


def clear_peak_cache() -> None:
    """Forget measured peaks (e.g. after changing the machine's load in a test)."""
    _CACHE.clear()


def measure_peak_flops(device: str = "cpu", *, threads: int | None = None, budget_s: float = 1.0) -> float:
    """Peak fp32 matmul throughput of ``device`` in GFLOP/s, measured once per process.

    Args:
        device: ``cpu`` or ``cuda``.
        threads: torch CPU threads during the measurement (restored afterwards); None keeps the current.
        budget_s: approximate time budget of the measurement.
    """
    key = (device, threads if device == "cpu" else None)
    if key not in _CACHE:
        _CACHE[key] = _measure(device, threads, budget_s)
    return _CACHE[key]


def _measure(device: str, threads: int | None, budget_s: float) -> float:
    import torch

    before = torch.get_num_threads()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if device == "cpu" and threads:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # measure true fp32, not TF32 tensor cores
    try:
        with torch.inference_mode():
            best = _sweep(_torch_matmul(torch, device), 4096 if device == "cuda" else 512, budget_s / 2)
        if device == "cpu":
            ort_mm = _ort_matmul(threads or before)
            if ort_mm is not None:
                best = max(best, _sweep(ort_mm, 512, budget_s / 2))
        return best
    finally:
        torch.set_num_threads(before)
        torch.backends.cuda.matmul.allow_tf32 = tf32


Timed = Callable[[int], Callable[[], float]]  # n -> (run once -> seconds)


def _torch_matmul(torch, device: str) -> Timed:
    def prepare(n: int) -> Callable[[], float]:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

        def once() -> float:
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.matmul(a, b)
                end.record()
                end.synchronize()  # GPU sync point
                return start.elapsed_time(end) / 1e3
            t0 = time.perf_counter()
            torch.matmul(a, b)
            return time.perf_counter() - t0

        return once

    return prepare


def _ort_matmul(threads: int) -> Timed | None:
    """ONNX Runtime's CPU MatMul on an in-memory one-node graph, or None without onnxruntime/onnx."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None

    def prepare(n: int) -> Callable[[], float]:
        io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "abc"]
        graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", io[:2], io[2:])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {"a": np.random.randn(n, n).astype(np.float32), "b": np.random.randn(n, n).astype(np.float32)}

        def once() -> float:
            t0 = time.perf_counter()
            sess.run(None, feeds)
            return time.perf_counter() - t0

        return once

    return prepare


def _sweep(prepare: Timed, n0: int, budget_s: float) -> float:
    """Best GFLOP/s over sizes n0, 2 n0, ... (while one product is under 20 ms), best of 3 per size."""
    t_start = time.perf_counter()
    best, n = 0.0, n0
    while True:
        once = prepare(n)
        once()  # first call: allocation, thread-pool start, kernel selection
        t = min(once() for _ in range(3))
        best = max(best, 2.0 * n**3 / t / 1e9)
        if t >= 0.02 or n >= 4 * n0 or time.perf_counter() - t_start > budget_s:
            return best
        n *= 2


def roofline_for(macs: int | None, batch: int, p50_ms: float, peak_gflops: float | None) -> Roofline:
    """Achieved GFLOP/s at the median latency and its fraction of ``peak_gflops`` (None when unknown)."""
    if macs is None or p50_ms <= 0:
        return Roofline(peak_gflops=peak_gflops)
    achieved = 2.0 * macs * batch / (p50_ms / 1e3) / 1e9
    frac = achieved / peak_gflops if peak_gflops else None
    return Roofline(peak_gflops=peak_gflops, achieved_gflops=achieved, fraction_of_peak=frac)
