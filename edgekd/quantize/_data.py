"""Model inputs for quantization: calibration readers and evaluation through ONNX Runtime.

Every array here is what the ONNX model takes: the model's own :class:`~edgekd.data.preprocess.Preprocess`
applied to the raw ``uint8`` images (float32 NCHW), so calibration, parity and evaluation see exactly the
inputs the deployed model will.

Example:
    >>> x, y = split_inputs(data, "train", card.preprocess, n=256, seed=0)
    >>> reader = CalibrationReader(x, batch_size=32)
    >>> metrics = evaluate_onnx("model.int8.onnx", data, "test", card.preprocess)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader

from edgekd.data import DataBundle, make_loader
from edgekd.errors import InvalidInputError
from edgekd.export import ort_session, run_onnx
from edgekd.metrics import compute_metrics
from edgekd.specs import Preprocess

__all__ = ["split_inputs", "iterate_split", "CalibrationReader", "evaluate_onnx", "onnx_logits"]


def split_inputs(
    data: DataBundle, split: str, preprocess: Preprocess, *, n: int | None = None, seed: int = 0, spread: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` preprocessed samples of a split (all when ``n`` is None) and their targets.

    Args:
        data: the data bundle.
        split: ``train``, ``val`` or ``test``.
        preprocess: the model's preprocessing.
        n: how many samples; a seeded random subset, or evenly spaced ones with ``spread``.
        seed: seed of the random subset.
        spread: take evenly spaced samples (deterministic, covers the split) instead of a random subset.
    """
    ds = data.split(split)
    total = len(ds)
    if n is not None and n < 1:
        raise InvalidInputError(f"the number of samples must be >= 1, got {n}")
    if n is None or n >= total:
        idx = np.arange(total)
    elif spread:
        idx = np.linspace(0, total - 1, n).round().astype(int)
    else:
        idx = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    items = [ds[int(i)] for i in idx]
    images = torch.stack([torch.as_tensor(img) for img, _ in items])
    targets = np.stack([np.asarray(t) for _, t in items])
    return preprocess(images).numpy().astype(np.float32), targets


def iterate_split(
    data: DataBundle, split: str, preprocess: Preprocess, *, batch_size: int = 256
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Preprocessed ``(inputs, targets)`` batches of a whole split, in order."""
    for batch in make_loader(data.split(split), batch_size, shuffle=False):
        yield preprocess(batch[0]).numpy().astype(np.float32), batch[1].numpy()


class CalibrationReader(CalibrationDataReader):
    """An ONNX Runtime calibration reader over preprocessed inputs, in batches.

    Args:
        inputs: float32 ``[N, C, H, W]``.
        batch_size: samples per calibration batch.
        input_name: the model's input name.
    """

    def __init__(self, inputs: np.ndarray, *, batch_size: int = 32, input_name: str = "input") -> None:
        self.inputs, self.batch_size, self.input_name = inputs, batch_size, input_name
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.inputs):
            return None
        chunk = self.inputs[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: chunk}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.inputs = self.inputs[start_index:end_index]
        self._next = 0


def onnx_logits(session, inputs: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Logits of an ONNX Runtime session for preprocessed inputs, in batches."""
    return run_onnx(session, np.ascontiguousarray(inputs, dtype=np.float32), batch_size)


def evaluate_onnx(
    path: str | os.PathLike,
    data: DataBundle,
    split: str,
    preprocess: Preprocess,
    *,
    batch_size: int = 256,
    threads: int = 2,
) -> dict:
    """Metrics (as `edgekd eval` reports them) of an ONNX model run in ONNX Runtime on a whole split."""
    session = ort_session(path, threads=threads)
    logits, targets = [], []
    for x, y in iterate_split(data, split, preprocess, batch_size=batch_size):
        logits.append(onnx_logits(session, x, batch_size=batch_size))
        targets.append(y)
    return compute_metrics(np.concatenate(logits), np.concatenate(targets), data.task)
