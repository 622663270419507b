"""Stored-value and gradient tests for every registered loss, and the ``--loss`` term syntax.

Each expected value is pinned as a literal number in :data:`CASES`. The numbers were produced by the
``ref_*`` functions below: plain numpy transcriptions, line by line, of the reference implementations
(the file each one follows is cited above it), evaluated on the fixed inputs of this module. They never call
edgekd's code, so a loss that drifts from its reference fails here even if a test re-derives its own formula.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.data.preprocess import Task
from edgekd.distill import LOSSES, LossBatch, ModelOutputs, parse_loss
from edgekd.distill.losses import dkd_warmup_factor, loss_params
from edgekd.errors import InvalidInputError, UnknownNameError

# Fixed inputs (numpy's PCG64 generator is reproducible across versions and platforms).
rng = np.random.default_rng(0)
N, C = 6, 5
S = 2 * rng.normal(size=(N, C))  # student logits
T = 2 * rng.normal(size=(N, C))  # teacher logits
Y = np.array([1, 4, 0, 2, 2, 3])  # class targets
YML = np.array(
    [[1, 0, 1, 0, 0], [0, 0, 1, 1, 0], [1, 1, 0, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 1], [1, 0, 0, 0, 0]],
    dtype=np.float64,
)  # multi-hot labels
FS = rng.normal(size=(N, 2, 3, 3))  # student feature map [N, C, H, W]
FT = rng.normal(size=(N, 3, 3, 3))  # teacher feature map, other width
W = rng.normal(size=(3, 2))  # fixed FitNet adapter (teacher channels x student channels)
FS_BIG = rng.normal(size=(N, 2, 6, 6))  # a student map at twice the teacher's resolution


# ---------------------------------------------------------------------------------------------------------
# Reference computations (numpy transcriptions of the reference code; only used to produce and re-check the
# literal values in CASES).


def softmax(z, axis=1):
    e = np.exp(z - z.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def log_softmax(z, axis=1):
    z = z - z.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))


def kl_div_sum(log_input, target):
    """torch.nn.functional.kl_div(log_input, target, reduction="sum"): sum target * (log target - input),
    with 0 * log 0 = 0."""
    safe = np.where(target > 0, target, 1.0)
    return np.sum(np.where(target > 0, target * (np.log(safe) - log_input), 0.0))


def ref_ce():
    # torch.nn.functional.cross_entropy (mean reduction): -mean_n log softmax(s_n)[y_n].
    return -np.mean(log_softmax(S)[np.arange(N), Y])


def ref_kd(temp=4.0):
    # HobbitLong/RepDistiller distiller_zoo/KD.py (DistillKL):
    # kl_div(log_softmax(y_s / T), softmax(y_t / T), size_average=False) * T**2 / batch size.
    p_s = log_softmax(S / temp)
    p_t = softmax(T / temp)
    return kl_div_sum(p_s, p_t) * temp**2 / N


def ref_dkd(alpha=1.0, beta=8.0, temp=4.0):
    # megvii-research/mdistiller mdistiller/distillers/DKD.py (dkd_loss), warm-up factor 1.
    gt_mask = np.zeros((N, C))
    gt_mask[np.arange(N), Y] = 1
    other_mask = 1 - gt_mask
    pred_student = softmax(S / temp)
    pred_teacher = softmax(T / temp)

    def cat_mask(t):  # [target probability, sum of the other probabilities]
        return np.stack([(t * gt_mask).sum(1), (t * other_mask).sum(1)], axis=1)

    pred_student, pred_teacher = cat_mask(pred_student), cat_mask(pred_teacher)
    tckd_loss = kl_div_sum(np.log(pred_student), pred_teacher) * temp**2 / N
    pred_teacher_part2 = softmax(T / temp - 1000.0 * gt_mask)
    log_pred_student_part2 = log_softmax(S / temp - 1000.0 * gt_mask)
    nckd_loss = kl_div_sum(log_pred_student_part2, pred_teacher_part2) * temp**2 / N
    return alpha * tckd_loss + beta * nckd_loss


def ref_dist(beta=1.0, gamma=1.0, tau=1.0):
    # hunto/image_classification_sota lib/models/losses/dist_kd.py and hunto/DIST_KD
    # segmentation/losses/dist_kd.py (the DIST authors' code); the temperature form (tau**2 on both terms)
    # is the authors' tau variant, as in huawei-noah/Efficient-Computing Distillation/VanillaKD/losses/dist.py.
    def cosine_similarity(a, b, eps=1e-8):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)

    def pearson_correlation(a, b, eps=1e-8):
        return cosine_similarity(a - a.mean(1)[:, None], b - b.mean(1)[:, None], eps)

    def inter_class_relation(y_s, y_t):
        return 1 - pearson_correlation(y_s, y_t).mean()

    def intra_class_relation(y_s, y_t):
        return inter_class_relation(y_s.T, y_t.T)

    y_s = softmax(S / tau)
    y_t = softmax(T / tau)
    inter_loss = tau**2 * inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


def ref_bce_kd(temp=1.0):
    # No reference repository: the standard multi-label soft-target loss, i.e. PyTorch's documented
    # BCEWithLogitsLoss l = -[q log sigmoid(x) + (1 - q) log(1 - sigmoid(x))] (mean reduction) with logits
    # x = s / T and targets q = sigmoid(t / T), times T**2 (Hinton et al.'s gradient-scale correction).
    x = S / temp
    q = 1 / (1 + np.exp(-T / temp))
    log_sig = -np.logaddexp(0, -x)  # log sigmoid(x)
    log_one_minus_sig = -np.logaddexp(0, x)  # log(1 - sigmoid(x))
    return np.mean(-(q * log_sig + (1 - q) * log_one_minus_sig)) * temp**2


def ref_fitnet():
    # HobbitLong/RepDistiller distiller_zoo/FitNet.py (HintLoss): nn.MSELoss()(regressor(f_s), f_t). The
    # regressor is edgekd's learned 1x1 convolution (no bias), fixed here to the weights W.
    adapted = np.einsum("oc,nchw->nohw", W, FS)
    return np.mean((adapted - FT) ** 2)


def _at_stage(f_s, f_t, p):
    # HobbitLong/RepDistiller distiller_zoo/AT.py (Attention.at_loss) = megvii-research/mdistiller
    # mdistiller/distillers/AT.py (single_stage_at_loss); szagoruyko/attention-transfer cifar.py at_loss.
    def at(f):  # F.normalize(f.pow(p).mean(1).view(N, -1)), L2 over positions
        a = (f**p).mean(1).reshape(len(f), -1)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    def adaptive_avg_pool2d(f, size):  # exact for sizes that divide evenly (all that is used here)
        n, c, h, w = f.shape
        return f.reshape(n, c, size, h // size, size, w // size).mean((3, 5))

    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = adaptive_avg_pool2d(f_s, t_h)
    elif s_h < t_h:
        f_t = adaptive_avg_pool2d(f_t, s_h)
    return ((at(f_s) - at(f_t)) ** 2).mean()


def ref_at(p=2.0, beta=1000.0, pairs=((FS, FT),)):
    # mdistiller AT: feat_weight (cfg.AT.LOSS.FEAT_WEIGHT = 1000) * sum of the stages' losses; the authors'
    # cifar.py: opt.beta * sum(loss_groups) with beta = 1e3; RepDistiller: beta = 1000 times the sum.
    return beta * sum(_at_stage(f_s, f_t, p) for f_s, f_t in pairs)


def _smooth_l1(a, b):  # torch.nn.functional.smooth_l1_loss, beta = 1, mean reduction
    x = np.abs(a - b)
    return np.where(x < 1, 0.5 * x**2, x - 0.5).mean()


def _pooled(f):
    # RepDistiller applies RKD and PKT to feat[-1], the global-average-pooled penultimate vector; edgekd pools
    # a tapped [N, C, H, W] map the same way before the relational losses.
    return f.mean((2, 3))


def ref_rkd(w_d=25.0, w_a=50.0):
    # HobbitLong/RepDistiller distiller_zoo/RKD.py (RKDLoss; same defaults w_d=25, w_a=50 as
    # megvii-research/mdistiller mdistiller/distillers/RKD.py).
    def pdist(e, eps=1e-12):
        e_square = (e**2).sum(1)
        prod = e @ e.T
        res = np.sqrt(np.maximum(e_square[:, None] + e_square[None, :] - 2 * prod, eps))
        res[np.arange(len(e)), np.arange(len(e))] = 0
        return res

    def angles(e):
        d = e[None, :, :] - e[:, None, :]  # [j, i] = e_i - e_j
        norm = d / np.maximum(np.linalg.norm(d, axis=2, keepdims=True), 1e-12)  # F.normalize(p=2, dim=2)
        return np.einsum("jik,jlk->jil", norm, norm).reshape(-1)  # bmm(norm, norm^T).view(-1)

    student, teacher = _pooled(FS).reshape(N, -1), _pooled(FT).reshape(N, -1)
    t_d = pdist(teacher)
    t_d = t_d / t_d[t_d > 0].mean()
    d = pdist(student)
    d = d / d[d > 0].mean()
    loss_d = _smooth_l1(d, t_d)
    loss_a = _smooth_l1(angles(student), angles(teacher))
    return w_d * loss_d + w_a * loss_a


def ref_pkt(eps=1e-7):
    # HobbitLong/RepDistiller distiller_zoo/PKT.py (PKT.cosine_similarity_loss, from passalis/probabilistic_kt).
    output_net, target_net = _pooled(FS), _pooled(FT)
    output_net = output_net / (np.sqrt((output_net**2).sum(1, keepdims=True)) + eps)
    target_net = target_net / (np.sqrt((target_net**2).sum(1, keepdims=True)) + eps)
    model_similarity = (output_net @ output_net.T + 1.0) / 2.0
    target_similarity = (target_net @ target_net.T + 1.0) / 2.0
    model_similarity = model_similarity / model_similarity.sum(1, keepdims=True)
    target_similarity = target_similarity / target_similarity.sum(1, keepdims=True)
    return np.mean(target_similarity * np.log((target_similarity + eps) / (model_similarity + eps)))


# ---------------------------------------------------------------------------------------------------------
# name -> (term text, reference, pinned value from the reference, task). Every registered name needs a row.
CASES = {
    "ce": ("ce", ref_ce, 3.27742723139, Task.MULTICLASS),
    "kd": ("kd:1", ref_kd, 2.70688961580, Task.MULTICLASS),
    "dkd": ("dkd:1,warmup=0", ref_dkd, 17.8362826960, Task.MULTICLASS),
    "dist": ("dist", ref_dist, 2.48637315410, Task.MULTICLASS),
    "mlkd": ("mlkd:1,T=2", lambda: ref_bce_kd(2.0), 3.33761846156, Task.MULTILABEL),
    "bce_kd": ("bce_kd", ref_bce_kd, 1.16267400404, Task.MULTILABEL),
    "fitnet": ("fitnet:1,s=a,t=b", ref_fitnet, 2.36578244402, Task.MULTICLASS),
    "at": ("at:1,s=a,t=b", ref_at, 89.6714777225, Task.MULTICLASS),
    "rkd": ("rkd:1,s=a,t=b", ref_rkd, 14.1555299895, Task.MULTICLASS),
    "pkt": ("pkt:1,s=a,t=b", ref_pkt, 0.0489181327746, Task.MULTICLASS),
}
# AT across resolutions and layers (the larger map is pooled down): term text, pairs, pinned value.
AT_POOLED = {
    "student_larger": ("at:1,s=big,t=b", ((FS_BIG, FT),), 72.0763381718),
    "teacher_larger": ("at:1,s=a,t=big", ((FS, FS_BIG),), 96.3256440878),
    "two_layers": ("at:1,s=a+big,t=b+b", ((FS, FT), (FS_BIG, FT)), 161.747815894),
}
MAPS = {"a": FS, "b": FT, "big": FS_BIG}


def test_every_registered_loss_has_a_case():
    # segmentation-only losses are pinned on score maps in tests/test_seg_losses.py
    seg_only = {n for n in LOSSES.names() if LOSSES.get(n).tasks == (Task.SEGMENTATION,)}
    assert seg_only == {"dice", "pixkd", "cwd"}
    assert sorted(CASES) == sorted(set(LOSSES.names()) - seg_only)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_reproduces_the_pinned_value(name):
    """The literal in CASES is what the reference transcription gives (so a reader can trace it)."""
    _, ref, pinned, _ = CASES[name]
    assert ref() == pytest.approx(pinned, rel=1e-10)


def _build(name: str, dtype=torch.float64):
    loss = parse_loss(CASES[name][0]).build()
    if loss.kind == "feature":
        loss.bind({"a": torch.Size(FS.shape)}, {"b": torch.Size(FT.shape)})
    loss = loss.to(dtype)
    if name == "fitnet":  # after the cast, so that float64 runs use W unrounded
        with torch.no_grad():
            loss.adapters[0].weight.copy_(torch.tensor(W).view(3, 2, 1, 1))
    return loss


def _inputs(name: str, student: torch.Tensor | None = None):
    task = CASES[name][3]
    targets = torch.tensor(YML) if task is Task.MULTILABEL else torch.tensor(Y)
    batch = LossBatch(targets, task, epoch=0, total_epochs=10)
    if LOSSES.get(name).kind == "feature":
        s = student if student is not None else torch.tensor(FS)
        return ModelOutputs(None, {"a": s}), ModelOutputs(None, {"b": torch.tensor(FT)}), batch
    s = student if student is not None else torch.tensor(S)
    return ModelOutputs(s), ModelOutputs(torch.tensor(T)), batch


@pytest.mark.parametrize("name", sorted(CASES))
def test_stored_value(name):
    """Every registered loss, at its defaults (plus the parameters in its term), gives the reference's value."""
    assert name in CASES, f"loss {name!r} is registered without a pinned reference value in CASES"
    value = _build(name)(*_inputs(name)).item()
    assert value == pytest.approx(CASES[name][2], rel=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_matches_float64(name):
    loss32 = _build(name, torch.float32)
    s, t, batch = _inputs(name)
    s32 = ModelOutputs(None if s.logits is None else s.logits.float(), {k: v.float() for k, v in s.features.items()})
    t32 = ModelOutputs(None if t.logits is None else t.logits.float(), {k: v.float() for k, v in t.features.items()})
    assert loss32(s32, t32, batch).item() == pytest.approx(CASES[name][2], rel=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient(name):
    """gradcheck in float64 w.r.t. the student's input, and the gradient is finite and nonzero."""
    loss = _build(name)
    base = torch.tensor(FS if loss.kind == "feature" else S, requires_grad=True)

    def f(x):
        return loss(*_inputs(name, x))

    assert torch.autograd.gradcheck(f, (base,), eps=1e-6, atol=1e-5)
    f(base).backward()
    assert torch.isfinite(base.grad).all() and base.grad.abs().sum() > 0


@pytest.mark.parametrize("case", sorted(AT_POOLED))
def test_at_pools_the_larger_map_and_sums_layers(case):
    text, pairs, pinned = AT_POOLED[case]
    assert ref_at(pairs=pairs) == pytest.approx(pinned, rel=1e-10)
    at = parse_loss(text).build()
    feats = {k: torch.tensor(v) for k, v in MAPS.items()}
    at.bind({k: v.shape for k, v in feats.items()}, {k: v.shape for k, v in feats.items()})
    value = at(ModelOutputs(None, feats), ModelOutputs(None, feats), None).item()
    assert value == pytest.approx(pinned, rel=1e-5)


def test_dkd_warmup_scales_with_the_run():
    assert dkd_warmup_factor(0, 240, 20, 20 / 240) == pytest.approx(1 / 20)
    assert dkd_warmup_factor(19, 240, 20, 20 / 240) == pytest.approx(1.0)
    assert dkd_warmup_factor(0, 60, 20, 20 / 240) == pytest.approx(1 / 5)  # capped at 1/12 of 60 epochs
    assert dkd_warmup_factor(0, 10, 20, 20 / 240) == 1.0  # a 10-epoch run has no warm-up
    loss = parse_loss("dkd:1,warmup=4,warmup_frac=1").build().double()
    s, t, _ = _inputs("dkd")
    full = loss(s, t, LossBatch(torch.tensor(Y), Task.MULTICLASS, epoch=5, total_epochs=10))
    first = loss(s, t, LossBatch(torch.tensor(Y), Task.MULTICLASS, epoch=0, total_epochs=10))
    assert full.item() == pytest.approx(CASES["dkd"][2], rel=1e-5)
    assert first.item() == pytest.approx(CASES["dkd"][2] / 4, rel=1e-5)


def test_ce_binary_and_multilabel_and_smoothing():
    ce = parse_loss("ce").build()
    s = torch.tensor(S)
    ml = ce(ModelOutputs(s), None, LossBatch(torch.tensor(YML), Task.MULTILABEL)).item()
    log_p, log_1mp = -np.logaddexp(0, -S), -np.logaddexp(0, S)
    assert ml == pytest.approx(np.mean(-(YML * log_p + (1 - YML) * log_1mp)))
    smooth = parse_loss("ce:1,smoothing=0.1").build()
    smooth.configure(label_smoothing=0.0, class_weights=None)
    q = np.full((N, C), 0.1 / C)
    q[np.arange(N), Y] += 0.9
    expected = -np.mean((q * log_softmax(S)).sum(1))
    assert smooth(ModelOutputs(s), None, LossBatch(torch.tensor(Y), Task.MULTICLASS)).item() == pytest.approx(expected)


def test_dist_binary_is_finite():
    dist = parse_loss("dist").build()
    s, t = torch.randn(8, 2, requires_grad=True), torch.randn(8, 2)
    value = dist(ModelOutputs(s), ModelOutputs(t), LossBatch(torch.zeros(8, dtype=torch.long), Task.BINARY))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


def test_fitnet_and_at_align_spatial_sizes():
    fit = parse_loss("fitnet:1,s=a,t=b").build()
    fit.bind({"a": torch.Size([2, 4, 4, 4])}, {"b": torch.Size([2, 6, 8, 8])})
    assert isinstance(fit.adapters[0], nn.Conv2d) and fit.adapters[0].weight.shape == (6, 4, 1, 1)
    fs = torch.randn(2, 4, 4, 4, requires_grad=True)
    out = fit(ModelOutputs(None, {"a": fs}), ModelOutputs(None, {"b": torch.randn(2, 6, 8, 8)}), None)
    out.backward()
    assert torch.isfinite(out) and fs.grad.abs().sum() > 0
    at = parse_loss("at:1,s=a,t=b").build()
    const_s, const_t = torch.ones(2, 3, 4, 4), torch.full((2, 5, 8, 8), 2.0)
    # uniform attention at both resolutions: identical after pooling, so the loss is 0
    assert at(ModelOutputs(None, {"a": const_s}), ModelOutputs(None, {"b": const_t}), None).item() == pytest.approx(0)


def test_feature_losses_reject_bad_shapes():
    with pytest.raises(InvalidInputError, match="not an"):
        parse_loss("at:1,s=a,t=b").build().bind({"a": torch.Size([2, 8])}, {"b": torch.Size([2, 8, 4, 4])})
    with pytest.raises(InvalidInputError, match="pair the layers"):
        parse_loss("fitnet:1,s=a+b,t=c").build().resolve_layers("x", "y")


def test_parse_loss_examples():
    t = parse_loss("kd:0.9,T=4")
    assert (t.name, t.weight, t.params) == ("kd", 0.9, {"T": 4.0})
    assert str(t) == "kd:0.9,T=4"
    assert parse_loss("ce").weight == 1.0 and parse_loss("KD").name == "kd"
    assert parse_loss("kd:T=2").params == {"T": 2.0}
    assert parse_loss("fitnet:1,s=layer3,t=layer3").params == {"s": "layer3", "t": "layer3"}
    assert parse_loss("rkd:2,teacher=1").params == {"teacher": 1}
    assert loss_params("kd") == {"T": 4.0}
    assert loss_params("dkd")["beta"] == 8.0 and loss_params("rkd")["angle"] == 50.0


def test_defaults_are_the_reference_settings():
    """The pinned values above use these defaults; they are the reference repositories' settings."""
    assert loss_params("kd") == {"T": 4.0}  # RepDistiller / mdistiller CIFAR KD
    dkd = loss_params("dkd")
    assert (dkd["alpha"], dkd["beta"], dkd["T"], dkd["warmup"]) == (1.0, 8.0, 4.0, 20.0)  # mdistiller cfg.DKD
    assert loss_params("dist") == {"beta": 1.0, "gamma": 1.0, "T": 1.0}  # DIST ImageNet setting
    at = loss_params("at")
    assert (at["p"], at["beta"]) == (2.0, 1000.0)  # mdistiller cfg.AT, attention-transfer --beta 1e3
    rkd = loss_params("rkd")
    assert (rkd["distance"], rkd["angle"]) == (25.0, 50.0)  # RepDistiller RKDLoss(w_d=25, w_a=50)


@pytest.mark.parametrize(
    "text,error,match",
    [
        ("kdd:1", UnknownNameError, "kd"),
        ("kd:1,Q=3", InvalidInputError, "valid parameters of kd: T=4"),
        ("kd:abc", InvalidInputError, "bad weight"),
        ("kd:-1", InvalidInputError, ">= 0"),
        ("kd:1,T=x", InvalidInputError, "not a valid float"),
        ("kd:1,T=0", InvalidInputError, "must be > 0"),
        ("kd:1,T=2,T=3", InvalidInputError, "twice"),
        ("kd:1,T", InvalidInputError, "key=value"),
        ("rkd:1,teacher=0.5", InvalidInputError, "not a valid int"),
        ("", InvalidInputError, "empty"),
    ],
)
def test_parse_loss_errors(text, error, match):
    with pytest.raises(error) as e:
        parse_loss(text).build()
    assert match in str(e.value)
