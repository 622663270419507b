"""Soft labels (per-class probabilities from teachers) as a file and as the data source ``softlabels:FILE``.

``edgekd label`` writes a table with one row per image: its content key (sha256 of the file's bytes, or of the
stored pixels for array datasets, see :mod:`edgekd.data._unlabeled`), where it came from (``source``: a file
path or ``SPEC#split[i]``), the averaged class probabilities and whether the teachers' confidence fell below
``--min-confidence`` (``abstained``). Two formats, chosen by the suffix:

* ``.npz`` (numpy, read without pickle): ``keys``, ``sources``, ``probs`` float32 ``[N, K]``, ``abstained``,
  ``label_names`` and ``meta`` (JSON: teachers and their weight hashes, weights, threshold, statistics);
* ``.csv``: ``sha256,source,label,confidence,abstained,p_<class>...`` (the label is the argmax class, empty
  when abstained).

``softlabels:FILE[,images=DIR][,size=N][,channels=1|3][,window=...][,frame=...][,val=,test=,seed=][,hard=1]
[,stale=skip]`` reads such a file back as labelled data. Every image is found again and *re-hashed*; a row is
used only when the image's current key equals the stored one, so a changed image is never matched to a stale
label. Images are looked up at their recorded sources, or, with ``images=DIR``, among every image under
``DIR`` by key (files moved or renamed keep their labels; images without a label are not used). Without
``images=``, rows whose image is missing or changed are an error unless ``stale=skip``. Abstained rows are
never used. The usable rows are split by a seeded stratified split on the argmax class (``val=0.1``,
``test=0.2``). Items of the train split carry the probability vector as their target (soft cross-entropy:
``ce`` accepts it; ``dkd`` needs class indices and refuses it); ``hard=1`` gives argmax class indices
everywhere. ``.targets`` (statistics, splits, metrics on val/test) are always the argmax classes.

Example:
    >>> bundle = load_data("softlabels:runs/labels.npz,images=/data/unlabeled")
    >>> image, probs = bundle.train[0]
    >>> probs  # tensor([0.0312, 0.9688])
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edgekd._io import atomic_write_bytes, atomic_write_text, sha256_file
from edgekd.data._bundle import SourceData
from edgekd.data._dataset import stratified_split
from edgekd.data._load import SOURCES
from edgekd.data._spec import opt_float, opt_int
from edgekd.data._unlabeled import FilesDataset, files_geometry, image_files, load_images
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.specs import Task

__all__ = ["SoftLabels", "SoftLabelDataset", "write_soft_labels", "read_soft_labels", "LABEL_FORMATS"]

LABEL_FORMATS = (".npz", ".csv")
_RELABEL = "re-run edgekd label on the current images"


@dataclass
class SoftLabels:
    """One row per image: content key, source, class probabilities, abstention; plus the run's metadata."""

    label_names: list[str]
    keys: list[str]
    sources: list[str]
    probs: np.ndarray
    abstained: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float32)
        self.abstained = np.asarray(self.abstained, dtype=bool)
        n, k = len(self.keys), len(self.label_names)
        if self.probs.shape != (n, k) or len(self.sources) != n or self.abstained.shape != (n,):
            raise ArtifactError(
                f"soft labels with {n} keys, {len(self.sources)} sources, probabilities "
                f"{list(self.probs.shape)} and {k} classes do not fit together",
                _RELABEL,
            )
        if n and (
            not np.isfinite(self.probs).all() or self.probs.min() < 0 or np.abs(self.probs.sum(1) - 1).max() > 1e-3
        ):
            raise ArtifactError("soft labels must be probabilities (non-negative, each row summing to 1)", _RELABEL)

    @property
    def hard(self) -> np.ndarray:
        """Argmax class per row, ``int64 [N]``."""
        return self.probs.argmax(1).astype(np.int64) if len(self.keys) else np.zeros(0, np.int64)


def _check_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in LABEL_FORMATS:
        raise InvalidInputError(f"cannot tell the soft-label format of {path}", "use a .npz or .csv file")
    return suffix


