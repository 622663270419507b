"""Interleaved latency of a compressed model against its parent: is the child really faster, here?

Two models timed one after the other see different machine states (a neighbour on a shared VM, frequency and
thermal changes, caches), so a p50 of each, minutes apart, cannot say which is faster by a few percent. As
trtexec users and MLPerf do when they compare two engines, :func:`compare_latency` loads both, with the same
runner, threads and settings, and **alternates** them over several short rounds in ABBA order (round 0:
parent then child, round 1: child then parent, ...), so a slow drift of the machine touches both alike. Each
round is :func:`~edgekd.bench.time_runner` (warm-up, then a timed loop of ``min_s / rounds`` seconds and at
least ``ceil(min_iters / rounds)`` iterations); the figure of each model is the **median of its per-round
p50s**, and ``ratio = child / parent`` (> 1: the child is slower). Warm-up (``warmup_s``, ``warmup_iters``)
runs in the first round only; later rounds re-touch the model with one untimed call.

The plan is :func:`~edgekd.bench.benchmark`'s (same runners, same artifacts, same skips): every backend x
device x batch on which *both* models run is one :class:`PairLatency`; a configuration only one of them runs
on, or that a runner refuses (a fixed batch in the file), is a :class:`~edgekd.bench.SkippedRun` row.

Example:
    >>> cmp = compare_latency("runs/x/student", "runs/x/pruned", backends=["ort"], devices=["cpu"],
    ...                       batches=(1, 32), settings=BenchSettings(min_s=1.0, min_iters=20), rounds=5)
    >>> [(p.batch, round(p.ratio, 2)) for p in cmp.results], cmp.child_faster()
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
from pydantic import BaseModel, Field

from edgekd.bench._api import _default_devices, _plan, _Planned, _unique_names, _validate
from edgekd.bench._artifacts import Artifact, resolve_artifact
from edgekd.bench._env import capture_environment
from edgekd.bench._runners import RUNNERS, Runner, SkipConfig, physical_cores
from edgekd.bench._schema import BenchSettings, Environment, SkippedRun
from edgekd.bench._timing import time_runner
from edgekd.errors import InvalidInputError

__all__ = ["compare_latency", "bench_devices", "LatencyComparison", "PairLatency", "RoundTiming", "ROLES"]

ROLES = ("parent", "child")


class RoundTiming(BaseModel):
    """One round of one configuration: the order the two models ran in and each one's p50 (ms) and count."""

    round: int
    order: list[str]
    parent_p50_ms: float
    child_p50_ms: float
    parent_n: int
    child_n: int


class PairLatency(BaseModel):
    """One backend x device x batch: the median over rounds of each model's per-round p50 (ms).

    Attributes:
        ratio: ``child_p50_ms / parent_p50_ms`` (> 1: the child is slower).
        threads: the CPU threads both runners used (None on a GPU).
        rounds: every round, in the order they ran.
    """

    backend: str
    device: str
    batch: int
    parent_precision: str
    child_precision: str
    parent_p50_ms: float
    child_p50_ms: float
    ratio: float
    threads: int | None = None
    rounds: list[RoundTiming] = Field(default_factory=list)

    @property
    def child_faster(self) -> bool:
        return self.child_p50_ms < self.parent_p50_ms


class LatencyComparison(BaseModel):
    """What :func:`compare_latency` measured: the pairs, what could not run, and the machine."""

    parent: str
    child: str
    rounds: int
    settings: BenchSettings
    environment: Environment
    results: list[PairLatency] = Field(default_factory=list)
    skipped: list[SkippedRun] = Field(default_factory=list)

    def child_faster(self) -> bool | None:
        """True when the child is faster in every measured configuration; None when nothing was measured."""
        return all(p.child_faster for p in self.results) if self.results else None

    def slowest(self) -> PairLatency | None:
        """The configuration least favourable to the child (largest ``ratio``)."""
        return max(self.results, key=lambda p: p.ratio) if self.results else None


def bench_devices(
    backends: Sequence[str] | None, devices: Sequence[str] | None, settings: BenchSettings | None = None
) -> list[str]:
    """The devices a benchmark with these arguments runs on: ``devices`` when given, else each backend's
    default device that one of the backends can use here (CUDA when available, else the CPU).

    Example:
        >>> bench_devices(["ort"], None)  # on a machine without CUDA
        ['cpu']
    """
    if devices:
        return list(dict.fromkeys(devices))
    settings = settings or BenchSettings()
    names = list(backends or ("ort", "torch"))
    out: list[str] = []
    for name in names:
        cls = RUNNERS.get(name)
        for d in _default_devices(name):
            if d not in out and cls.unavailable(d, settings) is None:
                out.append(d)
    return out


def _round_settings(settings: BenchSettings, rounds: int, first: bool) -> BenchSettings:
    warm = {} if first else {"warmup_s": 0.0, "warmup_iters": 1}
    max_s = settings.max_s / rounds if settings.max_s is not None else None
    return settings.model_copy(
        update={
            "min_s": settings.min_s / rounds,
            "max_s": max_s,
            "min_iters": max(1, math.ceil(settings.min_iters / rounds)),
            **warm,
        }
    )


