"""The target rules of segmentation data (masks), checked by :func:`~edgekd.data._bundle.check_targets`.

Kept apart from :mod:`._seg` (the sources) so that the bundle module can import it without a cycle.
"""

from __future__ import annotations

import numpy as np

from edgekd.errors import InvalidInputError

__all__ = ["check_mask_targets", "pixel_counts"]


def pixel_counts(masks: np.ndarray, k: int) -> np.ndarray:
    """Pixels per class over all masks ``[N, H, W]``, ``int64 [k]``."""
    return np.bincount(np.asarray(masks).reshape(-1).astype(np.int64), minlength=k)[:k].astype(np.int64)


def check_mask_targets(spec: str, splits: dict[str, np.ndarray], names: list[str]) -> None:
    """Masks are integer ``[N, H, W]`` class indices in ``[0, K)``; every class has training pixels.

    Raises:
        InvalidInputError: the first rule broken, naming the spec and the split (exit 3).
    """
    k = len(names)
    for split, masks in splits.items():
        masks = np.asarray(masks)
        ok = masks.ndim == 3 and np.issubdtype(masks.dtype, np.integer)
        if not ok or int(masks.min()) < 0 or int(masks.max()) >= k:
            raise InvalidInputError(
                f"the {split} masks of {spec!r} are not class indices 0..{k - 1} per pixel",
                "masks are PNGs of class indices (0 = background) or 0/255 for one foreground class",
            )
    counts = pixel_counts(splits["train"], k)
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise InvalidInputError(
            f"class {empty[0]!r} of {spec!r} has no pixel in any training mask",
            "every class needs training pixels: check the masks or drop the class (classes=K)",
        )