def write_soft_labels(path: str | Path, labels: SoftLabels) -> Path:
    """Write ``labels`` atomically as ``.npz`` or ``.csv`` (by suffix)."""
    path = Path(path)
    if _check_format(path) == ".npz":
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            keys=np.array(labels.keys, dtype="U64"),
            sources=np.array(labels.sources, dtype=str),
            probs=labels.probs,
            abstained=labels.abstained,
            label_names=np.array(labels.label_names, dtype=str),
            meta=np.array(json.dumps(labels.meta, default=str)),
        )
        atomic_write_bytes(path, buf.getvalue())
        return path
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["sha256", "source", "label", "confidence", "abstained", *(f"p_{n}" for n in labels.label_names)])
    hard = labels.hard
    for i, key in enumerate(labels.keys):
        label = "" if labels.abstained[i] else labels.label_names[hard[i]]
        w.writerow(
            [
                key,
                labels.sources[i],
                label,
                f"{labels.probs[i].max():.6f}",
                int(labels.abstained[i]),
                *(f"{p:.6f}" for p in labels.probs[i]),
            ]
        )
    atomic_write_text(path, out.getvalue())
    return path


def read_soft_labels(path: str | Path) -> SoftLabels:
    """Read a file written by :func:`write_soft_labels` (never unpickling).

    Raises:
        ArtifactError: missing, unreadable or malformed (exit 4).
    """
    path = Path(path).expanduser()
    suffix = _check_format(path)
    if not path.is_file():
        raise ArtifactError(f"soft-label file {path} does not exist", "write one with edgekd label")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"])) if "meta" in z else {}
                return SoftLabels(
                    [str(n) for n in z["label_names"]],
                    [str(k) for k in z["keys"]],
                    [str(s) for s in z["sources"]],
                    z["probs"],
                    z["abstained"],
                    meta,
                )
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as e:
        raise ArtifactError(f"cannot read soft labels from {path} ({type(e).__name__})", _RELABEL) from None
    if not rows or rows[0][:5] != ["sha256", "source", "label", "confidence", "abstained"]:
        raise ArtifactError(f"{path} is not a soft-label table (header sha256,source,label,confidence,abstained,p_...)")
    names = [c[2:] for c in rows[0][5:]]
    body = [r for r in rows[1:] if r]
    try:
        probs = np.array([[float(x) for x in r[5:]] for r in body], dtype=np.float32).reshape(len(body), len(names))
        abstained = np.array([r[4].strip() in ("1", "true", "True") for r in body], dtype=bool)
    except ValueError:
        raise ArtifactError(f"{path}: a row does not hold {len(names)} probabilities", _RELABEL) from None
    return SoftLabels(names, [r[0] for r in body], [r[1] for r in body], probs, abstained)


class SoftLabelDataset(Dataset):
    """Images with soft targets (``float32 [K]``) or their argmax (``int64``); ``.targets`` is always the argmax."""

    def __init__(
        self,
        images: Dataset,
        probs: np.ndarray,
        *,
        soft: bool,
        paths: Sequence[Path] | None = None,
        channels: int,
        size: tuple[int, int],
    ) -> None:
        self.images, self.probs, self.soft = images, np.asarray(probs, np.float32), soft
        self.targets = self.probs.argmax(1).astype(np.int64)
        self.channels, self.image_size = channels, (int(size[0]), int(size[1]))
        if paths is not None:
            self.paths = list(paths)

    def subset(self, idx: np.ndarray, *, soft: bool) -> SoftLabelDataset:
        images = torch.utils.data.Subset(self.images, [int(i) for i in idx])
        paths = [self.paths[i] for i in idx] if hasattr(self, "paths") else None
        return SoftLabelDataset(
            images, self.probs[idx], soft=soft, paths=paths, channels=self.channels, size=self.image_size
        )

    def __len__(self) -> int:
        return len(self.probs)

    def __getitem__(self, index: int):
        image = self.images[index][0]
        if self.soft:
            return image, torch.from_numpy(self.probs[index].copy())
        return image, torch.tensor(int(self.targets[index]), dtype=torch.int64)


