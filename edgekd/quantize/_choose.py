"""Choosing the INT8 scheme of a target by measurement: parity with the real kernels first, then latency.

For a target that this CPU runs natively (``cpu-x86`` resolved here, ``cpu-x86-avx2`` on an AVX2 machine)
every candidate scheme of the target (:func:`~edgekd.quantize._targets.candidates`) is quantized with the same
calibration ranges (computed once, cached), checked for parity against the FP32 reference with ONNX Runtime's
*native* kernels, and the ones that pass are timed beside the FP32 file at each batch size, in alternating
order over two rounds (same threads, same state); the fastest by geometric mean over the batches wins. Schemes
exact by construction on the device (``safe_elsewhere``) come first: one that saturates depending on the data
(S8S8 on AVX2) is timed and recorded, but taken only when none of them passes.

For a target of another device (``cpu-x86-vnni`` built on an AVX2 machine, ``cpu-arm``, ``tensorrt``) only
the schemes exact by construction on that device are tried, parity uses *reference* kernels (exact Q/DQ
arithmetic), nothing is timed (this CPU's speed says nothing about the device's) and the first passing scheme
in the target's order of preference is taken; the record says it still needs checking on the device.

When no scheme passes, the error names the real cause: the same file passing with reference kernels means
this CPU's INT8 instructions overflow (rebuild for this CPU's target, or keep the overflowing layers in FP32
with ``--sensitivity``); failing there too means the model itself loses accuracy in INT8 (calibration,
sensitivity, QAT).

Example:
    >>> dst, record = choose_scheme(pre, work, resolve_target("cpu-x86"), reader, x=x, ref=ref, card=card,
    ...                             latency=onnx_latency_ms, fp32=work / "model.onnx")
    >>> record["chosen"], [t["scheme"] for t in record["trials"]]
    ('u8s8-rr', ['u8s8-rr', 'u8u8', 's8s8'])
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgekd._cpu import cpu_isa
from edgekd.errors import VerificationError
from edgekd.export import ParityResult, Precision, parity_check
from edgekd.modeldir import ModelCard
from edgekd.quantize._ptq import Calibration, quantize_onnx
from edgekd.quantize._targets import QuantScheme, QuantTarget, candidates, native_on, target_for_isa
from edgekd.specs import Task

__all__ = ["OnnxLatencyFn", "choose_scheme", "kernels_for", "LATENCY_BATCHES"]

LATENCY_BATCHES = (1, 32)
LATENCY_SECONDS = 0.5  # per file, batch and round: a scheme choice costs seconds, not minutes

# ``(paths, *, batch, seconds) -> [(median ms of one batch, threads)]``: edgekd.bench.onnx_latency_ms
OnnxLatencyFn = Callable[..., list[tuple[float, int]]]


def kernels_for(target: QuantTarget) -> str:
    """``native`` when this CPU runs ``target``'s kernels, else ``reference``."""
    return "native" if native_on(target) else "reference"


def _timings(paths: Sequence[Path], latency: OnnxLatencyFn, batches: Sequence[int]) -> list[dict[int, float]]:
    """Median ms of each file at each batch over two rounds in alternating order."""
    samples: list[dict[int, list[float]]] = [{b: [] for b in batches} for _ in paths]
    for rnd in range(2):
        order = list(range(len(paths)))[:: 1 if rnd == 0 else -1]
        for b in batches:
            res = latency([paths[i] for i in order], batch=b, seconds=LATENCY_SECONDS)
            for i, (ms, _) in zip(order, res):
                samples[i][b].append(ms)
    return [{b: float(np.median(v)) for b, v in s.items()} for s in samples]


def _geomean(ms: dict[int, float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-9)) for v in ms.values()) / len(ms))


def _diagnose(
    failed: ParityResult,
    dst: Path,
    card: ModelCard,
    x: np.ndarray,
    ref: np.ndarray,
    target: QuantTarget,
    tried: list[dict[str, Any]],
) -> VerificationError:
    """The error when no scheme passed, naming the cause (kernel overflow, or INT8 itself)."""
    seg = card.task is Task.SEGMENTATION  # masks: pixel agreement and mask Dice, not top-1 labels
    what = "pixels" if seg else "top-1"
    scores = ", ".join(
        f"{t['scheme']} {what} {t['parity']['top1_agreement']:.3f}"
        + (f" mask Dice {t['parity']['mask_dice']:.3f}" if seg and t["parity"].get("mask_dice") is not None else "")
        for t in tried
    )
    isa = cpu_isa().isa
    if failed.kernels == "native":
        exact = parity_check(
            dst, None, card, samples=x, reference_logits=ref, precision=Precision.INT8, kernels="reference"
        )
        if exact.passed:
            own = target_for_isa(isa)
            fix = f"--target {own} (this CPU's)" if own and own != target.name else "another target"
            return VerificationError(
                f"no INT8 scheme of {target.name} keeps parity with ONNX Runtime's kernels on this {isa} CPU "
                f"({scores}), though exact integer arithmetic does (top-1 {exact.top1_agreement:.3f}): the "
                f"CPU's INT8 instructions overflow",
                f"quantize with {fix}, or keep the overflowing layers in FP32 with --sensitivity",
            )
    return VerificationError(
        f"no INT8 scheme of {target.name} keeps {'mask' if seg else 'top-1'} parity "
        f">= {failed.tolerance.min_top1}{f' / Dice >= {failed.tolerance.min_dice}' if seg else ''} ({scores}, "
        f"{failed.kernels} kernels): the model itself loses accuracy in INT8",
        "try --calibration entropy or percentile, --sensitivity (keeps sensitive layers FP32), or --method qat",
    )


