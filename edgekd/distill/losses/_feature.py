"""Feature losses on tapped layers: ``fitnet``, ``at``, ``rkd`` and ``pkt``.

Features arrive as ``[N, C, H, W]`` maps (or ``[N, D]`` vectors) keyed by module path. The relational
losses (``rkd``, ``pkt``) compare embeddings: a map is global-average-pooled to ``[N, C]`` first, so student
and teacher may have any widths. ``fitnet`` learns adapters; ``at`` compares width-free attention maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill.losses._base import LOSSES, FeatureLoss, LossBatch, ModelOutputs
from edgekd.distill.losses._logit import _full
from edgekd.errors import InvalidInputError

__all__ = [
    "FitNetLoss",
    "ATLoss",
    "RKDLoss",
    "PKTLoss",
    "attention_map",
    "embedding",
    "rkd_distance",
    "rkd_angle",
    "pkt_div",
]


def embedding(feature: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C]`` by global average pooling; other shapes are flattened to ``[N, D]``."""
    f = _full(feature)
    return f.flatten(2).mean(-1) if f.dim() == 4 else f.flatten(1)


def _check_map(loss: str, path: str, shape: torch.Size) -> None:
    if len(shape) not in (2, 4):
        raise InvalidInputError(
            f"{loss}: layer {path!r} outputs shape {tuple(shape)}; {loss} needs [N, C, H, W] maps or [N, D] vectors",
            "tap a convolutional stage (see `edgekd inspect MODEL`)",
        )


@LOSSES.register("fitnet")
class FitNetLoss(FeatureLoss):
    """Hint learning, Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (ICLR).

    ``L = mean((resize(r(F_s)) - F_t)^2)`` summed over the layer pairs, where ``r`` is a learned 1x1
    convolution from the student's to the teacher's channels (a linear layer for ``[N, D]`` features) and
    ``resize`` bilinearly interpolates the student map to the teacher's spatial size (student and teacher
    may see different input sizes). The adapters are parameters of the objective, trained with the student
    and dropped afterwards.

    Args:
        s: student layer(s), ``+``-joined (default: the last tap point).
        t: teacher layer(s) (default: the last tap point).
        teacher: teacher index when several are given (default 0).
    """

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        adapters = []
        for s, t in zip(self.s_paths, self.t_paths):
            ss, ts = student_shapes[s], teacher_shapes[t]
            _check_map("fitnet", s, ss)
            _check_map("fitnet", t, ts)
            if len(ss) != len(ts):
                raise InvalidInputError(
                    f"fitnet: student layer {s!r} {tuple(ss)} and teacher layer {t!r} "
                    f"{tuple(ts)} are not both maps or both vectors",
                    "pair like with like",
                )
            adapters.append(nn.Conv2d(ss[1], ts[1], 1, bias=False) if len(ss) == 4 else nn.Linear(ss[1], ts[1]))
        self.adapters = nn.ModuleList(adapters)

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        total = 0.0
        for adapter, (fs, ft) in zip(self.adapters, self.pairs(student, teacher)):
            x = _full(adapter(fs))
            if x.dim() == 4 and x.shape[-2:] != ft.shape[-2:]:
                x = F.interpolate(x, size=ft.shape[-2:], mode="bilinear", align_corners=False)
            total = total + F.mse_loss(x, _full(ft).to(x.dtype))
        return total


