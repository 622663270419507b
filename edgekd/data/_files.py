"""Shared code of the file-backed sources (``imagefolder``, ``csv``): image checks, sizes, splits.

Every file is opened once at load time (header read plus PIL ``verify()``) so that a broken image fails
before training starts, with an :class:`~edgekd.errors.ArtifactError` that names it; decoding itself is
lazy (:class:`~edgekd.data._dataset.FileDataset`).

Example:
    >>> items = [FileItem(Path("a.png"), 0, None, "a.png"), FileItem(Path("b.png"), 1, None, "b.png")]
    >>> data = build_file_source(items, ["cat", "dog"], {}, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgekd.data._bundle import SPLITS, SourceData
from edgekd.data._dataset import FileDataset, stratified_split
from edgekd.data._spec import opt_float, opt_int
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import Task

__all__ = ["IMAGE_EXTS", "FILE_OPTIONS", "FileItem", "is_image", "build_file_source"]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
FILE_OPTIONS = ("size", "channels", "val", "test", "seed")
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


@dataclass(frozen=True)
class FileItem:
    """One labelled image file; ``split`` is ``None`` when the source does not assign one."""

    path: Path
    label: int
    split: str | None
    where: str  # how errors name the item, e.g. "row 7 (img/a.png)"


def is_image(path: Path) -> bool:
    """An image file by extension (case-insensitive), not hidden."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def build_file_source(
    items: Sequence[FileItem], label_names: list[str], options: dict[str, str], *, seed: int
) -> SourceData:
    """Check every image, then build train / val / test :class:`FileDataset` splits.

    Items without a split are divided by a seeded stratified split (options ``val``, default 0.1, and
    ``test``, default 0.2). When items carry splits but val or test is absent, it is carved from train.
    ``size=N`` resizes to N x N (default: the first image's size); ``channels=1|3`` defaults to 1 when
    every image is grayscale.
    """
    if len(label_names) < 2:
        raise ArtifactError(f"found {len(label_names)} class(es) {label_names}", "a classifier needs >= 2 classes")
    gray, first_size = _inspect(items)
    size = opt_int(options, "size", 0, low=1)
    channels = opt_int(options, "channels", 1 if gray else 3, low=1)
    if channels not in (1, 3):
        raise InvalidInputError(f"option channels={channels} is not supported", "use channels=1 or channels=3")
    splits = _assign_splits(items, options, seed)
    targets = np.array([it.label for it in items], dtype=np.int64)
    datasets = {
        s: FileDataset(
            [items[i].path for i in idx], targets[idx], channels=channels, size=(size, size) if size else first_size
        )
        for s, idx in splits.items()
    }
    task = Task.BINARY if len(label_names) == 2 else Task.MULTICLASS
    return SourceData(**datasets, task=task, label_names=list(label_names))


def _inspect(items: Sequence[FileItem]) -> tuple[bool, tuple[int, int]]:
    """Open every image; return (all grayscale, first image's (H, W))."""
    gray, first = True, None
    for it in items:
        try:
            with Image.open(it.path) as im:
                mode, (w, h) = im.mode, im.size
                im.verify()
        except FileNotFoundError:
            raise ArtifactError(f"image file of {it.where} does not exist: {it.path}") from None
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
            raise ArtifactError(
                f"cannot read image {it.path} ({it.where}): {exc}", "remove or replace the broken file"
            ) from exc
        gray = gray and mode in _GRAY_MODES
        first = first or (h, w)
    if first is None:
        raise ArtifactError("no images found", f"supported extensions: {' '.join(sorted(IMAGE_EXTS))}")
    return gray, first


def _assign_splits(items: Sequence[FileItem], options: dict[str, str], seed: int) -> dict[str, np.ndarray]:
    val, test = opt_float(options, "val", 0.1), opt_float(options, "test", 0.2)
    if val + test >= 1:
        raise InvalidInputError(f"val={val} + test={test} leaves no training data", "keep val + test < 1")
    labels = np.array([it.label for it in items], dtype=np.int64)
    if not any(it.split for it in items):
        train, v, t = stratified_split(labels, [val, test], seed)
        return {"train": train, "val": v, "test": t}
    given = np.array([it.split or "" for it in items], dtype=object)
    out = {s: np.flatnonzero(given == s) for s in SPLITS}
    missing = [s for s in ("val", "test") if len(out[s]) == 0]
    if missing:  # carve absent splits from train, stratified
        base = out["train"]
        parts = stratified_split(labels[base], [val if "val" in missing else 0, test if "test" in missing else 0], seed)
        out["train"] = base[parts[0]]
        out.update({s: base[parts[1 + ("val", "test").index(s)]] for s in missing})
    return out
