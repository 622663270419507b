"""Parity of an ONNX model with its PyTorch reference, run in ONNX Runtime on real or synthetic samples.

Measures, over ``n`` samples and at every checked batch size:

* ``max_abs`` = max |onnx - ref| over all logits;
* ``max_rel`` = ``max_abs`` / max |ref| (relative to the largest reference logit, stable near zero);
* ``top1_agreement`` = share of samples whose arg-max class agrees (multi-label: share of labels whose
  sign, i.e. the 0.5 sigmoid decision, agrees; segmentation: share of *pixels* whose arg-max class agrees);
* ``mask_dice`` (segmentation only) = Dice of the file's argmax masks against the reference's (:func:`mask_dice`).

Tolerances per precision (:data:`TOLERANCES`): FP32 passes with ``max_abs <= 1e-4``; FP16 and INT8 pass
with ``top1_agreement >= 0.99``, their logit error is reported. Segmentation models (:data:`SEG_TOLERANCES`):
FP16 and INT8 need pixel agreement ``>= 0.99`` and mask Dice ``>= 0.98``.

Kernels (``kernels=``): ``native`` runs the model as deployed (ONNX Runtime's optimised graph, whose INT8
kernels depend on the CPU's instruction set, see :mod:`edgekd._cpu`); ``reference`` turns graph optimisation
off, so each QuantizeLinear/DequantizeLinear pair runs as float operations around float convolutions: the
exact integer arithmetic a device without saturation computes. A result records the kernels and the CPU class
it ran on.

Example:
    >>> samples = make_samples(card, data="pneumoniamnist", n=64)
    >>> res = parity_check("model.onnx", model, card, samples=samples.inputs)
    >>> res.passed, res.max_abs < 1e-4, res.batch_sizes
    (True, True, [1, 7])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from edgekd._cpu import cpu_isa
from edgekd.data import load_data
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export._onnx import _prepare
from edgekd.export._types import Precision, onnx_io, static_batch
from edgekd.modeldir import ModelCard
from edgekd.specs import Task

__all__ = [
    "Tolerance",
    "TOLERANCES",
    "SEG_TOLERANCES",
    "default_tolerance",
    "mask_dice",
    "ParityResult",
    "Samples",
    "make_samples",
    "torch_logits",
    "ort_session",
    "run_onnx",
    "parity_check",
    "KERNELS",
]

KERNELS = ("native", "reference")


class Tolerance(BaseModel):
    """Pass criteria: ``max_abs`` (an upper bound) and/or ``min_top1`` (a lower bound on agreement)."""

    model_config = ConfigDict(frozen=True)

    max_abs: float | None = None
    min_top1: float | None = None
    min_dice: float | None = None


TOLERANCES: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(max_abs=1e-4),
    Precision.FP16: Tolerance(min_top1=0.99),
    Precision.INT8: Tolerance(min_top1=0.99),
}
# Segmentation: the masks must agree: pixel agreement of the argmax masks (``top1_agreement``) and the Dice of
# the file's masks against the reference's (foreground classes, pooled over the samples).
SEG_TOLERANCES: dict[Precision, Tolerance] = {
    Precision.FP32: Tolerance(max_abs=1e-4),
    Precision.FP16: Tolerance(min_top1=0.99, min_dice=0.98),
    Precision.INT8: Tolerance(min_top1=0.99, min_dice=0.98),
}


def default_tolerance(precision: Precision, task: Task) -> Tolerance:
    """The pass criteria of a file of ``precision`` for a model of ``task``."""
    table = SEG_TOLERANCES if task is Task.SEGMENTATION else TOLERANCES
    return table[Precision(precision)]


def mask_dice(out: np.ndarray, ref: np.ndarray) -> float:
    """Mean Dice over foreground classes of the argmax masks of ``out`` vs ``ref`` (``[N, K, H, W]`` logits),
    each class pooled over all samples: ``2 |A & B| / (|A| + |B|)``; a class absent from both is left out
    (1.0 when every foreground class is)."""
    a, b = out.argmax(axis=1), ref.argmax(axis=1)
    scores = []
    for k in range(1, out.shape[1]):
        ak, bk = a == k, b == k
        total = int(ak.sum()) + int(bk.sum())
        if total:
            scores.append(2.0 * int((ak & bk).sum()) / total)
    return float(np.mean(scores)) if scores else 1.0


class ParityResult(BaseModel):
    """One parity check of one model file (stored in the manifest)."""

    file: str
    precision: Precision
    n: int
    batch_sizes: list[int]
    max_abs: float
    max_rel: float
    mean_abs: float
    top1_agreement: float
    tolerance: Tolerance
    passed: bool
    mask_dice: float | None = None  # segmentation: Dice of this file's masks against the reference's
    samples: str = ""
    reference: str = "pytorch"
    kernels: str = "native"
    isa: str = ""

    def summary(self) -> str:
        """One line: file, precision, verdict and the numbers."""
        verdict = "passed" if self.passed else "FAILED"
        where = f" on {self.isa}" if self.isa and self.kernels == "native" else ""
        kernels = " (reference kernels)" if self.kernels == "reference" else where
        dice = f" mask_dice={self.mask_dice:.4f}" if self.mask_dice is not None else ""
        return (
            f"parity {verdict}: {self.file} [{self.precision.value}]{kernels} max_abs={self.max_abs:.2e} "
            f"max_rel={self.max_rel:.2e} {'pixels' if self.mask_dice is not None else 'top1'}={self.top1_agreement:.4f}"
            f"{dice} n={self.n} "
            f"batches={self.batch_sizes} tolerance={self.tolerance.model_dump(exclude_none=True)}"
        )


@dataclass(frozen=True)
class Samples:
    """Preprocessed model inputs (float32 NCHW), their targets when known and where they came from."""

    inputs: np.ndarray
    source: str
    targets: np.ndarray | None = None


def _data_samples(card: ModelCard, spec: str, n: int, split: str) -> Samples:

    bundle = load_data(spec)
    ds = bundle.split(split)
    if len(ds) == 0:
        ds, split = bundle.split("train"), "train"
    if bundle.channels != card.preprocess.data_channels:
        raise InvalidInputError(
            f"data {spec!r} has {bundle.channels} channels, the model reads {card.preprocess.data_channels}",
            "pass the data the model was trained on with --data",
        )
    idx = np.unique(np.linspace(0, len(ds) - 1, num=min(n, len(ds))).astype(int))
    items = [ds[int(i)] for i in idx]
    images = np.stack([np.asarray(img) for img, _ in items]).astype(np.uint8)
    targets = np.stack([np.asarray(t) for _, t in items])
    return Samples(card.preprocess.numpy(images), f"{bundle.spec} [{split}, {len(idx)} samples]", targets)


def _synthetic_samples(card: ModelCard, n: int, seed: int, why: str) -> Samples:
    pre = card.preprocess
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, pre.data_channels, *pre.input_size), dtype=np.uint8)
    return Samples(pre.numpy(images), f"synthetic uniform uint8 images ({n}, seed {seed}): {why}")


def make_samples(
    card: ModelCard, data: str | None = None, *, n: int = 64, split: str = "test", seed: int = 0
) -> Samples:
    """Preprocessed samples for parity checks: from ``data``, else the card's training data, else synthetic.

    Args:
        card: the model card (its preprocessing is applied; its lineage names the training data).
        data: a data spec; when given it must load. When omitted the lineage data is tried and, if it
            cannot be loaded (e.g. a dataset that is not downloaded), synthetic images are used and the
            reason is recorded in ``Samples.source``.
        n: number of samples (spread evenly over the split).
        split: the split to sample.
        seed: seed of synthetic images.
    """
    if n < 1:
        raise InvalidInputError(f"the number of parity samples must be >= 1, got {n}")
    if data:
        return _data_samples(card, data, n, split)
    spec = card.lineage.data
    if not spec:
        return _synthetic_samples(card, n, seed, "no data given and none recorded in the model card")
    try:
        return _data_samples(card, spec, n, split)
    except Exception as e:  # any failure to load the recorded data falls back to synthetic, with its reason
        return _synthetic_samples(card, n, seed, f"recorded data {spec!r} unavailable ({str(e).splitlines()[0]})")


@torch.no_grad()
def torch_logits(model: nn.Module, inputs: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Float32 CPU logits of ``model`` (eval mode) for preprocessed ``inputs``."""
    net = _prepare(model)
    outs = [
        net(torch.from_numpy(inputs[i : i + batch_size])).float().numpy() for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


def ort_session(path: str | os.PathLike, *, threads: int = 2, kernels: str = "native"):
    """A CPU ONNX Runtime session (few threads: parity runs beside other work).

    ``kernels="reference"`` disables graph optimisation: Q/DQ nodes run as float operations (exact integer
    semantics, independent of the CPU's INT8 instructions) instead of being fused into INT8 kernels.
    """
    import onnxruntime as ort

    if kernels not in KERNELS:
        raise InvalidInputError(f"unknown kernels {kernels!r}", f"use one of {', '.join(KERNELS)}")
    opts = ort.SessionOptions()
    if kernels == "reference":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from e


def run_onnx(session, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``inputs`` through ``session`` in chunks of ``batch_size``; returns the first output as float32."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def _agreement(out: np.ndarray, ref: np.ndarray, task: Task) -> float:
    if task is Task.MULTILABEL:
        return float(((out > 0) == (ref > 0)).mean())
    return float((out.argmax(axis=1) == ref.argmax(axis=1)).mean())


def _passes(tol: Tolerance, max_abs: float, top1: float, dice: float | None = None) -> bool:
    ok = bool(np.isfinite(max_abs))
    if tol.min_dice is not None:
        ok = ok and dice is not None and dice >= tol.min_dice
    if tol.max_abs is not None:
        ok = ok and max_abs <= tol.max_abs
    if tol.min_top1 is not None:
        ok = ok and top1 >= tol.min_top1
    return ok


def _batches_for(path: str | os.PathLike, batch_sizes: Sequence[int]) -> tuple[list[int], bool]:
    """The batch sizes to run and whether the model's batch is static."""
    fixed = static_batch(onnx_io(path)[0][0])
    if fixed is not None:
        return [fixed], True
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise InvalidInputError(f"parity batch sizes must be >= 1, got {list(batch_sizes)}")
    return sizes, False


def _fit_to_batch(x: np.ndarray, ref: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A static-batch model runs whole batches only: repeat samples up to a multiple of ``batch``."""
    n = max(batch, int(np.ceil(len(x) / batch)) * batch)
    idx = np.arange(n) % len(x)
    return x[idx], ref[idx]


@dataclass
class Comparison:
    """A runtime's outputs compared with the reference logits over the batch sizes tried: the running figures of a
    :class:`ParityResult` (:func:`parity_check` for ONNX Runtime, ``runtime_parity`` for OpenVINO and ExecuTorch)."""

    task: Task
    max_abs: float = 0.0
    sum_abs: float = 0.0
    count: int = 0
    top1: float = 1.0
    dice: float | None = None  # segmentation: the lowest mask Dice over the batch sizes

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        diff = np.abs(out - ref)
        self.max_abs = max(self.max_abs, float(diff.max()) if diff.size else 0.0)
        self.sum_abs, self.count = self.sum_abs + float(diff.sum()), self.count + diff.size
        self.top1 = min(self.top1, _agreement(out, ref, self.task))
        if self.task is Task.SEGMENTATION:
            d = mask_dice(out, ref)
            self.dice = d if self.dice is None else min(self.dice, d)

    def result(
        self,
        *,
        file: str,
        precision: Precision,
        n: int,
        batch_sizes: list[int],
        ref: np.ndarray,
        tolerance: Tolerance | None,
        sample_source: str,
        reference: str,
        kernels: str,
    ) -> ParityResult:
        tol = tolerance or default_tolerance(precision, self.task)
        scale = float(np.abs(ref).max()) or 1.0
        return ParityResult(
            file=file,
            precision=precision,
            n=n,
            batch_sizes=batch_sizes,
            max_abs=self.max_abs,
            max_rel=self.max_abs / scale,
            mean_abs=self.sum_abs / max(self.count, 1),
            top1_agreement=self.top1,
            tolerance=tol,
            passed=_passes(tol, self.max_abs, self.top1, self.dice),
            mask_dice=self.dice,
            samples=sample_source,
            reference=reference,
            kernels=kernels,
            isa=cpu_isa().isa,
        )


def parity_check(
    onnx_path: str | os.PathLike,
    model: nn.Module | None,
    card: ModelCard,
    *,
    samples: np.ndarray | None = None,
    precision: Precision = Precision.FP32,
    reference_logits: np.ndarray | None = None,
    batch_sizes: Sequence[int] = (1, 7),
    tolerance: Tolerance | None = None,
    sample_source: str = "",
    kernels: str = "native",
) -> ParityResult:
    """Compare an ONNX model in ONNX Runtime (CPU) with the PyTorch model or stored reference logits.

    Args:
        onnx_path: the ONNX file.
        model: the PyTorch reference; may be ``None`` when ``reference_logits`` is given.
        card: the model card (task and preprocessing).
        samples: preprocessed float32 inputs ``[N, C, H, W]``; default 64 from :func:`make_samples`.
        precision: the file's precision; picks the tolerance from :data:`TOLERANCES`.
        reference_logits: logits of the reference for ``samples`` (skips running ``model``).
        batch_sizes: batch sizes to run (a static-batch model runs at its own batch size only).
        tolerance: override of the precision's tolerance.
        sample_source: where the samples came from, recorded in the result.
        kernels: ``native`` (as deployed on this CPU) or ``reference`` (exact Q/DQ arithmetic).

    Returns:
        A :class:`ParityResult`; the caller decides whether a failure is fatal.

    Raises:
        InvalidInputError: neither a model nor reference logits, or mismatched shapes.
        ArtifactError: ONNX Runtime cannot load the file.
    """
    precision = Precision(precision)
    if samples is None:
        made = make_samples(card)
        samples, sample_source = made.inputs, sample_source or made.source
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    ref_kind = "pytorch" if reference_logits is None else "reference logits"
    if reference_logits is None:
        if model is None:
            raise InvalidInputError("parity_check needs a PyTorch model or reference logits")
        reference_logits = torch_logits(model, samples)
    ref = np.asarray(reference_logits, dtype=np.float32)
    if len(ref) != len(samples):
        raise InvalidInputError(f"{len(ref)} reference logits for {len(samples)} samples")
    session = ort_session(onnx_path, kernels=kernels)
    sizes, fixed = _batches_for(onnx_path, batch_sizes)
    cmp = Comparison(card.task)
    for b in sizes:
        x, r = _fit_to_batch(samples, ref, b) if fixed else (samples, ref)
        out = run_onnx(session, x, b)
        if out.shape != r.shape:
            raise InvalidInputError(f"ONNX output shape {out.shape} differs from the reference {r.shape}")
        cmp.add(out, r)
    return cmp.result(
        file=os.path.basename(str(onnx_path)),
        precision=precision,
        n=len(samples),
        batch_sizes=sizes,
        ref=ref,
        tolerance=tolerance,
        sample_source=sample_source,
        reference=ref_kind,
        kernels=kernels,
    )
