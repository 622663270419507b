"""Segmentation data: image/mask pairs, patient-grouped splits, the bundled lung masks (``lungseg``) and ``seg:PATH``.

Items are ``(image, mask)``: the raw ``uint8 [C, H, W]`` image (as for classification) and an ``int64 [H, W]``
mask of class indices (0 = background). ``.targets`` holds every mask (``uint8 [N, H, W]``), so label statistics
never decode an image.

Sources:

* ``lungseg``: the bundled chest X-rays with manual lung masks (84 images of 43 patients, 256 x 256; CC BY,
  see ``bundled/lungseg.md``). Options ``size=N`` (resize: bilinear images, nearest-neighbour masks),
  ``val=0.15``, ``test=0.25``, ``seed=``.
* ``seg:PATH``: a folder with ``images/`` and ``masks/`` (a mask per image, matched by file stem), or a CSV
  manifest with a header ``image,mask[,patient][,split]`` (paths relative to the CSV's folder). Images are
  PNG/JPEG/... or DICOM (``.dcm``, read with the DICOM recipe of :mod:`._dicom`; ``window=``); masks are PNGs of
  class indices, or 0/255 for one foreground class. Options ``size``, ``channels``, ``classes=K``,
  ``labels=a;b;c``, ``window``, ``val``, ``test``, ``seed``.

Splits are always **patient-grouped** (:func:`patient_split`): every image of one patient lands in the same
split, so no patient is seen in training and scored in test. Without a patient column each image is its own
group; a ``split`` column, when given, is used as is (and checked for patients in two splits).

Example:
    >>> bundle = load_data("lungseg")
    >>> bundle.task.value, bundle.label_names, bundle.image_size
    ('segmentation', ['background', 'lung'], (256, 256))
    >>> image, mask = bundle.train[0]  # uint8 [1, 256, 256], int64 [256, 256]
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from edgekd.data._bundle import SPLITS, SourceData
from edgekd.data._dataset import ArrayDataset, FileDataset
from edgekd.data._dicom import is_dicom_file, parse_window, read_dicom
from edgekd.data._files import IMAGE_EXTS, is_image
from edgekd.data._load import SOURCES
from edgekd.data._spec import opt_float, opt_int
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import Task

__all__ = [
    "SegArrayDataset",
    "SegFileDataset",
    "patient_split",
    "read_mask",
    "masks_to_classes",
    "LUNG_LABELS",
]

LUNG_LABELS = ["background", "lung"]
_MASK_HINT = "masks are PNGs of class indices (0 = background) or 0/255 for one foreground class"


class SegArrayDataset(ArrayDataset):
    """In-memory image/mask pairs: ``images`` uint8 ``[N, C, H, W]``, ``masks`` uint8 ``[N, H, W]``.

    Example:
        >>> ds = SegArrayDataset(np.zeros((2, 1, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8))
        >>> ds[0][1].shape, ds[0][1].dtype
        (torch.Size([8, 8]), torch.int64)
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != images.shape[2:]:
            raise InvalidInputError(f"masks {masks.shape} do not match images {images.shape}")
        super().__init__(images, masks)

    def subset(self, indices: np.ndarray) -> SegArrayDataset:
        return SegArrayDataset(self.images[indices], self.targets[indices])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.images[index].copy())
        return image, torch.from_numpy(self.targets[index].astype(np.int64))

    def __repr__(self) -> str:
        return f"SegArrayDataset(n={len(self)}, channels={self.channels}, image_size={self.image_size})"


