"""`edgekd explain`: Grad-CAM overlays of chosen or sampled images, optionally against another model.

For clinicians' review of individual cases: each image with the model's Grad-CAM overlay (and, with
``compare``, the other model's, with their agreement: Spearman ρ of the maps and IoU of their top-20 %
regions; :func:`~edgekd.report.cam_agreement`). Images are indices into a split of the data (the map explains
the true class) or image files (the map explains the first model's predicted class, for both models).

The output folder holds ``gradcam.png`` (the grid) and ``explain.json`` (predictions, layers, scores), written
atomically.

Example:
    >>> res = explain("runs/run/student", "review/", images=["3", "17", "xray.png"], compare="runs/run/teacher")
    >>> res.mean
    {'spearman': 0.71, 'iou': 0.52}
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from edgekd._io import MARKER_FILE, atomic_dir, check_output
from edgekd.data import DataBundle, load_data
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.modeldir import load_model_dir
from edgekd.report._figures import gradcam_png
from edgekd.report._gradcam import CAM_METHOD, TOP_FRACTION, cam_agreement, fmt_score, gradcam_maps
from edgekd.specs import Task

__all__ = ["explain", "ExplainResult", "ExplainedImage"]


class ExplainedImage(BaseModel):
    """One image: where it came from, the class explained, predictions and (with a comparison) the agreement."""

    source: str
    label: str | None = None
    explained: str
    prediction: str
    confidence: float
    compare_prediction: str | None = None
    spearman: float | None = None
    iou: float | None = None


class ExplainResult(BaseModel):
    out: str
    model: str
    layer: str
    compare: str | None = None
    compare_layer: str | None = None
    method: str = CAM_METHOD
    top_fraction: float = TOP_FRACTION
    images: list[ExplainedImage] = Field(default_factory=list)
    mean: dict[str, float] = Field(default_factory=dict)
    figure: str


def _read_file(path: Path, data: DataBundle) -> torch.Tensor:
    """An image file as the data's raw ``uint8 [C, H, W]`` (channels and size of the data)."""
    if not path.is_file():
        raise ArtifactError(f"image {path} does not exist", "pass test-split indices or image files")
    try:
        with Image.open(path) as im:
            im = im.convert("L" if data.channels == 1 else "RGB").resize(
                data.image_size[::-1], Image.Resampling.BILINEAR
            )
            arr = np.array(im, dtype=np.uint8)
    except OSError as e:
        raise ArtifactError(f"cannot decode image {path}: {e}", "pass a PNG or JPEG file") from None
    return torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())


def _gather(
    data: DataBundle, split: str, images: Sequence[str], n: int
) -> tuple[torch.Tensor, list[int | None], list[str]]:
    ds = data.split(split)
    chosen = list(images) or [str(i) for i in np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)]
    tensors, labels, sources = [], [], []
    for item in chosen:
        if item.isdigit():
            i = int(item)
            if i >= len(ds):
                raise InvalidInputError(f"image index {i} is outside the {split} split ({len(ds)} images)")
            image, y = ds[i]
            tensors.append(image)
            labels.append(int(y))
            sources.append(f"{split} #{i}")
        else:
            tensors.append(_read_file(Path(item), data))
            labels.append(None)
            sources.append(item)
    return torch.stack(tensors), labels, sources


def explain(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    data: str | None = None,
    images: Sequence[str] = (),
    compare: str | os.PathLike | None = None,
    n: int = 8,
    split: str = "test",
    layer: str | None = None,
    compare_layer: str | None = None,
    overwrite: bool = False,
) -> ExplainResult:
    """Grad-CAM grid of ``model_dir`` (and ``compare``) on ``images`` (or ``n`` evenly spaced images of ``split``).

    Raises:
        ArtifactError: a missing model directory or image file (exit 4).
        InvalidInputError: a bad index, a multi-label model, models of other classes, ``out`` exists (exit 3).
    """
    out = Path(out)
    check_output(out, overwrite=overwrite, inputs=(model_dir, compare))
    model, card = load_model_dir(model_dir)
    if card.task is Task.MULTILABEL:
        raise InvalidInputError("Grad-CAM review covers single-label models", "explain one label of a binary model")
    bundle = load_data(data or card.lineage.data or "")
    x, labels, sources = _gather(bundle, split, images, n)
    with torch.no_grad():
        predicted = model(card.preprocess(x)).argmax(1).tolist()
    # An indexed image explains its true class; a file (no label) the first model's prediction, in both models.
    classes = [y if y is not None else p for y, p in zip(labels, predicted)]
    first = gradcam_maps(model, card.preprocess, x, layer=layer, size=bundle.image_size, classes=classes)
    other = None
    if compare is not None:
        m2, c2 = load_model_dir(compare)
        if c2.spec.num_classes != card.spec.num_classes:
            raise InvalidInputError(f"{compare} has {c2.spec.num_classes} classes, {model_dir} {card.spec.num_classes}")
        other = gradcam_maps(m2, c2.preprocess, x, layer=compare_layer, size=bundle.image_size, classes=classes)
    names = card.label_names
    probs = torch.softmax(torch.from_numpy(first.logits), 1).numpy()
    items = []
    for j in range(len(x)):
        agree = cam_agreement(first.maps[j], other.maps[j]) if other is not None else {}
        items.append(
            ExplainedImage(
                source=sources[j],
                label=names[labels[j]] if labels[j] is not None else None,
                explained=names[classes[j]],
                prediction=names[int(probs[j].argmax())],
                confidence=float(probs[j].max()),
                compare_prediction=names[int(other.logits[j].argmax())] if other is not None else None,
                spearman=agree.get("spearman"),
                iou=agree.get("iou"),
            )
        )
    columns = [
        {
            "label": f"{Path(model_dir).name} [{first.layer}]",
            "maps": first.maps,
            "titles": [f"pred {it.prediction} {it.confidence:.2f}" for it in items],
        }
    ]
    if other is not None:
        columns.append(
            {
                "label": f"{Path(compare).name} [{other.layer}]",
                "maps": other.maps,
                "titles": [
                    f"pred {it.compare_prediction}\nρ {fmt_score(it.spearman)} IoU {fmt_score(it.iou)}" for it in items
                ],
            }
        )
    png = gradcam_png([t.numpy() for t in x], columns, [f"{it.source}: {it.label or '?'}" for it in items])
    mean = {}
    if other is not None:
        for k in ("spearman", "iou"):
            vals = [getattr(it, k) for it in items if getattr(it, k) is not None and not math.isnan(getattr(it, k))]
            mean[k] = float(np.mean(vals)) if vals else math.nan
    res = ExplainResult(
        out=str(out),
        model=str(model_dir),
        layer=first.layer,
        compare=str(compare) if compare else None,
        compare_layer=other.layer if other is not None else None,
        images=items,
        mean=mean,
        figure=str(out / "gradcam.png"),
    )
    with atomic_dir(out) as tmp:
        (tmp / MARKER_FILE).write_text("edgekd explain output\n")
        (tmp / "gradcam.png").write_bytes(png)
        (tmp / "explain.json").write_text(res.model_dump_json(indent=2) + "\n")
    return res
