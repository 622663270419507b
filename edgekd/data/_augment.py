"""Deterministic training augmentation on raw uint8 images.

The random parameters of sample ``index`` in epoch ``epoch`` are a pure function of
``(seed, epoch, index)``: they come from ``numpy.random.default_rng([seed, epoch, index])``. A teacher-output
cache can therefore replay exactly the augmented image the student saw, whatever the worker count or the
shuffle order. Operations, in order: reflect-pad + random crop back to size, horizontal flip, rotation
and zoom about the centre (one bilinear resampling, reflected border so no black corners appear), gamma
(``255 * (x / 255) ** g``), brightness (``x * (1 + b)``) and contrast (``(x - mean) * (1 + c) + mean``).
Segmentation masks follow the geometric part, nearest-neighbour. Evaluation never augments.

Example:
    >>> aug = AugmentedDataset(bundle.train, Augment.preset("medical"), seed=0)
    >>> aug.set_epoch(3)
    >>> image, target = aug[10]
    >>> torch.equal(image, aug.apply(bundle.train[10][0], aug.params(10, 3)))
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edgekd.data._spec import check_seed
from edgekd.errors import InvalidInputError, UnknownNameError

__all__ = ["Augment", "AugmentedDataset"]


@dataclass(frozen=True)
class Augment:
    """Strengths of the training augmentation (all zero / False: identity).

    Attributes:
        crop_padding: reflect-pad by this many pixels, then crop a random window of the original size.
        hflip: flip horizontally with probability 0.5 (never for chest X-rays: it moves the heart).
        rotation_deg: rotate by a uniform angle in ``[-rotation_deg, rotation_deg]``.
        brightness: scale intensities by ``1 + b``, ``b`` uniform in ``[-brightness, brightness]``.
        contrast: stretch around the image mean by ``1 + c``, ``c`` uniform in ``[-contrast, contrast]``.
        scale: zoom about the centre by ``1 + s``, ``s`` uniform in ``[-scale, scale]`` (above 1 magnifies).
        gamma: raise intensities in ``[0, 1]`` to the power ``1 + g``, ``g`` uniform in ``[-gamma, gamma]``
            (exposure and window differences between X-ray systems).

    Example:
        >>> Augment.preset("medical")
        Augment(crop_padding=2, hflip=False, rotation_deg=10.0, brightness=0.1, contrast=0.1, scale=0.0, gamma=0.0)
    """

    crop_padding: int = 0
    hflip: bool = False
    rotation_deg: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    scale: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        unit = (self.brightness, self.contrast, self.scale, self.gamma)
        if self.crop_padding < 0 or not self.rotation_deg >= 0 or not all(0 <= v < 1 for v in unit):
            raise InvalidInputError(
                f"invalid augmentation {self}", "use padding/rotation >= 0, brightness/contrast/scale/gamma in [0, 1)"
            )

    @classmethod
    def preset(cls, name: str) -> Augment:
        """``"none"`` (identity), ``"light"`` (pad-crop + flip), ``"medical"`` (pad-crop, rotation, intensity) or
        ``"seg"`` (as medical with larger shifts, for 128-256 px images; masks follow the image) or
        ``"seg-strong"`` (seg with zoom +-15 % and gamma +-0.3: patient size and exposure vary between sites)."""
        try:
            return _PRESETS[name]
        except KeyError:
            raise UnknownNameError("augmentation preset", name, _PRESETS) from None

    @classmethod
    def presets(cls) -> list[str]:
        """Names accepted by :meth:`preset`."""
        return sorted(_PRESETS)

    @property
    def is_identity(self) -> bool:
        return self == Augment()


_PRESETS = {
    "none": Augment(),
    "light": Augment(crop_padding=4, hflip=True),
    "medical": Augment(crop_padding=2, rotation_deg=10.0, brightness=0.1, contrast=0.1),
    # segmentation of 128-256 px X-rays: shifts of up to 12 px at the data's resolution, no flip (anatomy)
    "seg": Augment(crop_padding=12, rotation_deg=10.0, brightness=0.15, contrast=0.15),
    "seg-strong": Augment(crop_padding=12, rotation_deg=10.0, brightness=0.15, contrast=0.15, scale=0.15, gamma=0.3),
}


class AugmentedDataset(Dataset):
    """Wrap a dataset of ``(uint8 [C, H, W], target)`` items with deterministic augmentation.

    Args:
        base: the training dataset.
        augment: the augmentation strengths.
        seed: non-negative seed; together with the epoch and the index it fixes every random parameter.

    Example:
        >>> aug = AugmentedDataset(train, Augment.preset("light"), seed=0)
        >>> aug.params(0, 0)["flip"] in (True, False)
        True
    """

    def __init__(self, base: Dataset, augment: Augment, seed: int = 0) -> None:
        self.base = base
        self.augment = augment
        self.seed = check_seed(seed)
        self.epoch = 0

    @property
    def targets(self) -> np.ndarray:
        return self.base.targets

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose parameters ``__getitem__`` uses (call before each epoch's loader)."""
        self.epoch = _check_epoch(epoch)

    def params(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        """The exact random parameters of sample ``index`` in ``epoch`` (default: the current epoch).

        Every value is always drawn, in a fixed order, whether or not its operation is enabled; values added
        later (scale, gamma) are drawn after the older ones, so an older preset replays exactly.
        """
        a = self.augment
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else _check_epoch(epoch), int(index)])
        dy, dx = rng.integers(0, 2 * a.crop_padding + 1, size=2)
        flip, angle = rng.random() < 0.5, rng.uniform(-1.0, 1.0)
        brightness, contrast = rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)
        scale, gamma = rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)
        return {
            "pad": a.crop_padding,
            "dy": int(dy),
            "dx": int(dx),
            "flip": bool(flip and a.hflip),
            "angle": float(angle * a.rotation_deg),
            "brightness": float(brightness * a.brightness),
            "contrast": float(contrast * a.contrast),
            "scale": float(1.0 + scale * a.scale),
            "gamma": float(1.0 + gamma * a.gamma),
        }

    @staticmethod
    def apply(image: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """Apply the parameters of :meth:`params` to one uint8 ``[C, H, W]`` image (identity returns it as is).

        Crop, flip, rotation and zoom are composed into one affine map sampled once (bilinear, reflected
        border), in numpy: per-op overhead of torch on a 28 x 28 image would cost milliseconds per sample.
        """
        if not _changes(params):
            return image
        x = image.numpy().astype(np.float32)
        if _moves(params):
            x = _resample(x, params)
        if params.get("gamma", 1.0) != 1.0:
            x = 255.0 * (np.clip(x, 0.0, 255.0) / 255.0) ** params["gamma"]
        if params["brightness"]:
            x = x * (1.0 + params["brightness"])
        if params["contrast"]:
            mean = x.mean()
            x = (x - mean) * (1.0 + params["contrast"]) + mean
        return torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.uint8))

    def __len__(self) -> int:
        return len(self.base)

    @staticmethod
    def apply_mask(mask: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
        """The geometric part of :meth:`apply` on a segmentation mask ``[H, W]``, nearest-neighbour (no new labels).

        The same affine map as the image (crop, flip, rotation, zoom, reflected border) sampled at the nearest
        pixel; gamma, brightness and contrast leave masks alone.
        """
        if not _moves(params):
            return mask
        return torch.from_numpy(_resample(mask.numpy()[None], params, nearest=True)[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.base[index]
        params = self.params(index)
        if target.ndim == 2:  # a segmentation mask moves with its image
            target = self.apply_mask(target, params)
        return self.apply(image, params), target


def _check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise InvalidInputError(f"epoch must be a non-negative integer, got {epoch!r}")
    return int(epoch)


def _moves(params: dict[str, Any]) -> bool:
    """Whether the geometric part changes pixel positions (``scale`` / ``gamma`` absent: parameters of old code)."""
    return bool(params["pad"] or params["flip"] or params["angle"] or params.get("scale", 1.0) != 1.0)


def _changes(params: dict[str, Any]) -> bool:
    intensity = params["brightness"] or params["contrast"] or params.get("gamma", 1.0) != 1.0
    return bool(_moves(params) or intensity)


def _resample(x: np.ndarray, params: dict[str, Any], *, nearest: bool = False) -> np.ndarray:
    """Sample ``x`` ``[C, H, W]`` where the pipeline crop -> flip -> rotate -> zoom maps every output pixel.

    Output pixel ``(y, x)`` comes from the flipped crop at its position, zoomed out by ``1 / scale`` and
    rotated about the centre, i.e. from the original image at that position (mirrored if flipped) shifted by
    ``(dy - pad, dx - pad)``; positions outside the image are reflected like ``reflect`` padding, so integer
    shifts equal pad-and-crop exactly.
    """
    _, h, w = x.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    zoom = params.get("scale", 1.0)
    if params["angle"] or zoom != 1.0:
        rad = math.radians(params["angle"])
        cy, cx = (h - 1) / 2, (w - 1) / 2
        cos, sin = math.cos(rad) / zoom, math.sin(rad) / zoom
        yy, xx = (
            cos * (yy - cy) - sin * (xx - cx) + cy,
            sin * (yy - cy) + cos * (xx - cx) + cx,
        )
    if params["flip"]:
        xx = (w - 1) - xx
    yy = yy + (params["dy"] - params["pad"])
    xx = xx + (params["dx"] - params["pad"])
    if nearest:  # masks: the class of the nearest source pixel
        return x[:, _reflect(np.floor(yy + 0.5), h), _reflect(np.floor(xx + 0.5), w)]
    y0, x0 = np.floor(yy), np.floor(xx)
    wy, wx = (yy - y0).astype(np.float32), (xx - x0).astype(np.float32)
    ya, yb = _reflect(y0, h), _reflect(y0 + 1, h)
    xa, xb = _reflect(x0, w), _reflect(x0 + 1, w)
    top = x[:, ya, xa] * (1 - wx) + x[:, ya, xb] * wx
    bottom = x[:, yb, xa] * (1 - wx) + x[:, yb, xb] * wx
    return top * (1 - wy) + bottom * wy


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Mirror integer positions into ``[0, n)`` without repeating the edge (torch's ``reflect`` padding)."""
    if n == 1:
        return np.zeros(index.shape, np.intp)
    period = 2 * (n - 1)
    index = np.abs(index.astype(np.intp)) % period
    return np.where(index >= n, period - index, index)
