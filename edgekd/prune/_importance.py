"""Channel-importance criteria for structural pruning: one registry, one contract.

Every criterion follows Torch-Pruning's contract ``importance(group) -> Tensor``: given a dependency
group (the coupled channels that must be removed together, Fang et al., "DepGraph: Towards Any
Structural Pruning", CVPR 2023) it returns one score per channel of the group; the lowest scores are
pruned. Scores are reduced over every layer of the group (mean) and normalised per group (mean), so that
groups of different sizes can be ranked together in global pruning.

==============  ==============================================================================
name            score of output channel ``c`` (``W_l[c]`` its weights in layer ``l`` of the group)
==============  ==============================================================================
``l1``          ``mean_l ||W_l[c]||_1``: filter L1 norm (Li et al., "Pruning Filters for
                Efficient ConvNets", ICLR 2017), reduced over the group.
``l2``          ``mean_l ||W_l[c]||_2^2``: group L2 magnitude (Torch-Pruning's default).
``taylor``      ``mean_l sum_i |w_i * dL/dw_i|`` over the channel's weights: first-order Taylor
                estimate of the loss change when the channel is removed (Molchanov et al.,
                "Importance Estimation for Neural Network Pruning", CVPR 2019). Needs gradients:
                :func:`accumulate_gradients` runs a few batches of ``loss.backward()`` first.
``bn-scale``    ``|gamma_c|`` of the batch norms in the group (Liu et al., "Learning Efficient
                Convolutional Networks through Network Slimming", ICCV 2017). The paper trains
                with an L1 penalty on ``gamma`` first; here the scale of the trained model is used
                as is.
``lamp``        LAMP score ``s_u = w_u^2 / sum_{v >= u} w_v^2`` over the channel magnitudes of a
                layer sorted ascending (Lee et al., "Layer-adaptive Sparsity for the
                Magnitude-based Pruning", ICLR 2021): layer-adaptive, so global ranking does not
                empty small layers.
``random``      uniform noise: the baseline every criterion should beat.
==============  ==============================================================================

Example:
    >>> imp = build_importance("lamp")
    >>> IMPORTANCE.meta("taylor")["needs_grad"]
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn

from edgekd.distill import task_loss
from edgekd.registry import Registry
from edgekd.specs import Preprocess, Task

__all__ = ["IMPORTANCE", "build_importance", "list_importance", "needs_gradients", "accumulate_gradients"]

ImportanceFactory = Callable[[], tp.importance.Importance]
IMPORTANCE: Registry[ImportanceFactory] = Registry("importance criterion")


@IMPORTANCE.register("l1", needs_grad=False, paper="Li et al. 2017")
def _l1() -> tp.importance.Importance:
    return tp.importance.GroupMagnitudeImportance(p=1, group_reduction="mean", normalizer="mean")


@IMPORTANCE.register("l2", needs_grad=False, paper="Fang et al. 2023 (Torch-Pruning default)")
def _l2() -> tp.importance.Importance:
    return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")


@IMPORTANCE.register("taylor", needs_grad=True, paper="Molchanov et al. 2019")
def _taylor() -> tp.importance.Importance:
    return tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer="mean")


@IMPORTANCE.register("bn-scale", needs_grad=False, paper="Liu et al. 2017 (network slimming)")
def _bn_scale() -> tp.importance.Importance:
    return tp.importance.BNScaleImportance(group_reduction="mean", normalizer="mean")


@IMPORTANCE.register("lamp", needs_grad=False, paper="Lee et al. 2021")
def _lamp() -> tp.importance.Importance:
    return tp.importance.LAMPImportance(p=2, group_reduction="mean", normalizer="lamp")


@IMPORTANCE.register("random", needs_grad=False, paper="baseline")
def _random() -> tp.importance.Importance:
    return tp.importance.RandomImportance()


def build_importance(name: str) -> tp.importance.Importance:
    """A fresh Torch-Pruning importance object for a registered criterion.

    Raises:
        UnknownNameError: ``name`` is not registered (the hint suggests close names).
    """
    return IMPORTANCE.get(name)()


def list_importance() -> list[str]:
    """Registered criterion names, sorted."""
    return IMPORTANCE.names()


def needs_gradients(name: str) -> bool:
    """Whether the criterion reads ``.grad`` (run :func:`accumulate_gradients` before each pruning step)."""
    return bool(IMPORTANCE.meta(name).get("needs_grad", False))


def accumulate_gradients(
    model: nn.Module, batches: Iterable, preprocess: Preprocess, task: Task, *, device: torch.device | str = "cpu"
) -> int:
    """Sum the task-loss gradients of ``batches`` into ``.grad`` (for the ``taylor`` criterion).

    The model runs in eval mode, so batch-norm statistics stay as trained; gradients are zeroed first.

    Returns:
        The number of samples seen.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    seen = 0
    for batch in batches:
        images, targets = batch[0].to(device), batch[1].to(device)
        loss = task_loss(model(preprocess(images)), targets, task)
        loss.backward()  # gradients accumulate over the batches
        seen += len(images)
    model.train(was_training)
    return seen


def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable, preprocess: Preprocess, *, device: torch.device | str = "cpu"
) -> int:
    """Re-estimate every batch-norm layer's running statistics on ``batches`` (adaptive BN after pruning).

    Removing a layer's input channels changes the distribution its batch norm sees, but the running mean and
    variance still describe the unpruned network: in eval mode the pruned model then normalises with the wrong
    statistics, which can silence whole channels behind a ReLU (a segmenter that predicts only background).
    Li et al. (EagleEye, ECCV 2020) re-estimate them on a few training batches before judging a pruned network;
    this does it with PyTorch's own :func:`torch.optim.swa_utils.update_bn` (statistics reset, then the
    cumulative mean over the batches, forward passes only). Nothing changes when no batch arrives.

    Returns:
        The number of samples seen.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return 0
    it = iter(batches)
    first = next(it, None)
    if first is None:  # update_bn would leave the statistics reset
        return 0
    seen = 0

    def inputs():
        nonlocal seen
        for batch in itertools.chain([first], it):
            seen += len(batch[0])
            yield preprocess(batch[0].to(device))

    torch.optim.swa_utils.update_bn(inputs(), model)
    return seen
