"""MedMNIST ``.npz`` sources: the bundled PneumoniaMNIST and any file in the MedMNIST layout.

The layout (Yang et al., "MedMNIST v2", Scientific Data 10, 41, 2023) has keys ``{split}_images``
(uint8 ``(N, H, W)`` or ``(N, H, W, 3)``) and ``{split}_labels`` (integer ``(N, 1)`` or ``(N, L)``) for the
splits train, val and test. The task is read from the labels: one column with values {0, 1} is binary, one
column with more values is multi-class, several 0/1 columns are multi-label (ChestMNIST has 14).

Example:
    >>> load_data("medmnist:/data/chestmnist.npz").task
    <Task.MULTILABEL: 'multilabel'>
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from edgekd.data._bundle import SPLITS, SourceData
from edgekd.data._dataset import ArrayDataset
from edgekd.data._load import SOURCES
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import Task

__all__ = ["read_medmnist"]

PNEUMONIA_LABELS = ["normal", "pneumonia"]


@SOURCES.register(
    "pneumoniamnist",
    arg=None,
    options=(),
    help="bundled PneumoniaMNIST chest X-rays, 28x28 grayscale, normal vs pneumonia (CC BY 4.0)",
    example="pneumoniamnist",
)
def _pneumoniamnist(arg, options, *, seed, download, root) -> SourceData:
    ref = resources.files("edgekd.data") / "bundled" / "pneumoniamnist.npz"
    with resources.as_file(ref) as path:
        return read_medmnist(path, PNEUMONIA_LABELS)


@SOURCES.register(
    "medmnist",
    arg="required",
    options=("labels",),
    help="any MedMNIST-format .npz (2D datasets); labels=a;b;c names the classes",
    example="medmnist:/data/chestmnist.npz",
)
def _medmnist(arg, options, *, seed, download, root) -> SourceData:
    names = [n.strip() for n in options["labels"].split(";")] if "labels" in options else None
    return read_medmnist(Path(arg).expanduser(), names)


def read_medmnist(path: Path, label_names: list[str] | None = None) -> SourceData:
    """Read and validate a MedMNIST ``.npz`` (never unpickling) into three array datasets.

    Args:
        path: the ``.npz`` file.
        label_names: one name per class / label; default ``class_0``, ``class_1``, ...

    Example:
        >>> data = read_medmnist(Path("pneumoniamnist.npz"), ["normal", "pneumonia"])
        >>> len(data.train)
        4708
    """
    arrays = _read_npz(path)
    labels = {s: _check_split(path, s, arrays) for s in SPLITS}
    task, num = _detect_task(path, labels)
    names = label_names or [f"class_{i}" for i in range(num)]
    if len(names) != num or len(set(names)) != num or not all(names):
        raise InvalidInputError(
            f"{len(names)} label names given for {num} classes in {path}", "give labels=a;b;c with one name per class"
        )
    dtype = np.float32 if task is Task.MULTILABEL else np.int64
    splits = {}
    for s in SPLITS:
        images = arrays[f"{s}_images"]
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        target = labels[s].astype(dtype) if task is Task.MULTILABEL else labels[s][:, 0].astype(dtype)
        splits[s] = ArrayDataset(np.ascontiguousarray(images), target)
    shapes = {ds.images.shape[1:] for ds in splits.values()}
    if len(shapes) > 1:
        raise ArtifactError(f"{path}: the splits have different image shapes {sorted(shapes)}")
    return SourceData(**splits, task=task, label_names=names)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ArtifactError(
            f"MedMNIST file {path} does not exist", "check the path (paths with commas are not supported in specs)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:  # not a zip, or object arrays that would need pickle
        raise ArtifactError(f"cannot read {path} as a MedMNIST .npz: {exc}") from exc


def _check_split(path: Path, split: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Validate one split's arrays and return its labels as ``(N, L)``."""
    ikey, lkey = f"{split}_images", f"{split}_labels"
    missing = [k for k in (ikey, lkey) if k not in arrays]
    if missing:
        raise ArtifactError(
            f"{path} lacks key {missing[0]!r} (has {', '.join(sorted(arrays)) or 'nothing'})",
            "a MedMNIST .npz has train/val/test _images and _labels",
        )
    images, labels = arrays[ikey], arrays[lkey]
    if images.dtype != np.uint8:
        raise ArtifactError(f"{path}: {ikey} has dtype {images.dtype}, expected uint8")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise ArtifactError(f"{path}: {ikey} has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (1, 2):
        raise ArtifactError(f"{path}: {lkey} must be integer (N, 1) or (N, L), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise ArtifactError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and labels.min() < 0:
        raise ArtifactError(f"{path}: {lkey} has negative values")
    return labels.reshape(len(labels), -1)


def _detect_task(path: Path, labels: dict[str, np.ndarray]) -> tuple[Task, int]:
    widths = {lab.shape[1] for lab in labels.values()}
    if len(widths) != 1:
        raise ArtifactError(f"{path}: the splits have different label widths {sorted(widths)}")
    width = widths.pop()
    top = max(int(lab.max()) if lab.size else 0 for lab in labels.values())
    if width > 1:
        if top > 1:
            raise ArtifactError(f"{path}: multi-label labels ({width} columns) must be 0/1, found {top}")
        return Task.MULTILABEL, width
    return (Task.BINARY, 2) if top <= 1 else (Task.MULTICLASS, top + 1)
