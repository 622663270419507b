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

import zipfile
import zlib
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

    Raises:
        ArtifactError: not a readable ``.npz``, a missing key, an object array, wrong dtypes or shapes, an empty
            split, negative or non-0/1 multi-label values (exit 4).
        InvalidInputError: label values outside the names given, a single class, or a class without training
            samples (exit 3).

    Example:
        >>> data = read_medmnist(Path("pneumoniamnist.npz"), ["normal", "pneumonia"])
        >>> len(data.train)
        4708
    """
    arrays = _read_npz(path)
    labels = {s: _check_split(path, s, arrays) for s in SPLITS}
    task, names = _detect_task(path, labels, label_names)
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


_KEYS = tuple(f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels"))
_NPZ_HINT = "a MedMNIST .npz holds uint8 train/val/test _images and integer _labels, saved with numpy.savez"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of a MedMNIST file (other keys are never read); no pickle, one-line errors."""
    if not path.is_file():
        raise ArtifactError(
            f"MedMNIST file {path} does not exist", "check the path (paths with commas are not supported in specs)"
        )
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):  # what numpy.load checks to tell an .npz from a pickle
        raise ArtifactError(f"{path} is not a .npz file (not a zip archive)", _NPZ_HINT)
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"cannot read {path} as a .npz: {_reason(e)}", _NPZ_HINT) from None
    arrays: dict[str, np.ndarray] = {}
    with npz:
        for key in (k for k in _KEYS if k in npz.files):
            arrays[key] = _read_member(path, npz, key)
        missing = [k for k in _KEYS if k not in arrays]
        if missing:
            raise ArtifactError(
                f"{path} lacks key {missing[0]!r} (has {', '.join(sorted(npz.files)) or 'nothing'})", _NPZ_HINT
            )
    return arrays


def _read_member(path: Path, npz, key: str) -> np.ndarray:
    try:
        value = npz[key]
    except ValueError as e:
        if "pickle" in str(e).lower() or "object arrays" in str(e).lower():
            raise ArtifactError(
                f"{path}: {key} is an object array (Python objects)",
                "edgekd never unpickles data: save plain numeric arrays",
            ) from None
        raise ArtifactError(f"{path}: cannot read {key}: {_reason(e)}", _NPZ_HINT) from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
        raise ArtifactError(f"{path}: cannot read {key}: {_reason(e)}", _NPZ_HINT) from None
    if not isinstance(value, np.ndarray):
        raise ArtifactError(f"{path}: {key} is not a numpy array", _NPZ_HINT)
    return value


def _reason(e: BaseException) -> str:
    """The first line of a numpy/zip error, never numpy's advice to load pickled data."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return "it holds pickled Python objects, which edgekd never loads" if "pickle" in text.lower() else text


def _check_split(path: Path, split: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Validate one split's arrays and return its labels as ``(N, L)`` integers."""
    ikey, lkey = f"{split}_images", f"{split}_labels"
    images, labels = arrays[ikey], arrays[lkey]
    if images.dtype != np.uint8:
        hint = "scale 16-bit images to 8 bits first (e.g. v // 256)" if images.dtype == np.uint16 else _NPZ_HINT
        raise ArtifactError(f"{path}: {ikey} has dtype {images.dtype}, expected uint8", hint)
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
        raise ArtifactError(f"{path}: {ikey} has shape {images.shape}, expected (N, H, W) or (N, H, W, 3)")
    if len(images) == 0:
        raise ArtifactError(
            f"{path}: the {split} split is empty ({ikey} holds 0 images)", "every split (train, val, test) needs images"
        )
    if 0 in images.shape[1:3]:
        raise ArtifactError(f"{path}: {ikey} has shape {images.shape}: its images are empty")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_) or labels.ndim not in (1, 2):
        raise ArtifactError(f"{path}: {lkey} must be integer (N, 1) or (N, L), got {labels.dtype} {labels.shape}")
    if len(labels) != len(images):
        raise ArtifactError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    if labels.ndim == 2 and labels.shape[1] == 0:
        raise ArtifactError(f"{path}: {lkey} has shape {labels.shape}: no label columns")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise ArtifactError(f"{path}: {lkey} has negative values")
    return labels.reshape(len(labels), -1)


def _detect_task(path: Path, labels: dict[str, np.ndarray], names: list[str] | None) -> tuple[Task, list[str]]:
    """Binary, multi-class or multi-label from the label arrays, and one name per class; checks the values."""
    widths = {lab.shape[1] for lab in labels.values()}
    if len(widths) != 1:
        raise ArtifactError(f"{path}: the splits have different label widths {sorted(widths)}")
    width = widths.pop()
    top_split = max(SPLITS, key=lambda s: int(labels[s].max()))
    top = int(labels[top_split].max())
    if width > 1:
        if top > 1:
            raise ArtifactError(f"{path}: multi-label labels ({width} columns) must be 0/1, found {top}")
        return Task.MULTILABEL, _names(path, names, width)
    if names is not None and top >= len(names):
        raise InvalidInputError(
            f"{path}: label {top} in {top_split}_labels is out of range for the {len(names)} label names given",
            "give labels=a;b;c with one name per class",
        )
    num = len(names) if names is not None else max(top + 1, 2)
    present = np.unique(labels["train"])
    if len(present) < 2:
        raise InvalidInputError(
            f"{path}: every training label is {int(present[0])}: a classifier needs at least 2 classes",
            "add samples of the other classes to train_labels",
        )
    if len(present) < num:
        absent = _absent(present, num)
        shown = ", ".join(repr(names[a]) if names else str(a) for a in absent[:5]) + (" ..." if len(absent) > 5 else "")
        what = f"class {shown} has" if len(absent) == 1 else f"classes {shown} have"
        raise InvalidInputError(
            f"{path}: {what} no training samples (labels run 0..{num - 1})",
            "labels must be 0..K-1 with every class in train_labels",
        )
    return (Task.BINARY if num == 2 else Task.MULTICLASS), _names(path, names, num)


def _absent(present: np.ndarray, num: int, limit: int = 5) -> list[int]:
    """The first ``limit + 1`` class indices below ``num`` missing from ``present`` (cheap for any ``num``)."""
    have, out, i = set(present.tolist()), [], 0
    while i < num and len(out) <= limit:
        if i not in have:
            out.append(i)
        i += 1
    return out


def _names(path: Path, names: list[str] | None, num: int) -> list[str]:
    names = names or [f"class_{i}" for i in range(num)]
    if len(names) != num or len(set(names)) != num or not all(names):
        raise InvalidInputError(
            f"{len(names)} label names given for {num} classes in {path}", "give labels=a;b;c with one name per class"
        )
    return names