def attention_map(feature: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention ``normalize(vec(mean_c |A_c|^p))``, ``[N, H*W]``.

    ``size`` resizes the ``[H, W]`` map (bilinear) before flattening, so maps of different resolutions compare.
    """
    a = _full(feature).abs().pow(p).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return F.normalize(a.flatten(1), dim=1)


@LOSSES.register("at")
class ATLoss(FeatureLoss):
    """Attention transfer, Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR).

    With ``Q = vec(mean_c |A_c|^p) / ||vec(mean_c |A_c|^p)||_2`` for a ``[C, H, W]`` activation ``A``:
    ``L = beta * sum_layers mean_{n,j} (Q_s - Q_t)^2``, the mean running over the batch and the ``H * W``
    positions. This is the authors' code (szagoruyko/attention-transfer, ``beta = 1e3``), which RepDistiller
    and mdistiller follow and which the published results come from; the paper's formula writes ``beta / 2``
    in front of a norm instead. When the resolutions differ, the larger feature map is first average-pooled
    (adaptive average pooling) to the smaller one's ``H x W``, as in RepDistiller and mdistiller. Widths need
    not match.

    Args:
        p: exponent of the activation (paper: 2).
        beta: weight inside the loss (authors' code, RepDistiller, mdistiller: 1000), so ``at:1`` is their
            setting.
        s: student layer(s), ``+``-joined (default: the last tap point).
        t: teacher layer(s) (default: the last tap point).
        teacher: teacher index when several are given (default 0).
    """

    def __init__(self, *, p: float = 2.0, beta: float = 1000.0, s: str = "", t: str = "", teacher: int = 0) -> None:
        super().__init__(s=s, t=t, teacher=teacher)
        if p <= 0:
            raise InvalidInputError(f"at p={p} must be > 0", "e.g. p=2")
        self.p, self.beta = p, beta

    def bind(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for s, t in zip(self.s_paths, self.t_paths):
            for path, shape in ((s, student_shapes[s]), (t, teacher_shapes[t])):
                if len(shape) != 4:
                    raise InvalidInputError(
                        f"at: layer {path!r} outputs {tuple(shape)}, not an [N, C, H, W] map",
                        "tap a convolutional stage (see `edgekd inspect MODEL`)",
                    )

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        total = 0.0
        for fs, ft in self.pairs(student, teacher):
            fs, ft = _full(fs), _full(ft)
            # the reference pools the larger map down (before |.|^p), it does not resize the attention map
            if fs.shape[-2] > ft.shape[-2]:
                fs = F.adaptive_avg_pool2d(fs, ft.shape[-2:])
            elif fs.shape[-2:] != ft.shape[-2:]:
                ft = F.adaptive_avg_pool2d(ft, fs.shape[-2:])
            qs, qt = attention_map(fs, self.p), attention_map(ft, self.p)
            total = total + (qs - qt.to(qs.dtype)).pow(2).mean()
        return self.beta * total


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``||e_i - e_j||`` with an exact zero diagonal (and finite gradients)."""
    sq = (e.unsqueeze(0) - e.unsqueeze(1)).pow(2).sum(-1)
    off = 1 - torch.eye(len(e), dtype=e.dtype, device=e.device)
    return sq.clamp_min(1e-12).sqrt() * off


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019 distance term: ``Huber(psi_D^s, psi_D^t)`` over all pairs, ``psi_D = ||e_i - e_j|| / mu``.

    ``mu`` is the mean distance over the pairs ``i != j`` of the batch.
    """
    n = len(student)
    d_s, d_t = _pairwise_distances(student), _pairwise_distances(teacher)
    pairs = n * (n - 1)
    d_s = d_s / (d_s.sum() / pairs).clamp_min(1e-12)
    d_t = d_t / (d_t.sum() / pairs).clamp_min(1e-12)
    return F.smooth_l1_loss(d_s, d_t)


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Park et al. 2019 angle term: ``Huber(psi_A^s, psi_A^t)`` over all triplets ``(i, j, k)``.

    ``psi_A(i, j, k) = <e_ij, e_kj>`` with ``e_ij = (t_i - t_j) / ||t_i - t_j||`` (cosine of the angle at ``j``).
    """

    def angles(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # [j, i] = e_i - e_j, normalised
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()

    return F.smooth_l1_loss(angles(student), angles(teacher))


@LOSSES.register("rkd")
class RKDLoss(FeatureLoss):
    """Relational KD, Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation" (CVPR).

    On pooled embeddings ``e`` of the tapped layers (``[N, C, H, W]`` maps are average-pooled):
    ``L = distance * Huber(psi_D^s, psi_D^t) + angle * Huber(psi_A^s, psi_A^t)`` where ``psi_D`` are the
    pairwise distances normalised by their mean and ``psi_A`` the cosines of the angles of all triplets (see
    :func:`rkd_distance`, :func:`rkd_angle`). Embedding widths need not match.

    Args:
        distance: weight of the distance term (paper: 25).
        angle: weight of the angle term (paper: 50).
        s: student layer(s), ``+``-joined (default: the last tap point).
        t: teacher layer(s) (default: the last tap point).
        teacher: teacher index when several are given (default 0).
    """

    def __init__(
        self, *, distance: float = 25.0, angle: float = 50.0, s: str = "", t: str = "", teacher: int = 0
    ) -> None:
        super().__init__(s=s, t=t, teacher=teacher)
        self.distance, self.angle = distance, angle

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        total = 0.0
        for fs, ft in self.pairs(student, teacher):
            es = embedding(fs)
            et = embedding(ft).to(es.dtype)
            total = total + self.distance * rkd_distance(es, et) + self.angle * rkd_angle(es, et)
        return total


def pkt_div(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Passalis & Tefas 2018: ``mean_{i,j} q_ij log((q_ij + eps) / (p_ij + eps))``.

    ``p_ij = K(s_i, s_j) / sum_j K(s_i, s_j)`` with the cosine kernel ``K(a, b) = (cos(a, b) + 1) / 2``, and
    ``q`` the same for the teacher.
    """

    def conditional(e: torch.Tensor) -> torch.Tensor:
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        k = (e @ e.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    p, q = conditional(student), conditional(teacher)
    return (q * torch.log((q + eps) / (p + eps))).mean()


@LOSSES.register("pkt")
class PKTLoss(FeatureLoss):
    """Probabilistic knowledge transfer, Passalis & Tefas 2018 (ECCV).

    "Learning Deep Representations with Probabilistic Knowledge Transfer".
    Matches the conditional probability distributions that a cosine-similarity kernel induces over the batch
    in the student's and the teacher's embedding spaces (see :func:`pkt_div`):
    ``L = mean_{i,j} q_ij log(q_ij / p_ij)``. Widths need not match. The values are small; the CRD benchmark
    (Tian et al. 2020) weights it 30000 (``pkt:30000``).

    Args:
        s: student layer(s), ``+``-joined (default: the last tap point).
        t: teacher layer(s) (default: the last tap point).
        teacher: teacher index when several are given (default 0).
    """

    def forward(self, student: ModelOutputs, teacher: ModelOutputs | None, batch: LossBatch) -> torch.Tensor:
        total = 0.0
        for fs, ft in self.pairs(student, teacher):
            es = embedding(fs)
            total = total + pkt_div(es, embedding(ft).to(es.dtype))
        return total
