"""Teacher labelling (`edgekd label`): soft labels for unlabelled images from one or several teachers.

Each teacher (a model directory) gives class probabilities ``p_t = softmax(z_t)`` on every image (through its
own preprocessing); the soft label is their weighted mean ``p = sum_t w_t p_t`` (weights normalised, equal by
default), the ensemble average of Hinton et al. (2015) and of data distillation (Radosavovic et al., 2018).
An image whose confidence ``max_c p_c`` is below ``min_confidence`` is kept in the file but marked
``abstained``: no ``softlabels:`` source ever trains on it. Agreement statistics say how far the teachers can be
trusted together: the share of images on which every teacher's top-1 class is the same, the pairwise top-1
agreement matrix, and each teacher's mean confidence.

The output (``.npz`` or ``.csv``, see :mod:`edgekd.data._softlabels`) is keyed by image content (sha256 of the
file bytes, or of the stored pixels of array data), so ``softlabels:FILE`` never matches a changed image to
a stale label.

Example:
    >>> report = label_images(["runs/teacher_a", "runs/teacher_b"], "folder:/data/unlabeled", "labels.npz",
    ...                       min_confidence=0.8)
    >>> report.abstained, report.agreement["all"]
    (312, 0.94)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd._io import sha256_file
from edgekd._progress import task_progress
from edgekd.data import ImageSet, SoftLabels, load_images, make_loader, write_soft_labels
from edgekd.data._softlabels import LABEL_FORMATS
from edgekd.distill._loop import resolve_device
from edgekd.errors import InvalidInputError
from edgekd.modeldir import WEIGHTS_FILE, is_model_dir, load_model_dir, read_card
from edgekd.specs import Task
from edgekd.teachers import Teacher

__all__ = ["LabelReport", "label_images", "load_label_teachers", "teacher_agreement"]


@dataclass
class LabelReport:
    """What :func:`label_images` wrote and how much the teachers agreed."""

    out: Path
    data: str
    images: int
    abstained: int
    min_confidence: float
    label_names: list[str]
    teachers: list[dict[str, Any]]
    agreement: dict[str, Any]
    mean_confidence: float
    class_counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "data": self.data,
            "images": self.images,
            "abstained": self.abstained,
            "min_confidence": self.min_confidence,
            "label_names": self.label_names,
            "teachers": self.teachers,
            "agreement": self.agreement,
            "mean_confidence": self.mean_confidence,
            "class_counts": self.class_counts,
        }


def load_label_teachers(refs: Sequence[str]) -> tuple[list[Teacher], list[str], Task]:
    """Model-directory teachers that share label names and a single-label task; returns (teachers, names, task)."""
    if not refs:
        raise InvalidInputError("no teacher given", "pass one or more model directories")
    teachers, names, task = [], None, None
    for ref in refs:
        if not is_model_dir(ref):
            read_card(ref)  # raises the precise ArtifactError (missing, not a model directory, malformed)
        card = read_card(ref)
        if card.task is Task.MULTILABEL:
            raise InvalidInputError(f"teacher {ref} is multi-label", "edgekd label writes single-label soft labels")
        if names is None:
            names, task = list(card.label_names), card.task
        elif list(card.label_names) != names:
            raise InvalidInputError(
                f"teacher {ref} predicts {card.label_names}, the first teacher {names}",
                "every teacher must predict the same classes in the same order",
            )
        net, card = load_model_dir(ref)
        teacher = Teacher.from_module(net, card.preprocess, name=str(ref), num_classes=len(card.label_names))
        teacher.fingerprint = sha256_file(Path(ref) / WEIGHTS_FILE)  # as distillation records it
        teachers.append(teacher)
    channels = {t.preprocess.data_channels for t in teachers}
    if len(channels) != 1:
        raise InvalidInputError("the teachers read images with different channel counts", "use teachers of one data")
    return teachers, names, task


def _weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if not weights:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != n or (w < 0).any() or w.sum() <= 0 or not np.isfinite(w).all():
        raise InvalidInputError(
            f"{len(w)} teacher weights for {n} teachers, or a negative/zero-sum weight",
            "give one non-negative --teacher-weight per teacher",
        )
    return w / w.sum()


def teacher_agreement(probs: np.ndarray) -> dict[str, Any]:
    """Top-1 agreement of teachers' probabilities ``[T, N, K]``: all together and pairwise, plus mean confidence."""
    top = probs.argmax(2)
    t = len(top)
    pairwise = [[float((top[a] == top[b]).mean()) if top.shape[1] else 1.0 for b in range(t)] for a in range(t)]
    return {
        "all": float((top == top[0]).all(0).mean()) if top.shape[1] else 1.0,
        "pairwise": pairwise,
        "teacher_confidence": [float(p.max(1).mean()) if len(p) else 0.0 for p in probs],
    }


