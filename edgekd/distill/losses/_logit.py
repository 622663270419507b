"""Task and logit losses: ``ce``, ``kd``, ``dkd``, ``dist`` and ``mlkd`` (alias ``bce_kd``).

Every loss computes in float32 (float64 stays float64, for gradient checks) whatever the autocast dtype
of the logits, and reduces to a scalar. The plain functions (:func:`kd_div`, :func:`dkd_div`,
:func:`dist_div`, :func:`mlkd_bce`) are the formulas; the registered modules add the parameters and the
schedule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgekd.distill._objective import task_loss
from edgekd.distill.losses._base import LOSSES, DistillLoss, LossBatch, ModelOutputs
from edgekd.errors import InvalidInputError
from edgekd.specs import Task

__all__ = [
    "CELoss",
    "KDLoss",
    "DKDLoss",
    "DISTLoss",
    "MLKDLoss",
    "kd_div",
    "dkd_div",
    "dist_div",
    "mlkd_bce",
    "dkd_warmup_factor",
]

_SINGLE_LABEL = (Task.BINARY, Task.MULTICLASS)


def _full(x: torch.Tensor) -> torch.Tensor:
    """Half-precision activations (autocast) are promoted to float32; float64 stays float64."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_temperature(T: float) -> None:
    if T <= 0:
        raise InvalidInputError(f"temperature T={T} must be > 0", "e.g. T=4")


def kd_div(student: torch.Tensor, teacher: torch.Tensor, T: float = 4.0) -> torch.Tensor:
    """Hinton et al. 2015: ``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch."""
    s, t = _full(student) / T, _full(teacher) / T
    return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True) * T * T


@LOSSES.register("ce")
class CELoss(DistillLoss):
    """Task loss: cross-entropy on the labels (BCE-with-logits for multi-label tasks).

    ``L = -sum_c y_c log softmax(s)_c`` (with optional label smoothing and class weights), or for multi-label
    data ``L = mean_l BCE(sigmoid(s_l), y_l)``. The objective passes the run's ``--label-smoothing`` and
    ``--class-weighting``; ``smoothing=`` overrides the former for this term.

    Args:
        smoothing: label smoothing; a negative value (default -1) means "use the run's setting".
    """

    kind = "task"

    def __init__(self, *, smoothing: float = -1.0) -> None:
        super().__init__()
        if smoothing >= 1:
            raise InvalidInputError(f"ce smoothing={smoothing} must be < 1", "e.g. smoothing=0.1")
        self.smoothing = smoothing
        self.register_buffer("class_weights", None, persistent=False)

    def configure(self, *, label_smoothing: float, class_weights: torch.Tensor | None) -> None:
        """Take the run's label smoothing (unless ``smoothing=`` was given) and class weights."""
        if self.smoothing < 0:
            self.smoothing = label_smoothing
        self.class_weights = class_weights

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        return task_loss(
            student.logits,
            batch.targets,
            batch.task,
            label_smoothing=max(self.smoothing, 0.0),
            class_weights=self.class_weights,
        )


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    """Soft-target distillation, Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    ``L = T^2 * KL(softmax(t / T) || softmax(s / T))`` averaged over the batch; the ``T^2`` keeps the
    gradient scale independent of the temperature. Single-label tasks (use ``mlkd`` for multi-label data).

    Args:
        T: temperature (default 4, the common CIFAR setting of Tian et al. 2020 and mdistiller).
    """

    tasks = _SINGLE_LABEL

    def __init__(self, *, T: float = 4.0) -> None:
        super().__init__()
        _check_temperature(T)
        self.T = T

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        return kd_div(student.logits, teacher.logits, self.T)


