"""Teacher-output cache: teacher logits computed once per (sample, augmentation view), memory-mapped.

The teacher's forward pass dominates distillation when the teacher is large. With a cache, epoch ``e``
reads view ``v = e mod V`` of every sample from disk instead of running the teacher, and the loop replays
exactly the augmentation that view was computed on (``AugmentedDataset`` parameters are a pure function of
``(seed, epoch, index)``; the objective maps epoch ``e`` to augmentation epoch ``v``, as FKD, Shen & Xing
2022, stores crop parameters with its soft labels). Without augmentation there is one view.

Layout of the cache directory (``.npy`` files opened with ``numpy`` memory maps):

* ``manifest.json``: the fingerprint (below), shapes and storage format;
* ``t{k}.logits.npy``: ``float16 [V, N, C]`` logits of teacher ``k``; or, with top-k storage,
  ``t{k}.topv.npy`` (``float16 [V, N, K]``), ``t{k}.topi.npy`` (``int16``/``int32 [V, N, K]``) and
  ``t{k}.lse.npy`` (``float32 [V, N]``, the log-sum-exp of all logits): the other ``C - K`` logits are
  reconstructed so that the probability mass outside the top-k is spread uniformly over them;
* ``filled.npy``: ``uint8 [V, N]``, which entries hold values.

The fingerprint covers everything the stored logits depend on: each teacher's weights hash and
preprocessing, the data spec, split sizes and a hash of the training labels, the augmentation preset and
its seed, the number of views and the storage format. A cache whose manifest differs is never reused: it
is rebuilt (the differing keys are reported in :attr:`TeacherCache.status`), or with ``readonly`` an
:class:`~edgekd.errors.ArtifactError` is raised. A new cache is created in a temporary directory and
renamed into place; values are flushed before ``filled.npy`` is rewritten atomically, so an interrupted
run leaves at worst entries marked missing, which are recomputed.

Example:
    >>> cache = TeacherCache.open("runs/cache", teachers=[teacher], data=data, augment="medical", seed=0, views=4)
    >>> logits, hit = cache.lookup(view=0, indices=torch.arange(8))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd._io import atomic_dir, atomic_write_bytes, atomic_write_text
from edgekd.data import Augment
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import Task

__all__ = ["TeacherCache", "cache_fingerprint", "topk_reconstruct"]

MANIFEST = "manifest.json"
FILLED = "filled.npy"
FORMAT = 1
_FP16_MAX = 65504.0


def cache_fingerprint(
    teachers: Sequence, data, *, augment: str = "none", seed: int = 0, views: int = 1, topk: int | None = None
) -> dict[str, Any]:
    """Everything the cached logits depend on, as a JSON-ready dict (see the module docstring)."""
    preset = Augment.preset(augment)
    labels = np.ascontiguousarray(data.labels("train"))
    described = []
    for t in teachers:
        d = t.describe()
        described.append({k: d[k] for k in ("kind", "weights_sha256", "num_classes", "preprocess")})
    fp = {
        "format": FORMAT,
        "teachers": described,
        "data": {
            "spec": data.spec,
            "sizes": {s: len(data.split(s)) for s in ("train", "val", "test")},
            "train_labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
        },
        "augment": {
            "preset": augment,
            "params": dataclasses.asdict(preset),
            "seed": None if preset.is_identity else int(seed),
        },
        "views": int(views),
        "storage": {"dtype": "float16", "topk": topk},
    }
    return json.loads(json.dumps(fp))  # JSON-normal (lists, not tuples), to compare with a stored manifest


def topk_reconstruct(values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full ``[n, C]`` logits from the top-k logits and the log-sum-exp of all of them.

    The top-k logits are kept; the probability left over, ``r = 1 - sum_topk softmax``, is spread uniformly
    over the other ``C - K`` classes: each gets the logit ``lse + log(r / (C - K))``. The softmax of the result
    equals the original on the top-k classes and sums to one.
    """
    values, lse = values.float(), lse.float()
    k = values.shape[1]
    if k >= num_classes:
        return torch.empty(len(values), num_classes).scatter_(1, indices.long(), values)
    rest = (1 - torch.exp(values - lse[:, None]).sum(1)).clamp_min(1e-12)
    fill = lse + torch.log(rest / (num_classes - k))
    out = fill[:, None].expand(len(values), num_classes).clone()
    return out.scatter_(1, indices.long(), values)


