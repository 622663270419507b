"""Images in, raw ``uint8 [C, H, W]`` arrays out: file discovery for ``edgekd predict`` and decoding of files
and request bodies.

Decoding follows the rules of the file sources used in training (:func:`edgekd.data.decode_image`, see
``edgekd.data._files``): palette, ``LA`` and ``RGBA`` images are converted, 16-bit images are refused unless
``depth=16`` (then read as their high byte), CMYK, YCbCr, Lab, HSV, float and multi-frame images are refused;
resizing and normalisation are the bundle's :class:`~edgekd.data.Preprocess`. Every
failure is an :class:`~edgekd.errors.ArtifactError` whose message names the reason, never the pixel data.
DICOM files (``DICM`` magic) are read by :func:`edgekd.data.decode_dicom_bytes` (the ``dicom:`` source's recipe,
``window=auto``).

Example:
    >>> found, missing = collect_inputs(["scans/", "extra/*.png", "one.jpg"])
    >>> decode_image(Path("one.jpg").read_bytes(), channels=1).shape
    (1, 512, 512)
"""

from __future__ import annotations

import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgekd.data import UnsupportedImage, decode_dicom_bytes, image_info
from edgekd.data import decode_image as decode_pil_image
from edgekd.data._dicom import dicom_attributes, non_image_kind
from edgekd.errors import ArtifactError, InvalidInputError

__all__ = [
    "IMAGE_EXTS",
    "MAX_PIXELS",
    "InputFile",
    "collect_inputs",
    "decode_image",
    "is_dicom",
    "read_image",
    "read_bytes",
    "input_attributes",
    "non_image_reason",
]

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom"})
MAX_PIXELS = 64_000_000  # a decompression bomb (a tiny file claiming a huge image) is refused before decoding
MAX_FILE_BYTES = 512 * 1024 * 1024
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input of ``edgekd predict``: a file to read, or a reason it cannot be (``error``)."""

    source: str
    path: Path | None
    error: str | None = None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def _folder(path: Path, given: str) -> list[InputFile]:
    files = sorted(
        p for p in path.rglob("*") if _is_image(p) and not any(s.startswith(".") for s in p.relative_to(path).parts)
    )
    if not files:
        return [InputFile(given, None, f"folder has no image files ({' '.join(sorted(IMAGE_EXTS))})")]
    return [InputFile(str(p), p) for p in files]


def collect_inputs(inputs: list[str]) -> list[InputFile]:
    """Expand files, folders (recursively, image extensions only) and globs, in order, without duplicates.

    A path that does not exist, a glob that matches nothing or a folder without images becomes an
    :class:`InputFile` with an ``error`` so that it is reported, never silently dropped.
    """
    out: list[InputFile] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            out += _folder(path, given)
        elif path.exists():
            out.append(InputFile(given, path))
        elif _GLOB_CHARS & set(given):
            hits = [Path(p) for p in sorted(glob.glob(given, recursive=True))]
            files = [p for p in hits if p.is_file() and not p.name.startswith(".")]
            out += [InputFile(str(p), p) for p in files] or [InputFile(given, None, "no file matches this pattern")]
        else:
            out.append(InputFile(given, None, "file does not exist"))
    seen: set[str] = set()
    unique = []
    for item in out:
        key = os.path.abspath(item.path) if item.path is not None else f"\0{item.source}"
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def _to_array(im: Image.Image, channels: int, depth: int) -> np.ndarray:
    if im.width * im.height > MAX_PIXELS:
        raise ArtifactError(f"image of {im.width}x{im.height} pixels exceeds the {MAX_PIXELS:,}-pixel limit")
    try:
        info = image_info(im)
        if info.bits != depth:
            raise ArtifactError(
                f"image refused: it is {info.bits}-bit, the model reads {depth}-bit images",
                "convert it to 8-bit (windowed as in training) first",
            )
        return decode_pil_image(im, channels=channels, size=info.size, depth=depth)
    except UnsupportedImage as e:
        raise ArtifactError(f"image refused: {e}", "convert it to 8-bit grayscale or RGB") from None


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_image(data: bytes, channels: int, *, depth: int = 8) -> np.ndarray:
    """Decode PNG, JPEG, BMP, TIFF, WebP or DICOM bytes to ``uint8 [channels, H, W]``.

    ``depth`` is the bits per sample accepted (8, or 16 read as the high byte), as the data sources' ``depth=``.

    Raises:
        ArtifactError: not an image, a truncated or corrupt one, a refused mode or bit depth (16-bit when
            ``depth=8``, CMYK, ...), or larger than :data:`MAX_PIXELS`.
        DependencyError: compressed DICOM pixel data without an installed decoder.
        InvalidInputError: ``channels`` other than 1 or 3.
    """
    if channels not in (1, 3):
        raise InvalidInputError(f"cannot decode images to {channels} channels", "models read 1 or 3 channels")
    if is_dicom(data):
        return decode_dicom_bytes(data, channels)
    if not data:
        raise ArtifactError("empty image data")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _to_array(im, channels, depth)
    except UnidentifiedImageError:
        raise ArtifactError("not a readable image (unrecognised format)", "send PNG or JPEG") from None
    except Image.DecompressionBombError as e:
        raise ArtifactError(f"image refused: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ArtifactError(f"corrupt or truncated image ({reason})") from e


def read_bytes(path: Path) -> bytes:
    """The bytes of one input file, within :data:`MAX_FILE_BYTES`."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ArtifactError(f"file of {size:,} bytes exceeds the {MAX_FILE_BYTES:,}-byte limit")
        return path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"cannot read the file ({e.strerror or type(e).__name__})") from None


def read_image(path: Path, channels: int, *, depth: int = 8) -> np.ndarray:
    """Read and decode one image file (see :func:`decode_image`)."""
    return decode_image(read_bytes(path), channels, depth=depth)


def input_attributes(data: bytes) -> dict[str, str] | None:
    """The intended-use attributes of DICOM bytes (header only; see :func:`edgekd.data._dicom.dicom_attributes`),
    None for other formats (PNG, JPEG...), which carry no modality or body part."""
    return dicom_attributes(data) if is_dicom(data) else None


def non_image_reason(attributes: dict[str, str] | None) -> str | None:
    """Why a DICOM object is never classified (a segmentation, report, RT object...), else None."""
    kind = non_image_kind(attributes) if attributes is not None else None
    if kind is None:
        return None
    return f"a DICOM {kind} object, not an image to classify (never classified)"