def _binary_kl(p_t: torch.Tensor, p_s: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(b_t || b_s)`` of the Bernoulli distributions ``[p, 1 - p]``."""
    eps = torch.finfo(p_t.dtype).tiny
    b_t = torch.stack([p_t, 1 - p_t], dim=1).clamp_min(eps)
    b_s = torch.stack([p_s, 1 - p_s], dim=1).clamp_min(eps)
    return (b_t * (b_t.log() - b_s.log())).sum(1)


def dkd_div(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    T: float = 4.0,
) -> torch.Tensor:
    """Decoupled KD, Zhao et al. 2022 (CVPR), without the warm-up factor.

    With ``p = softmax(z / T)``, the target-class probability ``p_y`` and the distribution ``p^`` over the
    non-target classes (softmax of the other logits):
    ``TCKD = KL([p_y^t, 1 - p_y^t] || [p_y^s, 1 - p_y^s])``, ``NCKD = KL(p^t || p^s)`` and
    ``L = T^2 * (alpha * TCKD + beta * NCKD)``, averaged over the batch.
    """
    s, t = _full(student) / T, _full(teacher) / T
    n, c = s.shape
    gt = F.one_hot(targets.long(), c).bool()
    tckd = _binary_kl(t.softmax(1)[gt], s.softmax(1)[gt])
    if c > 2:
        s_other, t_other = s[~gt].view(n, c - 1), t[~gt].view(n, c - 1)
        log_ps, log_pt = F.log_softmax(s_other, 1), F.log_softmax(t_other, 1)
        nckd = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    else:  # one non-target class: its distribution is a point mass, NCKD = 0
        nckd = torch.zeros_like(tckd)
    return (alpha * tckd + beta * nckd).mean() * T * T


def dkd_warmup_factor(epoch: int, total_epochs: int, warmup: float, warmup_frac: float) -> float:
    """DKD's linear warm-up ``min((epoch + 1) / w, 1)`` with ``w = min(warmup, warmup_frac * total_epochs)``.

    mdistiller ramps over ``warmup = 20`` of 240 epochs; capping at the same fraction of the run keeps a short
    run from spending all of it in warm-up. ``w < 1`` (or 0) disables the ramp.
    """
    w = min(warmup, warmup_frac * total_epochs)
    return 1.0 if w < 1 else min((epoch + 1) / w, 1.0)


@LOSSES.register("dkd")
class DKDLoss(DistillLoss):
    """Decoupled knowledge distillation, Zhao et al. 2022, "Decoupled Knowledge Distillation" (CVPR).

    ``L = f(e) * T^2 * (alpha * TCKD + beta * NCKD)`` where TCKD is the KL between the teacher's and the
    student's binary target/non-target distributions, NCKD the KL between their distributions over the
    non-target classes (see :func:`dkd_div`), and ``f(e)`` the linear warm-up of :func:`dkd_warmup_factor`.
    Single-label tasks.

    Args:
        alpha: TCKD weight (paper: 1).
        beta: NCKD weight (paper: 8 on CIFAR-100).
        T: temperature (paper: 4).
        warmup: warm-up length in epochs (paper: 20 of 240).
        warmup_frac: cap of the warm-up as a fraction of the run (default 20/240, the paper's ratio).
    """

    tasks = _SINGLE_LABEL

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 8.0,
        T: float = 4.0,
        warmup: float = 20.0,
        warmup_frac: float = 20.0 / 240.0,
    ) -> None:
        super().__init__()
        _check_temperature(T)
        if min(alpha, beta, warmup, warmup_frac) < 0:
            raise InvalidInputError("dkd alpha, beta, warmup and warmup_frac must be >= 0", "e.g. dkd:1,beta=8")
        self.alpha, self.beta, self.T, self.warmup, self.warmup_frac = alpha, beta, T, warmup, warmup_frac

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        if batch.targets.is_floating_point():  # soft labels (softlabels: data) have no single true class
            raise InvalidInputError(
                "dkd needs class labels, and these targets are soft labels (probabilities)",
                "use kd, or read the soft labels as classes: softlabels:FILE,hard=1",
            )
        factor = dkd_warmup_factor(batch.epoch, batch.total_epochs, self.warmup, self.warmup_frac)
        return factor * dkd_div(
            student.logits, teacher.logits, batch.targets, alpha=self.alpha, beta=self.beta, T=self.T
        )


def _pearson_mean(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over rows of the Pearson correlation between rows of ``a`` and ``b``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return F.cosine_similarity(a, b, dim=1, eps=eps).mean()


def dist_div(
    student: torch.Tensor, teacher: torch.Tensor, *, beta: float = 1.0, gamma: float = 1.0, T: float = 1.0
) -> torch.Tensor:
    """DIST, Huang et al. 2022: ``T^2 * (beta * (1 - inter) + gamma * (1 - intra))``.

    With ``Y = softmax(z / T)`` (``[N, C]``): ``inter`` is the mean over samples of the Pearson correlation of
    the student's and teacher's rows (relations between classes), ``intra`` the mean over classes of the
    Pearson correlation of their columns (relations between samples).
    """
    ys, yt = (_full(student) / T).softmax(1), (_full(teacher) / T).softmax(1)
    inter = 1 - _pearson_mean(ys, yt)
    intra = 1 - _pearson_mean(ys.t(), yt.t())
    return T * T * (beta * inter + gamma * intra)


@LOSSES.register("dist")
class DISTLoss(DistillLoss):
    """DIST, Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger Teacher" (NeurIPS).

    Matches relations instead of exact probabilities, which tolerates a much stronger teacher:
    ``L = T^2 * (beta * (1 - mean_i pearson(Y^s_i, Y^t_i)) + gamma * (1 - mean_c pearson(Y^s_:c, Y^t_:c)))``
    with ``Y = softmax(z / T)``. For two classes the inter-class term is constant (two points always correlate
    perfectly); the intra-class term carries the signal. Single-label tasks.

    Args:
        beta: inter-class weight (paper: 1 on ImageNet, 2 on CIFAR-100).
        gamma: intra-class weight (paper: 1 on ImageNet, 2 on CIFAR-100).
        T: temperature (paper: 1 on ImageNet, 4 on CIFAR-100).
    """

    tasks = _SINGLE_LABEL

    def __init__(self, *, beta: float = 1.0, gamma: float = 1.0, T: float = 1.0) -> None:
        super().__init__()
        _check_temperature(T)
        self.beta, self.gamma, self.T = beta, gamma, T

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        return dist_div(student.logits, teacher.logits, beta=self.beta, gamma=self.gamma, T=self.T)


def mlkd_bce(student: torch.Tensor, teacher: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Multi-label soft targets: ``T^2 * mean_{n,l} BCE(sigmoid(s / T), sigmoid(t / T))``."""
    s, t = _full(student) / T, _full(teacher) / T
    return F.binary_cross_entropy_with_logits(s, torch.sigmoid(t)) * T * T


@LOSSES.register("mlkd")
class MLKDLoss(DistillLoss):
    """Multi-label soft-target distillation: the teacher's per-label sigmoids as BCE targets.

    Each label is an independent Bernoulli, so Hinton et al.'s (2015) softmax is replaced by a sigmoid per
    label: ``L = T^2 * mean_{n,l} [-q log p - (1 - q) log(1 - p)]`` with ``p = sigmoid(s / T)`` and
    ``q = sigmoid(t / T)`` (the form used for multi-label KD e.g. by Liu et al. 2018, "Multi-label image
    classification via knowledge distillation from weakly-supervised detection"). The value includes the
    teacher's entropy, so it does not reach 0. Multi-label tasks only; registered also as ``bce_kd``.

    Args:
        T: temperature (default 1: plain sigmoid targets).
    """

    tasks = (Task.MULTILABEL,)

    def __init__(self, *, T: float = 1.0) -> None:
        super().__init__()
        _check_temperature(T)
        self.T = T

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        return mlkd_bce(student.logits, teacher.logits, self.T)


LOSSES.add("bce_kd", MLKDLoss, alias_of="mlkd")