class TeacherCache:
    """Memory-mapped teacher logits per (view, sample index) for one or several teachers.

    Open one with :meth:`open`; the distillation objective calls :meth:`lookup` / :meth:`store` per batch
    and :meth:`flush` once per epoch.

    Attributes:
        directory: where the arrays and the manifest live.
        views: number of augmentation views ``V``; epoch ``e`` uses view ``e % V``.
        readonly: entries missing from a read-only cache are computed but not stored.
        status: ``"created"``, ``"reused"`` or ``"rebuilt: ..."`` (why the old cache did not match).
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], *, readonly: bool, status: str) -> None:
        self.directory, self.manifest, self.readonly, self.status = directory, manifest, readonly, status
        fp = manifest["fingerprint"]
        self.views, self.topk = fp["views"], fp["storage"]["topk"]
        self.num_teachers = len(fp["teachers"])
        self.num_samples = fp["data"]["sizes"]["train"]
        self.num_classes = fp["teachers"][0]["num_classes"]
        mode = "r" if readonly else "r+"
        self._filled = np.array(np.load(directory / FILLED))  # in memory; written atomically by flush()
        self._arrays = [
            {name: np.load(directory / f"t{k}.{name}.npy", mmap_mode=mode) for name in self._names()}
            for k in range(self.num_teachers)
        ]
        self._dirty = False
        self._merge: Callable[[np.ndarray], np.ndarray] | None = None
        self._writer = True
        self.hits = self.misses = 0

    def _names(self) -> tuple[str, ...]:
        return ("logits",) if self.topk is None else ("topv", "topi", "lse")

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        teachers: Sequence,
        data,
        augment: str = "none",
        seed: int = 0,
        views: int = 1,
        topk: int | None = None,
        readonly: bool = False,
    ) -> TeacherCache:
        """Open the cache at ``directory`` if its fingerprint matches, else (re)build it empty.

        Args:
            directory: cache folder (created if missing).
            teachers: the :class:`~edgekd.teachers.Teacher` objects, in objective order.
            data: the data bundle (its train split is cached).
            augment: augmentation preset name of the run (``"none"`` forces one view).
            seed: the augmentation seed (the run's seed).
            views: augmentation views to store per sample (>= 1).
            topk: store only the top-k logits per sample plus their log-sum-exp (single-label tasks).
            readonly: never write; a missing or mismatching cache is an error.

        Raises:
            InvalidInputError: bad ``views`` / ``topk``, teachers with different class counts.
            ArtifactError: ``readonly`` and the cache is missing or was built for another configuration.
        """
        views = _check_options(teachers, data, augment, views, topk)
        if topk is not None and topk >= teachers[0].num_classes:
            topk = None  # nothing to drop: store the full logits
        directory = Path(directory)
        fp = cache_fingerprint(teachers, data, augment=augment, seed=seed, views=views, topk=topk)
        old = _read_manifest(directory)
        if old is not None and old.get("fingerprint") == fp:
            return cls(directory, old, readonly=readonly, status="reused")
        changed = None if old is None else ", ".join(_differences(old.get("fingerprint", {}), fp))
        if readonly:
            what = "does not exist" if old is None else f"was built for another configuration ({changed} differ)"
            raise ArtifactError(f"teacher cache {directory} {what}", "run once without --cache-readonly to build it")
        manifest = _create(directory, fp, len(teachers), data.num_classes if topk is None else topk)
        return cls(directory, manifest, readonly=False, status="created" if old is None else f"rebuilt: {changed}")

    def view_of(self, epoch: int) -> int:
        """The view an epoch reads and writes: ``epoch % views``."""
        return epoch % self.views

    def complete(self) -> bool:
        """Whether every (view, sample) entry is filled (the teacher is not needed any more)."""
        return bool(self._filled.all())

    def lookup(self, view: int, indices: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Cached logits of the filled entries among ``indices``.

        Returns:
            One ``float32 [h, C]`` tensor per teacher for the ``h`` hits (in batch order), and the boolean
            hit mask ``[B]`` (on the CPU).
        """
        idx = indices.cpu().numpy().astype(np.int64)
        hit = self._filled[view, idx].astype(bool)
        rows = idx[hit]
        self.hits += int(hit.sum())
        self.misses += int((~hit).sum())
        return [self._read(k, view, rows) for k in range(self.num_teachers)], torch.from_numpy(hit)

    def _read(self, k: int, view: int, rows: np.ndarray) -> torch.Tensor:
        a = self._arrays[k]
        if self.topk is None:
            return torch.from_numpy(np.asarray(a["logits"][view, rows], dtype=np.float32))
        vals = torch.from_numpy(np.asarray(a["topv"][view, rows], dtype=np.float32))
        ids = torch.from_numpy(np.asarray(a["topi"][view, rows], dtype=np.int64))
        lse = torch.from_numpy(np.asarray(a["lse"][view, rows], dtype=np.float32))
        return topk_reconstruct(vals, ids, lse, self.num_classes)

    def store(self, view: int, indices: torch.Tensor, logits: Sequence[torch.Tensor]) -> None:
        """Write the logits of each teacher (``[B, C]``) for ``indices`` and mark them filled."""
        if self.readonly or len(indices) == 0:
            return
        rows = indices.cpu().numpy().astype(np.int64)
        for a, z in zip(self._arrays, logits):
            z = z.detach().float().cpu()
            if self.topk is None:
                a["logits"][view, rows] = z.clamp(-_FP16_MAX, _FP16_MAX).numpy().astype(np.float16)
                continue
            vals, ids = z.topk(self.topk, dim=1)
            a["topv"][view, rows] = vals.clamp(-_FP16_MAX, _FP16_MAX).numpy().astype(np.float16)
            a["topi"][view, rows] = ids.numpy().astype(a["topi"].dtype)
            a["lse"][view, rows] = torch.logsumexp(z, dim=1).numpy()
        self._filled[view, rows] = 1
        self._dirty = True

    def _flush_values(self) -> None:
        if not self.readonly:
            for a in self._arrays:
                for arr in a.values():
                    arr.flush()

    def share(self, merge: Callable[[np.ndarray], np.ndarray], *, writer: bool) -> None:
        """Share this cache between the processes of a distributed run.

        Each process stores the logits of its own samples (different rows of the same memory-mapped files);
        at every :meth:`flush` ``merge`` (an all-reduce) combines which entries any process filled, and only
        the ``writer`` rewrites ``filled.npy``.
        """
        self._merge, self._writer = merge, writer

    def flush(self) -> None:
        """Flush the values to disk, then atomically rewrite which entries are filled."""
        if self._merge is not None:  # every process calls flush at the same points: a collective is safe here
            self._flush_values()
            self._filled = self._merge(self._filled)
            if self.readonly or not self._writer:
                self._dirty = False
                return
        elif self.readonly or not self._dirty:
            return
        else:
            self._flush_values()
        current = _read_manifest(self.directory) or {}
        if current.get("fingerprint_sha256") != self.manifest["fingerprint_sha256"]:
            # Another run rebuilt this folder for another configuration: our arrays are no longer the ones
            # on disk, so marking entries filled there would be wrong. Keep working from memory only.
            self.readonly = True
            return
        atomic_write_bytes(self.directory / FILLED, _npy_bytes(self._filled))
        self._dirty = False


def _check_options(teachers: Sequence, data, augment: str, views: int, topk: int | None) -> int:

    if not teachers:
        raise InvalidInputError("a teacher cache needs at least one teacher")
    if views < 1:
        raise InvalidInputError(f"--cache-views must be >= 1, got {views}")
    if topk is not None and topk < 1:
        raise InvalidInputError(f"--cache-topk must be >= 1, got {topk}")
    if topk is not None and data.task is Task.MULTILABEL:
        raise InvalidInputError(
            "--cache-topk needs a single-label task",
            "multi-label logits are independent sigmoids: drop --cache-topk to store them all",
        )
    if len({t.num_classes for t in teachers}) != 1:
        raise InvalidInputError("the teachers disagree on the number of classes")
    return 1 if Augment.preset(augment).is_identity else views


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: treated as a mismatch and rebuilt


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in new if old.get(k) != new[k]]
    if "teachers" in keys and len(old.get("teachers", [])) == len(new["teachers"]):
        keys = [
            f"teachers.{k}"
            for k in new["teachers"][0]
            if any(o.get(k) != n[k] for o, n in zip(old["teachers"], new["teachers"]))
        ] + [k for k in keys if k != "teachers"]
    return keys or ["format"]


def _create(directory: Path, fp: dict[str, Any], num_teachers: int, width: int) -> dict[str, Any]:
    views, n, topk = fp["views"], fp["data"]["sizes"]["train"], fp["storage"]["topk"]
    num_classes = fp["teachers"][0]["num_classes"]
    index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
    with atomic_dir(directory) as tmp:
        for k in range(num_teachers):
            if topk is None:
                np.lib.format.open_memmap(
                    tmp / f"t{k}.logits.npy", mode="w+", dtype=np.float16, shape=(views, n, width)
                ).flush()
                continue
            for name, dtype, shape in (
                ("topv", np.float16, (views, n, width)),
                ("topi", index_dtype, (views, n, width)),
                ("lse", np.float32, (views, n)),
            ):
                np.lib.format.open_memmap(tmp / f"t{k}.{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
        np.save(tmp / FILLED, np.zeros((views, n), dtype=np.uint8))
        manifest = {
            "fingerprint": fp,
            "fingerprint_sha256": hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest(),
            "num_teachers": num_teachers,
        }
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
    return manifest