def choose_scheme(
    pre: Path,
    work: Path,
    target: QuantTarget,
    reader,
    *,
    x: np.ndarray,
    ref: np.ndarray,
    card: ModelCard,
    calibration: Calibration | str = Calibration.MINMAX,
    latency: OnnxLatencyFn | None = None,
    fp32: Path | None = None,
    batches: Sequence[int] = LATENCY_BATCHES,
    strict: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Quantize ``pre`` with each candidate scheme of ``target``; keep the fastest that passes parity.

    Args:
        pre: the pre-processed FP32 model.
        work: scratch directory (the chosen file is ``work/model.int8.onnx``).
        target: the concrete target (:func:`~edgekd.quantize._targets.resolve_target`).
        reader: calibration data reader.
        x, ref: parity inputs and the reference logits for them.
        card: the model card (task).
        calibration: calibration method.
        latency: times ONNX files (``edgekd.bench.onnx_latency_ms``); None: the first passing scheme is taken.
        fp32: the FP32 file timed beside the candidates (recorded for comparison).
        batches: batch sizes timed.
        strict: raise when no scheme passes (else return the default scheme's file, for a sensitivity search).

    Returns:
        The chosen file and a record: ``target``, ``kernels``, ``isa``, ``trials`` (scheme, parity, latency),
        ``chosen``, ``reason``.

    Raises:
        VerificationError: no candidate passes parity (exit 6), with the cause.
    """
    kernels = kernels_for(target)
    cache, dst = work / "ranges.json", work / "model.int8.onnx"
    trials: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    schemes: list[QuantScheme] = candidates(target)
    for scheme in schemes:
        path = quantize_onnx(
            pre, work / f"model.{scheme.name}.onnx", scheme, reader, calibration=calibration, cache=cache
        )
        res = parity_check(path, None, card, samples=x, reference_logits=ref, precision=Precision.INT8, kernels=kernels)
        trials.append({"scheme": scheme.name, "parity": res.model_dump(mode="json"), "passed": res.passed})
        files[scheme.name] = path
        if res.passed and (kernels == "reference" or latency is None):
            break  # nothing to time here: the first passing scheme in the target's order
    passing = [t for t in trials if t["passed"]]
    record: dict[str, Any] = {"target": target.name, "kernels": kernels, "isa": cpu_isa().isa, "trials": trials}
    if not passing:
        if strict:
            last = ParityResult.model_validate(trials[-1]["parity"])
            raise _diagnose(last, files[trials[-1]["scheme"]], card, x, ref, target, trials)
        shutil.copyfile(files[schemes[0].name], dst)
        return dst, {**record, "chosen": schemes[0].name, "reason": "no scheme passed parity alone"}
    # Schemes exact by construction on the device win over ones that passed on these samples only (S8S8 on AVX2
    # saturates depending on the data): the others are taken only when no exact one passes.
    exact = [t for t in passing if t["scheme"] in target.safe_elsewhere]
    pool = exact or passing
    if len(passing) > 1 and latency is not None:
        # Every passing scheme is timed (the record shows what the data-dependent ones would have given).
        timed = [files[t["scheme"]] for t in passing] + ([fp32] if fp32 is not None else [])
        ms = _timings(timed, latency, batches)
        speed = {t["scheme"]: _geomean(m) for t, m in zip(passing, ms)}
        for t, m in zip(passing, ms):
            t["latency_ms"] = {str(b): v for b, v in m.items()}
        if fp32 is not None:
            record["fp32_latency_ms"] = {str(b): v for b, v in ms[-1].items()}
        chosen = min((t["scheme"] for t in pool), key=speed.__getitem__)
        timings = ", ".join(f"{name} {v:.3f} ms" for name, v in speed.items())
        reason = (
            f"fastest {'exact-by-construction ' if exact else ''}scheme passing parity on this {record['isa']} "
            f"CPU (geometric mean p50 over batches {list(batches)}: {timings})"
        )
        faster = [n for n in speed if n not in {t["scheme"] for t in pool} and speed[n] < speed[chosen]]
        if faster:
            reason += f"; {', '.join(faster)} ran faster but can saturate on inputs beyond the parity samples"
    else:
        chosen = pool[0]["scheme"]
        reason = "the only candidate" if len(schemes) == 1 else "first passing scheme in the target's order"
        if kernels == "reference":
            reason += f"; checked with reference kernels (this CPU is {record['isa']}): verify on the device"
    shutil.copyfile(files[chosen], dst)
    return dst, {**record, "chosen": chosen, "reason": reason}
