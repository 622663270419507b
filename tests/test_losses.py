"""Stored-value and gradient tests for every registered loss, and the ``--loss`` term syntax.

Each expected value is computed here from the paper's formula with plain numpy on fixed tensors (never by
calling the loss under test), and pinned as a number as well.
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

# Fixed inputs: 4 samples, 3 classes.
S = np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [-0.5, 0.1, 0.2], [2.5, 0.0, -1.5]])
T = np.array([[0.5, 3.0, -1.0], [1.0, -2.0, 2.5], [0.0, 1.0, -0.3], [3.0, 0.5, -2.0]])
Y = np.array([1, 2, 1, 0])
YML = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=np.float64)
rng = np.random.default_rng(0)
FS = rng.normal(size=(4, 2, 3, 3))  # student feature map [N, C, H, W]
FT = rng.normal(size=(4, 3, 3, 3))  # teacher feature map, other width
W = rng.normal(size=(3, 2))  # fixed FitNet adapter (teacher channels x student channels)


def softmax(z, T=1.0):
    e = np.exp(z / T - (z / T).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def kl_rows(p, q):
    return (p * (np.log(p) - np.log(q))).sum(1)


def ref_ce():
    return -np.mean(np.log(softmax(S)[np.arange(4), Y]))


def ref_kd(temp=4.0):
    return temp**2 * kl_rows(softmax(T, temp), softmax(S, temp)).mean()


def ref_dkd(alpha=1.0, beta=8.0, temp=4.0):
    ps, pt = softmax(S, temp), softmax(T, temp)
    total = 0.0
    for i, y in enumerate(Y):
        bs, bt = np.array([ps[i, y], 1 - ps[i, y]]), np.array([pt[i, y], 1 - pt[i, y]])
        tckd = (bt * np.log(bt / bs)).sum()
        others = [c for c in range(3) if c != y]
        qs, qt = softmax(S[i : i + 1, others], temp)[0], softmax(T[i : i + 1, others], temp)[0]
        nckd = (qt * np.log(qt / qs)).sum()
        total += alpha * tckd + beta * nckd
    return temp**2 * total / 4


def ref_dist(beta=1.0, gamma=1.0, temp=1.0):
    ys, yt = softmax(S, temp), softmax(T, temp)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(4)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(3)])
    return temp**2 * (beta * inter + gamma * intra)


def ref_mlkd(temp=1.0):
    p, q = sigmoid(S / temp), sigmoid(T / temp)
    return temp**2 * np.mean(-(q * np.log(p) + (1 - q) * np.log(1 - p)))


def ref_fitnet():
    adapted = np.einsum("oc,nchw->nohw", W, FS)
    return np.mean((adapted - FT) ** 2)


def ref_at(p=2.0, beta=1000.0):
    def q(f):
        a = (np.abs(f) ** p).mean(1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return beta / 2 * np.mean((q(FS) - q(FT)) ** 2)


def huber(x):
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5).mean()


def ref_rkd(wd=25.0, wa=50.0):
    es, et = FS.mean((2, 3)), FT.mean((2, 3))

    def dist(e):
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        return d / d[~np.eye(4, dtype=bool)].mean()

    def angles(e):
        out = np.zeros((4, 4, 4))
        for j in range(4):
            for i in range(4):
                for k in range(4):
                    a, b = e[i] - e[j], e[k] - e[j]
                    na, nb = max(np.linalg.norm(a), 1e-12), max(np.linalg.norm(b), 1e-12)
                    out[j, i, k] = a @ b / (na * nb)
        return out

    return wd * huber(dist(es) - dist(et)) + wa * huber(angles(es) - angles(et))


def ref_pkt(eps=1e-7):
    def cond(e):
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    p, q = cond(FS.mean((2, 3))), cond(FT.mean((2, 3)))
    return np.mean(q * np.log((q + eps) / (p + eps)))


# name -> (term text, numpy reference, pinned value, task)
CASES = {
    "ce": ("ce", ref_ce, 0.4362813, Task.MULTICLASS),
    "kd": ("kd:1,T=4", ref_kd, 0.2393010, Task.MULTICLASS),
    "dkd": ("dkd:1,warmup=0", ref_dkd, 1.5365826, Task.MULTICLASS),
    "dist": ("dist", ref_dist, 0.2230846, Task.MULTICLASS),
    "mlkd": ("mlkd:1,T=2", lambda: ref_mlkd(2.0), 2.5301430, Task.MULTILABEL),
    "bce_kd": ("bce_kd", ref_mlkd, 0.5397958, Task.MULTILABEL),
    "fitnet": ("fitnet:1,s=a,t=b", ref_fitnet, 1.8417431, Task.MULTICLASS),
    "at": ("at:1,s=a,t=b", ref_at, 35.4781969, Task.MULTICLASS),
    "rkd": ("rkd:1,s=a,t=b", ref_rkd, 4.6066172, Task.MULTICLASS),
    "pkt": ("pkt:1,s=a,t=b", ref_pkt, 0.1028707, Task.MULTICLASS),
}


def test_every_registered_loss_has_a_case():
    assert sorted(CASES) == LOSSES.names()


def _build(name: str, dtype=torch.float64):
    loss = parse_loss(CASES[name][0]).build()
    if loss.kind == "feature":
        loss.bind({"a": torch.Size(FS.shape)}, {"b": torch.Size(FT.shape)})
        if name == "fitnet":
            with torch.no_grad():
                loss.adapters[0].weight.copy_(torch.tensor(W).view(3, 2, 1, 1))
    return loss.to(dtype)


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
    _, ref, pinned, _ = CASES[name]
    value = _build(name)(*_inputs(name)).item()
    assert value == pytest.approx(ref(), rel=1e-6, abs=1e-9)
    assert value == pytest.approx(pinned, rel=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_matches_float64(name):
    loss32 = _build(name, torch.float32)
    s, t, batch = _inputs(name)
    s32 = ModelOutputs(None if s.logits is None else s.logits.float(), {k: v.float() for k, v in s.features.items()})
    t32 = ModelOutputs(None if t.logits is None else t.logits.float(), {k: v.float() for k, v in t.features.items()})
    assert loss32(s32, t32, batch).item() == pytest.approx(CASES[name][1](), rel=1e-4)


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


def test_dkd_warmup_scales_with_the_run():
    assert dkd_warmup_factor(0, 240, 20, 20 / 240) == pytest.approx(1 / 20)
    assert dkd_warmup_factor(19, 240, 20, 20 / 240) == pytest.approx(1.0)
    assert dkd_warmup_factor(0, 60, 20, 20 / 240) == pytest.approx(1 / 5)  # capped at 1/12 of 60 epochs
    assert dkd_warmup_factor(0, 10, 20, 20 / 240) == 1.0  # a 10-epoch run has no warm-up
    loss = parse_loss("dkd:1,warmup=4,warmup_frac=1").build().double()
    s, t, _ = _inputs("dkd")
    full = loss(s, t, LossBatch(torch.tensor(Y), Task.MULTICLASS, epoch=5, total_epochs=10))
    first = loss(s, t, LossBatch(torch.tensor(Y), Task.MULTICLASS, epoch=0, total_epochs=10))
    assert first.item() == pytest.approx(full.item() / 4)


def test_ce_binary_and_multilabel_and_smoothing():
    ce = parse_loss("ce").build()
    s = torch.tensor(S)
    ml = ce(ModelOutputs(s), None, LossBatch(torch.tensor(YML), Task.MULTILABEL)).item()
    p = sigmoid(S)
    assert ml == pytest.approx(np.mean(-(YML * np.log(p) + (1 - YML) * np.log(1 - p))))
    smooth = parse_loss("ce:1,smoothing=0.1").build()
    smooth.configure(label_smoothing=0.0, class_weights=None)
    q = np.full((4, 3), 0.1 / 3)
    q[np.arange(4), Y] += 0.9
    expected = -np.mean((q * np.log(softmax(S))).sum(1))
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
    # uniform attention at both resolutions: identical after resizing, so the loss is 0
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