class SegFileDataset(Dataset):
    """Images decoded lazily from files (PIL or DICOM), masks held in memory (``uint8 [N, H, W]``)."""

    def __init__(
        self, paths: Sequence[Path], masks: np.ndarray, *, channels: int, size: tuple[int, int], window: str = "auto"
    ) -> None:
        self.files = FileDataset(list(paths), np.zeros(len(paths), np.int64), channels=channels, size=size)
        self.paths, self.targets, self.window = self.files.paths, masks, window
        self.channels, self.image_size = channels, self.files.image_size

    def load(self, index: int) -> np.ndarray:
        path = self.paths[index]
        if is_dicom_file(path):
            return read_dicom(path, channels=self.channels, size=self.image_size, window=parse_window(self.window))
        return self.files.load(index)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(self.load(index)))
        return image, torch.from_numpy(self.targets[index].astype(np.int64))

    def __repr__(self) -> str:
        return f"SegFileDataset(n={len(self)}, channels={self.channels}, image_size={self.image_size})"


def patient_split(groups: Sequence[str], val: float, test: float, seed: int) -> dict[str, np.ndarray]:
    """Seeded split of ``range(len(groups))`` into train / val / test by whole groups (patients).

    The groups are shuffled (``numpy.random.default_rng([seed, 11])``), then taken largest first, each into the
    split furthest below its share of images (``val * N``, ``test * N``, the rest for train) relative to that
    share; each split with a positive share gets at least one group.

    Raises:
        InvalidInputError: fewer than three groups, or fractions that leave no training data.

    Example:
        >>> parts = patient_split(["a", "a", "b", "c", "d"], 0.2, 0.2, seed=0)
        >>> sorted(len(v) for v in parts.values())
        [1, 1, 3]
    """
    if val + test >= 1:
        raise InvalidInputError(f"val={val} + test={test} leaves no training data", "keep val + test < 1")
    groups = np.asarray([str(g) for g in groups])
    names = np.unique(groups)
    if len(names) < 3:
        raise InvalidInputError(
            f"the data holds {len(names)} patient(s): a patient-grouped train/val/test split needs at least 3",
            "add images of more patients",
        )
    order = np.random.default_rng([seed, 11]).permutation(names)
    sizes = {g: int((groups == g).sum()) for g in names}
    order = sorted(order, key=lambda g: -sizes[g])  # largest first (stable: the shuffle breaks ties)
    want = {"train": (1 - val - test) * len(groups), "val": val * len(groups), "test": test * len(groups)}
    have = {s: 0 for s in SPLITS}
    where: dict[str, str] = {}
    for g in order:
        empty = [s for s in ("test", "val", "train") if not have[s] and want[s] > 0]
        left = len(order) - len(where)
        # The split furthest below its share (relative), unless the remaining groups are needed to fill empty ones.
        split = empty[0] if len(empty) >= left else max(SPLITS, key=lambda s: (want[s] - have[s]) / max(want[s], 1e-9))
        where[g] = split
        have[split] += sizes[g]
    return {s: np.flatnonzero(np.isin(groups, [g for g in names if where[g] == s])) for s in SPLITS}


