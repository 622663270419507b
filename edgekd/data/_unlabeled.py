"""Images without labels: every image of a folder, or a labelled source with its labels ignored.

Semi-supervised distillation (``edgekd distill --unlabeled``), teacher labelling (``edgekd label``) and drift
checks (``edgekd drift``) read images whose labels are absent or irrelevant. :func:`load_images` takes:

* ``folder:DIR`` (or just ``DIR``): every image under ``DIR``, recursively (PNG, JPEG, BMP, TIFF, WebP and
  DICOM; hidden files and folders skipped); options ``window=`` and ``frame=`` for the DICOM files
  (see :mod:`edgekd.data._dicom`), ``size=N`` and ``channels=1|3``;
* ``dicom:DIR[,...]``: every DICOM file under ``DIR`` (class folders and ``labels=`` ignored);
* any other data spec (``pneumoniamnist``, ``medmnist:F.npz``, ``imagefolder:D``...): one split of it (or
  ``all``), labels ignored.

Every image comes out at one geometry, the caller's (a model's ``data_channels`` and size) or the set's own;
colour becomes gray by ITU-R 601-2 luma, gray becomes colour by repetition, other sizes are resized
(bilinear). Each image also has a *content key* (:meth:`ImageSet.key`): the sha256 of the file's bytes for
files, of the stored pixels (with their shape) for array datasets. Soft labels are matched to images by this
key, so a changed image is never matched to a stale label.

Example:
    >>> images = load_images("folder:/data/unlabeled", channels=1, size=(28, 28))
    >>> len(images), images.dataset[0][0].shape, images.key(0)[:8]
    (5120, torch.Size([1, 28, 28]), '3f2a9c1e')
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from edgekd._io import sha256_file
from edgekd.data._bundle import SPLITS
from edgekd.data._dataset import FileDataset, image_info
from edgekd.data._dicom import DicomDataset, Window, _header, inspect_dicom, is_dicom_file, parse_frame, parse_window
from edgekd.data._files import IMAGE_EXTS, MAX_SIZE
from edgekd.data._load import load_data
from edgekd.data._spec import format_data_spec, opt_int, parse_data_spec
from edgekd.errors import ArtifactError, InvalidInputError

__all__ = ["ImageSet", "FilesDataset", "load_images", "image_files", "files_geometry", "pixels_key", "conform"]

FOLDER_OPTIONS = ("window", "frame", "size", "channels")
_DICOM_IGNORED = ("labels", "val", "test", "seed")


def pixels_key(image: np.ndarray) -> str:
    """Content key of an in-memory image: sha256 over its shape and its uint8 bytes."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(f"pixels{list(image.shape)}|".encode() + image.tobytes()).hexdigest()


def image_files(folder: Path) -> list[Path]:
    """Every image file (by extension) and DICOM file under ``folder``, hidden ones skipped, sorted."""
    out = []
    for p in sorted(folder.rglob("*")):
        if any(s.startswith(".") for s in p.relative_to(folder).parts):
            continue
        if p.is_file() and (p.suffix.lower() in IMAGE_EXTS or is_dicom_file(p)):
            out.append(p)
    return out


def _file_info(path: Path) -> tuple[bool, tuple[int, int]]:
    """(colour, (H, W)) of one file from its header, with a one-line error naming it."""
    if is_dicom_file(path):
        h = _header(path)
        return h.color, (h.rows, h.columns)
    try:
        with Image.open(path) as im:
            info = image_info(im)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ArtifactError(f"cannot read image {path}: {reason}", "remove or replace the broken file") from None
    if info.bits != 8 or info.frames > 1:
        raise ArtifactError(f"image {path} is not an 8-bit single-frame image", "convert it to 8-bit PNG")
    return not info.gray, info.size


