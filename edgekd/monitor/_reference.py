"""Reference statistics of a model on its validation data, stored in the model directory for drift checks.

At the end of training (:func:`~edgekd.distill.finish_run`) the model is run once more on the validation split
and ``drift_reference.npz`` is written beside the weights (numpy arrays, read without pickle):

* ``confidence``: the top-1 probability of every validation image (multi-label: the mean over labels of
  ``max(p, 1 - p)``), the sample a two-sample Kolmogorov-Smirnov test compares new data against;
* ``prob_hist``: per class, a histogram of its predicted probability over 10 equal bins of ``[0, 1]`` (the
  expected distribution of the population-stability index);
* ``feat_mean`` and ``feat_precision``: mean and inverse covariance of the *penultimate features* (the input
  of the last linear layer; the logits when there is none), with Ledoit-Wolf shrinkage so that a few hundred
  images give a well-conditioned estimate; features wider than 256 are first projected to 256 dimensions by
  a fixed seeded Gaussian matrix (Johnson-Lindenstrauss), stored as its seed;
* ``ref_d2``: squared Mahalanobis distances of the validation images *out of sample* (two-fold cross-fitting:
  mean and covariance fitted on one half, distances taken on the other), the distribution that new images
  are compared with: in-sample distances would be biased low and flag every new image as far.

``meta`` (JSON) records the data spec, split, image count, task, feature dimension and the weights' sha256,
so a reference is never used with other weights. No image, path or label of the data is stored.

Example:
    >>> ref = compute_reference(model, card.preprocess, bundle.val, card.task, card.spec.num_classes)
    >>> write_reference("runs/student", ref)
"""

from __future__ import annotations

import io
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn
from torch.utils.data import Dataset

from edgekd._io import atomic_write_bytes
from edgekd.data import make_loader
from edgekd.errors import ArtifactError
from edgekd.specs import Preprocess, Task

__all__ = ["Reference", "compute_reference", "write_reference", "read_reference", "model_outputs",
           "REFERENCE_FILE", "BINS"]  # fmt: skip

REFERENCE_FILE = "drift_reference.npz"
BINS = 10
MAX_DIM = 256
_MIN_IMAGES = 8  # fewer validation images give no feature statistics (confidence and PSI still work)


