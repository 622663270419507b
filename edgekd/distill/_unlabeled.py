"""Semi-supervised distillation (`edgekd distill --unlabeled SPEC`): unlabelled images as extra KD signal.

Every training step of the shared :class:`~edgekd.distill.Trainer` brings a labelled batch of ``B`` images;
:class:`UnlabeledDistillObjective` adds ``U = round(ratio * B)`` unlabelled images to it (``--unlabeled-ratio``,
default 1) and runs the student once on the ``B + U`` images. The loss is the usual weighted sum of terms,
with task terms (``ce``) on the ``B`` labelled rows only and logit and feature terms (``kd``, ``dist``,
``fitnet``, ``at``...) over all ``B + U`` rows:

    L = sum_task w_i L_i(s[:B], y) + sum_other w_j L_j(s, t)

so unlabelled images carry exactly the teacher's signal, as in the semi-supervised distillation of
Hinton et al. (2015, section 2.1: the transfer set may be unlabelled) and "noisy student" style training.
``dkd`` needs the true class and is refused here.

The unlabelled set is cycled: epoch ``e`` walks a permutation seeded by ``(seed, e)``, so a resumed run sees
the same unlabelled batches. The run's augmentation applies to it too (its own seed); with
``--cache-teacher`` the teachers' logits on unlabelled images are cached as well, in a second cache beside
the first (same views, fingerprinted on the unlabelled set's spec, size and file stamps or pixel keys). Under
``torchrun`` each rank draws its own slice of the stream and the unlabelled cache is off.

Example:
    >>> s = RunSettings(student="small:tinycnn", data="medmnist:labelled.npz", teachers=["runs/teacher"],
    ...                 unlabeled="folder:/data/unlabeled", unlabeled_ratio=2.0)
    >>> card = distill_model(s, "runs/student")
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd.data import Augment, AugmentedDataset, DataBundle, ImageSet, load_images
from edgekd.distill._cache import TeacherCache
from edgekd.distill._distill import DistillObjective
from edgekd.distill._objective import Objective
from edgekd.distill._settings import RunSettings
from edgekd.distill.losses import LossBatch, ModelOutputs
from edgekd.errors import InvalidInputError
from edgekd.students import FeatureTaps

__all__ = ["UnlabeledDistillObjective", "with_unlabeled", "flush_unlabeled", "unlabeled_notes"]


def _rank() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cat(a: ModelOutputs, b: ModelOutputs) -> ModelOutputs:
    logits = None if a.logits is None else torch.cat([a.logits, b.logits.to(a.logits.dtype)])
    return ModelOutputs(logits, {k: torch.cat([v, b.features[k].to(v.dtype)]) for k, v in a.features.items()})


class UnlabeledDistillObjective(DistillObjective):
    """A :class:`DistillObjective` whose steps add a batch of unlabelled images (see the module docstring).

    Attributes:
        images: the unlabelled images.
        batch: unlabelled images per step (``U``).
        seen: unlabelled images used so far.
    """

    def __init__(
        self,
        base: DistillObjective,
        images: ImageSet,
        *,
        batch: int,
        seed: int,
        augment: str = "none",
        cache: TeacherCache | None = None,
        student: torch.nn.Module | None = None,
    ) -> None:
        super().__init__(
            base.preprocess,
            base.task,
            base.teachers,
            base.terms,
            list(base.losses),
            teacher_weights=base.teacher_weights,
            cache=base.cache,
            student=student,
        )
        dkd = [t.name for t in self.terms if t.name == "dkd"]
        if dkd:
            raise InvalidInputError(
                "dkd needs the true class and cannot learn from unlabelled images", "use kd (or dist) with --unlabeled"
            )
        self.images, self.batch, self.seed, self.unlabeled_cache = images, int(batch), int(seed), cache
        self._data = images.dataset
        if not Augment.preset(augment).is_identity:
            self._data = AugmentedDataset(images.dataset, Augment.preset(augment), seed=seed + 1)
        self._order = np.arange(len(images))
        self._step = 0
        self.seen = 0

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        super().on_epoch_start(epoch, total_epochs)
        if self.unlabeled_cache is not None:
            self.unlabeled_cache.flush()
        if isinstance(self._data, AugmentedDataset):
            self._data.set_epoch(self.augment_epoch(epoch))
        self._order = np.random.default_rng([self.seed, 11, epoch]).permutation(len(self.images))
        self._step = 0

    def _next(self) -> torch.Tensor:
        """Indices of the next unlabelled batch: a cyclic walk of this epoch's permutation (one slice per rank)."""
        rank, world = _rank()
        start = (self._step * world + rank) * self.batch
        self._step += 1
        return torch.from_numpy(self._order[np.arange(start, start + self.batch) % len(self._order)])

    def forward(self, model, images, targets, indices=None, epoch: int = 0):
        u_idx = self._next()
        u_images = torch.stack([self._data[int(i)][0] for i in u_idx]).to(images.device, non_blocking=True)
        labelled = self._teacher_outputs(images, indices, epoch)
        saved, self.cache = self.cache, self.unlabeled_cache  # the same lookup, against the unlabelled cache
        try:
            unlabelled = self._teacher_outputs(u_images, u_idx, epoch)
        finally:
            self.cache = saved
        teachers = [_cat(a, b) for a, b in zip(labelled, unlabelled)]
        if self._taps is None or self._taps.model is not model:
            self._taps = FeatureTaps(model, self._student_paths, who="student")
        with self._taps as feats:
            logits = model(self.student_input(torch.cat([images, u_images])))
        self.seen += len(u_idx)
        return self._mixed(ModelOutputs(logits, dict(feats)), teachers, targets, indices, epoch, len(images))

    def _mixed(self, student: ModelOutputs, teachers: list[ModelOutputs], targets, indices, epoch: int, n: int):
        """Task terms on the first ``n`` (labelled) rows, every other term on all rows."""
        labelled = ModelOutputs(student.logits[:n], {k: v[:n] for k, v in student.features.items()})
        batch = LossBatch(targets, self.task, epoch, self.total_epochs, indices)
        total: torch.Tensor | float = 0.0
        terms: dict[str, torch.Tensor] = {}
        for label, term, loss in zip(self.labels, self.terms, self.losses):
            if loss.kind == "task":
                value = loss(labelled, None, batch)
            elif loss.kind == "logit":
                value = sum(w * loss(student, t, batch) for w, t in zip(self.teacher_weights, teachers) if w)
            else:
                value = loss(student, teachers[loss.teacher], batch)
            terms[label] = value.detach()
            total = total + term.weight * value
        return total, terms