def files_geometry(paths: Sequence[Path], options: dict[str, str]) -> tuple[int, tuple[int, int], Window, int | None]:
    """Channels, size, DICOM window and frame of a set of image files from the spec options.

    Every header is read (DICOM pixels of one file per kind are decoded, see :func:`inspect_dicom`). Without
    ``size=N`` all images must share one size; without ``channels=`` the set is gray unless a file is colour.
    """
    if not paths:
        raise ArtifactError("no images found", f"image files end in {' '.join(sorted(IMAGE_EXTS))} or are DICOM")
    size = opt_int(options, "size", 0, low=1)
    if size > MAX_SIZE:
        raise InvalidInputError(f"option size={size} is larger than {MAX_SIZE}", "e.g. size=224")
    channels = opt_int(options, "channels", 0, low=1)
    if channels and channels not in (1, 3):
        raise InvalidInputError(f"option channels={channels} is not supported", "use channels=1 or channels=3")
    window, frame = parse_window(options.get("window")), parse_frame(options.get("frame"))
    color, sizes = False, {}
    for p in paths:
        c, s = _file_info(p)
        color = color or c
        sizes.setdefault(s, p)
    dicom = [p for p in paths if is_dicom_file(p)]
    if dicom:  # frames, and one real decode per kind (a missing decoder is named now)
        inspect_dicom(dicom, frame=frame, same_size=False, window=window)
    if not size and len(sizes) > 1:
        (a, pa), (b, pb) = list(sizes.items())[:2]
        raise InvalidInputError(
            f"image {pb} is {b[0]}x{b[1]} but {pa} is {a[0]}x{a[1]}",
            "pass size=N to resize every image to N x N (bilinear, aspect ratio not kept)",
        )
    shape = (size, size) if size else next(iter(sizes))
    return channels or (3 if color else 1), shape, window, frame


