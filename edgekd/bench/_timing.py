"""The measurement loop, after trtexec and the MLPerf LoadGen rules.

1. **Warm-up** until both a minimum time and a minimum count are reached: the first calls pay for lazy
   initialisation, memory-pool growth, JIT/autotuning and cold caches, which are not steady-state latency.
2. **Timed iterations** until both a minimum duration *and* a minimum count are reached (a short model
   gets many samples, a slow one still gets enough for stable percentiles); ``max_s`` optionally caps it.
3. **The device is synchronised inside the timer**: each iteration's time ends when the device has
   finished, not when the launch returned. On a CUDA stream the time comes from CUDA events recorded on
   the stream around the work (no host jitter in the figure); otherwise from ``time.perf_counter_ns``
   around ``run()`` + ``sync()``.
4. Every per-iteration time is kept, so percentiles, not only the mean, can be reported.

Example:
    >>> timing = time_runner(runner, BenchSettings(min_s=1.0, min_iters=100))
    >>> len(timing.times_ms) >= 100
    True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekd.bench._runners import Runner
from edgekd.bench._schema import BenchSettings

__all__ = ["Timing", "HostTimer", "CudaEventTimer", "time_runner"]

Clock = Callable[[], float]


@dataclass
class Timing:
    """Raw output of :func:`time_runner` (times in ms, durations in s)."""

    times_ms: list[float] = field(default_factory=list)
    warmup_iters: int = 0
    warmup_s: float = 0.0
    total_s: float = 0.0


class HostTimer:
    """Host clock around ``fn()`` then ``sync()``: the sync is inside the timed region on purpose."""

    def __init__(self, sync: Callable[[], None], clock: Clock = time.perf_counter) -> None:
        self.sync, self.clock = sync, clock

    def measure(self, fn: Callable[[], None]) -> float:
        t0 = self.clock()
        fn()
        self.sync()  # this is a device sync point: the iteration ends when the work is done
        return (self.clock() - t0) * 1e3


class CudaEventTimer:
    """CUDA events recorded on the runner's stream around ``fn()``; ``elapsed_time`` is device time in ms."""

    def __init__(self, stream: Any) -> None:
        import torch

        self.stream = stream
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def measure(self, fn: Callable[[], None]) -> float:
        self.start.record(self.stream)
        fn()
        self.end.record(self.stream)
        self.end.synchronize()  # GPU sync point: wait for this iteration before reading its time
        return float(self.start.elapsed_time(self.end))


def _timer_for(runner: Runner, clock: Clock) -> HostTimer | CudaEventTimer:
    stream = runner.cuda_stream()
    return CudaEventTimer(stream) if stream is not None else HostTimer(runner.sync, clock)


def time_runner(runner: Runner, settings: BenchSettings, *, clock: Clock = time.perf_counter) -> Timing:
    """Warm up, then time iterations of ``runner.run()`` until both minimums are met.

    Args:
        runner: a loaded runner.
        settings: ``warmup_s``, ``warmup_iters``, ``min_s``, ``min_iters`` and the optional cap ``max_s``.
        clock: seconds as a float (injectable so tests can count iterations deterministically).

    Returns:
        The per-iteration times and how long warm-up and the timed phase took.
    """
    out = Timing()
    t0 = clock()
    while out.warmup_iters < settings.warmup_iters or clock() - t0 < settings.warmup_s:
        runner.run()
        runner.sync()
        out.warmup_iters += 1
    out.warmup_s = clock() - t0

    timer = _timer_for(runner, clock)
    t0 = clock()
    while True:
        out.times_ms.append(timer.measure(runner.run))
        elapsed = clock() - t0
        if len(out.times_ms) >= settings.min_iters and elapsed >= settings.min_s:
            break
        if settings.max_s is not None and elapsed >= settings.max_s:
            break  # an explicit cap for very slow models; recorded n tells the reader
    out.total_s = clock() - t0
    return out
