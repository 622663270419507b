"""``dicom:DIR``: DICOM images read with pydicom, mapped to ``uint8`` by a documented recipe.

Layout and labels: class sub-folders (``DIR/<class>/...`` or ``DIR/train/<class>/...`` with optional ``val`` /
``test`` trees, like ``imagefolder``), or ``labels=FILE.csv`` with ``file,label[,split]`` rows whose ``file`` is
relative to ``DIR``. A DICOM file is one named ``*.dcm`` / ``*.dicom`` or one whose bytes 128-131 are ``DICM``
(a ``DICOMDIR`` index is skipped).

From stored values to ``uint8`` (one recipe for training, evaluation, ``edgekd predict`` and ``edgekd label``):

1. **Modality LUT**: ``v = stored * RescaleSlope + RescaleIntercept`` (or the Modality LUT Sequence), so CT
   values are Hounsfield units.
2. **VOI / window** (``window=``): ``auto`` (default) uses the file's own VOI LUT Sequence, else its first
   Window Center / Width with its VOI LUT Function (``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``, DICOM PS3.3
   C.11.2.1.2), else the image's own minimum..maximum; ``C/W`` (e.g. ``window=40/400`` for CT soft tissue,
   ``window=-600/1500`` for lung) applies that linear window to every file; ``minmax`` always uses the
   image's own range. Every case gives ``y`` in ``[0, 1]``.
3. **MONOCHROME1** images (bright = low values) are inverted after the window: ``y = 1 - y``.
4. Colour images (``RGB``, ``YBR_*`` converted to RGB by pydicom, ``PALETTE COLOR`` through its palette) are
   scaled by their bit depth, ``y = v / (2^BitsStored - 1)``; no window applies.
5. ``u8 = round(255 * y)`` after a bilinear resize (done on ``y``) to the dataset size: ``size=N`` (N x N,
   aspect ratio not kept); without it every image must have the same Rows x Columns. ``channels=1`` makes
   colour gray (ITU-R 601-2 luma, as Pillow), ``channels=3`` repeats gray; the default is 1 unless some file is
   colour.

Multi-frame files are refused unless ``frame=first`` (or ``frame=N``, 0-based) picks one frame. Compressed
transfer syntaxes need a pixel-data decoder; when none is installed the error names the package to install
(exit 5). Files are checked at load time (headers of all, pixels of one file per transfer syntax and bit
depth), decoded lazily while training.

Privacy: the only tag values edgekd copies out of a file into anything it writes, prints or logs are the
allow-list :data:`ALLOWED_TAGS` (Modality, Rows, Columns); error messages may also name the image-format tags
of :data:`FORMAT_TAGS` (transfer syntax, photometric interpretation, frames, samples and bits). The intended-use
check (:func:`dicom_attributes`) also reads the coarse description tags of :data:`SCOPE_TAGS` (BodyPartExamined,
ViewPosition, SOP Class UID): they go into a model card (the values seen in training) and into the reason an
input is refused, and only when they are DICOM code strings (upper-case letters, digits, space, ``_``, at most
16 characters; anything else is reported as ``(non-standard)``), so free text never leaves a file. Patient,
study, institution and device tags are never read into a result, and pydicom's own warnings (which can quote
tag values) are silenced while reading.

Objects that are no image to classify (segmentations, structured reports and key-object selections, RT
structure sets, plans, doses, images and records, waveforms, presentation states, encapsulated documents, raw
data, registrations) are recognised by their SOP Class UID or Modality (:func:`non_image_kind`) and never
classified by ``edgekd predict`` or ``edgekd serve``.

Example:
    >>> bundle = load_data("dicom:/data/ct,labels=/data/ct/labels.csv,window=40/400,size=128")
    >>> bundle.channels, bundle.image_size
    (1, (128, 128))
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from edgekd.data._bundle import SPLITS, SourceData
from edgekd.data._csv import _label_names
from edgekd.data._dataset import to_target
from edgekd.data._files import MAX_SIZE, FileItem, _assign_splits, require_classes
from edgekd.data._load import SOURCES
from edgekd.data._spec import opt_int
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.specs import SCOPE_KEYS, IntendedUse, Task

__all__ = [
    "ALLOWED_TAGS",
    "FORMAT_TAGS",
    "DICOM_OPTIONS",
    "Window",
    "DicomDataset",
    "is_dicom_file",
    "find_dicom_files",
    "read_dicom",
    "decode_dicom_bytes",
    "dicom_summary",
    "parse_window",
    "parse_frame",
    "SCOPE_TAGS",
    "dicom_attributes",
    "dicom_attributes_of",
    "non_image_kind",
]

ALLOWED_TAGS = ("Modality", "Rows", "Columns")
FORMAT_TAGS = (
    "TransferSyntaxUID",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsStored",
    "BitsAllocated",
)
SCOPE_TAGS = ("BodyPartExamined", "ViewPosition", "SOPClassUID")
DICOM_OPTIONS = ("labels", "window", "frame", "size", "channels", "val", "test", "seed")
DICOM_EXTS = frozenset({".dcm", ".dicom"})
_WINDOW_HINT = "use window=auto, window=minmax or window=CENTER/WIDTH, e.g. window=40/400"
_LAYOUT = "expected DIR/<class>/<files>, DIR/train/<class>/<files>, or labels=FILE.csv with file,label[,split] rows"

# Package to install per compressed transfer syntax family (pydicom's pylibjpeg plugins).
_DECODER_HINTS = (
    ("JPEG-LS", "pip install pylibjpeg pylibjpeg-libjpeg (or pip install pyjpegls)"),
    ("JPEG 2000", "pip install pylibjpeg pylibjpeg-openjpeg"),
    ("High-Throughput JPEG 2000", "pip install pylibjpeg pylibjpeg-openjpeg"),
    ("RLE", "pip install pylibjpeg pylibjpeg-rle"),
    ("JPEG", "pip install pylibjpeg pylibjpeg-libjpeg"),
)


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (the decoders)
    except ImportError as e:  # a core dependency, but a broken install should still say what to do
        raise DependencyError("reading DICOM needs pydicom", "pip install pydicom") from e
    return pydicom


@dataclass(frozen=True)
class Window:
    """How modality values become ``[0, 1]``: ``auto`` (the file's VOI), ``minmax`` or a fixed ``C/W``."""

    mode: str = "auto"
    center: float = 0.0
    width: float = 1.0

    def __str__(self) -> str:
        return f"{self.center:g}/{self.width:g}" if self.mode == "fixed" else self.mode


def parse_window(text: str | None) -> Window:
    """``auto`` | ``minmax`` | ``CENTER/WIDTH`` (width > 0).

    Example:
        >>> parse_window("40/400")
        Window(mode='fixed', center=40.0, width=400.0)
    """
    text = (text or "auto").strip().lower()
    if text in ("auto", "minmax"):
        return Window(text)
    center, slash, width = text.partition("/")
    try:
        c, w = float(center), float(width)
    except ValueError:
        raise InvalidInputError(f"option window={text!r} is not valid", _WINDOW_HINT) from None
    if not slash or not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        raise InvalidInputError(f"option window={text!r} is not valid (the width must be > 0)", _WINDOW_HINT)
    return Window("fixed", c, w)


def parse_frame(text: str | None) -> int | None:
    """``frame=first`` is frame 0, ``frame=N`` frame N (0-based); absent: multi-frame files are refused."""
    if text is None:
        return None
    if text.strip().lower() == "first":
        return 0
    if not text.strip().isdigit():
        raise InvalidInputError(f"option frame={text!r} is not valid", "use frame=first or frame=N (0-based)")
    return int(text)


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by extension, or by the ``DICM`` magic after the 128-byte preamble (hidden files never)."""
    if not path.is_file() or path.name.startswith(".") or path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in DICOM_EXTS:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_dicom_files(folder: Path) -> list[Path]:
    """Every DICOM file under ``folder`` (recursively, hidden folders skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [p for p in (Path(dirpath) / f for f in filenames) if is_dicom_file(p)]
    return sorted(out)


class _quiet(warnings.catch_warnings):
    """Silence pydicom's warnings (they can quote tag values) for everything inside the block."""

    def __enter__(self):
        out = super().__enter__()
        warnings.simplefilter("ignore")
        return out


def _read(src: Path | BinaryIO, *, pixels: bool):
    """A parsed file: header only, or everything (pixels decoded later by :func:`_pixels`)."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    name = src if isinstance(src, Path) else "the DICOM data"
    try:
        with _quiet():
            return pydicom.dcmread(src, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise ArtifactError(f"{name} is not a DICOM file (no DICM header)", "remove it or convert it") from None
    except (OSError, EOFError) as e:
        raise ArtifactError(f"cannot read {name}: {getattr(e, 'strerror', None) or type(e).__name__}") from None
    except (ValueError, AttributeError, KeyError, TypeError, NotImplementedError) as e:
        raise ArtifactError(
            f"cannot parse {name} ({type(e).__name__})", "the file is damaged: export it again"
        ) from None


def _pixels(ds, name: Any, index: int | None) -> np.ndarray:
    """Decode one frame (or the only one); a missing decoder names the package to install."""
    import pydicom.pixels

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ts_name = str(getattr(ts, "name", "") or "")
    try:
        with _quiet():
            return np.asarray(pydicom.pixels.pixel_array(ds, index=index))
    except (RuntimeError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or ["no decoder"])[0].rstrip(":")
        raise DependencyError(
            f"cannot decompress the pixel data of {name} ({ts_name or 'unknown transfer syntax'}): {first}",
            _decoder_hint(ts_name),
        ) from None
    except (ValueError, AttributeError, KeyError, TypeError, IndexError) as e:
        raise ArtifactError(
            f"cannot decode the pixel data of {name} ({type(e).__name__})",
            "the file is damaged or unusual: export it again",
        ) from None


def _decoder_hint(ts_name: str) -> str:
    for family, hint in _DECODER_HINTS:
        if family in ts_name:
            return hint
    return "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"


def _frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


@dataclass(frozen=True)
class _Header:
    """What edgekd reads from a header: image-format tags and the allow-list, nothing else."""

    rows: int
    columns: int
    frames: int
    color: bool
    transfer_syntax: str
    bits: int
    modality: str


def _header(path: Path) -> _Header:
    with _quiet():
        return _header_of(_read(path, pixels=False), path)


def _header_of(ds, name: Any) -> _Header:
    missing = [k for k in ("Rows", "Columns", "PhotometricInterpretation") if k not in ds]
    if missing:
        raise ArtifactError(
            f"{name} holds no image (no {missing[0]}): e.g. a report, RT plan or waveform",
            "keep only image files in the folder",
        )
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    frames = _frames(ds)
    pi = str(ds.PhotometricInterpretation).strip().upper()
    return _Header(
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        frames=frames,
        color=int(ds.get("SamplesPerPixel") or 1) > 1 or pi == "PALETTE COLOR",
        transfer_syntax=str(getattr(ts, "name", ts) or "implicit little endian"),
        bits=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8),
        modality=str(ds.get("Modality") or ""),
    )


def _check_decoder(path: Path) -> None:
    """Fail now, naming the package, when the file's compressed pixel data has no installed decoder."""
    pydicom = _pydicom()
    ds = _read(path, pixels=False)
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or not ts.is_compressed:
        return
    try:
        decoder = pydicom.pixels.get_decoder(ts)
    except NotImplementedError:
        raise DependencyError(
            f"{path}: pydicom cannot decode the transfer syntax {ts.name}",
            "convert the file to an uncompressed transfer syntax",
        ) from None
    if not decoder.is_available:
        raise DependencyError(
            f"{path}: pixel data compressed as {ts.name} needs a decoder that is not installed", _decoder_hint(ts.name)
        )


def _linear(v: np.ndarray, c: float, w: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to ``[0, 1]``."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (v - c) / w))
    if function == "LINEAR_EXACT":
        return np.clip((v - c) / w + 0.5, 0.0, 1.0)
    if w <= 1:  # a width of 1 is a threshold at c - 0.5
        return (v > c - 0.5).astype(np.float64)
    return np.clip((v - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def _minmax(v: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(v)), float(np.max(v))
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v, dtype=np.float64)


def _first(value: Any) -> float:
    """The first of a multi-valued DS (Window Center/Width may list several windows)."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def _voi(ds, v: np.ndarray, window: Window) -> np.ndarray:
    """Modality values -> ``[0, 1]`` by the window rules of the module docstring."""
    if window.mode == "fixed":
        return _linear(v, window.center, window.width)
    if window.mode == "auto" and "VOILUTSequence" in ds:
        import pydicom.pixels

        data = ds.VOILUTSequence[0].LUTData
        lut = np.frombuffer(data, np.uint16) if isinstance(data, bytes) else np.atleast_1d(np.asarray(data, float))
        out = pydicom.pixels.apply_voi(v, ds).astype(np.float64)
        lo, hi = float(lut.min()), float(lut.max())
        return np.clip((out - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(out)
    if window.mode == "auto" and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
        except (TypeError, ValueError, IndexError):
            return _minmax(v)
        function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
        if w > 0 and math.isfinite(c) and math.isfinite(w):
            return _linear(v, c, w, function)
    return _minmax(v)


def _to_unit(ds, arr: np.ndarray, window: Window) -> np.ndarray:
    """Pixels of one frame -> float ``[H, W]`` or ``[H, W, 3]`` in ``[0, 1]``."""
    import pydicom.pixels

    pi = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    if pi == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(arr, ds)
        return rgb.astype(np.float64) / (255.0 if rgb.dtype == np.uint8 else 65535.0)
    if arr.ndim == 3:  # RGB (YBR converted by pydicom)
        bits = int(ds.get("BitsStored") or 8)
        return np.clip(arr.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
    v = pydicom.pixels.apply_modality_lut(arr, ds).astype(np.float64)
    y = _voi(ds, v, window)
    return 1.0 - y if pi == "MONOCHROME1" else y


def _to_uint8(y: np.ndarray, *, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """``[0, 1]`` image -> uint8 ``[channels, H, W]``: resize (bilinear, on floats), luma or repeat, round."""
    if y.ndim == 3 and channels == 1:
        y = y[..., 0] * 0.299 + y[..., 1] * 0.587 + y[..., 2] * 0.114  # ITU-R 601-2 luma, as Pillow's "L"
    planes = [y] if y.ndim == 2 else [y[..., k] for k in range(y.shape[-1])]
    if size is not None and tuple(planes[0].shape) != tuple(size):
        planes = [
            np.asarray(Image.fromarray(p.astype(np.float32), "F").resize((size[1], size[0]), Image.Resampling.BILINEAR))
            for p in planes
        ]
    out = np.stack([np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8) for p in planes])
    return np.repeat(out, 3, axis=0) if channels == 3 and out.shape[0] == 1 else out


def read_dicom(
    src: Path | BinaryIO,
    *,
    channels: int = 1,
    size: tuple[int, int] | None = None,
    window: Window | str = "auto",
    frame: int | None = None,
) -> np.ndarray:
    """One DICOM image (a file or a binary stream) as uint8 ``[channels, H, W]`` by the module's recipe.

    Args:
        src: a file path or an open binary stream.
        channels: 1 or 3.
        size: ``(H, W)`` to resize to (bilinear on the windowed values); None keeps Rows x Columns.
        window: ``auto``, ``minmax``, ``C/W`` or a :class:`Window`.
        frame: the frame of a multi-frame file (None: such files are refused).

    Raises:
        ArtifactError: not DICOM, no pixel data, damaged, multi-frame without ``frame``, frame out of range.
        DependencyError: compressed pixel data without an installed decoder (the hint names the package).
    """
    window = window if isinstance(window, Window) else parse_window(window)
    name = src if isinstance(src, Path) else "the DICOM data"
    ds = _read(src, pixels=True)
    with _quiet():
        h = _header_of(ds, name)
        if "PixelData" not in ds:
            raise ArtifactError(f"{name} holds no pixel data", "keep only image files")
        if h.frames > 1 and frame is None:
            raise ArtifactError(
                f"{name} holds {h.frames} frames (multi-frame DICOM)",
                "pass frame=first (or frame=N, 0-based) to read one frame",
            )
        if frame is not None and frame >= h.frames:
            raise ArtifactError(f"{name} has {h.frames} frame(s); frame={frame} does not exist", "use frame=first")
        arr = _pixels(ds, name, frame if h.frames > 1 else None)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
            raise ArtifactError(f"{name} does not hold a single 2D image", "pass frame=first for a multi-frame file")
        return _to_uint8(_to_unit(ds, arr, window), channels=channels, size=size)


def decode_dicom_bytes(data: bytes, channels: int, *, window: Window | str = "auto") -> np.ndarray:
    """A DICOM file's bytes as uint8 ``[channels, Rows, Columns]`` (``edgekd predict`` and the server).

    Multi-frame files are refused (send one frame per file).
    """
    return read_dicom(io.BytesIO(data), channels=channels, window=window)


# SOP Class UID prefixes (PS3.4 B.5) and Modality values (PS3.3 C.7.3.1.1.1) of objects that are no image to classify.
_NON_IMAGE_SOP = (
    ("1.2.840.10008.5.1.4.1.1.66.4", "segmentation (SEG)"),
    ("1.2.840.10008.5.1.4.1.1.66.5", "surface segmentation"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data, registration or fiducials"),
    ("1.2.840.10008.5.1.4.1.1.67", "real world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.88.59", "key object selection (KOS)"),
    ("1.2.840.10008.5.1.4.1.1.88", "structured report (SR)"),
    ("1.2.840.10008.5.1.4.1.1.481", "radiotherapy (RT) object"),
    ("1.2.840.10008.5.1.4.1.1.9", "waveform"),
    ("1.2.840.10008.5.1.4.1.1.11", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.104", "encapsulated document (PDF, CDA, STL...)"),
    ("1.2.840.10008.5.1.4.1.1.68", "surface model"),
    ("1.2.840.10008.5.1.4.1.1.200", "protocol"),
    ("1.2.840.10008.5.1.4.1.1.90", "content assessment"),
    ("1.2.840.10008.5.1.4.1.1.82", "measurement"),
)
_NON_IMAGE_MODALITY = {
    "SEG": "segmentation (SEG)",
    "SR": "structured report (SR)",
    "KO": "key object selection (KOS)",
    "PR": "presentation state",
    "RTSTRUCT": "radiotherapy (RT) object",
    "RTPLAN": "radiotherapy (RT) object",
    "RTDOSE": "radiotherapy (RT) object",
    "RTIMAGE": "radiotherapy (RT) object",
    "RTRECORD": "radiotherapy (RT) object",
    "RTION": "radiotherapy (RT) object",
    "PLAN": "radiotherapy (RT) object",
    "RWV": "real world value mapping",
    "ECG": "waveform",
    "EPS": "waveform",
    "HD": "waveform",
    "AU": "waveform",
    "RESP": "waveform",
    "EEG": "waveform",
    "EMG": "waveform",
    "EOG": "waveform",
    "DOC": "encapsulated document (PDF, CDA, STL...)",
    "REG": "registration",
    "FID": "fiducials",
    "M3D": "surface model",
    "MEASUREMENT": "measurement",
}


def _code_string(value: Any) -> str:
    """A DICOM Code String value as edgekd may report it: ``""`` when absent, ``(non-standard)`` when not a CS."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else ""
    text = str(value).strip().upper()
    if not text:
        return ""
    return (
        text if len(text) <= 16 and all(c.isascii() and (c.isalnum() or c in " _") for c in text) else "(non-standard)"
    )


def dicom_attributes_of(ds) -> dict[str, str]:
    """The attributes the intended-use check reads (Modality, BodyPartExamined, ViewPosition,
    PhotometricInterpretation, SOPClassUID) from a parsed dataset, as sanitised strings (``""`` when absent)."""
    uid = str(ds.get("SOPClassUID") or "").strip()
    return {
        "Modality": _code_string(ds.get("Modality")),
        "BodyPartExamined": _code_string(ds.get("BodyPartExamined")),
        "ViewPosition": _code_string(ds.get("ViewPosition")),
        "PhotometricInterpretation": _code_string(ds.get("PhotometricInterpretation")),
        "SOPClassUID": uid if uid.replace(".", "").isdigit() and len(uid) <= 64 else "",
    }


def dicom_attributes(src: Path | bytes) -> dict[str, str]:
    """:func:`dicom_attributes_of` of a file or of a file's bytes (header only, pixels not read).

    Raises:
        ArtifactError: not a DICOM file, or a damaged one.
    """
    with _quiet():
        return dicom_attributes_of(_read(io.BytesIO(src) if isinstance(src, bytes) else Path(src), pixels=False))


def non_image_kind(attributes: dict[str, str]) -> str | None:
    """What a DICOM object is when it is no image to classify (``"segmentation (SEG)"``...), else None."""
    uid = attributes.get("SOPClassUID", "")
    for prefix, kind in _NON_IMAGE_SOP:
        if uid == prefix or uid.startswith(prefix + "."):
            return kind
    return _NON_IMAGE_MODALITY.get(attributes.get("Modality", ""))


def dicom_summary(path: Path) -> dict[str, Any]:
    """The allow-listed header values of a file (Modality, Rows, Columns): all edgekd may report about it."""
    h = _header(Path(path))
    return {"Modality": h.modality, "Rows": h.rows, "Columns": h.columns}


class DicomDataset(Dataset):
    """DICOM files decoded lazily to uint8 ``[channels, H, W]`` (see the module docstring for the recipe).

    Example:
        >>> ds = DicomDataset([Path("a.dcm")], np.array([0]), channels=1, size=(128, 128))
        >>> ds[0][0].shape
        torch.Size([1, 128, 128])
    """

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
        if len(paths) != len(targets):
            raise InvalidInputError(f"{len(paths)} files but {len(targets)} targets")
        self.paths = [Path(p) for p in paths]
        self.targets = targets
        self.channels = channels
        self.image_size = (int(size[0]), int(size[1]))
        self.window = window if isinstance(window, Window) else parse_window(window)
        self.frame = frame

    def load(self, index: int) -> np.ndarray:
        return read_dicom(
            self.paths[index], channels=self.channels, size=self.image_size, window=self.window, frame=self.frame
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.load(index)), to_target(self.targets[index])

    def __repr__(self) -> str:
        return f"DicomDataset(n={len(self)}, channels={self.channels}, image_size={self.image_size})"


def inspect_dicom(
    paths: Sequence[Path], *, frame: int | None, same_size: bool, window: Window
) -> tuple[bool, tuple[int, int]]:
    """Check every header (and decode one file per transfer syntax and depth); return (any colour, first size)."""
    first: tuple[int, int] | None = None
    first_path, color, probed = None, False, set()
    for path in paths:
        h = _header(path)
        if h.frames > 1 and frame is None:
            raise ArtifactError(
                f"{path} holds {h.frames} frames (multi-frame DICOM)",
                "pass frame=first (or frame=N, 0-based) to read one frame of every file",
            )
        if first is None:
            first, first_path = (h.rows, h.columns), path
        elif same_size and (h.rows, h.columns) != first:
            raise InvalidInputError(
                f"DICOM image {path} is {h.rows}x{h.columns} (Rows x Columns) but {first_path} is "
                f"{first[0]}x{first[1]}",
                "pass size=N to resize every image to N x N (bilinear, aspect ratio not kept)",
            )
        color = color or h.color
        key = (h.transfer_syntax, h.bits, h.color)
        if key not in probed:  # one real decode per kind surfaces a missing or unsuitable decoder now
            probed.add(key)
            _check_decoder(path)
            read_dicom(path, channels=1, window=window, frame=frame if h.frames > 1 else None)
    if first is None:
        raise ArtifactError("no DICOM files found", "DICOM files end in .dcm or .dicom or start with a DICM header")
    return color, first


def _scan_classes(tree: Path) -> dict[str, list[Path]]:
    folders = sorted(d for d in tree.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise ArtifactError(f"no class folders in {tree}", _LAYOUT)
    out = {}
    for folder in folders:
        files = find_dicom_files(folder)
        if not files:
            raise ArtifactError(f"class folder {folder} has no DICOM files", "add files or remove the folder")
        out[folder.name] = files
    return out


def _items_from_folders(base: Path) -> tuple[list[FileItem], list[str]]:
    trees = {s: base / s for s in SPLITS if (base / s).is_dir()} if (base / "train").is_dir() else {None: base}
    found = {split: _scan_classes(tree) for split, tree in trees.items()}
    classes = sorted({c for per_class in found.values() for c in per_class})
    index = {c: i for i, c in enumerate(classes)}
    items = [
        FileItem(p, index[c], split, str(p))
        for split, per in found.items()
        for c, paths in sorted(per.items())
        for p in paths
    ]
    return items, classes


def _items_from_csv(base: Path, table: Path) -> tuple[list[FileItem], list[str]]:
    if not table.is_file():
        raise ArtifactError(f"labels file {table} does not exist", "labels=FILE.csv with file,label[,split] rows")
    try:
        text = table.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"cannot read {table} as UTF-8 text ({type(e).__name__})") from None
    rows = [(n, [c.strip() for c in row]) for n, row in enumerate(csv.reader(io.StringIO(text)), 1) if any(row)]
    if rows and [c.lower() for c in rows[0][1][:2]] in (["file", "label"], ["path", "label"]):
        rows = rows[1:]
    if not rows:
        raise ArtifactError(f"{table} has no data rows", "write one file,label[,split] row per DICOM file")
    parsed = []
    for line, cells in rows:
        if len(cells) not in (2, 3) or not cells[0] or not cells[1]:
            raise ArtifactError(f"{table} row {line}: expected file,label[,split]")
        split = cells[2].lower() if len(cells) == 3 and cells[2] else None
        if split is not None and split not in SPLITS:
            raise ArtifactError(f"{table} row {line}: split {cells[2]!r} is not train, val or test")
        rel = os.path.normpath(cells[0])
        if os.path.isabs(cells[0]) or rel == ".." or rel.startswith(".." + os.sep):
            raise ArtifactError(f"{table} row {line}: file {cells[0]!r} is outside {base}", "files are relative to DIR")
        path = base / rel
        if not path.is_file():
            raise ArtifactError(f"{table} row {line}: {path} does not exist", "files are relative to the DICOM folder")
        parsed.append((line, cells[0], cells[1], split, path))
    names = _label_names(table, [(ln, f, lab, s) for ln, f, lab, s, _ in parsed])
    index = {n: i for i, n in enumerate(names)}
    return [FileItem(p, index[lab], s, f"{table.name} row {ln}") for ln, _, lab, s, p in parsed], names


def dicom_geometry(paths: Sequence[Path], options: dict[str, str]) -> tuple[int, tuple[int, int], Window, int | None]:
    """Channels, size, window and frame of a DICOM file set from the spec options (checking every file)."""
    size = opt_int(options, "size", 0, low=1)
    if size > MAX_SIZE:
        raise InvalidInputError(f"option size={size} is larger than {MAX_SIZE}", "e.g. size=224")
    channels = opt_int(options, "channels", 0, low=1)
    if channels and channels not in (1, 3):
        raise InvalidInputError(f"option channels={channels} is not supported", "use channels=1 or channels=3")
    window, frame = parse_window(options.get("window")), parse_frame(options.get("frame"))
    color, first = inspect_dicom(paths, frame=frame, same_size=not size, window=window)
    return channels or (3 if color else 1), (size, size) if size else first, window, frame


@SOURCES.register(
    "dicom",
    arg="required",
    options=DICOM_OPTIONS,
    help="DICOM files in class sub-folders or labels=FILE.csv (file,label[,split]); window=auto|minmax|C/W, "
    "frame=first, size=N, channels=1|3",
    example="dicom:/data/ct,labels=/data/ct/labels.csv,window=40/400,size=128",
)
def _dicom(arg, options, *, seed, download, root) -> SourceData:
    base = Path(arg).expanduser()
    if not base.is_dir():
        raise ArtifactError(f"DICOM folder {base} does not exist", "check the path (no commas in spec paths)")
    if "labels" in options:
        items, names = _items_from_csv(base, Path(options["labels"]).expanduser())
    else:
        items, names = _items_from_folders(base)
    require_classes(names, [it.label for it in items])
    splits = _assign_splits(items, options, seed)
    channels, size, window, frame = dicom_geometry([it.path for it in items], options)
    targets = np.array([it.label for it in items], dtype=np.int64)
    datasets = {
        s: DicomDataset(
            [items[i].path for i in idx], targets[idx], channels=channels, size=size, window=window, frame=frame
        )
        for s, idx in splits.items()
    }
    scope = training_scope([items[i].path for i in splits["train"]])
    return SourceData(
        **datasets, task=Task.BINARY if len(names) == 2 else Task.MULTICLASS, label_names=names, intended_use=scope
    )


def training_scope(paths: Sequence[Path]) -> IntendedUse:
    """The intended use of a model trained on these files: every Modality, BodyPartExamined, ViewPosition and
    PhotometricInterpretation value their headers hold (an attribute absent from some file is not restricted)."""
    seen: dict[str, set[str]] = {k: set() for k in SCOPE_KEYS}
    absent: set[str] = set()
    for path in paths:
        attrs = dicom_attributes(path)
        for key, tag in SCOPE_KEYS.items():
            value = attrs.get(tag, "")
            if value and value != "(non-standard)":
                seen[key].add(value)
            else:
                absent.add(key)
    return IntendedUse(**{k: tuple(sorted(v)) for k, v in seen.items() if k not in absent}, source="dicom")
