"""Grad-CAM maps with the maintained ``grad-cam`` library, and how much two models' maps agree.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the feature maps ``A^k`` of a convolutional layer by the
spatially averaged gradient of the class score, ``L = ReLU(sum_k alpha_k A^k)`` with
``alpha_k = mean_ij dy_c / dA^k_ij``. The maps come from ``pytorch_grad_cam.GradCAM`` (jacobgil/pytorch-grad-cam)
at the output of the model's last stage (:func:`edgekd.students.tap_points`, e.g. ``layer4`` of a ResNet-18,
``layer3`` of a CIFAR ResNet-8, ``features.3`` of ``small:tinycnn``), min-max scaled to ``[0, 1]`` by the
library, then resized to the raw image size so that models with other input sizes compare pixel by pixel.

Agreement of two maps of the same image (:func:`cam_agreement`):

* ``spearman``: Spearman rank correlation of the pixel values (1: the same ranking of evidence; -1: reversed;
  NaN when a map is constant, e.g. all zero after the ReLU);
* ``iou``: intersection over union of the top-20 % pixels of each map (the regions the models rely on most);
  NaN too when a map is constant (it has no top 20 %). Means over images skip NaN; the report says "n/a" when
  every image is undefined.

Example:
    >>> cams = gradcam_maps(model, card.preprocess, images, classes=labels)
    >>> cam_agreement(cams.maps[0], other.maps[0])
    {'spearman': 0.83, 'iou': 0.61}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from edgekd.errors import DependencyError, InvalidInputError
from edgekd.specs import Preprocess
from edgekd.students import tap_points

__all__ = ["CamResult", "gradcam_maps", "cam_agreement", "default_cam_layer", "TOP_FRACTION", "CAM_METHOD", "fmt_score"]

TOP_FRACTION = 0.2
CAM_METHOD = "Grad-CAM (pytorch-grad-cam)"


@dataclass
class CamResult:
    """Maps ``[N, H, W]`` in ``[0, 1]`` at the raw image size, the layer they were taken at, and the logits."""

    maps: np.ndarray
    layer: str
    logits: np.ndarray
    classes: list[int]


def default_cam_layer(model: nn.Module) -> str:
    """The output of the model's last stage (the last of :func:`edgekd.students.tap_points`)."""
    taps = tap_points(model)
    if not taps:
        raise InvalidInputError(f"{type(model).__name__} has no convolutional stage for Grad-CAM", "pass layer=NAME")
    return taps[-1]


def _gradcam_cls():
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:  # a core dependency, but say how to fix a broken environment
        raise DependencyError("Grad-CAM needs the grad-cam package", "pip install grad-cam") from e
    return GradCAM, ClassifierOutputTarget


def gradcam_maps(
    model: nn.Module,
    preprocess: Preprocess,
    images: torch.Tensor,
    *,
    classes: Sequence[int] | None = None,
    layer: str | None = None,
    size: tuple[int, int] | None = None,
    batch_size: int = 32,
) -> CamResult:
    """Grad-CAM maps of ``model`` for raw ``uint8`` ``images`` ``[N, C, H, W]`` (on the CPU).

    Args:
        model: a PyTorch classifier (its parameters need not require gradients; the inputs do).
        preprocess: the model's own preprocessing.
        images: raw images.
        classes: the class explained per image (default: the model's prediction).
        layer: module path (default :func:`default_cam_layer`).
        size: ``(H, W)`` of the returned maps (default: the images' size).
    """
    GradCAM, Target = _gradcam_cls()
    layer = layer or default_cam_layer(model)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise InvalidInputError(f"no layer {layer!r} in the model", f"choose one of {', '.join(tap_points(model))}")
    model = model.cpu().eval()
    size = size or tuple(images.shape[-2:])
    maps, logits, used = [], [], []
    # The library needs gradients at the layer: with frozen parameters they flow from an input that requires them.
    with GradCAM(model=model, target_layers=[modules[layer]]) as cam, torch.enable_grad():
        for i in range(0, len(images), batch_size):
            x = preprocess(images[i : i + batch_size]).requires_grad_(True)
            targets = None if classes is None else [Target(int(c)) for c in classes[i : i + batch_size]]
            m = cam(input_tensor=x, targets=targets)  # targets None: the predicted class
            out = cam.outputs.detach().float()
            maps.append(torch.from_numpy(np.asarray(m, dtype=np.float32)))
            logits.append(out.numpy())
            used += [int(c) for c in (classes[i : i + batch_size] if classes is not None else out.argmax(1).tolist())]
    stacked = torch.cat(maps)[:, None]
    if tuple(stacked.shape[-2:]) != tuple(size):
        stacked = F.interpolate(stacked, size=size, mode="bilinear", align_corners=False)
    return CamResult(stacked[:, 0].clamp(0, 1).numpy(), layer, np.concatenate(logits), used)


def cam_agreement(a: np.ndarray, b: np.ndarray, *, top: float = TOP_FRACTION) -> dict[str, float]:
    """Spearman rank correlation and top-``top`` IoU of two maps of the same shape (see the module docstring).

    Example:
        >>> m = np.random.rand(8, 8)
        >>> cam_agreement(m, m), cam_agreement(m, -m)["spearman"]
        ({'spearman': 1.0, 'iou': 1.0}, -1.0)
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InvalidInputError(f"maps of different sizes: {a.shape} and {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # a flat map ranks nothing (e.g. a 1x1 last feature map): undefined
        return {"spearman": math.nan, "iou": math.nan}
    rho = float(spearmanr(a, b).statistic)
    k = max(1, int(math.ceil(top * a.size - 1e-9)))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return {"spearman": rho, "iou": len(top_a & top_b) / len(top_a | top_b)}


def fmt_score(value: float | None) -> str:
    """An agreement score for a table or a figure title: two decimals, or ``n/a`` when undefined (NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"
