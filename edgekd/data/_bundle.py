""":class:`DataBundle`: the three splits of one data spec with everything a model needs to know about them.

Example:
    >>> bundle = load_data("pneumoniamnist")
    >>> bundle.task, bundle.num_classes, bundle.image_size
    (<Task.BINARY: 'binary'>, 2, (28, 28))
    >>> pre = bundle.preprocess(input_size=(64, 64), in_chans=3)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from edgekd.data._dataset import channel_stats
from edgekd.data._segcheck import check_mask_targets, pixel_counts
from edgekd.errors import InvalidInputError
from edgekd.specs import IntendedUse, Preprocess, Task

__all__ = ["DataBundle", "SourceData", "SPLITS", "check_targets"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SourceData:
    """What a source builder returns; :func:`~edgekd.data.load_data` derives the rest of the bundle."""

    train: Dataset
    val: Dataset
    test: Dataset
    task: Task
    label_names: list[str] = field(default_factory=list)
    intended_use: IntendedUse | None = None  # DICOM sources: the header values seen in the training split


def check_targets(spec: str, data: SourceData) -> None:
    """The label rules every source obeys, checked before any training work.

    Every split is non-empty; there are at least two distinct label names; single-label targets are
    integers in ``[0, K)`` and every class has a training sample (so a single-class dataset is refused);
    multi-label targets are ``[N, L]`` 0/1 vectors and some training sample has a positive label.

    Raises:
        InvalidInputError: the first rule broken, naming the spec and the split (exit 3).
    """
    names = list(data.label_names)
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidInputError(f"data {spec!r} has label names {names}: a classifier needs at least 2 distinct ones")
    for split in SPLITS:
        if len(getattr(data, split)) == 0:
            raise InvalidInputError(
                f"the {split} split of {spec!r} is empty", "every split needs samples: add data or adjust val=/test="
            )
    if data.task is Task.SEGMENTATION:
        check_mask_targets(spec, {s: np.asarray(getattr(data, s).targets) for s in SPLITS}, names)
        return
    k, multilabel = len(names), data.task is Task.MULTILABEL
    for split in SPLITS:
        targets = np.asarray(getattr(data, split).targets)
        if len(targets) == 0:
            raise InvalidInputError(
                f"the {split} split of {spec!r} is empty", "every split needs samples: add data or adjust val=/test="
            )
        if multilabel:
            ok = targets.shape == (len(targets), k) and bool(np.isin(targets, (0, 1)).all())
            want = f"0/1 vectors of length {k}"
        else:
            ok = targets.ndim == 1 and np.issubdtype(targets.dtype, np.integer)
            ok = ok and int(targets.min()) >= 0 and int(targets.max()) < k
            want = f"class indices 0..{k - 1}"
        if not ok:
            raise InvalidInputError(f"the {split} labels of {spec!r} are not {want}")
    train = np.asarray(data.train.targets)
    if multilabel:
        if not train.any():
            raise InvalidInputError(f"no training sample of {spec!r} has a positive label", "check the labels")
        return
    counts = np.bincount(train, minlength=k)
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if np.count_nonzero(counts) < 2:
        only = names[int(np.argmax(counts))]
        raise InvalidInputError(
            f"every training sample of {spec!r} is {only!r}: a classifier needs at least 2 classes",
            "add training samples of the other classes",
        )
    if empty:
        shown = ", ".join(repr(n) for n in empty[:5]) + (" ..." if len(empty) > 5 else "")
        what = f"class {shown} of {spec!r} has" if len(empty) == 1 else f"classes {shown} of {spec!r} have"
        raise InvalidInputError(
            f"{what} no training samples", "every class needs training samples: add some or drop the class"
        )


@dataclass(frozen=True, eq=False)
class DataBundle:
    """Train / val / test datasets of one spec plus task, labels, image geometry and train statistics.

    Attributes:
        spec: canonical spec string (options sorted), enough to load the same data again.
        train, val, test: datasets of ``(uint8 [C, H, W], target)`` items.
        task: binary, multi-class or multi-label.
        label_names: one name per class (per label for multi-label).
        num_classes: 2 for binary, K for multi-class, L for multi-label.
        channels: channels of the raw images.
        image_size: ``(H, W)`` shared by all raw images of the bundle.
        mean, std: per data channel on the ``[0, 1]`` scale, from the training split.
        intended_use: for DICOM data, the Modality, BodyPartExamined, ViewPosition and photometric
            interpretation values of the training split (what a model trained on it is meant for); else None.

    Example:
        >>> bundle = load_data("synthetic:classes=3,n=60")
        >>> bundle.split("val") is bundle.val
        True
    """

    spec: str
    train: Dataset
    val: Dataset
    test: Dataset
    task: Task
    label_names: list[str]
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    intended_use: IntendedUse | None = None

    @classmethod
    def from_source(cls, spec: str, data: SourceData) -> DataBundle:
        """Complete a :class:`SourceData`: geometry from the datasets, statistics from the train split."""
        train = data.train
        if len(train) == 0:
            raise InvalidInputError(f"data {spec!r} has an empty training split", "add data or lower val=/test=")
        check_targets(spec, data)
        for name in ("val", "test"):
            other = getattr(data, name)
            if (other.channels, other.image_size) != (train.channels, train.image_size):
                raise InvalidInputError(f"the {name} split of {spec!r} has other image geometry than train")
        mean, std = channel_stats(train)
        return cls(
            spec=spec,
            train=train,
            val=data.val,
            test=data.test,
            task=data.task,
            label_names=list(data.label_names),
            num_classes=len(data.label_names),
            channels=int(train.channels),
            image_size=tuple(train.image_size),
            mean=mean,
            std=std,
            intended_use=data.intended_use,
        )

    def split(self, name: str) -> Dataset:
        """The dataset of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLITS:
            raise InvalidInputError(f"unknown split {name!r}", f"use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def preprocess(self, *, input_size: tuple[int, int] | None = None, in_chans: int | None = None) -> Preprocess:
        """The :class:`Preprocess` for a model reading this data.

        Args:
            input_size: the model's ``(H, W)``; defaults to the raw image size.
            in_chans: the model's input channels; defaults to the data channels (mode ``adapt``). Another value
                gives mode ``repeat`` with the statistics repeated (or averaged) per model channel.

        Example:
            >>> pre = bundle.preprocess(in_chans=3)  # grayscale data, RGB model
            >>> pre.channel_mode.value
            'repeat'
        """
        base = Preprocess(
            input_size=tuple(input_size or self.image_size),
            data_channels=self.channels,
            in_chans=self.channels,
            mean=self.mean,
            std=self.std,
        )
        return base.with_model(in_chans=in_chans) if in_chans and in_chans != self.channels else base

    def labels(self, split: str) -> np.ndarray:
        """All targets of a split without decoding images: ``int64 [N]``, ``float32 [N, L]`` or masks ``[N, H, W]``."""
        targets = np.asarray(self.split(split).targets)
        return targets.astype(np.float32 if self.task is Task.MULTILABEL else np.int64)

    def class_counts(self) -> np.ndarray:
        """Training samples per class (positives per label for multi-label), ``int64 [num_classes]``."""
        targets = self.labels("train")
        if self.task is Task.SEGMENTATION:  # pixels per class
            return pixel_counts(targets, self.num_classes)
        if self.task is Task.MULTILABEL:
            return (targets > 0.5).sum(axis=0).astype(np.int64)
        return np.bincount(targets, minlength=self.num_classes).astype(np.int64)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (for ``edgekd data info`` and model cards)."""
        return {
            "spec": self.spec,
            "task": self.task.value,
            "label_names": list(self.label_names),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "image_size": list(self.image_size),
            "sizes": {name: len(self.split(name)) for name in SPLITS},
            "class_counts": self.class_counts().tolist(),
            "mean": list(self.mean),
            "std": list(self.std),
        }