def _stamp(images: ImageSet) -> str:
    """What identifies the unlabelled set's contents for the cache: file stamps, or pixel keys of array data."""
    h = hashlib.sha256(images.spec.encode())
    for i, src in enumerate(images.sources):
        if images.files:
            st = os.stat(src)
            h.update(f"{src}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        else:
            h.update(images.key(i).encode())
    return h.hexdigest()[:16]


def _open_cache(
    settings: RunSettings, work: Path, base: DistillObjective, bundle: DataBundle, images: ImageSet
) -> TeacherCache | None:
    c = settings.cache
    if c is None or base.cache is None or _rank()[1] > 1:
        return None
    ds = images.dataset
    data = DataBundle(
        spec=f"unlabeled:{images.spec}#{_stamp(images)}",
        train=ds,
        val=ds,
        test=ds,
        task=bundle.task,
        label_names=bundle.label_names,
        num_classes=bundle.num_classes,
        channels=images.channels,
        image_size=images.image_size,
        mean=bundle.mean,
        std=bundle.std,
    )
    folder = Path(c.dir).with_name(Path(c.dir).name + ".unlabeled") if c.dir else work / "teacher_cache_unlabeled"
    return TeacherCache.open(
        folder,
        teachers=base.teachers,
        data=data,
        augment=settings.train.augment,
        seed=settings.train.seed + 1,
        views=base.cache.views,
        topk=c.topk,
        readonly=c.readonly,
    )


def with_unlabeled(
    objective: Objective, settings: RunSettings, bundle: DataBundle, student: torch.nn.Module, work: Path
) -> Objective:
    """The run's objective, wrapped for ``settings.unlabeled`` (unchanged when there is none).

    Raises:
        InvalidInputError: unlabelled images without a teacher, or with ``dkd`` (exit 3).
        ArtifactError: the unlabelled images cannot be read (exit 4).
    """
    if not settings.unlabeled:
        return objective
    if not isinstance(objective, DistillObjective):
        raise InvalidInputError(
            "--unlabeled needs a teacher: unlabelled images only carry the teacher's outputs", "pass --teacher DIR"
        )
    images = load_images(
        settings.unlabeled,
        channels=bundle.channels,
        size=bundle.image_size,
        split="train",
        seed=settings.train.seed,
        download=settings.download,
    )
    if len(images) == 0:
        raise InvalidInputError(f"--unlabeled {settings.unlabeled} holds no images")
    batch = max(1, round(settings.unlabeled_ratio * settings.train.batch_size))
    cache = _open_cache(settings, work, objective, bundle, images)
    return UnlabeledDistillObjective(
        objective,
        images,
        batch=batch,
        seed=settings.train.seed,
        augment=settings.train.augment,
        cache=cache,
        student=student,
    )


def flush_unlabeled(objective: Objective) -> None:
    """Write the unlabelled teacher cache's last entries (the run's own cache is flushed by the run)."""
    if isinstance(objective, UnlabeledDistillObjective) and objective.unlabeled_cache is not None:
        objective.unlabeled_cache.flush()


def unlabeled_notes(objective: Objective) -> dict[str, Any]:
    """Lineage notes of a semi-supervised run: the unlabelled set, its size, batch and use."""
    if not isinstance(objective, UnlabeledDistillObjective):
        return {}
    cache = objective.unlabeled_cache
    return {
        "unlabeled": {
            "data": objective.images.spec,
            "images": len(objective.images),
            "batch": objective.batch,
            "seen": objective.seen,
            "cache": None
            if cache is None
            else {"dir": str(cache.directory), "status": cache.status, "hits": cache.hits, "misses": cache.misses},
        }
    }
