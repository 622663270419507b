"""``tv:NAME``: torchvision's classic datasets, converted once to uint8 arrays.

The official training split is divided into train and val by a seeded stratified split (``val=0.1``); the
official test split is the test split. Nothing is downloaded unless ``download=True`` (``--download``).
Files live under ``root``, else ``$EDGEKD_DATA``, else ``~/.cache/edgekd/datasets``.

Example:
    >>> bundle = load_data("tv:cifar10", download=True)
    >>> bundle.channels, bundle.image_size, len(bundle.val)
    (3, (32, 32), 5000)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekd.data._bundle import SourceData
from edgekd.data._dataset import ArrayDataset, stratified_split
from edgekd.data._load import SOURCES
from edgekd.data._spec import opt_float
from edgekd.errors import DependencyError, UnknownNameError
from edgekd.specs import Task

__all__ = ["TV_DATASETS", "default_root"]

# lower-case name -> (torchvision class, how it selects a split: "train" flag or "split" string)
TV_DATASETS: dict[str, tuple[str, str]] = {
    "cifar10": ("CIFAR10", "train"),
    "cifar100": ("CIFAR100", "train"),
    "mnist": ("MNIST", "train"),
    "fashionmnist": ("FashionMNIST", "train"),
    "kmnist": ("KMNIST", "train"),
    "svhn": ("SVHN", "split"),
    "stl10": ("STL10", "split"),
}


def default_root(root: str | None = None) -> Path:
    """``root``, else ``$EDGEKD_DATA``, else ``~/.cache/edgekd/datasets``."""
    return Path(root or os.environ.get("EDGEKD_DATA") or "~/.cache/edgekd/datasets").expanduser()


@SOURCES.register(
    "tv",
    arg="required",
    options=("val", "seed"),
    help=f"torchvision dataset ({', '.join(v[0] for v in TV_DATASETS.values())}); needs --download the first time",
    example="tv:CIFAR10",
)
def _tv(arg, options, *, seed, download, root) -> SourceData:
    key = arg.lower()
    if key not in TV_DATASETS:
        raise UnknownNameError("torchvision dataset", arg, [v[0] for v in TV_DATASETS.values()])
    where = default_root(root)
    train_raw = _open(key, True, where, download)
    test_raw = _open(key, False, where, download)
    images, targets = _arrays(train_raw)
    train_idx, val_idx = stratified_split(targets, [opt_float(options, "val", 0.1)], seed)
    full = ArrayDataset(images, targets)
    test = ArrayDataset(*_arrays(test_raw))
    classes = getattr(train_raw, "classes", None) or [str(i) for i in range(int(targets.max()) + 1)]
    task = Task.BINARY if len(classes) == 2 else Task.MULTICLASS
    return SourceData(full.subset(train_idx), full.subset(val_idx), test, task=task, label_names=list(classes))


def _open(key: str, train: bool, root: Path, download: bool):
    """Instantiate the torchvision dataset, turning missing files and network failures into one clear line."""
    import torchvision.datasets as tvd  # lazy: importing torchvision.datasets is slow

    name, mode = TV_DATASETS[key]
    kwargs = {"train": train} if mode == "train" else {"split": "train" if train else "test"}
    try:
        return getattr(tvd, name)(str(root), download=download, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision raises RuntimeError if absent
        if not download:
            raise DependencyError(
                f"dataset {name} is not under {root}",
                "pass --download (needs internet), or point root / EDGEKD_DATA at complete files",
            ) from exc
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DependencyError(
            f"could not download {name} to {root}: {reason}", "check the internet connection or place the files there"
        ) from exc


def _arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[N, C, H, W]`` images and int64 targets from a torchvision dataset's raw attributes."""
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    if data.ndim == 3:  # MNIST family: [N, H, W]
        data = data[:, None]
    elif data.shape[-1] in (1, 3) and data.shape[1] not in (1, 3):  # CIFAR: [N, H, W, C]
        data = data.transpose(0, 3, 1, 2)
    raw = getattr(ds, "targets", None)
    raw = getattr(ds, "labels", None) if raw is None else raw
    targets = raw.numpy() if hasattr(raw, "numpy") else np.asarray(raw)
    return np.ascontiguousarray(data, dtype=np.uint8), targets.astype(np.int64)
