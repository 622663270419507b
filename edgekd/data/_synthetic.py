"""A generated, learnable dataset for tests, demos and smoke runs (no files, no network).

Each class ``k`` of ``K`` draws a bright blob at its own position on a circle around the centre (jittered by
up to a pixel) over oriented stripes at angle ``pi * k / K`` with a random phase, plus Gaussian noise. A small
CNN separates the classes in a few epochs; class means differ clearly because the blob positions do.
Multi-label images superimpose the blobs of every present label (each label present with p = 0.4).

Example:
    >>> bundle = load_data("synthetic:classes=3,n=120,size=16,channels=1,seed=0")
    >>> bundle.train.images.shape
    (120, 1, 16, 16)
"""

from __future__ import annotations

import numpy as np

from edgekd.data._bundle import SourceData
from edgekd.data._dataset import ArrayDataset
from edgekd.data._load import SOURCES
from edgekd.data._spec import opt_int
from edgekd.errors import InvalidInputError
from edgekd.specs import Task

__all__ = ["make_synthetic"]


@SOURCES.register(
    "synthetic",
    arg=None,
    options=("classes", "n", "size", "channels", "seed", "task"),
    help="generated learnable images: one blob position + stripe angle per class (task=multiclass|multilabel)",
    example="synthetic:classes=3,n=200,size=16,channels=1,seed=0",
)
def _synthetic(arg, options, *, seed, download, root) -> SourceData:
    task = options.get("task", "multiclass").lower()
    if task not in ("multiclass", "multilabel"):
        raise InvalidInputError(
            f"option task={task!r} is not valid", "use task=multiclass or task=multilabel (classes=2 is binary)"
        )
    values = {key: opt_int(options, key, default, low=low) for key, (default, low, _) in _LIMITS.items()}
    for key, (_, _, high) in _LIMITS.items():
        if values[key] > high:
            raise InvalidInputError(
                f"option {key}={values[key]} is larger than {high}", "synthetic data is for smoke runs"
            )
    return make_synthetic(**values, seed=seed, multilabel=task == "multilabel")


# key: (default, lowest, highest); the highest keep generated data within a few hundred MB.
_LIMITS = {"classes": (2, 2, 1000), "n": (256, 1, 100_000), "size": (16, 8, 512), "channels": (1, 1, 16)}
_MAX_PIXELS = 2**28


def make_synthetic(
    *, classes: int = 2, n: int = 256, size: int = 16, channels: int = 1, seed: int = 0, multilabel: bool = False
) -> SourceData:
    """Generate train (``n``), val and test (``max(n // 4, 2 * classes)`` each) splits.

    Example:
        >>> data = make_synthetic(classes=4, n=64, size=12)
        >>> len(data.train), len(data.val), data.task.value
        (64, 16, 'multiclass')
    """
    if not multilabel and n < classes:
        raise InvalidInputError(f"synthetic n={n} is smaller than classes={classes}", "use n >= classes")
    n_eval = max(n // 4, 2 * classes)
    if (n + 2 * n_eval) * channels * size * size > _MAX_PIXELS:
        raise InvalidInputError(
            f"synthetic data of n={n}, size={size}, channels={channels} is too large",
            f"keep n * channels * size^2 under {_MAX_PIXELS // 2:,}",
        )
    splits = {}
    for i, (name, count) in enumerate((("train", n), ("val", n_eval), ("test", n_eval))):
        rng = np.random.default_rng([seed, 4242, i])
        targets = _draw_targets(rng, count, classes, multilabel)
        images = _render(rng, targets, classes, size, channels, multilabel)
        splits[name] = ArrayDataset(images, targets)
    if multilabel:
        task = Task.MULTILABEL
    else:
        task = Task.BINARY if classes == 2 else Task.MULTICLASS
    return SourceData(**splits, task=task, label_names=[f"class_{k}" for k in range(classes)])


def _draw_targets(rng: np.random.Generator, count: int, classes: int, multilabel: bool) -> np.ndarray:
    if multilabel:
        return (rng.random((count, classes)) < 0.4).astype(np.float32)
    return rng.permutation(np.arange(count) % classes).astype(np.int64)  # balanced, every class present


def _render(
    rng: np.random.Generator, targets: np.ndarray, classes: int, size: int, channels: int, multilabel: bool
) -> np.ndarray:
    count = len(targets)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy, xx = yy[None] - (size - 1) / 2, xx[None] - (size - 1) / 2  # [1, S, S], centred
    angles = 2 * np.pi * np.arange(classes) / classes
    centres = 0.3 * size * np.stack([np.sin(angles), np.cos(angles)], axis=1)  # [K, 2] (dy, dx)
    sigma = max(1.0, size / 10)
    jitter = rng.uniform(-1, 1, (count, 2)).astype(np.float32)
    if multilabel:
        image = np.zeros((count, size, size), np.float32)
        for k in range(classes):  # K blobs per image at most; the loop is over classes, not samples
            dy, dx = centres[k, 0] + jitter[:, :1, None], centres[k, 1] + jitter[:, 1:, None]
            blob = np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * sigma**2))
            image += targets[:, k, None, None] * blob
        image = 0.15 + 0.7 * np.clip(image, 0, 1)
    else:
        dy = centres[targets, 0][:, None, None] + jitter[:, :1, None]
        dx = centres[targets, 1][:, None, None] + jitter[:, 1:, None]
        blob = np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * sigma**2))
        theta = (np.pi * targets / classes)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, (count, 1, 1))
        stripes = np.sin((np.cos(theta) * xx + np.sin(theta) * yy) * (2 * np.pi / 4) + phase)
        image = 0.35 + 0.15 * stripes + 0.5 * blob
    noise = rng.normal(0, 0.08, (count, channels, size, size))
    pixels = (image[:, None] + noise) * 255
    return np.clip(pixels, 0, 255).round().astype(np.uint8)
