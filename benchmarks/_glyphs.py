"""Synthetic arrows whose class is their direction: a data set where a horizontal flip changes what an image shows.

Class ``k`` of ``K`` is an arrow pointing at ``360 * k / K`` degrees (0 = right, counter-clockwise), drawn with a
random centre offset, length, shaft width, head size, angle jitter (up to ``jitter_deg``), brightness and noise. A
horizontal flip turns direction ``a`` into ``180 - a``: for ``K = 8`` right and left swap, as do the two upward and
the two downward diagonals; up and down stay. So a flip augmentation keeps the label of an arrow it turned the
other way, which is the failure the KD diagnosis must recognise (issue 23).

The generator writes a MedMNIST-format ``.npz`` (uint8 ``*_images`` ``[N, H, W]``, int ``*_labels`` ``[N, 1]``),
which edgekd reads as ``medmnist:PATH,labels=...`` (:func:`data_spec`).

Example:
    >>> path = write_arrows("runs/arrows.npz", n_train=400, size=20, seed=0)
    >>> spec = data_spec(path)  # 'medmnist:runs/arrows.npz,labels=a000;a045;...'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "render_arrows",
    "write_arrows",
    "render_glyphs",
    "write_glyphs",
    "data_spec",
    "label_names",
    "flipped_class",
]


def label_names(classes: int) -> list[str]:
    return [f"a{round(360 * k / classes):03d}" for k in range(classes)]


def flipped_class(k: int, classes: int) -> int:
    """The class an arrow of class ``k`` looks like after a horizontal flip (direction 180 - a)."""
    return (classes // 2 - k) % classes


def render_arrows(
    labels: np.ndarray, *, classes: int, size: int, rng: np.random.Generator, jitter_deg: float = 8.0
) -> np.ndarray:
    """uint8 ``[N, size, size]`` images of arrows pointing at ``360 * label / classes`` degrees."""
    n = len(labels)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    angle = np.deg2rad(360.0 * labels / classes + rng.uniform(-jitter_deg, jitter_deg, n))
    ux, uy = np.cos(angle), -np.sin(angle)  # image rows grow downwards
    ox, oy = rng.uniform(-1.5, 1.5, (2, n))
    half = size * rng.uniform(0.28, 0.36, n)  # half the arrow's length
    width = rng.uniform(0.7, 1.2, n)
    head = size * rng.uniform(0.18, 0.24, n)
    out = np.empty((n, size, size), np.float32)
    for i in range(n):  # per image: a few array operations on size x size pixels
        dx, dy = xx - (c + ox[i]), yy - (c + oy[i])
        along = dx * ux[i] + dy * uy[i]  # coordinate along the arrow (tip at +half)
        across = -dx * uy[i] + dy * ux[i]
        shaft = (np.abs(along) <= half[i]) & (np.abs(across) <= width[i])
        back = half[i] - along  # distance behind the tip
        tip = (back >= 0) & (back <= head[i]) & (np.abs(across) <= 0.9 * back + 0.5)
        out[i] = (shaft | tip).astype(np.float32)
    bright = rng.uniform(0.65, 0.95, (n, 1, 1))
    img = 0.1 + bright * out + rng.normal(0, 0.06, (n, size, size))
    return np.clip(img * 255, 0, 255).round().astype(np.uint8)


def write_arrows(
    path: str | Path, *, n_train: int = 400, n_eval: int | None = None, classes: int = 8, size: int = 20, seed: int = 0
) -> Path:
    """Write train / val / test splits (balanced classes; val and test ``n_eval`` each, default ``n_train // 2``)."""
    return _write(
        path,
        lambda labels, rng: render_arrows(labels, classes=classes, size=size, rng=rng),
        n_train=n_train,
        n_eval=n_eval,
        classes=classes,
        seed=seed,
    )


def _write(path: str | Path, render, *, n_train: int, n_eval: int | None, classes: int, seed: int) -> Path:
    path = Path(path)
    n_eval = n_eval or max(n_train // 2, 2 * classes)
    arrays = {}
    for i, (split, count) in enumerate((("train", n_train), ("val", n_eval), ("test", n_eval))):
        rng = np.random.default_rng([seed, 2323, i])
        labels = rng.permutation(np.arange(count) % classes)
        arrays[f"{split}_images"] = render(labels, rng)
        arrays[f"{split}_labels"] = labels.astype(np.int64)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def data_spec(path: str | Path, classes: int = 8) -> str:
    """The edgekd data spec of a file written by :func:`write_arrows`."""
    return f"medmnist:{path},labels={';'.join(label_names(classes))}"


def _glyph_bank(classes: int, seed: int, grid: int = 5) -> np.ndarray:
    """``classes`` random ``grid x grid`` bitmaps, each far from its own mirror image and from every other glyph
    and its mirror (so a flipped glyph is a shape no class has)."""
    rng = np.random.default_rng([seed, 77])
    bank: list[np.ndarray] = []
    while len(bank) < classes:
        g = rng.random((grid, grid)) < 0.45
        if g.sum() < 8 or (g != g[:, ::-1]).sum() < 8:
            continue
        if all((g != b).sum() >= 7 and (g != b[:, ::-1]).sum() >= 7 for b in bank):
            bank.append(g)
    return np.stack(bank).astype(np.float32)


def render_glyphs(
    labels: np.ndarray, *, classes: int, size: int, rng: np.random.Generator, seed: int = 0
) -> np.ndarray:
    """uint8 ``[N, size, size]`` images of asymmetric glyphs (one random bitmap per class, :func:`_glyph_bank`),
    each drawn with a random offset, scale, brightness and noise."""
    import torch
    import torch.nn.functional as F

    bank = torch.from_numpy(_glyph_bank(classes, seed))[:, None]
    n = len(labels)
    scale = rng.uniform(0.55, 0.7, n)  # the glyph's side over the image's
    shift = rng.uniform(-0.12, 0.12, (n, 2))
    theta = np.zeros((n, 2, 3), np.float32)  # affine_grid maps output to input coordinates
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -shift / scale[:, None]
    grid = F.affine_grid(torch.from_numpy(theta), [n, 1, size, size], align_corners=False)
    glyph = F.grid_sample(
        bank[torch.as_tensor(labels)], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[:, 0].numpy()
    bright = rng.uniform(0.65, 0.95, (n, 1, 1))
    img = 0.1 + bright * glyph + rng.normal(0, 0.06, (n, size, size))
    return np.clip(img * 255, 0, 255).round().astype(np.uint8)


def write_glyphs(
    path: str | Path, *, n_train: int = 400, n_eval: int | None = None, classes: int = 8, size: int = 20, seed: int = 0
) -> Path:
    """:func:`write_arrows` for glyphs: a horizontal flip makes a shape of no class, labelled as before."""
    return _write(
        path,
        lambda labels, rng: render_glyphs(labels, classes=classes, size=size, rng=rng, seed=seed),
        n_train=n_train,
        n_eval=n_eval,
        classes=classes,
        seed=seed,
    )
