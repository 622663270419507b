"""Training objectives: what the loop minimises for one batch.

The loop hands every objective the *raw* ``uint8`` batch, so that each model (student, teachers) applies
its own :class:`~edgekd.data.preprocess.Preprocess`. An objective returns the total loss and a dict of
named terms (shown in the progress bar and logged per epoch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.specs import Preprocess, Task

__all__ = ["Objective", "SupervisedObjective", "task_loss"]


class Objective(nn.Module):
    """Base class. Subclasses implement :meth:`forward`.

    ``forward(model, images, targets, indices, epoch)`` returns ``(loss, terms)``. Parameters the
    objective owns (e.g. FitNet adapters) are ordinary sub-modules and are optimised with the model.
    """

    def __init__(self, preprocess: Preprocess, *, channels_last: bool = False) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.channels_last = channels_last

    def student_input(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Hook for schedules inside a loss (e.g. DKD's warm-up)."""

    def augment_epoch(self, epoch: int) -> int:
        """The augmentation epoch the data of ``epoch`` is drawn with (a teacher cache maps it to a view)."""
        return epoch


def task_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    task: Task,
    *,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy for single-label tasks (per pixel for segmentation), BCE-with-logits for multi-label ones.

    Segmentation logits of another size than the masks are resized to them first (bilinear).
    """
    if logits.dtype != torch.float64:  # half precision (autocast) is promoted; float64 stays (gradient checks)
        logits = logits.float()
    if task is Task.SEGMENTATION and tuple(logits.shape[-2:]) != tuple(targets.shape[-2:]):
        logits = F.interpolate(logits, size=tuple(targets.shape[-2:]), mode="bilinear", align_corners=False)
    if task is Task.MULTILABEL:
        t = targets.to(logits.dtype)
        if label_smoothing:
            t = t * (1 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(logits, t, pos_weight=class_weights)
    return F.cross_entropy(logits, targets, weight=class_weights, label_smoothing=label_smoothing)


class SupervisedObjective(Objective):
    """Plain supervised training: ``CE(student(x), y)`` (or BCE for multi-label data)."""

    def __init__(
        self,
        preprocess: Preprocess,
        task: Task,
        *,
        label_smoothing: float = 0.0,
        class_weights: torch.Tensor | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__(preprocess, channels_last=channels_last)
        self.task = task
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, model, images, targets, indices=None, epoch: int = 0):
        logits = model(self.student_input(images))
        loss = task_loss(
            logits, targets, self.task, label_smoothing=self.label_smoothing, class_weights=self.class_weights
        )
        return loss, {"ce": loss.detach()}
