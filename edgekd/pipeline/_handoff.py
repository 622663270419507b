"""Never hand off a slower model without saying so: which compressed artifact `edgekd run` carries forward.

Fewer MACs is not lower latency: on a 2-vCPU AVX2 machine the demo's pruned student (75 % of the MACs) ran
1.9x slower than the student under ONNX Runtime, and its INT8 file 1.5x slower again. So each compression
stage is **measured against its parent** in the same run (STYLE.md point 14): after ``pruned``, every
``int8-TARGET`` / ``fp16-TARGET`` and the export's FP16 file, a ``keep-NAME`` stage times child and parent
with :func:`~edgekd.bench.compare_latency` (interleaved rounds, the run's ``bench`` backends, devices and
batches) and evaluates both on the validation split. :func:`decide` then keeps the child when

* it is faster than its parent at **every** measured batch (and device): with several runtimes in ``bench.backends``
  (ort, openvino, executorch, trt) the child's fastest runtime against the parent's fastest at each batch
  (:func:`best_of_runtimes`; each figure the median of the interleaved rounds on that runtime), and
* its validation metric (``student.train.select_metric``; accuracy when that is ``loss`` or undefined on the
  split) is at most ``handoff.max_drop`` points (x100) below the parent's,

or when the stage says ``keep: always`` (still measured; the line says it was forced). A child whose target
device is not among the bench devices (FP16 or INT8 for TensorRT on a machine without CUDA) is not measured,
not kept under ``auto``, and is no CPU hand-off candidate. Each decision is one line, e.g.
``pruned: not carried forward: 1.92x slower than student at batch 32 (8.81 vs 4.59 ms p50, ORT CPU)``.

A pruned model that is not kept is not compressed further: the INT8 targets and the export bundle compress
its parent (the chosen student) instead; the pipeline resolves their source when they run.

**The hand-off** (:func:`handoff_targets`), one per deployment target: for each quantization target, its
low-precision file when kept, else the FP32 model carried forward (pruned or the chosen student); for a GPU
target that could not be measured, none (nothing was verified); for the export's FP16 file (a GPU artifact)
likewise; and when no quantization target runs on the CPU, the carried FP32 model for ``cpu``.
:func:`recheck` then reads the final benchmark: a hand-off slower than the chosen student at any batch there
is one more line (the final benchmark is not interleaved, so it can disagree with the decision: both are said).

Example:
    >>> d = decide(stage="pruned", parent="student", keep="auto", metric="auroc", parent_val=0.97, child_val=0.969,
    ...            max_drop=0.5, latency=comparison.results)
    >>> d.kept, d.line
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from edgekd.bench import PairLatency
from edgekd.pipeline._config import HandoffKeep

__all__ = [
    "HandoffDecision",
    "BestLatency",
    "best_of_runtimes",
    "HandoffTarget",
    "HandoffSummary",
    "decide",
    "handoff_targets",
    "recheck",
    "where",
    "KEEP_PREFIX",
    "HANDOFF_DIR",
]

KEEP_PREFIX = "keep-"
HANDOFF_DIR = "handoff"
_BACKENDS = {"ort": "ORT", "torch": "PyTorch", "trt": "TensorRT", "openvino": "OpenVINO", "executorch": "ExecuTorch"}


def where(backend: str, device: str) -> str:
    """``ORT CPU``, ``PyTorch CUDA``: where a figure was measured, for one-line messages."""
    return f"{_BACKENDS.get(backend, backend)} {device.upper()}"


def _ms(a: float, b: float) -> str:
    """``"8.81 vs 4.59"``: two latencies with the same number of decimals (more for sub-0.1 ms models)."""
    digits = 2 if min(a, b) >= 0.1 else 4
    return f"{a:.{digits}f} vs {b:.{digits}f}"


class BestLatency(BaseModel):
    """One device x batch across runtimes: the parent's fastest runtime and the child's fastest (p50 ms, each the
    median of its interleaved rounds on that runtime); ``ratio = child / parent`` (> 1: the child is slower)."""

    device: str
    batch: int
    parent_backend: str
    parent_p50_ms: float
    child_backend: str
    child_p50_ms: float
    ratio: float

    @property
    def child_faster(self) -> bool:
        return self.child_p50_ms < self.parent_p50_ms


def best_of_runtimes(latency: Sequence[PairLatency]) -> list[BestLatency]:
    """Per (device, batch): the fastest runtime of the parent against the fastest of the child.

    With one backend this is the interleaved pair itself. A deployment picks the runtime that is fastest for the
    model it ships, so a child is judged by its best runtime against its parent's best (not runtime by runtime).
    """
    groups: dict[tuple[str, int], list[PairLatency]] = {}
    for p in latency:
        groups.setdefault((p.device, p.batch), []).append(p)
    out = []
    for (device, batch), pairs in groups.items():
        par = min(pairs, key=lambda p: p.parent_p50_ms)
        ch = min(pairs, key=lambda p: p.child_p50_ms)
        ratio = ch.child_p50_ms / par.parent_p50_ms if par.parent_p50_ms > 0 else math.inf
        out.append(
            BestLatency(
                device=device,
                batch=batch,
                parent_backend=par.backend,
                parent_p50_ms=par.parent_p50_ms,
                child_backend=ch.backend,
                child_p50_ms=ch.child_p50_ms,
                ratio=ratio,
            )
        )
    return out


def _versus(child_ms: float, child_backend: str, parent_ms: float, parent_backend: str, device: str) -> str:
    """``0.02 vs 0.03 ms p50, ORT CPU``, or with two runtimes ``0.02 ms p50 on OpenVINO CPU vs 0.03 ms on ORT CPU``."""
    if child_backend == parent_backend:
        return f"{_ms(child_ms, parent_ms)} ms p50, {where(child_backend, device)}"
    a, b = _ms(child_ms, parent_ms).split(" vs ")
    return f"{a} ms p50 on {where(child_backend, device)} vs {b} ms on {where(parent_backend, device)}"


class HandoffDecision(BaseModel):
    """Whether a compression stage's output is carried forward, and the measurements that decided it.

    Attributes:
        stage: the child (a table row: ``pruned``, ``int8-cpu-x86``, ``fp16``).
        parent: what it was measured against (``student``, ``baseline``, ``pruned``).
        keep: ``auto`` or ``always``.
        target_device: the device the child is for (``cpu``, ``cuda``; None: any, e.g. a pruned FP32 model).
        metric: the validation metric compared; parent_val, child_val: its values; drop_points: how far the
            child is below the parent (x100, positive = worse); max_drop: the budget; within_budget: None when
            the metric is not defined.
        latency: the interleaved comparisons (one per backend x device x batch).
        best: per device x batch, the fastest runtime of each (what decides; :func:`best_of_runtimes`).
        unmeasured: why the child could not be measured on its target (None when it was).
        faster: faster at every measured configuration (None: not measured).
        kept: carried forward; reason: why, in words; line: the one line the run prints.
        parent_artifact, child_artifact: the files compared (relative to the run directory), when known.
    """

    stage: str
    parent: str
    keep: HandoffKeep = HandoffKeep.AUTO
    target_device: str | None = None
    metric: str
    parent_val: float | None = None
    child_val: float | None = None
    drop_points: float | None = None
    max_drop: float
    within_budget: bool | None = None
    latency: list[PairLatency] = Field(default_factory=list)
    best: list[BestLatency] = Field(default_factory=list)
    unmeasured: str | None = None
    faster: bool | None = None
    kept: bool
    reason: str
    line: str
    parent_artifact: str | None = None
    child_artifact: str | None = None

    @property
    def measured(self) -> bool:
        return bool(self.latency)

    def cpu_candidate(self) -> bool:
        """Measured on the CPU, for the CPU (or any device): it may be the CPU hand-off."""
        return self.target_device in (None, "cpu") and any(p.device == "cpu" for p in self.latency)


def _speed_text(parent: str, best: Sequence[BestLatency]) -> tuple[bool, str]:
    """(faster everywhere, the words): the configuration least favourable to the child is named."""
    worst = max(best, key=lambda p: p.ratio)
    faster = all(p.child_faster for p in best)
    vs = _versus(worst.child_p50_ms, worst.child_backend, worst.parent_p50_ms, worst.parent_backend, worst.device)
    at = f"at batch {worst.batch} ({vs})"
    if not faster:
        return False, f"{worst.ratio:.2f}x slower than {parent} {at}"
    every = "at every batch, least " if len(best) > 1 else ""
    return True, f"{1 / worst.ratio:.2f}x faster than {parent} {every}{at}"


def _finite(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


def decide(
    *,
    stage: str,
    parent: str,
    keep: HandoffKeep | str,
    metric: str,
    parent_val: float | None,
    child_val: float | None,
    max_drop: float,
    latency: Sequence[PairLatency] = (),
    unmeasured: str | None = None,
    target_device: str | None = None,
    higher_is_better: bool = True,
) -> HandoffDecision:
    """The hand-off decision for one compression stage (rules in the module docstring).

    Args:
        stage, parent: the child and its parent (names for the line).
        keep: ``auto`` or ``always``.
        metric, parent_val, child_val: the validation metric of both (in [0, 1] for points to mean x100).
        max_drop: the budget, in points.
        latency: the interleaved comparisons; empty when the child could not be measured. With several backends
            the fastest of each side decides per device x batch (:func:`best_of_runtimes`).
        unmeasured: why it could not be measured on its target.
        target_device: the device the child is for.
        higher_is_better: the metric's direction.
    """
    keep = HandoffKeep(keep)
    drop = None
    if _finite(parent_val) and _finite(child_val):
        drop = 100.0 * (parent_val - child_val) * (1.0 if higher_is_better else -1.0)
    within = None if drop is None else drop <= max_drop + 1e-9
    if drop is None:
        acc = f"val {metric} is not defined here"
    elif within:
        acc = f"val {metric} {0.0 - drop:+.2f} points vs {parent}, within the {max_drop:g}-point budget"
    else:
        acc = f"val {metric} {drop:.2f} points below {parent} (budget {max_drop:g})"
    best = best_of_runtimes(latency)
    if latency:
        faster, speed = _speed_text(parent, best)
    else:
        faster = None
        speed = f"cannot be measured on its target: {unmeasured or 'no configuration ran both'}; not a CPU hand-off candidate"
    auto_ok = bool(faster) and bool(within)
    kept = keep is HandoffKeep.ALWAYS or auto_ok
    if keep is HandoffKeep.ALWAYS:
        verdict, reasons = "carried forward (keep: always)", [speed, acc]
    elif kept:
        verdict, reasons = "carried forward", [speed, acc]
    else:  # what failed first, then the rest
        failed = [t for t, ok in ((speed, faster), (acc, within)) if not ok]
        verdict, reasons = "not carried forward", failed + [t for t in (speed, acc) if t not in failed]
    reason = "; ".join(reasons)
    return HandoffDecision(
        stage=stage,
        parent=parent,
        keep=keep,
        target_device=target_device,
        metric=metric,
        parent_val=parent_val,
        child_val=child_val,
        drop_points=drop,
        max_drop=max_drop,
        within_budget=within,
        latency=list(latency),
        best=best,
        unmeasured=None if latency else unmeasured,
        faster=faster,
        kept=kept,
        reason=reason,
        line=f"{stage}: {verdict}: {reason}",
    )


class HandoffTarget(BaseModel):
    """The artifact handed to one deployment target.

    Attributes:
        target: ``cpu-x86``, ``tensorrt``, ... (a quantization target), ``fp16`` (the export's FP16 file) or
            ``fp32`` (the CPU, when no quantization target runs there).
        device: ``cpu`` or ``cuda``.
        stage: the table row handed off; None when nothing could be verified for the target.
        decision: the ``keep-NAME`` stage that decided it (None: no decision, e.g. the chosen student).
        measured: the decision measured the child on this target's device.
        note: one line for the table and the report.
    """

    target: str
    device: str
    stage: str | None = None
    decision: str | None = None
    measured: bool = False
    note: str = ""


class HandoffSummary(BaseModel):
    """``summary.json["handoff"]``: every decision, the hand-off per target, and the final benchmark's re-check."""

    decisions: list[HandoffDecision] = Field(default_factory=list)
    targets: list[HandoffTarget] = Field(default_factory=list)
    recheck: list[str] = Field(default_factory=list)

    def lines(self) -> list[str]:
        return [d.line for d in self.decisions] + list(self.recheck)


def handoff_targets(
    targets: Sequence[tuple[str, str, str]],
    decisions: Mapping[str, HandoffDecision],
    fp32: str,
    fp32_onnx: str | None = None,
) -> list[HandoffTarget]:
    """The hand-off per deployment target (rules in the module docstring).

    Args:
        targets: ``(target, device, child row)`` per quantization target and for the export's FP16 file.
        decisions: by child row.
        fp32: the FP32 row carried forward (``pruned``, or the chosen student).
        fp32_onnx: its FP32 ONNX file when the run exported one (``bundle/model.onnx``), for the notes.
    """
    fp32_note = f"{fp32} (FP32{', ' + fp32_onnx if fp32_onnx else ''})"
    out = []
    for target, device, child in targets:
        d = decisions.get(child)
        if d is None:
            out.append(HandoffTarget(target=target, device=device, note=f"{child}: no hand-off decision recorded"))
            continue
        measured = any(p.device == device for p in d.latency)
        if d.kept:
            file = f" ({d.child_artifact})" if d.child_artifact else ""
            stage, note = child, child + file + ("" if measured else ", keep: always, not measured on its device")
        elif measured:
            stage, note = fp32, f"{fp32_note}: {child} was not carried forward"
        else:
            stage, note = None, f"none verified: {child} could not be measured on {device}"
        out.append(
            HandoffTarget(
                target=target, device=device, stage=stage, decision=KEEP_PREFIX + child, measured=measured, note=note
            )
        )
    if not any(t.device == "cpu" for t in out):
        out.append(HandoffTarget(target="fp32", device="cpu", stage=fp32, measured=True, note=fp32_note))
    return out


def recheck(
    targets: Sequence[HandoffTarget], latency: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], start: str
) -> list[str]:
    """One line per hand-off that the final benchmark shows slower than ``start`` (the chosen student) at any batch.

    Args:
        targets: the hand-offs.
        latency: ``{row: {batch: Latency-like (backend, device, p50_ms)}}`` from the final benchmark (each row's
            fastest runtime at that batch: compared on the same device, across runtimes).
        labels: the table's label of each row.
        start: the row the compression chain started from.
    """
    lines = []
    base = latency.get(start, {})
    for t in targets:
        if t.stage is None or t.stage == start:
            continue
        slower = []
        for batch, lat in latency.get(t.stage, {}).items():
            ref = base.get(batch)
            if ref is None or ref.device != lat.device or ref.p50_ms <= 0:  # each row's fastest runtime
                continue
            if lat.p50_ms > ref.p50_ms:
                slower.append((lat.p50_ms / ref.p50_ms, batch, lat, ref))
        if slower:
            ratio, batch, lat, ref = max(slower, key=lambda s: s[0])
            lines.append(
                f"hand-off for {t.target} ({labels.get(t.stage, t.stage)}) is {ratio:.2f}x slower than "
                f"{labels.get(start, start)} at batch {batch} in the final benchmark "
                f"({_versus(lat.p50_ms, lat.backend, ref.p50_ms, ref.backend, lat.device)})"
            )
    return lines
