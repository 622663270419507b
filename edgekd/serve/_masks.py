"""Segmentation masks as files: a PNG of class indices and a colour overlay per image (``edgekd predict --masks``).

The mask PNG is 8-bit grayscale holding the class index of every pixel (0 = background, as in the model's
label order), at the input image's own size, so that ``PIL.Image.open(f)`` gives back exactly the array the
model answered. The overlay is the input image (grayscale or RGB) with each non-background class blended in
its own colour (alpha 0.45) and its outline drawn opaque, for review by eye. Both are written into one folder
built under a temporary name and renamed into place when every image is done (no half-written folder), with a
``masks.json`` index (source, files, per-class area) and edgekd's marker, so ``--overwrite`` may replace it
later and never replaces a folder edgekd did not write.

Example:
    >>> res = predict("bundles/lung-int8", ["cxr/"], masks="runs/masks")
    >>> np.array(Image.open("runs/masks/00000-case1.png")).max()      # class indices
    1
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgekd._io import MARKER_FILE, atomic_dir, check_output

__all__ = ["CLASS_COLOURS", "MaskFolder", "mask_png", "overlay_png"]

# One colour per class index (background uncoloured); cycled beyond its length.
CLASS_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240))
_ALPHA = 0.45
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def mask_png(mask: np.ndarray) -> bytes:
    """The ``uint8 [H, W]`` class-index mask as an 8-bit grayscale PNG (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _outline(m: np.ndarray) -> np.ndarray:
    """Pixels of ``m`` with a 4-neighbour outside it."""
    p = np.pad(m, 1, mode="edge")
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def overlay_png(image: np.ndarray, mask: np.ndarray) -> bytes:
    """The ``uint8 [C, H, W]`` image (1 or 3 channels) with the mask's classes blended in and outlined."""
    rgb = np.repeat(image[:1], 3, 0) if image.shape[0] != 3 else image
    rgb = np.moveaxis(rgb, 0, -1).astype(np.float32)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"image {rgb.shape[:2]} and mask {mask.shape} differ in size")
    for k in range(1, int(mask.max(initial=0)) + 1):
        m = mask == k
        if not m.any():
            continue
        colour = np.array(CLASS_COLOURS[(k - 1) % len(CLASS_COLOURS)], np.float32)
        rgb[m] = (1 - _ALPHA) * rgb[m] + _ALPHA * colour
        rgb[_outline(m)] = colour
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


class MaskFolder:
    """A folder of mask PNGs and overlays, written completely or not at all (see the module docstring).

    Checked when made (before any work), filled by :meth:`add`, renamed into place by :meth:`close`; on an
    exception nothing is left behind (use it as a context manager).
    """

    def __init__(self, out: str | os.PathLike, *, overwrite: bool = False, inputs: tuple[Any, ...] = ()) -> None:
        self.out = check_output(out, overwrite=overwrite, inputs=inputs, flag="--masks")
        self._atomic = atomic_dir(self.out, overwrite=True)
        self._tmp: Path | None = None
        self.index: list[dict[str, Any]] = []

    def __enter__(self) -> MaskFolder:
        self._tmp = self._atomic.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None and self._tmp is not None:
            (self._tmp / "masks.json").write_text(json.dumps({"masks": self.index}, indent=2) + "\n")
            (self._tmp / MARKER_FILE).write_text("edgekd predict --masks\n")
        self._atomic.__exit__(exc_type, exc, tb)

    def add(self, source: str, image: np.ndarray, mask: np.ndarray, area: dict[str, float]) -> dict[str, str]:
        """Write the mask and overlay of one image; returns their file names (relative to the folder)."""
        assert self._tmp is not None, "MaskFolder.add outside its with block"
        stem = _SAFE.sub("_", Path(source.split("#")[0]).stem)[:64] or "image"
        name = f"{len(self.index):05d}-{stem}"
        files = {"mask": f"{name}.png", "overlay": f"{name}.overlay.png"}
        (self._tmp / files["mask"]).write_bytes(mask_png(mask))
        (self._tmp / files["overlay"]).write_bytes(overlay_png(image, mask))
        self.index.append({"source": source, **files, "shape": list(mask.shape), "area": area})
        return files
