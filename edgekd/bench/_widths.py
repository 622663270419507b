"""Channel widths the target runs fast, found by measurement: a short probe, cached per device.

FLOPs are not latency. Pruning that counts MACs lands on widths like 13/12/28/59/58, and the demo's ResNet-8
pruned to 75 % of its MACs that way ran 1.9x *slower* in ONNX Runtime on an AVX2 CPU: the fast convolution
kernels block channels (ORT's NCHWc layout uses blocks of 8 floats on AVX2, 16 on AVX-512) and other widths
fall back to slower paths. Which multiple pays depends on the CPU, the runtime and its version, so it is
measured here, on the target backend, not assumed.

The probe (a second or two):

1. **Workload**: ``depth`` (3) chained 3x3 convolutions + ReLU with ``w`` channels in and out, batch ``batch``,
   at ``spatial`` x ``spatial``, the resolution of a middle stage of the model: its input size halved, clamped
   to [4, 32] to keep the probe short (:func:`probe_spatial`). A chain, not one layer, so layout conversions at
   the graph's edges are amortised as they are inside a network.
2. **Widths**: for each candidate multiple ``m`` (1, 2, 4, 8, 16, 32), up to four widths whose largest
   candidate divisor is ``m`` (so 40 stands for 8, 44 for 4, 47 for 1), nearest to ``center`` (48) within
   +-center/3 (32..64: 16 is 48 alone, 32 is 32 and 64). Not wider: the cost per MAC is convex in log-size,
   so widths as far out as 16 and 80 sit above any straight size trend and made class 16 look 11-24 % slow
   on every run here.
3. **Timing**: every session is loaded and warmed first; then rounds run every width for a short burst
   (about 2 ms) in rotating order, at least 4 rounds and until ``budget_s``; a width's time is the minimum over
   rounds of its burst median. Interleaving spreads a shared machine's noise over all widths, and the minimum
   is the estimate least disturbed by other load.
4. **Choice**: the cost per MAC also falls with size (at 2 threads here 29 ns/kMAC at 32 channels, 20 at 64),
   so classes are compared size-adjusted: a least-squares fit of ``log(ns/MAC) = b log(w) + a_class`` gives the
   common size trend ``b``, and a class's cost is the median over its widths of ``ns/MAC * (center / w)^b``
   (its cost at the centre width). A multiple ``m``'s cost is
   the *worst* class cost among the classes of multiples of ``m`` (rounding to ``m`` may land on any of them:
   8 covers the classes 8, 16 and 32). The chosen multiple is the smallest ``m`` whose cost is within
   ``tolerance`` (15 %, see :data:`WIDTH_TOLERANCE`) of the best. A multiple that is not measurably faster is not chosen: it would only
   take channels away. (A median over all widths divisible by ``m`` would hide a minority of slow ones: 44
   and 52 among 40..64 for ``m = 4``.)

5. **Stability**: the choice is made again from the even and from the odd rounds alone, and the process's CPU
   time over the timed phase is compared with wall time x threads (ORT's intra-op threads spin while they
   wait, so an uncontended probe gets about 100 %). When the halves disagree or the probe got less than
   80 % of its threads' CPU time (other processes took the cores: here 51 % with 2 threads beside two training
   jobs, when the choice moved from 8 to 32), the result is marked ``stable: false`` and *not cached*, so the
   next run measures again instead of keeping a busy moment's choice for the device. An unstable result uses
   the smallest of its three choices: a multiple too small costs some kernel speed, which a latency-target
   run measures and prunes past anyway, while one too large coarsens pruning and can make a budget unreachable.

The result (every width's ms and ns/MAC, each multiple's cost, the choice, and the device fingerprint: CPU
model, ISA flags such as avx2/avx512f/avx512_vnni/amx, backend and its version, threads) is cached as JSON in
:func:`cache_dir` under a name derived from the fingerprint and the workload, written atomically; a cache file
that cannot be read or does not match is measured again (the record's ``note`` says so), never an error.

Backends plug in through :data:`WIDTH_BACKENDS` (``ort``: ONNX Runtime CPU). :func:`width_multiple`
satisfies :class:`edgekd.prune.WidthProbeFn`.

Example:
    >>> probe = cached_width_probe(spatial=14)
    >>> probe.multiple, probe.source, probe.fingerprint["isa"]
    (8, 'measured', ['avx', 'avx2', 'fma'])
    >>> multiple, record = width_multiple(card)  # what `edgekd prune --round-to auto` uses
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel

from edgekd._io import atomic_write_text
from edgekd.bench._env import cpu_info
from edgekd.bench._ort_runner import _ort, make_session_options
from edgekd.bench._runners import physical_cores
from edgekd.errors import InvalidInputError
from edgekd.registry import Registry
from edgekd.specs import ModelCard

__all__ = [
    "WIDTH_CANDIDATES",
    "WIDTH_TOLERANCE",
    "WIDTH_BACKENDS",
    "ConvProbeBackend",
    "WidthTiming",
    "MultipleCost",
    "WidthProbe",
    "cache_dir",
    "probe_spatial",
    "probe_widths_for",
    "choose_multiple",
    "device_fingerprint",
    "probe_widths",
    "cached_width_probe",
    "width_multiple",
]

WIDTH_CANDIDATES = (1, 2, 4, 8, 16, 32)
# A multiple within 15 % of the best cost per MAC counts as fast. Measured here (AVX2, ORT 1.32, 1 thread, six
# probes on a shared 2-core machine): multiples of 8 cost 1.03-1.15x the best of 16/32 (noise of the same size),
# multiples of 4 1.20-1.55x and of 1/2 1.6-2.2x, so 15 % separates a kernel difference from noise and 10 % did not.
WIDTH_TOLERANCE = 0.15
PROBE_VERSION = 3  # bump when the method changes: older cache files are then measured again
PER_CLASS = 4
BURST_S = 0.002
MIN_ROUNDS, MAX_ROUNDS = 4, 200  # at least two rounds per half for the stability check
MIN_CPU_SHARE = 0.8  # of wall time x threads during the timed phase; less: the cores were taken by others


def cache_dir() -> Path:
    """``$EDGEKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgekd``, else ``~/.cache/edgekd``."""
    if os.environ.get("EDGEKD_CACHE_DIR"):
        return Path(os.environ["EDGEKD_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "edgekd"
    return Path("~/.cache/edgekd").expanduser()


def probe_spatial(input_size: Sequence[int]) -> int:
    """The probe's feature-map size for a model with ``input_size``: a middle stage's (half), in [4, 32]."""
    return max(4, min(32, min(int(s) for s in input_size) // 2))


# ---------------------------------------------------------------------------------------------------------------
# Backends: build and run the conv workload at one width


class ConvProbeBackend(ABC):
    """Runs the probe's workload on one backend; subclasses register with ``@WIDTH_BACKENDS.register(name)``."""

    name: ClassVar[str]

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions that change kernel choice (part of the device fingerprint)."""

    @abstractmethod
    def load(self, width: int, *, spatial: int, batch: int, depth: int, threads: int) -> Callable[[], None]:
        """Prepare the workload at ``width`` channels; returns a function running it once (synchronously)."""

    def close(self) -> None:
        """Free what :meth:`load` made."""
        return None


WIDTH_BACKENDS: Registry[type[ConvProbeBackend]] = Registry("width-probe backend")


def _conv_chain_onnx(width: int, spatial: int, batch: int, depth: int) -> bytes:
    """An ONNX graph of ``depth`` 3x3 conv + ReLU layers, ``width`` channels in and out, random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(width)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width, 3, 3)) * (2.0 / (9 * width)) ** 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes += [
            helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1] * 4),
            helper.make_node("Relu", [f"c{i}"], [f"y{i}"]),
        ]
        prev = f"y{i}"
    shape = [batch, width, spatial, spatial]
    graph = helper.make_graph(
        nodes,
        "width_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, shape)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@WIDTH_BACKENDS.register("ort", description="ONNX Runtime, CPU execution provider")
class OrtConvProbe(ConvProbeBackend):
    """The workload as an ONNX graph in ONNX Runtime on the CPU, configured like the ``ort`` bench runner."""

    name = "ort"

    def __init__(self) -> None:
        self._sessions: list[Any] = []

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": str(_ort().__version__)}

    def load(self, width: int, *, spatial: int, batch: int, depth: int, threads: int) -> Callable[[], None]:
        ort = _ort()
        session = ort.InferenceSession(
            _conv_chain_onnx(width, spatial, batch, depth),
            sess_options=make_session_options(threads),
            providers=["CPUExecutionProvider"],
        )
        x = np.random.default_rng(0).standard_normal((batch, width, spatial, spatial)).astype(np.float32)
        binding = session.io_binding()
        binding.bind_ortvalue_input("x", ort.OrtValue.ortvalue_from_numpy(x, "cpu", 0))
        out = session.get_outputs()[0].name
        binding.bind_output(out, "cpu")
        session.run_with_iobinding(binding)
        binding.bind_ortvalue_output(out, binding.get_outputs()[0])  # reuse the buffer: the timed run allocates none
        self._sessions.append((session, binding))
        return lambda: session.run_with_iobinding(binding)

    def close(self) -> None:
        self._sessions.clear()


# ---------------------------------------------------------------------------------------------------------------
# The record


class WidthTiming(BaseModel):
    """One measured width: ms of one run of the workload, its MACs and the cost per MAC."""

    width: int
    ms: float
    macs: int
    ns_per_mac: float


class MultipleCost(BaseModel):
    """A candidate multiple: the widths divisible by it, the size-adjusted ns per MAC of its own class, its cost
    (the worst class cost among multiples of it) and that cost relative to the best."""

    multiple: int
    widths: list[int]
    class_ns_per_mac: float
    ns_per_mac: float
    relative: float


class WidthProbe(BaseModel):
    """What the probe measured and chose (the cache file's content).

    Attributes:
        multiple: the chosen channel multiple (unstable: the smallest of ``all_rounds_multiple`` and
            ``half_multiples``).
        all_rounds_multiple: the choice from every round.
        source: ``measured`` now, or ``cached`` (read from ``cache_file``).
        fingerprint: the device: CPU model, ISA flags, backend and version, threads.
        key: hash of the fingerprint and the workload (the cache file's name).
        workload: spatial size, batch, conv depth and centre width.
        timings: every measured width; costs: every candidate multiple.
        half_multiples: the choice from the even and from the odd rounds alone.
        cpu_share: process CPU time / (wall time x threads) of the timed phase.
        stable: both halves chose ``multiple`` and ``cpu_share >= 0.8`` (an unstable result is not cached).
        note: why a cache file was not used, or the result not cached.
    """

    version: int = PROBE_VERSION
    key: str
    backend: str
    fingerprint: dict[str, Any]
    workload: dict[str, int]
    candidates: list[int]
    tolerance: float
    rounds: int
    timings: list[WidthTiming]
    costs: list[MultipleCost]
    multiple: int
    all_rounds_multiple: int
    half_multiples: list[int]
    cpu_share: float
    stable: bool
    measured_at: str
    probe_s: float
    source: Literal["measured", "cached"] = "measured"
    cache_file: str | None = None
    note: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Method


def _largest_divisor(width: int, candidates: Sequence[int]) -> int | None:
    return max((m for m in candidates if width % m == 0), default=None)


def probe_widths_for(candidates: Sequence[int] = WIDTH_CANDIDATES, center: int = 48) -> list[int]:
    """The widths the probe times: per candidate, up to four nearest ``center`` whose largest divisor it is.

    Raises:
        InvalidInputError: a candidate has no such width within +-center/3 (raise ``center``).
    """
    lo, hi = max(1, center - center // 3), center + center // 3
    out: list[int] = []
    for m in candidates:
        mine = [w for w in range(lo, hi + 1) if _largest_divisor(w, candidates) == m]
        if not mine:
            raise InvalidInputError(
                f"no width in [{lo}, {hi}] has {m} as its largest candidate multiple",
                f"raise the probe's centre width above {center}",
            )
        out += sorted(mine, key=lambda w: (abs(w - center), w))[:PER_CLASS]
    return sorted(out)


def _size_trend(timings: Sequence[WidthTiming], classes: dict[int, int]) -> float:
    """``b`` of the least-squares fit ``log(ns/MAC) = b log(w) + a_class`` (one intercept per class)."""
    names = sorted(set(classes.values()))
    x = np.array([[math.log(t.width)] + [float(classes[t.width] == c) for c in names] for t in timings])
    y = np.log([t.ns_per_mac for t in timings])
    return float(np.linalg.lstsq(x, y, rcond=None)[0][0])


def _check_candidates(candidates: Sequence[int], tolerance: float) -> list[int]:
    cands = sorted({int(m) for m in candidates})
    if not cands or cands[0] < 1:
        raise InvalidInputError(f"width candidates must be positive integers, got {list(candidates)}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise InvalidInputError(f"the width tolerance must be a fraction >= 0, got {tolerance}")
    return cands


def choose_multiple(
    timings: Sequence[WidthTiming], *, candidates: Sequence[int] = WIDTH_CANDIDATES, tolerance: float = WIDTH_TOLERANCE
) -> tuple[int, list[MultipleCost]]:
    """The smallest candidate multiple as fast per MAC as the best, within ``tolerance`` (step 4 above).

    Raises:
        InvalidInputError: a candidate has no measured width of its class.
    """
    cands = _check_candidates(candidates, tolerance)
    timings = [t for t in timings if _largest_divisor(t.width, cands) is not None]
    classes = {t.width: _largest_divisor(t.width, cands) for t in timings}
    if missing := [m for m in cands if m not in classes.values()]:
        raise InvalidInputError(f"no measured width has {missing[0]} as its largest candidate multiple")
    b = _size_trend(timings, classes)
    center = math.exp(statistics.fmean(math.log(t.width) for t in timings))  # costs are stated at this width
    by_class: dict[int, list[float]] = {m: [] for m in cands}
    for t in timings:
        by_class[classes[t.width]].append(t.ns_per_mac * (center / t.width) ** b)
    median = {m: statistics.median(v) for m, v in by_class.items()}
    cost = {m: max(median[c] for c in cands if c % m == 0) for m in cands}
    best = min(cost.values())
    costs = [
        MultipleCost(
            multiple=m,
            widths=[t.width for t in timings if t.width % m == 0],
            class_ns_per_mac=median[m],
            ns_per_mac=cost[m],
            relative=cost[m] / best,
        )
        for m in cands
    ]
    chosen = min(m for m in cands if cost[m] <= (1 + tolerance) * best)
    return chosen, costs


def device_fingerprint(backend: str = "ort", threads: int | None = None) -> dict[str, Any]:
    """The device a probe result belongs to: CPU model, ISA flags, backend and its versions, threads."""
    impl = WIDTH_BACKENDS.get(backend)()
    cpu = cpu_info(threads)
    return {
        "backend": backend,
        "cpu_model": cpu.model,
        "isa": sorted(f for f, on in cpu.flags.items() if on),
        "logical_cores": cpu.logical_cores,
        "threads": threads,
        **impl.versions(),
    }


def _time_widths(runs: dict[int, Callable[[], None]], budget_s: float) -> dict[int, list[float]]:
    """Interleaved bursts (step 3 above): each width's burst median (ms) in every round."""
    iters = {}
    for w, run in runs.items():
        run()
        run()  # warm-up: the first runs pay for allocation and weight re-layout
        t0 = time.perf_counter()
        run()
        iters[w] = max(3, min(50, int(BURST_S / max(time.perf_counter() - t0, 1e-7))))
    medians: dict[int, list[float]] = {w: [] for w in runs}
    order, rounds, end = list(runs), 0, time.perf_counter() + budget_s
    while rounds < MIN_ROUNDS or (time.perf_counter() < end and rounds < MAX_ROUNDS):
        k = rounds % len(order)
        for w in order[k:] + order[:k]:
            times = []
            for _ in range(iters[w]):
                t0 = time.perf_counter_ns()
                runs[w]()
                times.append(time.perf_counter_ns() - t0)
            medians[w].append(statistics.median(times) / 1e6)
        rounds += 1
    return medians


def _key(fingerprint: dict[str, Any], workload: dict[str, int], candidates: list[int], tolerance: float) -> str:
    blob = json.dumps(
        {"v": PROBE_VERSION, "fp": fingerprint, "w": workload, "c": candidates, "t": tolerance}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def probe_widths(
    *,
    spatial: int,
    batch: int = 1,
    threads: int | None = None,
    backend: str = "ort",
    candidates: Sequence[int] = WIDTH_CANDIDATES,
    tolerance: float = WIDTH_TOLERANCE,
    center: int = 48,
    depth: int = 3,
    budget_s: float = 1.0,
) -> WidthProbe:
    """Measure now (no cache): time the workload at :func:`probe_widths_for` and :func:`choose_multiple`.

    Args:
        spatial: feature-map size (see :func:`probe_spatial`); batch: batch size of the workload.
        threads: intra-op threads (None: the physical core count, as the ``ort`` bench runner uses).
        backend: a name of :data:`WIDTH_BACKENDS`.
        candidates, tolerance, center, depth: the method's parameters (module docstring).
        budget_s: seconds of interleaved timing after loading (at least 3 rounds are run).
    """
    cands = _check_candidates(candidates, tolerance)
    if spatial < 1 or batch < 1 or depth < 1 or budget_s < 0:
        raise InvalidInputError("the width probe needs spatial, batch and depth >= 1 and a budget >= 0")
    threads = threads or physical_cores()
    fingerprint = device_fingerprint(backend, threads)
    workload = {"spatial": spatial, "batch": batch, "depth": depth, "center": center}
    widths = probe_widths_for(cands, center)
    impl = WIDTH_BACKENDS.get(backend)()
    t0 = time.perf_counter()
    try:
        runs = {w: impl.load(w, spatial=spatial, batch=batch, depth=depth, threads=threads) for w in widths}
        wall, cpu = time.perf_counter(), time.process_time()
        medians = _time_widths(runs, budget_s)
        share = (time.process_time() - cpu) / max((time.perf_counter() - wall) * threads, 1e-9)
    finally:
        impl.close()

    def timings(rounds: slice) -> list[WidthTiming]:
        out = []
        for w in widths:
            ms, macs = min(medians[w][rounds]), depth * batch * w * w * 9 * spatial * spatial
            out.append(WidthTiming(width=w, ms=ms, macs=macs, ns_per_mac=ms * 1e6 / macs))
        return out

    every = timings(slice(None))
    multiple, costs = choose_multiple(every, candidates=cands, tolerance=tolerance)
    halves = [choose_multiple(timings(slice(k, None, 2)), candidates=cands, tolerance=tolerance)[0] for k in (0, 1)]
    stable = halves == [multiple, multiple] and share >= MIN_CPU_SHARE
    return WidthProbe(
        key=_key(fingerprint, workload, cands, tolerance),
        backend=backend,
        fingerprint=fingerprint,
        workload=workload,
        candidates=cands,
        tolerance=tolerance,
        rounds=len(medians[widths[0]]),
        timings=every,
        costs=costs,
        multiple=multiple if stable else min(multiple, *halves),
        all_rounds_multiple=multiple,
        half_multiples=halves,
        cpu_share=round(share, 3),
        stable=stable,
        probe_s=round(time.perf_counter() - t0, 3),
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _read_cache(path: Path, key: str) -> tuple[WidthProbe | None, str | None]:
    if not path.exists():
        return None, None
    try:
        probe = WidthProbe.model_validate_json(path.read_bytes())
    except (OSError, ValueError) as e:  # unreadable, not JSON, not a probe record (ValidationError is a ValueError)
        return None, f"cache file {path} could not be read ({type(e).__name__}); measured again"
    if probe.key != key or probe.version != PROBE_VERSION:
        return None, f"cache file {path} belongs to another device or probe version; measured again"
    return probe.model_copy(update={"source": "cached", "cache_file": str(path)}), None


def cached_width_probe(
    *,
    spatial: int,
    batch: int = 1,
    threads: int | None = None,
    backend: str = "ort",
    candidates: Sequence[int] = WIDTH_CANDIDATES,
    tolerance: float = WIDTH_TOLERANCE,
    center: int = 48,
    depth: int = 3,
    budget_s: float = 1.0,
    cache: str | os.PathLike | None = None,
    refresh: bool = False,
) -> WidthProbe:
    """:func:`probe_widths`, reusing the result cached for this device and workload (``cache``: default
    :func:`cache_dir`); ``refresh`` measures again. A write that fails (read-only folder) is noted, not raised."""
    cands = _check_candidates(candidates, tolerance)
    threads = threads or physical_cores()
    workload = {"spatial": spatial, "batch": batch, "depth": depth, "center": center}
    key = _key(device_fingerprint(backend, threads), workload, cands, tolerance)
    path = Path(cache or cache_dir()) / f"widths-{backend}-{key}.json"
    note = None
    if not refresh:
        hit, note = _read_cache(path, key)
        if hit is not None:
            return hit
    probe = probe_widths(
        spatial=spatial,
        batch=batch,
        threads=threads,
        backend=backend,
        candidates=cands,
        tolerance=tolerance,
        center=center,
        depth=depth,
        budget_s=budget_s,
    )
    probe = probe.model_copy(update={"cache_file": str(path), "note": note})
    if not probe.stable:
        why = (
            f"unstable (all rounds chose {probe.all_rounds_multiple}, the even and odd rounds "
            f"{probe.half_multiples}, with {probe.cpu_share:.0%} of the threads' CPU time: a busy machine?): using "
            f"the smallest, {probe.multiple}; not cached, measured again next time"
        )
        return probe.model_copy(update={"cache_file": None, "note": f"{note}; {why}" if note else why})
    try:
        atomic_write_text(path, probe.model_dump_json(indent=2) + "\n")
    except OSError as e:
        probe = probe.model_copy(update={"cache_file": None, "note": f"{note or ''} not cached: {e}".strip()})
    return probe


def width_multiple(
    card: ModelCard, *, batch: int = 1, threads: int | None = None, cache: str | os.PathLike | None = None
) -> tuple[int, dict[str, Any]]:
    """The channel multiple for a model with ``card``'s input, and the probe's record (:class:`WidthProbeFn`)."""
    probe = cached_width_probe(
        spatial=probe_spatial(card.preprocess.input_size), batch=batch, threads=threads, cache=cache
    )
    record = probe.model_dump(mode="json")
    record["fingerprint_id"] = probe.key
    return probe.multiple, record