@dataclass
class Reference:
    """Arrays and metadata of a drift reference (see the module docstring)."""

    confidence: np.ndarray
    prob_hist: np.ndarray
    feat_mean: np.ndarray | None
    feat_precision: np.ndarray | None
    ref_d2: np.ndarray | None
    meta: dict[str, Any] = field(default_factory=dict)

    def d2(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances of (raw, unprojected) features to the reference."""
        z = project(features, self.meta.get("projection_seed")) - self.feat_mean
        return np.einsum("nd,de,ne->n", z, self.feat_precision, z)


def project(features: np.ndarray, seed: int | None) -> np.ndarray:
    """Features as float64, projected to :data:`MAX_DIM` dimensions by a seeded Gaussian matrix when wider."""
    x = np.asarray(features, dtype=np.float64)
    if seed is None or x.shape[1] <= MAX_DIM:
        return x
    rng = np.random.default_rng(seed)
    return x @ (rng.standard_normal((x.shape[1], MAX_DIM)) / np.sqrt(MAX_DIM))


def _head(model: nn.Module, classes: int) -> nn.Module | None:
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    return heads[-1] if heads else None


@contextmanager
def _penultimate(model: nn.Module, classes: int):
    """Capture the input of the classifier (a forward pre-hook, always removed)."""
    captured: list[torch.Tensor] = []
    head = _head(model, classes)
    handle = None
    if head is not None:
        handle = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().flatten(1)))
    try:
        yield captured
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def model_outputs(model: nn.Module, preprocess: Preprocess, dataset: Dataset, task: Task, classes: int, *,
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Probabilities ``[N, K]`` and penultimate features ``[N, D]`` of ``model`` (eval mode, restored after).

    The features are the input of the last ``nn.Linear`` with ``classes`` outputs, or the logits without one.
    """
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    probs, feats = [], []
    try:
        for images, _ in make_loader(dataset, batch_size, shuffle=False):
            x = preprocess(images.to(device))
            if p is not None:
                x = x.to(p.dtype)
            with _penultimate(model, classes) as captured:
                logits = model(x).float()
            probs.append((torch.sigmoid(logits) if task is Task.MULTILABEL else torch.softmax(logits, 1)).cpu())
            feats.append((captured[-1] if captured else logits).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(probs).numpy().astype(np.float64), torch.cat(feats).numpy().astype(np.float64)


def confidence_of(probs: np.ndarray, task: Task) -> np.ndarray:
    """Top-1 probability (single-label) or mean ``max(p, 1 - p)`` over labels (multi-label)."""
    if task is Task.MULTILABEL:
        return np.maximum(probs, 1 - probs).mean(1)
    return probs.max(1)


def prob_histograms(probs: np.ndarray) -> np.ndarray:
    """Per class, counts of its probability over :data:`BINS` equal bins of ``[0, 1]``: ``[K, BINS]``."""
    edges = np.linspace(0, 1, BINS + 1)
    return np.stack([np.histogram(np.clip(probs[:, k], 0, 1), edges)[0] for k in range(probs.shape[1])])


def _fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lw = LedoitWolf().fit(x)
    return lw.location_, lw.precision_


def _d2(x: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    z = x - mean
    return np.einsum("nd,de,ne->n", z, precision, z)


def compute_reference(model: nn.Module, preprocess: Preprocess, dataset: Dataset, task: Task, classes: int, *,
                      meta: dict[str, Any] | None = None, seed: int = 0) -> Reference:  # fmt: skip
    """Reference statistics of ``model`` (with ``classes`` outputs) on ``dataset`` (its validation split)."""
    probs, feats = model_outputs(model, preprocess, dataset, task, classes)
    proj_seed = seed if feats.shape[1] > MAX_DIM else None
    x = project(feats, proj_seed)
    mean = precision = ref_d2 = None
    if len(x) >= _MIN_IMAGES:
        order = np.random.default_rng([seed, 3]).permutation(len(x))
        halves = (order[: len(x) // 2], order[len(x) // 2 :])
        ref_d2 = np.empty(len(x))
        for fit_on, test_on in (halves, halves[::-1]):
            m, prec = _fit(x[fit_on])
            ref_d2[test_on] = _d2(x[test_on], m, prec)
        mean, precision = _fit(x)
    info = {**(meta or {}), "images": len(probs), "task": task.value, "feature_dim": int(feats.shape[1]),
            "projection_seed": proj_seed, "bins": BINS, "format": 1}  # fmt: skip
    return Reference(confidence_of(probs, task), prob_histograms(probs), mean, precision, ref_d2, info)


def write_reference(out: str | Path, ref: Reference) -> Path:
    """Write ``ref`` as ``OUT/drift_reference.npz`` atomically."""
    arrays = {"confidence": ref.confidence, "prob_hist": ref.prob_hist, "meta": np.array(json.dumps(ref.meta))}
    if ref.feat_mean is not None:
        arrays.update(feat_mean=ref.feat_mean, feat_precision=ref.feat_precision, ref_d2=ref.ref_d2)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(out) / REFERENCE_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_reference(model_dir: str | Path) -> Reference | None:
    """The reference stored in a model directory, or None when it has none.

    Raises:
        ArtifactError: the file exists but is malformed (exit 4).
    """
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            feats = [z[k] if k in z else None for k in ("feat_mean", "feat_precision", "ref_d2")]
            return Reference(z["confidence"], z["prob_hist"], *feats, meta=meta)
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"cannot read {path} ({type(e).__name__})", "retrain, or pass --reference-data") from None
