"""Shared code of the file-backed sources (``imagefolder``, ``csv``): image checks, sizes, splits.

Every file is opened once at load time (header read plus PIL ``verify()``) so that a broken or unsupported
image fails before training starts, with an :class:`~edgekd.errors.ArtifactError` that names it; decoding
itself is lazy (:class:`~edgekd.data._dataset.FileDataset`). How pixels reach ``uint8``:

* sizes: without ``size=N`` every image must have the size of the first one (another size is refused,
  naming the file); with ``size=N`` every image is resized to N x N (bilinear, aspect ratio not kept);
* bit depth: 8-bit images by default; a 16-bit one is refused unless ``depth=16``, which reads 16-bit
  images (grayscale or colour) as their high byte, ``u8 = v // 256`` (a linear map of the full 16-bit
  range: 12-bit data comes out dark, so window it yourself if that matters); a dataset mixing 8- and
  16-bit images is refused;
* modes: ``1`` (0 -> 0, 1 -> 255), ``L``, ``P`` (palette looked up), ``RGB``; alpha (``LA``, ``PA``, ``RGBA``)
  is dropped and the colour values are used as stored; CMYK, YCbCr, Lab, HSV and 32-bit float images
  are refused, as are files holding several frames (TIFF stacks, animations);
* channels: ``channels=1`` converts colour to Pillow's ITU-R 601-2 luma, ``channels=3`` repeats a gray
  channel; the default is 1 when every image is grayscale (``1``, ``L``, ``LA``, 16-bit gray), else 3.

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
from edgekd.data._dataset import FileDataset, UnsupportedImage, image_info, stratified_split
from edgekd.data._spec import opt_float, opt_int
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import Task

__all__ = ["IMAGE_EXTS", "FILE_OPTIONS", "FileItem", "is_image", "build_file_source", "require_classes"]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
FILE_OPTIONS = ("size", "channels", "depth", "val", "test", "seed")
MAX_SIZE = 8192  # pixels per side; a larger size= is a typo, not a training resolution
_RESIZE_HINT = "pass size=N to resize every image to N x N (bilinear, aspect ratio not kept)"


@dataclass(frozen=True)
class FileItem:
    """One labelled image file; ``split`` is ``None`` when the source does not assign one."""

    path: Path
    label: int
    split: str | None
    where: str  # how errors name the item, e.g. "labels.csv row 7"

    def __str__(self) -> str:
        return str(self.path) if self.where == str(self.path) else f"{self.path} ({self.where})"


def is_image(path: Path) -> bool:
    """An image file by extension (case-insensitive), not hidden."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def build_file_source(
    items: Sequence[FileItem], label_names: list[str], options: dict[str, str], *, seed: int
) -> SourceData:
    """Check every image, then build train / val / test :class:`FileDataset` splits.

    Items without a split are divided by a seeded stratified split (options ``val``, default 0.1, and
    ``test``, default 0.2). When items carry splits but val or test is absent, it is carved from train.
    ``size=N`` resizes to N x N (default: the images' common size); ``channels=1|3`` defaults to 1 when
    every image is grayscale; ``depth=8|16`` is the bits per sample of the files (see the module docstring).
    """
    require_classes(label_names, [it.label for it in items])
    size = opt_int(options, "size", 0, low=1, example=64)
    if size > MAX_SIZE:
        raise InvalidInputError(f"option size={size} is larger than {MAX_SIZE}", "e.g. size=224")
    channels = opt_int(options, "channels", 0, low=1, example=3)
    if channels and channels not in (1, 3):
        raise InvalidInputError(f"option channels={channels} is not supported", "use channels=1 or channels=3")
    depth = opt_int(options, "depth", 8, low=1, example=16)
    if depth not in (8, 16):
        raise InvalidInputError(f"option depth={depth} is not supported", "use depth=8 (default) or depth=16")
    splits = _assign_splits(items, options, seed)
    gray, common = _inspect(items, depth=depth, same_size=not size)
    channels = channels or (1 if gray else 3)
    targets = np.array([it.label for it in items], dtype=np.int64)
    shape = (size, size) if size else common
    datasets = {
        s: FileDataset([items[i].path for i in idx], targets[idx], channels=channels, size=shape, depth=depth)
        for s, idx in splits.items()
    }
    task = Task.BINARY if len(label_names) == 2 else Task.MULTICLASS
    return SourceData(**datasets, task=task, label_names=list(label_names))


def require_classes(label_names: Sequence[str], labels: Sequence[int]) -> None:
    """At least two classes, each with at least one image (checked before any image is opened)."""
    present = set(labels)
    if len(label_names) < 2 or len(present) < 2:
        found = ", ".join(repr(label_names[i]) for i in sorted(present)) or "none"
        raise InvalidInputError(
            f"the data has a single class ({found}): a classifier needs at least 2",
            "add images of the other classes",
        )


def _inspect(items: Sequence[FileItem], *, depth: int, same_size: bool) -> tuple[bool, tuple[int, int]]:
    """Open every image and check it can be read as documented; return (all grayscale, the first size)."""
    gray, first, first_item = True, None, None
    for it in items:
        try:
            with Image.open(it.path) as im:
                info = image_info(im)
                im.verify()
        except FileNotFoundError:
            raise ArtifactError(f"image file of {it.where} does not exist: {it.path}") from None
        except IsADirectoryError:
            raise ArtifactError(f"{it.where} names a folder, not an image: {it.path}") from None
        except UnsupportedImage as exc:
            raise ArtifactError(f"image {it}: {exc}", "convert it to 8-bit grayscale or RGB (e.g. PNG)") from None
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"cannot read image {it}: {reason}", "remove or replace the broken file") from exc
        if info.frames > 1:
            raise ArtifactError(
                f"image {it} holds {info.frames} frames (a stack or animation)",
                "export each slice or frame as its own image",
            )
        if info.bits != depth:
            raise ArtifactError(
                f"image {it} is {info.bits}-bit, expected {depth}-bit", _depth_hint(info.bits, first_item)
            )
        if first is None:
            first, first_item = info.size, it
        elif same_size and info.size != first:
            raise InvalidInputError(
                f"image {it} is {info.size[0]}x{info.size[1]} (H x W) but {first_item.path} is {first[0]}x{first[1]}",
                _RESIZE_HINT,
            )
        gray = gray and info.gray
    if first is None:
        raise ArtifactError("no images found", f"supported extensions: {' '.join(sorted(IMAGE_EXTS))}")
    return gray, first


def _depth_hint(bits: int, earlier: FileItem | None) -> str:
    if earlier is not None:
        return f"the images mix bit depths ({earlier.path.name} is not {bits}-bit): convert them to one depth"
    if bits == 16:
        return "pass depth=16 to read 16-bit images as their high byte (v // 256), or convert them to 8-bit yourself"
    return "drop depth=16: these images are 8-bit"


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
