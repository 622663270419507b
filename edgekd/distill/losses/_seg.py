"""Segmentation losses: ``dice`` (task), ``pixkd`` (per-pixel KD) and ``cwd`` (channel-wise distillation).

Logits are ``[N, C, H, W]`` score maps and targets ``int64 [N, H, W]`` masks. A student whose maps have another
size than the masks or the teacher's maps is resized to them first (bilinear), as segmentation codebases do
(mmsegmentation resizes logits to the label size). Everything is computed in float32 (float64 stays float64).
The cross-entropy term is ``ce`` (per pixel, with the run's label smoothing and class weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.distill.losses._base import LOSSES, DistillLoss, LossBatch, ModelOutputs
from edgekd.distill.losses._logit import _check_temperature, _full
from edgekd.errors import InvalidInputError
from edgekd.specs import Task

__all__ = ["DiceLoss", "PixelKDLoss", "CWDLoss", "soft_dice_loss", "pixel_kd_div", "cwd_div", "resize_to"]

_SEG = (Task.SEGMENTATION,)


def resize_to(logits: torch.Tensor, size: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """``[N, C, h, w]`` logits bilinearly resized to ``size`` (returned as is when it already matches)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def soft_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, background: bool = False, smooth: float = 1e-5, batch: bool = False
) -> torch.Tensor:
    """Soft Dice loss (Milletari, Navab & Ahmadi 2016, "V-Net"), as MONAI's ``DiceLoss(softmax=True)``.

    With ``p = softmax(z)`` and the one-hot truth ``g``, per sample and class (over the whole batch when
    ``batch``): ``1 - (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)``, averaged over the classes
    (class 0 left out unless ``background``) and the samples.
    """
    z = resize_to(_full(logits), targets.shape[-2:])
    k = z.shape[1]
    p = z.softmax(1)
    g = F.one_hot(targets.long(), k).permute(0, 3, 1, 2).to(p.dtype)
    if not background and k > 1:
        p, g = p[:, 1:], g[:, 1:]
    dims = (0, 2, 3) if batch else (2, 3)
    inter = (p * g).sum(dims)
    denom = p.sum(dims) + g.sum(dims)
    return (1.0 - (2.0 * inter + smooth) / (denom + smooth)).mean()


def pixel_kd_div(student: torch.Tensor, teacher: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Per-pixel KD: ``T^2 * mean_{n,h,w} KL(softmax(t_nhw / T) || softmax(s_nhw / T))`` over the class axis.

    Hinton et al.'s (2015) soft targets applied at every pixel (the pixel-wise distillation of Liu et al.,
    CVPR 2019, "Structured Knowledge Distillation for Semantic Segmentation"); the student's map is resized to
    the teacher's.
    """
    t = _full(teacher)
    s = resize_to(_full(student), t.shape[-2:]).to(t.dtype)
    log_ps, log_pt = F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)  # [N, H, W]
    return kl.mean() * T * T


def cwd_div(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021), the formula of the authors' code and mmrazor.

    Each channel's map becomes a distribution over the ``H * W`` positions, ``phi(y_c) = softmax(y_c / tau)``;
    ``L = tau^2 / (N * C) * sum_{n,c} KL(phi(t_nc) || phi(s_nc))``: the mean over channels and samples of the
    spatial KL, scaled by ``tau^2``. The student's map is resized to the teacher's.
    """
    t = _full(teacher)
    s = resize_to(_full(student), t.shape[-2:]).to(t.dtype)
    if s.shape[1] != t.shape[1]:
        raise InvalidInputError(
            f"cwd: the student has {s.shape[1]} channels, the teacher {t.shape[1]}", "cwd compares score maps"
        )
    n, c = t.shape[:2]
    log_pt = F.log_softmax(t.reshape(n * c, -1) / tau, dim=1)
    log_ps = F.log_softmax(s.reshape(n * c, -1) / tau, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum() * tau * tau / (n * c)


@LOSSES.register("dice")
class DiceLoss(DistillLoss):
    """Task loss: soft Dice on the masks (Milletari et al. 2016); see :func:`soft_dice_loss`. Segmentation only.

    Usually beside ``ce`` (``--loss ce:1 --loss dice:1``): CE gives every pixel a gradient, Dice balances a small
    structure against a large background.

    Args:
        background: include the background class (default no: it would dominate).
        smooth: added to numerator and denominator (MONAI's default 1e-5).
        batch: one Dice over the whole batch per class instead of one per sample.
    """

    kind = "task"
    tasks = _SEG

    def __init__(self, *, background: bool = False, smooth: float = 1e-5, batch: bool = False) -> None:
        super().__init__()
        if smooth < 0:
            raise InvalidInputError(f"dice smooth={smooth} must be >= 0", "e.g. smooth=1e-5")
        self.background, self.smooth, self.batch = background, smooth, batch

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        return soft_dice_loss(
            student.logits, batch.targets, background=self.background, smooth=self.smooth, batch=self.batch
        )


@LOSSES.register("pixkd")
class PixelKDLoss(DistillLoss):
    """Pixel-wise distillation: temperature-softened KL per pixel, ``T^2`` scaled (:func:`pixel_kd_div`).

    The segmentation counterpart of ``kd`` (Hinton et al. 2015; Liu et al. 2019 use it with ``T=1``).
    Segmentation only.

    Args:
        T: temperature (default 1, as Liu et al. and CIRKD).
    """

    tasks = _SEG

    def __init__(self, *, T: float = 1.0) -> None:
        super().__init__()
        _check_temperature(T)
        self.T = T

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        return pixel_kd_div(student.logits, teacher.logits, self.T)


@LOSSES.register("cwd")
class CWDLoss(DistillLoss):
    """Channel-wise distillation, Shu, Liu, Gao, Yan & Shen, ICCV 2021 ("Channel-wise Knowledge Distillation for
    Dense Prediction"), on the score maps: each class channel as a spatial distribution (:func:`cwd_div`).

    The paper uses ``tau=4`` on the logits of Cityscapes models (loss weight 3); segmentation only.

    Args:
        tau: temperature of the spatial softmax (default 4, the paper's).
    """

    tasks = _SEG

    def __init__(self, *, tau: float = 4.0) -> None:
        super().__init__()
        _check_temperature(tau)
        self.tau = tau

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        return cwd_div(student.logits, teacher.logits, self.tau)
