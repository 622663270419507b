"""Segmentation losses pinned against reference implementations (MONAI DiceLoss; CIRKD's pixel KD; the CWD of
Shu et al. as in mmrazor's ChannelWiseDivergence), transcribed here in numpy, not computed by our functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.distill import LossBatch, ModelOutputs, build_distill_objective, parse_loss
from edgekd.distill.losses import cwd_div, pixel_kd_div, soft_dice_loss
from edgekd.errors import InvalidInputError
from edgekd.specs import Preprocess, Task


def _maps(seed=0, n=2, c=3, h=5, w=7):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2,
        torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2,
        torch.randint(0, c, (n, h, w), generator=g),
    )


def _np_log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _ref_cwd(s, t, tau):
    """mmrazor ChannelWiseDivergence.forward (Shu et al. 2021), transcribed in numpy:
    sum(softmax(T/tau) * (logsoftmax(T/tau) - logsoftmax(S/tau))) over (N*C, W*H) rows * tau^2 / (C * N)."""
    n, c, h, w = t.shape
    lt = _np_log_softmax(t.reshape(-1, h * w) / tau, 1)
    ls = _np_log_softmax(s.reshape(-1, h * w) / tau, 1)
    return float(np.sum(np.exp(lt) * lt - np.exp(lt) * ls) * tau**2 / (c * n))


def _ref_pixel_kd(s, t, T):
    """CIRKD CriterionKD (Yang et al. 2022): permute to (-1, C) rows, kl_div(batchmean) * T^2, in numpy."""
    c = t.shape[1]
    ps = _np_log_softmax(s.transpose(0, 2, 3, 1).reshape(-1, c) / T, 1)
    pt = np.exp(_np_log_softmax(t.transpose(0, 2, 3, 1).reshape(-1, c) / T, 1))
    return float((pt * (np.log(pt) - ps)).sum() / pt.shape[0] * T**2)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_matches_the_reference_formula(tau):
    s, t, _ = _maps()
    value = cwd_div(s, t, tau)
    assert float(value) == pytest.approx(_ref_cwd(s.numpy(), t.numpy(), tau), rel=1e-10)
    assert float(cwd_div(t, t, tau)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_pixel_kd_matches_the_reference_formula(T):
    s, t, _ = _maps(1)
    assert float(pixel_kd_div(s, t, T)) == pytest.approx(_ref_pixel_kd(s.numpy(), t.numpy(), T), rel=1e-10)


def test_student_maps_are_resized_to_the_teacher():
    s, t, _ = _maps(2, h=8, w=8)
    small = torch.nn.functional.interpolate(s, size=(4, 4), mode="bilinear", align_corners=False)
    up = torch.nn.functional.interpolate(small, size=(8, 8), mode="bilinear", align_corners=False)
    assert float(cwd_div(small, t)) == pytest.approx(_ref_cwd(up.numpy(), t.numpy(), 1.0), rel=1e-10)
    assert float(pixel_kd_div(small, t)) == pytest.approx(_ref_pixel_kd(up.numpy(), t.numpy(), 1.0), rel=1e-10)


@pytest.mark.parametrize("background,batch", [(False, False), (True, False), (False, True)])
def test_dice_loss_matches_monai(background, batch):
    losses = pytest.importorskip("monai.losses")
    s, _, y = _maps(3)
    ref = losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=background, batch=batch)(s, y[:, None])
    assert float(soft_dice_loss(s, y, background=background, batch=batch)) == pytest.approx(float(ref), rel=1e-9)


def test_loss_terms_check_the_task():
    pre = Preprocess(input_size=(16, 16), data_channels=1, in_chans=1, mean=(0.5,), std=(0.25,))
    student = torch.nn.Conv2d(1, 2, 1)
    with pytest.raises(InvalidInputError, match="kd.*does not support segmentation.*pixkd"):
        build_distill_objective(student, pre, Task.SEGMENTATION, [], ["ce:1", "kd:1"])
    with pytest.raises(InvalidInputError, match="does not support binary"):
        build_distill_objective(student, pre, Task.BINARY, [], ["dice:1"])
    # ce and dice on masks: a finite scalar with gradients
    objective = build_distill_objective(student, pre, Task.SEGMENTATION, [], ["ce:1", "dice:1"])
    images = torch.randint(0, 255, (2, 1, 16, 16), dtype=torch.uint8)
    masks = torch.randint(0, 2, (2, 16, 16))
    loss, terms = objective(student, images, masks)
    loss.backward()
    assert set(terms) == {"ce", "dice"} and torch.isfinite(loss) and student.weight.grad is not None


def test_term_syntax():
    assert parse_loss("cwd:3,tau=4").params == {"tau": 4.0}
    assert parse_loss("dice:1,background=1").params == {"background": True}
    out = parse_loss("pixkd:1,T=2").build()(
        ModelOutputs(torch.zeros(1, 2, 3, 3)), ModelOutputs(torch.zeros(1, 2, 3, 3)), LossBatch(None, Task.SEGMENTATION)
    )
    assert float(out) == 0.0


@pytest.mark.parametrize("fn", [cwd_div, pixel_kd_div, lambda s, t: soft_dice_loss(s, t.argmax(1))])
def test_gradients_and_float32(fn):
    s, t, _ = _maps(4, n=1, c=2, h=4, w=4)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,), eps=1e-6, atol=1e-5)
    assert float(fn(s.float(), t.float())) == pytest.approx(float(fn(s, t)), rel=1e-4)
    assert fn(s.bfloat16(), t.bfloat16()).dtype == torch.float32  # autocast activations are promoted
