"""Reference statistics of a model on its validation data, stored in the model directory for drift checks.

At the end of training (:func:`~edgekd.distill.finish_run`) the model is run once more on the validation split
and ``drift_reference.npz`` is written beside the weights (numpy arrays, read without pickle):

* ``confidence``: the top-1 probability of every validation image (multi-label: the mean over labels of
  ``max(p, 1 - p)``), the sample a two-sample Kolmogorov-Smirnov test compares new data against;
* ``prob_hist``: per class, a histogram of its predicted probability over 10 equal bins of ``[0, 1]`` (the
  expected distribution of the population-stability index);
* two Gaussian references, each a mean, an inverse covariance (Ledoit-Wolf shrinkage, so that a few thousand
  images give a well-conditioned estimate) and the *held-out* squared Mahalanobis distances of the validation
  images to that very Gaussian:

  - ``features``: the *penultimate features* (the input of the last linear layer; the logits when there is
    none): what the model sees. Features wider than 256 are first projected to 256 dimensions by a fixed
    seeded Gaussian matrix (Johnson-Lindenstrauss), stored as its seed;
  - ``image``: 13 *image statistics* of the model's input (at its input size, on the ``[0, 1]`` scale, channels
    averaged): mean, standard deviation, the 1/5/25/50/75/95/99th percentiles, mean absolute horizontal and
    vertical differences, and the standard deviation and mean absolute value of the Laplacian: the contrast,
    sharpness and noise that a scanner, protocol or site changes, which a well-trained network's features are
    built to ignore (measured: on PneumoniaMNIST with another scanner's contrast, blur and noise, 22 % of the
    shifted images are far out in penultimate-feature space, 100 % in image statistics).

**Fit on train, calibrate on validation.** The mean and covariance are fitted on the *training* split (at most
:data:`MAX_FIT_IMAGES`, a seeded draw) and the distances kept for calibration are those of the *validation*
images, which neither the network nor the Gaussian has seen: the quantiles an image is compared with are then
those of the Gaussian that is deployed, measured out of sample. Distances of the images a Gaussian was fitted
on are biased low (Gaussian data, sample covariance of ``n`` images in ``d`` dimensions: the mean out-of-sample
distance is ``(n + 1) / (n - d - 2)`` times the in-sample one, 1.15 for 524 images and 64 features, and more in
the tail where a threshold sits), so a threshold taken from them flags more than its share of new images.
Without a training split (a library call with one dataset) the fallback is two-fold cross-fitting on the
validation images (fitted on one half, measured on the other), then a fit on all of them.

**One calibrated score** (:func:`ood_levels`). The two spaces are combined into one score,
``s = max_space d2_space / q_space`` (each space's squared distance over its 99.5th validation percentile), whose
own quantile is taken on the same validation images: an image is out of distribution when ``s`` exceeds its
99.5th percentile (:data:`OOD_QUANTILE`), so about 0.5 % of in-distribution images are flagged *in all*.
Flagging each space at its own 99.5th percentile and OR-ing the two flags would flag up to twice that
(about 1 % when the spaces are nearly independent). With ``n`` validation images the calibrated rate is itself
uncertain: the exceedance probability of the ``k``-th largest of ``n`` is ``Beta(k, n + 1 - k)``; for
``n = 524`` the 99.5th percentile sits at a rate of 0.5 % with a 95 % upper bound near 1.3 %.

``meta`` (JSON) records the data spec, split, image count, task, feature dimension and the weights' sha256,
so a reference is never used with other weights. No image, path or label of the data is stored. A
validation split of fewer than :data:`MIN_IMAGES` (100) images gives no Gaussian references: `edgekd drift`
then needs ``--reference-data`` with a larger split.

Example:
    >>> ref = compute_reference(model, card.preprocess, bundle.val, card.task, card.spec.num_classes,
    ...                         fit_on=bundle.train)
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
import torch.nn.functional as F
from sklearn.covariance import LedoitWolf
from torch import nn
from torch.utils.data import Dataset, Subset

from edgekd._io import atomic_write_bytes
from edgekd.data import make_loader
from edgekd.errors import ArtifactError
from edgekd.specs import Preprocess, Task

__all__ = [
    "Reference",
    "Gaussian",
    "Outputs",
    "compute_reference",
    "write_reference",
    "read_reference",
    "model_outputs",
    "image_probabilities",
    "logits_and_features",
    "image_statistics",
    "unit_image_statistics",
    "reference_from_outputs",
    "ood_levels",
    "fit_subset",
    "REFERENCE_FILE",
    "BINS",
    "SPACES",
    "IMAGE_STATISTICS",
    "OOD_QUANTILE",
    "MAX_FIT_IMAGES",
]

REFERENCE_FILE = "drift_reference.npz"
FORMAT = 2
BINS = 10
MAX_DIM = 256
SPACES = ("features", "image")
IMAGE_STATISTICS = (
    "mean",
    "std",
    "p1",
    "p5",
    "p25",
    "p50",
    "p75",
    "p95",
    "p99",
    "abs_dx",
    "abs_dy",
    "laplacian_std",
    "laplacian_abs",
)
# Fewer validation images give no Gaussian references (confidence and PSI are still stored): a 99.5th
# percentile and a 13-dimensional covariance need a few hundred images; below 100 they are noise.
MIN_IMAGES = 100
# A single image is out of distribution beyond this quantile of the reference's combined, held-out score
# (all spaces together: about 0.5 % of in-distribution images are flagged).
OOD_QUANTILE = 0.995
# The Gaussians are fitted on at most this many training images (a seeded draw): a 256-dimensional covariance
# is well estimated from a few thousand, and a large training split is not run through the model again.
MAX_FIT_IMAGES = 5000


@dataclass
class Gaussian:
    """Mean and precision of one feature space, and the out-of-sample distances of the reference images."""

    mean: np.ndarray
    precision: np.ndarray
    ref_d2: np.ndarray

    def d2(self, x: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances of rows of ``x`` to the mean."""
        z = np.asarray(x, dtype=np.float64) - self.mean
        return np.einsum("nd,de,ne->n", z, self.precision, z)

    @classmethod
    def fit(cls, x: np.ndarray, seed: int = 0, *, held_out: np.ndarray | None = None) -> Gaussian:
        """Ledoit-Wolf fit on the rows of ``x``; the reference distances are those of ``held_out`` under this fit.

        Without ``held_out`` rows they come from two-fold cross-fitting on ``x`` (see the module docstring).
        """
        lw = LedoitWolf().fit(x)
        g = cls(lw.location_, lw.precision_, np.zeros(0))
        if held_out is not None:
            g.ref_d2 = g.d2(held_out)
            return g
        order = np.random.default_rng([seed, 3]).permutation(len(x))
        halves = (order[: len(x) // 2], order[len(x) // 2 :])
        g.ref_d2 = np.empty(len(x))
        for fit_on, test_on in (halves, halves[::-1]):
            half = LedoitWolf().fit(x[fit_on])
            g.ref_d2[test_on] = cls(half.location_, half.precision_, np.zeros(0)).d2(x[test_on])
        return g


@dataclass
class Reference:
    """Arrays and metadata of a drift reference (see the module docstring)."""

    confidence: np.ndarray
    prob_hist: np.ndarray
    spaces: dict[str, Gaussian] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def d2(self, space: str, x: np.ndarray) -> np.ndarray:
        """Distances in ``space`` (``features`` are projected as the reference's were)."""
        if space == "features":
            x = project(x, self.meta.get("projection_seed"))
        return self.spaces[space].d2(x)


@dataclass
class Outputs:
    """What the model gives on a dataset: probabilities ``[N, K]``, penultimate features, image statistics."""

    probs: np.ndarray
    features: np.ndarray
    image: np.ndarray

    def space(self, name: str) -> np.ndarray:
        return self.features if name == "features" else self.image


def project(features: np.ndarray, seed: int | None) -> np.ndarray:
    """Features as float64, projected to :data:`MAX_DIM` dimensions by a seeded Gaussian matrix when wider."""
    x = np.asarray(features, dtype=np.float64)
    if seed is None or x.shape[1] <= MAX_DIM:
        return x
    rng = np.random.default_rng(seed)
    return x @ (rng.standard_normal((x.shape[1], MAX_DIM)) / np.sqrt(MAX_DIM))


def _head(model: nn.Module, classes: int, dense: bool = False) -> nn.Module | None:
    if dense:  # a segmenter's classifier: the last convolution with one output channel per class
        heads = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == classes]
    else:
        heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    return heads[-1] if heads else None


def _pooled(t: torch.Tensor, dense: bool) -> torch.Tensor:
    """Per-image features: a dense map ``[N, C, H, W]`` averaged over its pixels, else flattened."""
    return t.detach().mean((2, 3)) if dense and t.ndim == 4 else t.detach().flatten(1)


def image_probabilities(logits: torch.Tensor, task: Task) -> torch.Tensor:
    """``[N, K]`` probabilities per image. Segmentation: the per-pixel softmax averaged over the pixels (each
    class's expected share of the image), so drift is watched on what the masks cover; multi-label: sigmoid;
    otherwise softmax."""
    if task is Task.SEGMENTATION:
        return torch.softmax(logits, 1).mean((2, 3))
    return torch.sigmoid(logits) if task is Task.MULTILABEL else torch.softmax(logits, 1)


@contextmanager
def _penultimate(model: nn.Module, classes: int, dense: bool = False):
    """Capture the input of the classifier (a forward pre-hook, always removed); for a segmenter (``dense``)
    the input of its last class convolution, averaged over the pixels."""
    captured: list[torch.Tensor] = []
    head = _head(model, classes, dense)
    handle = None
    if head is not None:
        handle = head.register_forward_pre_hook(lambda _m, args: captured.append(_pooled(args[0], dense)))
    try:
        yield captured
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def logits_and_features(model: nn.Module, x: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and penultimate features (the classifier's input; the logits without one) of a preprocessed batch."""
    with _penultimate(model, classes) as captured:
        logits = model(x).float()
    return logits, (captured[-1] if captured else logits).float()


_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def image_statistics(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The :data:`IMAGE_STATISTICS` of a uint8 batch ``[N, C, H, W]`` at ``size`` (``float64 [N, 13]``)."""
    x = images.double().div(255).mean(1, keepdim=True)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return unit_image_statistics(x)


def unit_image_statistics(x: torch.Tensor) -> torch.Tensor:
    """The :data:`IMAGE_STATISTICS` of images already at the model's input size on the ``[0, 1]`` scale
    (``[N, C, H, W]``, channels averaged): what ``edgekd serve`` computes from a preprocessed tensor after undoing
    its normalisation (resizing and averaging channels commute, so this equals :func:`image_statistics`)."""
    x = x.double()
    if x.shape[1] != 1:
        x = x.mean(1, keepdim=True)
    flat = x.flatten(1)
    q = torch.quantile(flat, torch.tensor([0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99], dtype=x.dtype), dim=1).T
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(1)
    lap = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), _LAPLACE.to(x)).flatten(1)
    return torch.column_stack([flat.mean(1), flat.std(1), q, dx, dy, lap.std(1), lap.abs().mean(1)])


@torch.no_grad()
def model_outputs(
    model: nn.Module, preprocess: Preprocess, dataset: Dataset, task: Task, classes: int, *, batch_size: int = 256
) -> Outputs:
    """Probabilities, penultimate features and image statistics over ``dataset`` (eval mode, restored after).

    The features are the input of the last ``nn.Linear`` with ``classes`` outputs, or the logits without one;
    for segmentation the input of the last ``nn.Conv2d`` with ``classes`` outputs averaged over the pixels, and
    the probabilities are :func:`image_probabilities` (each class's expected share of the image).
    """
    was_training = model.training
    model.eval()
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    probs, feats, stats = [], [], []
    dense = task is Task.SEGMENTATION
    try:
        for images, _ in make_loader(dataset, batch_size, shuffle=False):
            stats.append(image_statistics(images, preprocess.input_size))
            x = preprocess(images.to(device))
            if p is not None:
                x = x.to(p.dtype)
            with _penultimate(model, classes, dense) as captured:
                logits = model(x).float()
            probs.append(image_probabilities(logits, task).cpu())
            feats.append((captured[-1] if captured else _pooled(logits, dense)).float().cpu())
    finally:
        model.train(was_training)
    return Outputs(torch.cat(probs).double().numpy(), torch.cat(feats).double().numpy(), torch.cat(stats).numpy())


def confidence_of(probs: np.ndarray, task: Task) -> np.ndarray:
    """Top-1 probability (single-label) or mean ``max(p, 1 - p)`` over labels (multi-label)."""
    if task is Task.MULTILABEL:
        return np.maximum(probs, 1 - probs).mean(1)
    return probs.max(1)


def prob_histograms(probs: np.ndarray) -> np.ndarray:
    """Per class, counts of its probability over :data:`BINS` equal bins of ``[0, 1]``: ``[K, BINS]``."""
    edges = np.linspace(0, 1, BINS + 1)
    return np.stack([np.histogram(np.clip(probs[:, k], 0, 1), edges)[0] for k in range(probs.shape[1])])


def fit_subset(dataset: Dataset, seed: int = 0) -> Dataset:
    """``dataset``, or a seeded draw of :data:`MAX_FIT_IMAGES` of its items when it is larger."""
    if len(dataset) <= MAX_FIT_IMAGES:
        return dataset
    order = np.random.default_rng([seed, 5]).choice(len(dataset), MAX_FIT_IMAGES, replace=False)
    return Subset(dataset, np.sort(order).tolist())


def compute_reference(
    model: nn.Module,
    preprocess: Preprocess,
    dataset: Dataset,
    task: Task,
    classes: int,
    *,
    fit_on: Dataset | None = None,
    meta: dict[str, Any] | None = None,
    seed: int = 0,
) -> Reference:
    """Reference statistics of ``model`` (with ``classes`` outputs) on ``dataset`` (its validation split).

    ``fit_on`` (the training split) is the data the Gaussians are fitted on, ``dataset`` the held-out data their
    distances are calibrated on (see the module docstring); without it, cross-fitting on ``dataset``.
    """
    out = model_outputs(model, preprocess, dataset, task, classes)
    fit = None if fit_on is None else model_outputs(model, preprocess, fit_subset(fit_on, seed), task, classes)
    return reference_from_outputs(out, task, fit=fit, meta=meta, seed=seed)


def reference_from_outputs(
    out: Outputs, task: Task, *, fit: Outputs | None = None, meta: dict[str, Any] | None = None, seed: int = 0
) -> Reference:
    """The reference of already computed :class:`Outputs` (a bundle computes them with its own ONNX file).

    ``out`` are the validation (calibration) outputs, ``fit`` those of the training images the Gaussians are
    fitted on (fewer than :data:`MIN_IMAGES`, or None: cross-fitting on ``out``). Features of width 0 (a model
    whose classifier input cannot be read) give an image-statistics space only.
    """
    proj_seed = seed if out.features.shape[1] > MAX_DIM else None

    def rows(o: Outputs, name: str) -> np.ndarray:
        return o.image if name == "image" else project(o.features, proj_seed)

    fit = fit if fit is not None and len(fit.probs) >= MIN_IMAGES else None
    spaces = {}
    if len(out.probs) >= MIN_IMAGES:
        for name in SPACES:
            cal = rows(out, name)
            if cal.shape[1]:
                spaces[name] = Gaussian.fit(cal, seed) if fit is None else Gaussian.fit(rows(fit, name), held_out=cal)
    how = "val, two-fold cross-fitting" if fit is None else "train"
    fitted = {"fit": how, "fit_images": len(out.probs if fit is None else fit.probs), "calibrated_on": "val"}
    info = {
        **(meta or {}),
        "images": len(out.probs),
        "task": task.value,
        "feature_dim": int(out.features.shape[1]),
        "projection_seed": proj_seed,
        "bins": BINS,
        "image_statistics": list(IMAGE_STATISTICS),
        "format": FORMAT,
        **fitted,
        "ood_quantile": OOD_QUANTILE,
        "ood_combined": "max over spaces",
    }
    return Reference(confidence_of(out.probs, task), prob_histograms(out.probs), spaces, info)


def ood_levels(ref: Reference, quantile: float = OOD_QUANTILE) -> dict[str, float]:
    """Per space, the squared distance ``L_space`` such that ``max_space d2_space / L_space > 1`` holds for a
    ``1 - quantile`` share of the reference images (all spaces together; see the module docstring).

    ``L_space = q_space * q_joint``: ``q_space`` is the ``quantile`` of the space's reference distances,
    ``q_joint`` the ``quantile`` of ``max_space d2_space / q_space`` over the reference images (the spaces'
    distances are of the same images, in the same order). A reference of one space gives ``L = q``.
    """
    q = {name: max(float(np.quantile(g.ref_d2, quantile)), 1e-12) for name, g in ref.spaces.items()}
    if not q:
        return {}
    joint = np.max(np.stack([g.ref_d2 / q[name] for name, g in ref.spaces.items()]), axis=0)
    factor = max(float(np.quantile(joint, quantile)), 1e-12)
    return {name: level * factor for name, level in q.items()}


def write_reference(out: str | Path, ref: Reference) -> Path:
    """Write ``ref`` as ``OUT/drift_reference.npz`` atomically."""
    arrays = {"confidence": ref.confidence, "prob_hist": ref.prob_hist, "meta": np.array(json.dumps(ref.meta))}
    for name, g in ref.spaces.items():
        arrays.update({f"{name}_mean": g.mean, f"{name}_precision": g.precision, f"{name}_ref_d2": g.ref_d2})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = Path(out) / REFERENCE_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_reference(model_dir: str | Path) -> Reference | None:
    """The reference stored in a model directory, or None when it has none (or one of an older format).

    Raises:
        ArtifactError: the file exists but is malformed (exit 4).
    """
    path = Path(model_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                return None
            spaces = {
                n: Gaussian(z[f"{n}_mean"], z[f"{n}_precision"], z[f"{n}_ref_d2"]) for n in SPACES if f"{n}_mean" in z
            }
            return Reference(z["confidence"], z["prob_hist"], spaces, meta)
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"cannot read {path} ({type(e).__name__})", "retrain, or pass --reference-data") from None