@torch.no_grad()
def _probabilities(
    teachers: list[Teacher], images: ImageSet, batch_size: int, device: torch.device, progress: bool
) -> np.ndarray:
    loader = make_loader(images.dataset, batch_size, shuffle=False)
    out: list[list[np.ndarray]] = [[] for _ in teachers]
    bar, total = task_progress("label", len(images), progress)
    with bar:
        task = bar.add_task("label", total=total)
        for batch, _ in loader:
            x = batch.to(device)
            for k, t in enumerate(teachers):
                out[k].append(torch.softmax(t.logits(x).float(), 1).cpu().numpy())
            bar.advance(task, len(batch))
    return np.stack([np.concatenate(p) for p in out])


def label_images(
    teachers: Sequence[str],
    data: str,
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    min_confidence: float = 0.0,
    split: str = "train",
    batch_size: int = 256,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> LabelReport:
    """Soft-label the images of ``data`` with ``teachers`` and write them to ``out`` (``.npz`` or ``.csv``).

    Args:
        teachers: model directories predicting the same classes.
        data: unlabelled images (``folder:DIR``, ``dicom:DIR``, or a labelled spec whose labels are ignored;
            see :func:`edgekd.data.load_images`).
        out: the label file; its suffix picks the format.
        weights: one per teacher (normalised); default equal.
        min_confidence: images whose averaged top-1 probability is below this are marked abstained.
        split: the split of a labelled spec (``train``, ``val``, ``test`` or ``all``).
        batch_size, device, progress: how the teachers run.
        overwrite: replace an existing ``out``.

    Raises:
        InvalidInputError: bad format, weights or threshold, teachers that disagree on classes, an existing
            ``out`` without ``overwrite`` (exit 3).
        ArtifactError: unreadable teachers or images (exit 4).
    """
    out = Path(out)
    if out.suffix.lower() not in LABEL_FORMATS:
        raise InvalidInputError(f"cannot tell the soft-label format of {out}", "use --out FILE.npz or FILE.csv")
    if out.is_dir() or (out.exists() and not overwrite):
        raise InvalidInputError(f"{out} already exists", "pass --overwrite to replace it, or choose another --out")
    if not 0.0 <= min_confidence <= 1.0:
        raise InvalidInputError(f"--min-confidence {min_confidence} must be in [0, 1]", "e.g. --min-confidence 0.8")
    nets, names, _ = load_label_teachers(list(teachers))
    w = _weights(weights, len(nets))
    pre = nets[0].preprocess
    images = load_images(data, channels=pre.data_channels, size=tuple(pre.input_size), split=split)
    probs = _probabilities(nets, images, batch_size, resolve_device(device), progress)  # [T, N, K]
    mean = np.tensordot(w, probs, axes=1).astype(np.float32)
    mean /= mean.sum(1, keepdims=True)
    confidence = mean.max(1)
    abstained = confidence < min_confidence
    agreement = teacher_agreement(probs)
    described = [{"name": t.name, "weights_sha256": t.fingerprint, "weight": float(wk)} for t, wk in zip(nets, w)]
    counts = np.bincount(mean.argmax(1)[~abstained], minlength=len(names))
    report = LabelReport(
        out=out,
        data=images.spec,
        images=len(images),
        abstained=int(abstained.sum()),
        min_confidence=float(min_confidence),
        label_names=names,
        teachers=described,
        agreement=agreement,
        mean_confidence=float(confidence.mean()) if len(confidence) else 0.0,
        class_counts={n: int(c) for n, c in zip(names, counts)},
    )
    meta = {k: v for k, v in report.to_json().items() if k != "out"}
    keys = [images.key(i) for i in range(len(images))]
    # absolute paths, so that softlabels:FILE finds the images from any working directory
    sources = [str(Path(p).resolve()) for p in images.sources] if images.files else list(images.sources)
    write_soft_labels(out, SoftLabels(names, keys, sources, mean, abstained, meta))
    return report
