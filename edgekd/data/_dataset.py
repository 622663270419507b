"""The two dataset types every source builds on, plus split and statistics helpers.

Every item is ``(image, target)``: ``image`` a raw ``torch.uint8`` tensor ``[C, H, W]`` (never normalised:
each model applies its own :class:`~edgekd.data.preprocess.Preprocess` on the batch) and ``target`` an
``int64`` scalar (binary / multi-class) or a ``float32`` vector ``[L]`` (multi-label). Both types expose
``.targets`` (numpy) so label statistics never decode images.

Example:
    >>> ds = ArrayDataset(np.zeros((4, 1, 8, 8), np.uint8), np.array([0, 1, 0, 1]))
    >>> image, target = ds[1]
    >>> image.shape, int(target)
    (torch.Size([1, 8, 8]), 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from edgekd.errors import ArtifactError, InvalidInputError

__all__ = [
    "ArrayDataset",
    "FileDataset",
    "ImageInfo",
    "UnsupportedImage",
    "image_info",
    "decode_image",
    "to_target",
    "stratified_split",
    "channel_stats",
]


def to_target(target: np.ndarray | np.generic) -> torch.Tensor:
    """One numpy target as a tensor: ``int64`` scalar for class indices, ``float32 [L]`` for multi-label."""
    if np.ndim(target) == 0:
        return torch.tensor(int(target), dtype=torch.int64)
    return torch.from_numpy(np.asarray(target, dtype=np.float32).copy())


class ArrayDataset(Dataset):
    """An in-memory dataset: ``images`` uint8 ``[N, C, H, W]`` and ``targets`` ``[N]`` or ``[N, L]``.

    Args:
        images: raw pixels, channel-first.
        targets: ``int64 [N]`` class indices or ``float32 [N, L]`` multi-hot vectors.

    Example:
        >>> ds = ArrayDataset(np.zeros((2, 3, 4, 4), np.uint8), np.array([0, 1]))
        >>> len(ds), ds.channels, ds.image_size
        (2, 3, (4, 4))
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise InvalidInputError(f"images must be uint8 [N, C, H, W], got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise InvalidInputError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """A new dataset holding copies of the given rows."""
        return ArrayDataset(self.images[indices], self.targets[indices])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A copy, so in-place edits by a caller can never change the stored pixels.
        return torch.from_numpy(self.images[index].copy()), to_target(self.targets[index])

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, channels={self.channels}, image_size={self.image_size})"


# Image modes, by how they reach uint8 (the rules in the module docstring of ``edgekd.data._files``).
GRAY_MODES = frozenset({"1", "L", "LA", "La"})
COLOR_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})
WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class UnsupportedImage(ValueError):
    """An image in a mode or layout edgekd refuses to convert (see :func:`image_info`)."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`image_info` learns from an image header: grayscale or colour, bits per sample, size, frames."""

    gray: bool
    bits: int
    size: tuple[int, int]  # (H, W)
    frames: int


def image_info(im: Image.Image) -> ImageInfo:
    """Classify an opened image by its header; raise ``ValueError`` for a mode edgekd does not read.

    16-bit files count as ``bits=16``: grayscale ones open in an ``I;16`` mode (or ``I`` in older Pillow),
    16-bit colour ones open as ``RGB`` with a ``;16`` raw mode that Pillow reduces to the high byte.
    """
    raw_modes = [t[3] if isinstance(t[3], str) else (t[3][0] if t[3] else "") for t in (im.tile or [])]
    wide = any(";16" in str(r) for r in raw_modes)
    if im.mode in WIDE_GRAY_MODES:
        gray, bits = True, 16
    elif im.mode in GRAY_MODES or im.mode in COLOR_MODES:
        gray, bits = im.mode in GRAY_MODES, 16 if wide else 8
    else:
        what = {"F": "32-bit float", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}.get(im.mode, im.mode)
        raise UnsupportedImage(f"{what} images (mode {im.mode}) are not supported")
    return ImageInfo(gray=gray, bits=bits, size=(im.height, im.width), frames=int(getattr(im, "n_frames", 1) or 1))


def decode_image(im: Image.Image, *, channels: int, size: tuple[int, int], depth: int) -> np.ndarray:
    """Decode an opened image to uint8 ``[channels, H, W]`` by the documented rules; ``ValueError`` if refused.

    16-bit samples become their high byte (``u8 = v // 256``, what Pillow itself does for 16-bit colour);
    alpha is dropped (colour values used as stored); palettes are looked up; colour to grayscale is
    Pillow's ITU-R 601-2 luma; grayscale to 3 channels repeats the channel; an EXIF orientation is applied (the
    image as viewers show it); a size other than ``size`` is resized (bilinear, aspect ratio not kept).
    """
    info = image_info(im)
    if info.frames > 1:
        raise UnsupportedImage(f"it holds {info.frames} frames (a stack or animation); edgekd reads single images")
    if info.bits != depth:
        raise UnsupportedImage(f"it is {info.bits}-bit but the data was read as {depth}-bit (depth={depth})")
    im = ImageOps.exif_transpose(im)  # phone and camera photos (dermatology): upright as a viewer shows them
    if im.mode in WIDE_GRAY_MODES:
        wide = np.asarray(im)
        if wide.size and (wide.min() < 0 or wide.max() > 65535):
            raise ValueError(f"its values {wide.min()}..{wide.max()} do not fit 16 bits")
        im = Image.fromarray((wide.astype(np.uint32) >> 8).astype(np.uint8), "L")
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.array(im, dtype=np.uint8)  # a writable copy
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


class FileDataset(Dataset):
    """Images decoded lazily from files with PIL, converted to ``channels`` and resized to ``size``.

    Args:
        paths: one image file per sample.
        targets: class indices ``int64 [N]``.
        channels: 1 (PIL mode ``L``) or 3 (``RGB``).
        size: ``(H, W)``; images of another size are resized (bilinear).
        depth: bits per sample of the files (8, or 16 scaled to 8 by the high byte); see :func:`decode_image`.

    Example:
        >>> ds = FileDataset([Path("a.png")], np.array([0]), channels=1, size=(28, 28))
        >>> ds.image_size
        (28, 28)
    """

    def __init__(
        self, paths: Sequence[Path], targets: np.ndarray, *, channels: int, size: tuple[int, int], depth: int = 8
    ) -> None:
        if len(paths) != len(targets):
            raise InvalidInputError(f"{len(paths)} files but {len(targets)} targets")
        self.paths = [Path(p) for p in paths]
        self.targets = targets
        self.channels = channels
        self.image_size = (int(size[0]), int(size[1]))
        self.depth = depth

    def load(self, index: int) -> np.ndarray:
        """Decode one image to uint8 ``[C, H, W]``."""
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                return decode_image(im, channels=self.channels, size=self.image_size, depth=self.depth)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"cannot decode image {path}: {reason}", "remove or replace the broken file") from exc

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(self.load(index))), to_target(self.targets[index])

    def __repr__(self) -> str:
        return f"FileDataset(n={len(self)}, channels={self.channels}, image_size={self.image_size})"


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Seeded per-class split of ``range(len(labels))`` into ``[rest, part_1, ..., part_k]``.

    Each part takes ``round(n_c * fraction)`` items of every class ``c`` (at least one when the fraction is
    positive and the class has items to spare); the rest always keeps at least one item per class.

    Example:
        >>> train, val = stratified_split(np.array([0] * 8 + [1] * 2), [0.25], seed=0)
        >>> len(train), len(val)
        (7, 3)
    """
    rng = np.random.default_rng([seed, 7])
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for j, frac in enumerate(fractions):
            k = int(round(len(idx) * frac))
            if frac > 0 and k == 0:
                k = 1
            k = max(0, min(k, len(idx) - start - 1))
            parts[j + 1].append(idx[start : start + k])
            start += k
        parts[0].append(idx[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def channel_stats(dataset: Dataset, *, max_files: int = 2048) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the ``[0, 1]`` scale.

    Exact over all images of an :class:`ArrayDataset`; for file datasets estimated from up to ``max_files``
    evenly spaced images (decoding a large folder just for statistics would be slow). A channel with zero
    variance gets std 1.0 so normalising never divides by zero.
    """
    if isinstance(dataset, ArrayDataset):
        chunks = (dataset.images[i : i + 4096] for i in range(0, len(dataset), 4096))
    else:
        idx = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), max_files)).round().astype(int))
        chunks = (np.stack([dataset[int(i)][0].numpy() for i in idx[j : j + 256]]) for j in range(0, len(idx), 256))
    total, sq, count = 0.0, 0.0, 0
    for chunk in chunks:
        x = chunk.astype(np.float64) / 255.0
        total = total + x.sum(axis=(0, 2, 3))
        sq = sq + (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise InvalidInputError("cannot compute image statistics of an empty training split")
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean * mean, 0.0))
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