def _pairs(planned: list[_Planned], arts: list[Artifact]) -> dict[tuple[str, str, int], dict[str, _Planned]]:
    """Planned configurations by (backend, device, batch), each with its parent and/or child target."""
    out: dict[tuple[str, str, int], dict[str, _Planned]] = {}
    for p in planned:
        role = "parent" if p.target.artifact is arts[0] else "child"
        slot = out.setdefault((p.backend, p.device, p.batch), {})
        if role in slot:
            raise InvalidInputError(
                f"{p.target.artifact.given} has more than one file {p.backend} runs",
                "compare one ONNX file of a bundle (BUNDLE/model.int8.onnx), not the whole bundle",
            )
        slot[role] = p
    return out


class _RoleSkip(SkipConfig):
    def __init__(self, role: str, reason: str) -> None:
        super().__init__(reason)
        self.role = role


def _measure_pair(
    pair: dict[str, _Planned], settings: BenchSettings, rounds: int, clock: Callable[[], float]
) -> PairLatency:
    p, c = pair["parent"], pair["child"]
    cls = RUNNERS.get(p.backend)
    with cls() as rp, cls() as rc:
        runners: dict[str, Runner] = {"parent": rp, "child": rc}
        for who, planned in (("parent", p), ("child", c)):
            try:
                runners[who].load(planned.target, planned.device, planned.batch, settings)
            except SkipConfig as e:  # e.g. a fixed batch in the file: that configuration becomes a skipped row
                raise _RoleSkip(who, str(e)) from e
        timings: list[RoundTiming] = []
        for i in range(rounds):
            order = list(ROLES) if i % 2 == 0 else list(reversed(ROLES))  # ABBA: drift touches both alike
            rs = _round_settings(settings, rounds, first=i == 0)
            times = {who: time_runner(runners[who], rs, clock=clock).times_ms for who in order}
            timings.append(
                RoundTiming(
                    round=i,
                    order=order,
                    parent_p50_ms=float(np.median(times["parent"])),
                    child_p50_ms=float(np.median(times["child"])),
                    parent_n=len(times["parent"]),
                    child_n=len(times["child"]),
                )
            )
        threads = rp.options_used.get("threads")
    parent_ms = float(np.median([t.parent_p50_ms for t in timings]))
    child_ms = float(np.median([t.child_p50_ms for t in timings]))
    return PairLatency(
        backend=p.backend,
        device=p.device,
        batch=p.batch,
        parent_precision=p.target.precision,
        child_precision=c.target.precision,
        parent_p50_ms=parent_ms,
        child_p50_ms=child_ms,
        ratio=child_ms / parent_ms if parent_ms > 0 else math.inf,
        threads=int(threads) if threads else None,
        rounds=timings,
    )


def _skip(p: _Planned, reason: str) -> SkippedRun:
    return SkippedRun(
        artifact=p.target.artifact.given,
        name=p.target.name,
        backend=p.backend,
        device=p.device,
        batch=p.batch,
        precision=p.target.precision,
        reason=reason,
    )


def compare_latency(
    parent: str,
    child: str,
    *,
    backends: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    settings: BenchSettings | None = None,
    rounds: int = 5,
    verify: bool = True,
    precisions: tuple[str | None, str | None] = (None, None),
    clock: Callable[[], float] = time.perf_counter,
) -> LatencyComparison:
    """Time ``child`` against ``parent``, interleaved over ``rounds`` rounds (see the module docstring).

    Args:
        parent, child: model directories, ONNX files (a bundle's file: ``BUNDLE/model.int8.onnx``), or bundles /
            engines holding one file per backend.
        backends, devices, batches, settings, verify: as for :func:`~edgekd.bench.benchmark`.
        rounds: how many times the two alternate (at least 2).
        precisions: which files of each bundle to time (parent, child; None: every one), e.g. ``("fp32", "int8")``
            for a bundle that carries both (one file per runtime and precision).
        clock: seconds as a float (injectable, as for :func:`~edgekd.bench.time_runner`).

    Returns:
        One :class:`PairLatency` per configuration both run on, in plan order; the rest in ``skipped``.

    Raises:
        InvalidInputError: bad names or values, fewer than 2 rounds, an artifact with several files for one
            backend (exit 3).
        DependencyError: an explicitly requested backend or device is unavailable (exit 5).
    """
    if rounds < 2:
        raise InvalidInputError(f"rounds must be at least 2 to interleave, got {rounds}")
    settings = settings or BenchSettings()
    _validate([parent, child], backends, devices, batches, None)
    arts = [resolve_artifact(str(a), verify=verify) for a in (parent, child)]
    _unique_names(arts)
    settings = settings.model_copy(update={"threads": settings.threads or physical_cores()})
    planned, skipped = _plan(arts, backends, devices, batches, None, settings)
    wanted = dict(zip((id(a) for a in arts), precisions))
    planned = [p for p in planned if wanted[id(p.target.artifact)] in (None, p.target.precision)]
    results = []
    for slot in _pairs(planned, arts).values():
        if len(slot) < 2:
            only = next(iter(slot.values()))
            skipped.append(_skip(only, f"{only.backend} on {only.device} does not run the other model"))
            continue
        try:
            results.append(_measure_pair(slot, settings, rounds, clock))
        except _RoleSkip as e:
            skipped.append(_skip(slot[e.role], str(e)))
    env = capture_environment(threads=settings.threads, include_hostname=settings.include_hostname)
    return LatencyComparison(
        parent=str(parent),
        child=str(child),
        rounds=rounds,
        settings=settings,
        environment=env,
        results=results,
        skipped=skipped,
    )
