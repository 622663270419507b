"""The segmentation sections of the run report (issue 26 item 6): Dice / IoU / HD95 per stage, and the masks of
the teacher and of the distilled student drawn over the same test images, worst cases included.

They replace the classification sections (ROC curves, confusion matrices, calibration, Grad-CAM) for a run whose
task is ``segmentation``. Masks come from the logits each stage's evaluation stored (``eval/NAME.npz``),
upsampled to the data's size before the argmax (:func:`edgekd.metrics.mask_predictions`), so every stage is
scored and drawn on the label masks as they are. The chosen images are the student's worst test images by Dice
(half of them, at least one) and images spread over the rest of the test split in order; each panel names its
Dice against the label mask.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from edgekd.metrics import dice_iou, mask_predictions
from edgekd.report._html import Page, esc, figure, fmt, paragraph, table

__all__ = ["segmentation_sections", "overlay_grid_png", "pick_cases"]

_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("hd95", "HD95 (px)"), ("acc", "pixel acc"))
_COLOURS = ((0.9, 0.1, 0.3), (0.2, 0.7, 0.3), (0.0, 0.5, 0.8), (1.0, 0.85, 0.1))


def _masks(run: Any, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(predicted masks, label masks) of one row's test split, at the label masks' size."""
    a = run.arrays(row["eval"][0])
    y = a["test_targets"]
    return mask_predictions(a["test_logits"], tuple(y.shape[-2:])), y


def _dice_per_image(pred: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    d, _ = dice_iou(pred, y, k)
    with np.errstate(all="ignore"):
        fg = d[:, 1:]
        return np.where(np.isnan(fg).all(1), np.nan, np.nanmean(np.where(np.isnan(fg), 0, fg), 1))


def pick_cases(dice: np.ndarray, n: int) -> list[int]:
    """``n`` test images: the worst by ``dice`` (half, at least one), then others spread over the split."""
    order = [int(i) for i in np.argsort(np.nan_to_num(dice, nan=np.inf))]
    worst = order[: max(1, n // 2)]
    rest = [i for i in range(len(dice)) if i not in worst]
    if rest and n > len(worst):
        spread = np.linspace(0, len(rest) - 1, min(n - len(worst), len(rest))).round().astype(int)
        worst += [rest[int(j)] for j in spread]
    return sorted(dict.fromkeys(worst))


def _tint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = np.repeat(image[..., None], 3, -1).astype(np.float64) / 255.0
    for k in range(1, int(mask.max(initial=0)) + 1):
        m = mask == k
        rgb[m] = 0.55 * rgb[m] + 0.45 * np.array(_COLOURS[(k - 1) % len(_COLOURS)])
    return rgb


def overlay_grid_png(images: np.ndarray, columns: list[tuple[str, np.ndarray, np.ndarray | None]]) -> bytes:
    """One row per image ``uint8 [N, H, W]``; one column per ``(title, masks [N, H, W], dice [N] or None)``."""
    rows, cols = len(images), len(columns)
    fig = Figure(figsize=(2.3 * cols, 2.3 * rows), dpi=90)
    for i in range(rows):
        for j, (title, masks, dice) in enumerate(columns):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            ax.imshow(_tint(images[i], masks[i]), interpolation="nearest")
            label = title if dice is None or math.isnan(float(dice[i])) else f"{title}\nDice {float(dice[i]):.3f}"
            ax.set_title(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _metrics_section(run: Any, page: Page) -> None:
    rows = []
    for r in run.rows:
        spread = r.get("spread", {})
        cells = [esc(r["label"])]
        for key, _ in _METRICS:
            v, s = r["test"].get(key), spread.get(f"test.{key}")
            cells.append(fmt(v) + (f" ± {s:.4f}" if s else ""))
        cells.append(fmt(r["val"].get("dice")))
        rows.append(cells)
    page.section(
        "seg-metrics",
        "Dice, IoU and HD95 per stage",
        paragraph(
            "Test split, every stage's masks upsampled to the label masks' size: Dice and IoU of the foreground "
            "classes (mean over the images that contain each class), the 95 % Hausdorff distance in pixels of the "
            "data's resolution (lower is better), the share of pixels labelled right; ± the spread over seeds."
        ),
        table(["stage", *(label for _, label in _METRICS), "val Dice"], rows),
    )


def _overlay_section(run: Any, page: Page, pngs: dict[str, bytes]) -> None:
    by_name = {r["name"]: r for r in run.rows if r.get("eval")}
    student = by_name.get("student") or next((r for r in run.rows if r["name"] != "teacher" and r.get("eval")), None)
    teacher = by_name.get("teacher")
    if student is None:
        page.section("overlays", "Masks on test images", paragraph("No evaluated student: no masks to draw."))
        return
    k = len(run.summary["label_names"])
    s_pred, y = _masks(run, student)
    s_dice = _dice_per_image(s_pred, y, k)
    n = int(run.summary.get("report_settings", {}).get("gradcam_images", 6))
    idx = pick_cases(s_dice, min(max(n, 2), len(y)))
    test = run.data.test
    images = np.stack([test[i][0].numpy()[0] for i in idx])
    columns: list[tuple[str, np.ndarray, np.ndarray | None]] = [("label mask", y[idx], None)]
    if teacher is not None:
        t_pred, _ = _masks(run, teacher)
        columns.append((teacher["label"], t_pred[idx], _dice_per_image(t_pred, y, k)[idx]))
    columns.append((student["label"], s_pred[idx], s_dice[idx]))
    pngs["overlays"] = overlay_grid_png(images, columns)
    worst = ", ".join(f"#{i} ({s_dice[i]:.3f})" for i in idx if s_dice[i] <= np.nanmedian(s_dice))
    page.section(
        "overlays",
        "Teacher and student masks on the same test images",
        figure(
            pngs["overlays"],
            f"Test images {', '.join(f'#{i}' for i in idx)}: the label mask, the teacher's and the student's "
            f"masks over the image, each with its Dice. The student's worst cases are included: {worst or 'none'}.",
        ),
    )


def segmentation_sections(run: Any, page: Page, pngs: dict[str, bytes]) -> None:
    """The segmentation sections of the report (see the module docstring)."""
    _metrics_section(run, page)
    _overlay_section(run, page, pngs)
