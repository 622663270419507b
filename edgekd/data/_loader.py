"""Reproducible data loaders.

Example:
    >>> loader = make_loader(bundle.train, 64, shuffle=True, seed=0)
    >>> images, targets = next(iter(loader))  # uint8 [64, C, H, W], int64 [64]
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from edgekd.data._spec import check_seed
from edgekd.errors import InvalidInputError

__all__ = ["make_loader"]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` whose shuffle order depends only on ``seed``.

    Two loaders made with the same seed yield the same order. Iterating one loader again continues its
    generator (a new order per epoch); to resume at epoch ``e`` reproducibly, build it with ``seed + e``.
    Augmentation stays deterministic with workers because its parameters depend on the index, not on the
    worker's random state.

    Args:
        dataset: any dataset of ``(image, target)`` items.
        batch_size: samples per batch (>= 1).
        shuffle: shuffle (training) or keep the order (evaluation).
        seed: seed of the shuffle order.
        drop_last: drop a last incomplete batch.
        num_workers: worker processes (0: load in the main process).

    Example:
        >>> a = [t.tolist() for _, t in make_loader(ds, 8, shuffle=True, seed=1)]
        >>> b = [t.tolist() for _, t in make_loader(ds, 8, shuffle=True, seed=1)]
        >>> a == b
        True
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise InvalidInputError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator().manual_seed(check_seed(seed)) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )
