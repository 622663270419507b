"""Shared by the hospital-data benchmarks: PneumoniaMNIST arrays, a fixed 'other scanner' shift, npz writing.

Domain B (``scanner_b``) is the same chest X-ray as a different scanner and protocol would give it, applied to
the raw uint8 pixels ``x`` in ``[0, 1]``:

1. a different detector response: ``y = 0.15 + 0.6 * x ** 1.5`` (lower contrast, darker mid-tones, raised floor);
2. a softer focal spot / reconstruction kernel: Gaussian blur, sigma 0.8 px (on the 28 x 28 image);
3. more quantum noise: additive Gaussian noise, sigma 0.05 (about 13 grey levels), seeded per split;

then clipped to ``[0, 1]`` and rounded back to uint8. The shift is fixed (no parameter of the benchmarks
changes it) so every figure in the README refers to the same domain B.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from edgekd.data import load_data

__all__ = ["pneumonia_arrays", "scanner_b", "write_medmnist", "LABELS"]

LABELS = "normal;pneumonia"  # medmnist:FILE,labels=... so that written files keep the bundled class names


def pneumonia_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The bundled PneumoniaMNIST splits as ``(images uint8 [N, 28, 28], labels int64 [N])``."""
    bundle = load_data("pneumoniamnist")
    return {s: (bundle.split(s).images[:, 0], np.asarray(bundle.split(s).targets)) for s in ("train", "val", "test")}


def scanner_b(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Domain B of ``images`` (uint8 ``[N, H, W]``); see the module docstring."""
    x = images.astype(np.float64) / 255.0
    y = 0.15 + 0.6 * x**1.5
    y = gaussian_filter(y, sigma=(0, 0.8, 0.8))
    y = y + np.random.default_rng([seed, 2016]).normal(0.0, 0.05, y.shape)
    return np.clip(np.rint(np.clip(y, 0, 1) * 255), 0, 255).astype(np.uint8)


def write_medmnist(path: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Write a MedMNIST-layout ``.npz`` and return its data spec (with the bundled class names)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, (images, labels) in splits.items():
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, dtype=np.int64)[:, None]
    np.savez(path, **arrays)
    return f"medmnist:{path},labels={LABELS}"