def read_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """One mask PNG as its raw ``uint8 [H, W]`` values (resized nearest-neighbour to ``size`` when given)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("1", "L", "P", "I;16", "I"):
                raise ArtifactError(f"mask {path} is a {im.mode} image, not one channel of class indices", _MASK_HINT)
            arr = np.array(im.convert("L") if im.mode == "1" else im)
    except FileNotFoundError:
        raise ArtifactError(f"mask file {path} does not exist", "a mask per image, matched by file name") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ArtifactError(f"cannot read mask {path}: {exc}", _MASK_HINT) from None
    if arr.max(initial=0) > 255:
        raise ArtifactError(f"mask {path} holds values above 255", _MASK_HINT)
    arr = arr.astype(np.uint8)
    if size is not None and arr.shape != tuple(size):
        arr = np.array(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return arr


def masks_to_classes(masks: np.ndarray, classes: int = 0) -> tuple[np.ndarray, int]:
    """Raw mask values to class indices: ``{0, 255}`` (a binary mask) becomes ``{0, 1}``; else used as stored.

    Returns the masks and the class count (``classes``, or ``max + 1`` and at least 2).
    """
    values = np.unique(masks)
    if set(values.tolist()) <= {0, 255} and (classes in (0, 2)):
        return (masks == 255).astype(np.uint8), 2
    if not classes and int(values.max()) + 1 > 2 * len(values):  # e.g. 0/128/255: grey levels, not class indices
        shown = ", ".join(str(int(v)) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise ArtifactError(
            f"the masks hold the values {shown}: not class indices 0..K-1 (nor 0/255 for one class)",
            "write each pixel's class index (0 = background, 1, 2, ...), or pass classes=K if some are absent",
        )
    k = classes or max(int(values.max()) + 1, 2)
    if int(values.max()) >= k:
        raise ArtifactError(f"the masks hold class {int(values.max())} but classes={k}", _MASK_HINT)
    return masks.astype(np.uint8), k


def _resize_arrays(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if size == images.shape[-1] and size == images.shape[-2]:
        return images, masks
    im = [np.array(Image.fromarray(x).resize((size, size), Image.Resampling.BILINEAR)) for x in images]
    mk = [np.array(Image.fromarray(m).resize((size, size), Image.Resampling.NEAREST)) for m in masks]
    return np.stack(im), np.stack(mk)


@SOURCES.register(
    "lungseg",
    arg=None,
    options=("size", "val", "test", "seed"),
    help="bundled chest X-rays with lung masks, 84 images of 43 patients, 256x256, patient-grouped splits (CC BY)",
    example="lungseg:size=128",
)
def _lungseg(arg, options, *, seed, download, root) -> SourceData:
    ref = resources.files("edgekd.data") / "bundled" / "lungseg.npz"
    with resources.as_file(ref) as path, np.load(path, allow_pickle=False) as npz:
        images, masks, patients = npz["images"], npz["masks"], npz["patients"]
    size = opt_int(options, "size", images.shape[-1], low=8, example=128)
    images, masks = _resize_arrays(images, masks, size)
    parts = patient_split(patients, opt_float(options, "val", 0.15), opt_float(options, "test", 0.25), seed)
    splits = {s: SegArrayDataset(images[idx][:, None].copy(), masks[idx].copy()) for s, idx in parts.items()}
    return SourceData(**splits, task=Task.SEGMENTATION, label_names=list(LUNG_LABELS))


@SOURCES.register(
    "seg",
    arg="required",
    options=("size", "channels", "classes", "labels", "window", "val", "test", "seed"),
    help="image/mask pairs: a folder with images/ and masks/, or a CSV image,mask[,patient][,split]",
    example="seg:/data/lungs,size=256",
)
def _seg(arg, options, *, seed, download, root) -> SourceData:
    base = Path(arg).expanduser()
    rows = _manifest_rows(base) if base.is_file() else _folder_rows(base)
    first = _open_size(rows[0][0])
    size = opt_int(options, "size", 0, low=8, example=256)
    shape = (size, size) if size else first
    channels = opt_int(options, "channels", 1, low=1, example=3)
    if channels not in (1, 3):
        raise InvalidInputError(f"option channels={channels} is not supported", "use channels=1 or channels=3")
    raw = np.stack([read_mask(m, shape) for _, m, _, _ in rows])
    masks, k = masks_to_classes(raw, opt_int(options, "classes", 0, low=2, example=2))
    names = _label_names(options, k)
    parts = _splits(rows, options, seed)
    window = options.get("window", "auto")
    parse_window(window)
    splits = {
        s: SegFileDataset([rows[i][0] for i in idx], masks[idx], channels=channels, size=shape, window=window)
        for s, idx in parts.items()
    }
    return SourceData(**splits, task=Task.SEGMENTATION, label_names=names)


def _label_names(options: dict[str, str], k: int) -> list[str]:
    if "labels" not in options:
        return ["background", "foreground"] if k == 2 else ["background", *(f"class_{i}" for i in range(1, k))]
    names = [n.strip() for n in options["labels"].split(";")]
    if len(names) != k or len(set(names)) != k or not all(names):
        raise InvalidInputError(
            f"{len(names)} label names given for {k} mask classes", "give labels=a;b;c with one name per class"
        )
    return names


Row = tuple[Path, Path, str, str | None]  # image, mask, patient, split


def _splits(rows: list[Row], options: dict[str, str], seed: int) -> dict[str, np.ndarray]:
    val, test = opt_float(options, "val", 0.15), opt_float(options, "test", 0.25)
    groups = [r[2] for r in rows]
    if not any(r[3] for r in rows):
        return patient_split(groups, val, test, seed)
    given = np.array([r[3] or "" for r in rows], dtype=object)
    if (given == "").any():
        raise ArtifactError("some manifest rows name a split and some do not", "give every row a split, or none")
    seen: dict[str, str] = {}
    for g, s in zip(groups, given):
        if seen.setdefault(g, s) != s:
            raise ArtifactError(
                f"patient {g!r} is in both the {seen[g]} and the {s} split",
                "keep every image of one patient in one split (or drop the split column)",
            )
    out = {s: np.flatnonzero(given == s) for s in SPLITS}
    for s, idx in out.items():
        if not len(idx):
            raise InvalidInputError(f"the manifest puts no row in the {s} split", "every split needs images")
    return out


def _open_size(path: Path) -> tuple[int, int]:
    if is_dicom_file(path):
        return tuple(read_dicom(path).shape[1:])
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read image {path}: {exc}", "remove or replace the broken file") from None


def _folder_rows(base: Path) -> list[Row]:
    images, masks = base / "images", base / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise ArtifactError(
            f"{base} is neither a CSV manifest nor a folder with images/ and masks/",
            "seg:FOLDER needs FOLDER/images and FOLDER/masks (a mask per image, same file stem)",
        )
    by_stem = {p.stem: p for p in sorted(masks.iterdir()) if is_image(p)}
    rows: list[Row] = []
    for p in sorted(images.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_EXTS and not is_dicom_file(p):
            continue
        if p.stem not in by_stem:
            raise ArtifactError(f"image {p.name} has no mask in {masks}", "a mask per image, with the same stem")
        rows.append((p, by_stem[p.stem], p.stem, None))
    if not rows:
        raise ArtifactError(f"no images in {images}", f"supported: {' '.join(sorted(IMAGE_EXTS))} and DICOM")
    return rows


def _manifest_rows(table: Path) -> list[Row]:
    try:
        with table.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            raw = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ArtifactError(f"cannot read manifest {table}: {exc}", "a UTF-8 CSV with image,mask columns") from None
    if "image" not in fields or "mask" not in fields:
        raise ArtifactError(f"{table} has no image and mask columns", "header: image,mask[,patient][,split]")
    rows: list[Row] = []
    for line, row in enumerate(raw, start=2):
        image, mask = _inside(table, line, row["image"]), _inside(table, line, row["mask"])
        split = row.get("split", "").lower() or None
        if split is not None and split not in SPLITS:
            raise ArtifactError(f"{table} row {line}: split {row['split']!r} is not train, val or test")
        if not image.is_file():
            raise ArtifactError(f"{table} row {line}: image {row['image']!r} does not exist")
        rows.append((image, mask, row.get("patient") or f"row{line}", split))
    if not rows:
        raise ArtifactError(f"{table} has no data rows", "one image,mask row per pair")
    return rows


def _inside(table: Path, line: int, rel: str) -> Path:
    norm = os.path.normpath(rel)
    if not rel or os.path.isabs(rel) or norm == ".." or norm.startswith(".." + os.sep):
        raise ArtifactError(
            f"{table} row {line}: path {rel!r} is empty or points outside the manifest's folder",
            "paths are relative to the CSV's folder",
        )
    return table.parent / norm