class FilesDataset(Dataset):
    """Image files (PIL formats and DICOM together) decoded to one geometry; ``.paths`` and ``.targets``."""

    def __init__(
        self,
        paths: Sequence[Path],
        targets: np.ndarray,
        *,
        channels: int,
        size: tuple[int, int],
        window: Window | str = "auto",
        frame: int | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.targets = targets
        self.channels, self.image_size = channels, (int(size[0]), int(size[1]))
        dicom = [is_dicom_file(p) for p in self.paths]
        self._where = []  # (is DICOM, index in that dataset)
        n_dcm = n_pil = 0
        for d in dicom:
            self._where.append((d, n_dcm if d else n_pil))
            n_dcm, n_pil = n_dcm + d, n_pil + (not d)
        pick = np.array(dicom, dtype=bool)
        self._dicom = DicomDataset(
            [p for p, d in zip(self.paths, dicom) if d],
            targets[pick],
            channels=channels,
            size=self.image_size,
            window=window,
            frame=frame,
        )
        self._pil = FileDataset(
            [p for p, d in zip(self.paths, dicom) if not d], targets[~pick], channels=channels, size=self.image_size
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        is_dcm, j = self._where[index]
        return (self._dicom if is_dcm else self._pil)[j]


def conform(image: torch.Tensor, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """One uint8 ``[C, H, W]`` image at ``channels`` (luma or repeat) and ``size`` (bilinear)."""
    if image.shape[0] != channels:
        if channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            image = (image.float() * w).sum(0, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            image = image.expand(channels, -1, -1).clone()
    if tuple(image.shape[-2:]) != tuple(size):
        x = F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", align_corners=False)
        image = x[0].round().clamp(0, 255).to(torch.uint8)
    return image


class _Conformed(Dataset):
    """Images of another dataset at one geometry, with the target replaced by -1 (no label)."""

    def __init__(self, base: Dataset, channels: int, size: tuple[int, int]) -> None:
        self.base, self.channels, self.image_size = base, channels, (int(size[0]), int(size[1]))
        self.targets = np.full(len(base), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        return conform(self.base[index][0], self.channels, self.image_size), torch.tensor(-1)


@dataclass(frozen=True)
class ImageSet:
    """Unlabelled images at one geometry.

    Attributes:
        spec: the spec they were loaded from (canonical).
        dataset: items ``(uint8 [channels, H, W], -1)``.
        sources: per image, its file path or ``SPEC#split[i]``.
        files: whether the images are files (keys hash the file bytes) or array items (keys hash pixels).
        split: the split of a labelled spec they come from (``None`` for a folder: every image).
    """

    spec: str
    dataset: Dataset
    sources: list[str]
    files: bool
    channels: int
    image_size: tuple[int, int]
    split: str | None = None
    _raw: Dataset | None = None  # the unconformed dataset of array items (their stored pixels are hashed)

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, index: int) -> str:
        """The content key of image ``index`` (see the module docstring)."""
        if self.files:
            return sha256_file(self.sources[index])
        return pixels_key(self._raw[index][0].numpy())


def _folder_set(
    source: str, arg: str, options: dict[str, str], channels: int | None, size: tuple[int, int] | None
) -> ImageSet:
    base = Path(arg).expanduser()
    if not base.is_dir():
        raise ArtifactError(f"image folder {base} does not exist", "check the path (no commas in spec paths)")
    valid = FOLDER_OPTIONS + (_DICOM_IGNORED if source == "dicom" else ())
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise InvalidInputError(
            f"unknown option {unknown[0]!r} for unlabelled images {source}:", f"valid keys: {', '.join(FOLDER_OPTIONS)}"
        )
    paths = image_files(base)
    if source == "dicom":
        paths = [p for p in paths if is_dicom_file(p)]
    own = {k: v for k, v in options.items() if k in FOLDER_OPTIONS}
    if size is not None:
        own["size"] = "1"  # the caller's size: any image size is fine, nothing to compare
    c, s, window, frame = files_geometry(paths, own)
    channels, size = channels or c, size or s
    ds = FilesDataset(
        paths, np.full(len(paths), -1, np.int64), channels=channels, size=size, window=window, frame=frame
    )
    spec = format_data_spec(source, str(base), {k: v for k, v in options.items() if k in FOLDER_OPTIONS})
    return ImageSet(spec, ds, [str(p) for p in paths], True, channels, tuple(size), None)


def load_images(
    spec: str,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    split: str = "train",
    seed: int = 0,
    download: bool = False,
) -> ImageSet:
    """Unlabelled images from a folder or from one split (or ``all``) of a labelled source.

    Args:
        spec: ``folder:DIR``, a folder path, ``dicom:DIR`` or any data spec (see the module docstring).
        channels, size: the geometry to deliver (default: the images' own).
        split: ``train``, ``val``, ``test`` or ``all`` for labelled sources (folders give every image).
        seed, download: as in :func:`~edgekd.data.load_data`.

    Raises:
        InvalidInputError: a bad spec, option or split (exit 3).
        ArtifactError: a missing folder, no images, an unreadable file (exit 4).
    """
    if split not in (*SPLITS, "all"):
        raise InvalidInputError(f"unknown split {split!r}", "use train, val, test or all")
    if Path(spec).expanduser().is_dir():
        spec = f"folder:{spec}"
    source, arg, options = parse_data_spec(spec)
    if source == "folder" or (source == "dicom" and arg):
        if not arg:
            raise InvalidInputError("folder: needs a folder", "e.g. folder:/data/unlabeled")
        return _folder_set(source, arg, options, channels, size)
    bundle = load_data(spec, seed=seed, download=download)
    names = SPLITS if split == "all" else (split,)
    parts = [bundle.split(s) for s in names]
    raw = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    paths = [getattr(p, "paths", None) for p in parts]
    files = all(p is not None for p in paths)
    sources = (
        [str(x) for p in paths for x in p]
        if files
        else [f"{bundle.spec}#{s}[{i}]" for s, p in zip(names, parts) for i in range(len(p))]
    )
    channels, size = channels or bundle.channels, tuple(size or bundle.image_size)
    return ImageSet(bundle.spec, _Conformed(raw, channels, size), sources, files, channels, size, split, raw)