def _match_files(table: SoftLabels, usable: np.ndarray, options: dict[str, str]) -> tuple[list[Path], list[int], int]:
    """(paths, row per path, rows without their image) by re-hashing candidate files."""
    by_key: dict[str, int] = {}
    for i in np.flatnonzero(usable):
        by_key.setdefault(table.keys[i], int(i))
    if "images" in options:
        folder = Path(options["images"]).expanduser()
        if not folder.is_dir():
            raise ArtifactError(f"images={folder} is not a folder", "give the folder the labelled images are in")
        candidates = image_files(folder)
    else:
        candidates = [Path(table.sources[i]) for i in np.flatnonzero(usable)]
    paths, rows, seen = [], [], set()
    for path in candidates:
        if not path.is_file():
            continue
        row = by_key.get(sha256_file(path))
        if row is not None:
            paths.append(path)
            rows.append(row)
            seen.add(row)
    return paths, rows, len(by_key) - len(seen)


def _match_spec(table: SoftLabels, usable: np.ndarray, options: dict[str, str], seed: int):
    """(dataset of matched array images, rows, unmatched count) for rows from one ``SPEC#split[i]``."""
    specs = {s.rsplit("#", 1)[0] for s in np.array(table.sources)[usable]}
    if len(specs) != 1 or "images" in options:
        raise ArtifactError(
            "soft labels of array data must all come from one data spec (and take no images=)", _RELABEL
        )
    spec = specs.pop()
    split = table.sources[int(np.flatnonzero(usable)[0])].rsplit("#", 1)[1].split("[")[0]
    images = load_images(spec, split=split, seed=seed)
    by_key = {table.keys[i]: int(i) for i in np.flatnonzero(usable)}
    index, rows = [], []
    for j in range(len(images)):
        row = by_key.get(images.key(j))
        if row is not None:
            index.append(j)
            rows.append(row)
    subset = torch.utils.data.Subset(images.dataset, index)
    return subset, rows, len(by_key) - len(set(rows)), images.channels, images.image_size


@SOURCES.register(
    "softlabels",
    arg="required",
    options=("images", "window", "frame", "size", "channels", "val", "test", "seed", "hard", "stale"),
    help="soft labels written by edgekd label (.npz or .csv), images matched by content hash; images=DIR, "
    "hard=1, stale=skip, val=, test=",
    example="softlabels:runs/labels.npz,images=/data/unlabeled",
)
def _softlabels(arg, options, *, seed, download, root) -> SourceData:
    table = read_soft_labels(Path(arg))
    usable = ~table.abstained
    if not usable.any():
        raise InvalidInputError(f"every image in {arg} abstained", "lower --min-confidence in edgekd label")
    if options.get("stale", "error") not in ("error", "skip"):
        raise InvalidInputError(f"option stale={options['stale']!r} is not valid", "use stale=skip or leave it out")
    hard_only = opt_int(options, "hard", 0, low=0) > 0
    arrays = all("#" in s and not Path(s).is_file() for s in np.array(table.sources)[usable])
    if arrays:
        images, rows, stale, channels, size = _match_spec(table, usable, options, seed)
        paths = None
    else:
        paths, rows, stale = _match_files(table, usable, options)
        geometry = {k: v for k, v in options.items() if k in ("window", "frame", "size", "channels")}
        channels, size, window, frame = files_geometry(paths, geometry)
        images = FilesDataset(
            paths, np.zeros(len(paths), np.int64), channels=channels, size=size, window=window, frame=frame
        )
    if not rows:
        raise ArtifactError(f"no image matches a label in {arg}", f"{_RELABEL}, or point images= at their folder")
    if stale and "images" not in options and options.get("stale") != "skip":
        raise ArtifactError(
            f"{stale} labelled image(s) of {arg} are missing or changed since labelling",
            f"{_RELABEL}, or pass stale=skip to use only the images whose labels still match",
        )
    full = SoftLabelDataset(images, table.probs[rows], soft=False, paths=paths, channels=channels, size=size)
    val, test = opt_float(options, "val", 0.1), opt_float(options, "test", 0.2)
    if val + test >= 1:
        raise InvalidInputError(f"val={val} + test={test} leaves no training data", "keep val + test < 1")
    train, v, t = stratified_split(full.targets, [val, test], seed)
    task = Task.BINARY if len(table.label_names) == 2 else Task.MULTICLASS
    return SourceData(
        train=full.subset(train, soft=not hard_only),
        val=full.subset(v, soft=False),
        test=full.subset(t, soft=False),
        task=task,
        label_names=list(table.label_names),
    )
