"""Is the teacher helping? Distillation against the same student trained without it, and why it may not help.

Distillation is not always a gain. On a small dataset a student trained on the labels alone can match or beat
the distilled one, and an augmentation that changes what an image shows (a horizontal flip of a chest X-ray
moves the heart) makes the teacher's soft labels on the augmented views wrong while the hard labels stay
right. :func:`compare_students` puts the numbers side by side on validation (the split that may decide) and
test, and :func:`diagnose` computes the evidence behind the suggestions:

* the student's top-1 **agreement** with the teacher on training and validation images (how much of the
  teacher it learned; the baseline's agreement is the reference);
* the teacher's **confidence** on its own training images: a teacher that is ~100 % confident there passes
  little beyond the labels (Hinton et al. 2015's "dark knowledge" is in the non-maximal probabilities);
* the teacher's **accuracy on the augmented training views** against the labels: a large drop from the clean
  views means the augmentation changes what the images show, and the teacher teaches wrong answers;
* the **capacity gap**: teacher and student parameters, and the student's final distillation loss
  (Mirzadeh et al., AAAI 2020: a too-large gap hurts; a teacher assistant bridges it).

The deciding metric fits the task (:func:`resolve_metric`, ``distill.metric: auto``): AUROC for a binary task,
whose threshold is chosen later (the operating point); balanced accuracy for a multi-class one, where macro
one-vs-rest AUROC can rise while the top-1 answers get worse; AUROC for multi-label. The other metrics
(:func:`secondary_metrics`: accuracy for a binary AUROC decision, accuracy and AUROC for a multi-class one) are
bootstrapped on the same resamples (:func:`bootstrap_gains`): when one of them moves against the deciding one
beyond its noise, the verdict says so and does not call the result a gain. The diagnosis's findings become
suggestions whenever they are out of range, whatever the verdict.

Example:
    >>> cmp = compare_students([card], [card_b], metric="balanced_acc", secondary_ci={"auroc": (-0.01, 0.02)})
    >>> cmp.helps, cmp.gain_val, cmp.disagree
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from scipy.stats import rankdata

from edgekd.data import Augment, AugmentedDataset, DataBundle
from edgekd.errors import InvalidInputError
from edgekd.metrics import (
    METRIC_NAMES,
    compute_metrics,
    dice_iou,
    hd95,
    higher_is_better,
    mask_predictions,
    probabilities,
)
from edgekd.modeldir import ModelCard
from edgekd.specs import Task
from edgekd.teachers import Teacher

__all__ = [
    "SeedStats",
    "KDDiagnosis",
    "KDComparison",
    "SecondaryGain",
    "seed_stats",
    "diagnose",
    "compare_students",
    "suggestions",
    "bootstrap_gain",
    "bootstrap_gains",
    "resolve_metric",
    "secondary_metrics",
    "DECIDING_METRIC",
]

# Evidence thresholds of the suggestions (see `suggestions`).
AUG_DROP = 0.03  # teacher accuracy on augmented views this much below the clean views: the augmentation misleads
CONFIDENT = 0.97  # mean top-class probability on its own training images: little beyond the labels
CAPACITY_RATIO = 20.0  # teacher / student parameters
LOW_AGREEMENT = 0.95  # student-teacher top-1 agreement on training images

# `distill.metric: auto`: the metric that decides whether distillation helps, per task (module docstring).
DECIDING_METRIC = {
    Task.BINARY: "auroc",
    Task.MULTICLASS: "balanced_acc",
    Task.MULTILABEL: "auroc",
    Task.SEGMENTATION: "dice",
}


def resolve_metric(metric: str, task: Task) -> str:
    """``auto`` -> the task's deciding metric (:data:`DECIDING_METRIC`); any other known metric as given.

    Raises:
        InvalidInputError: an unknown metric name (exit 3).
    """
    if metric == "auto":
        return DECIDING_METRIC[Task(task)]
    if metric not in METRIC_NAMES:
        raise InvalidInputError(f"unknown KD metric {metric!r}", f"use auto or one of {', '.join(METRIC_NAMES)}")
    return metric


def secondary_metrics(metric: str, task: Task) -> list[str]:
    """The metrics checked against the deciding one: accuracy for a binary AUROC decision, AUROC for a binary
    accuracy one; for multi-class, accuracy, balanced accuracy and AUROC other than the deciding one; none for
    multi-label (no paired bootstrap there)."""
    task = Task(task)
    if task is Task.MULTILABEL:
        return []
    if task is Task.SEGMENTATION:  # the outline: HD95 can worsen while the overlap (Dice, IoU) improves
        return [m for m in ("hd95", "iou") if m != metric]
    if task is Task.BINARY:
        return ["acc"] if metric == "auroc" else ["auroc"]
    return [m for m in ("balanced_acc", "acc", "auroc") if m != metric]


class SeedStats(BaseModel):
    """One model's figure over seeds: per-seed values, mean and sample standard deviation (0 for one seed)."""

    val: list[float] = Field(default_factory=list)
    test: list[float] = Field(default_factory=list)
    val_acc: list[float] = Field(default_factory=list)
    test_acc: list[float] = Field(default_factory=list)

    @staticmethod
    def _mean(v: list[float]) -> float:
        return float(np.mean(v)) if v else math.nan

    @staticmethod
    def _std(v: list[float]) -> float:
        return float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

    def summary(self) -> dict[str, float]:
        return {
            f"{k}_{s}": getattr(self, s_fn)(getattr(self, k))
            for k in ("val", "test", "val_acc", "test_acc")
            for s, s_fn in (("mean", "_mean"), ("std", "_std"))
        }


def seed_stats(cards: list[ModelCard], metric: str) -> SeedStats:
    """The ``metric`` (and accuracy) on val (best epoch) and test of each seed's model card."""

    def get(card: ModelCard, split: str, m: str) -> float:
        return float(card.metrics.get(split, {}).get(m, math.nan))

    return SeedStats(
        val=[get(c, "val", metric) for c in cards],
        test=[get(c, "test", metric) for c in cards],
        val_acc=[get(c, "val", "acc") for c in cards],
        test_acc=[get(c, "test", "acc") for c in cards],
    )


class KDDiagnosis(BaseModel):
    """The evidence behind the suggestions (see the module docstring); fractions in [0, 1]."""

    samples: int
    augment: str
    teacher_params: int | None = None
    student_params: int | None = None
    params_ratio: float | None = None
    teacher_acc_train: float
    teacher_acc_augmented: float | None = None
    augmented_drop: float | None = None
    teacher_confidence_train: float
    teacher_confident_fraction: float
    agreement: dict[str, dict[str, float]] = Field(default_factory=dict)
    final_losses: dict[str, float] = Field(default_factory=dict)


class SecondaryGain(BaseModel):
    """A metric checked against the deciding one: gains (distilled minus baseline, means over seeds) on val and
    test, the 95 % paired-bootstrap interval of the val gain, and whether it excludes 0."""

    val: float | None = None
    test: float | None = None
    ci: list[float] | None = None
    significant: bool | None = None


class KDComparison(BaseModel):
    """Distilled against no-teacher students, the decision and the suggestions.

    Attributes:
        metric: the validation metric that decides (``distill.metric``, resolved for the task).
        distilled, baseline: per-seed figures (``baseline`` None without a baseline run).
        gain_val, gain_test: distilled minus baseline, means over seeds; ``*_std`` their spread.
        gain_val_ci: 95 % paired-bootstrap interval of ``gain_val`` (:func:`bootstrap_gain`); significant: it
            excludes 0.
        helps: distillation beats the baseline on the deciding metric on validation and no secondary metric says
            the opposite beyond its noise (None without a baseline).
        secondary: the other metrics' gains and intervals (:func:`secondary_metrics`).
        disagree: the secondary metrics that move against the deciding one beyond their noise.
        chosen: the stage whose model the later stages compress.
        diagnosis: the evidence; suggestions: what to try, from it.
        message: one plain sentence for the terminal.
    """

    metric: str
    seeds: int
    distilled: SeedStats
    baseline: SeedStats | None = None
    gain_val: float | None = None
    gain_val_std: float | None = None
    gain_test: float | None = None
    gain_test_std: float | None = None
    gain_val_acc: float | None = None
    gain_test_acc: float | None = None
    helps: bool | None = None
    gain_val_ci: list[float] | None = None
    significant: bool | None = None
    secondary: dict[str, SecondaryGain] = Field(default_factory=dict)
    disagree: list[str] = Field(default_factory=list)
    keep: str = "better"
    chosen: str = "student"
    diagnosis: KDDiagnosis | None = None
    suggestions: list[str] = Field(default_factory=list)
    message: str = ""


@torch.no_grad()
def _logits(model: Teacher, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    return torch.cat([model.logits(images[i : i + batch]).float().cpu() for i in range(0, len(images), batch)]).numpy()


def _resized(logits: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Per-pixel logits ``[N, K, h, w]`` resized (bilinear) to ``size`` ``(H, W)``: a segmenter's masks are
    compared at the labels' (or the other model's) resolution."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    t = torch.nn.functional.interpolate(
        torch.from_numpy(logits), size=tuple(size), mode="bilinear", align_corners=False
    )
    return t.numpy()


def _accuracy(logits: np.ndarray, y: np.ndarray, task: Task) -> float:
    if task is Task.SEGMENTATION:  # pixel accuracy of the masks against the label masks
        return float((_resized(logits, y.shape[-2:]).argmax(1) == y).mean())
    if task is Task.MULTILABEL:
        return float(((probabilities(logits, task) >= 0.5) == (y > 0.5)).mean())
    return float((logits.argmax(1) == y.reshape(-1)).mean())


def _agreement(a: np.ndarray, b: np.ndarray, task: Task) -> float:
    if task is Task.SEGMENTATION:  # share of pixels whose class agrees, at the first model's resolution
        return float((a.argmax(1) == _resized(b, a.shape[-2:]).argmax(1)).mean())
    if task is Task.MULTILABEL:
        return float(((a > 0) == (b > 0)).mean())
    return float((a.argmax(1) == b.argmax(1)).mean())


def _confidence(logits: np.ndarray, task: Task) -> np.ndarray:
    if task is Task.SEGMENTATION:  # per image: the mean over its pixels of the top class probability
        return torch.softmax(torch.from_numpy(logits), 1).amax(1).mean((1, 2)).numpy()
    p = probabilities(logits, task)
    return np.maximum(p, 1 - p).mean(1) if task is Task.MULTILABEL else p.max(1)


def _sample(data: DataBundle, split: str, n: int, seed: int) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    ds = data.split(split)
    idx = np.arange(len(ds)) if n >= len(ds) else np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    images = torch.stack([ds[int(i)][0] for i in idx])
    return idx, images, np.asarray(data.labels(split))[idx]


def final_losses(model_dir: str | Path) -> dict[str, float]:
    """The training-loss terms of the last epoch in ``history.jsonl`` (``ce``, ``kd``, ...)."""
    path = Path(model_dir) / "history.jsonl"
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    last = json.loads(lines[-1]) if lines else {}
    skip = {"epoch", "lr", "images_per_s", "epoch_time_s", "step"}
    return {
        k: float(v)
        for k, v in last.items()
        if k not in skip and not k.startswith("val_") and isinstance(v, (int, float))
    }


def diagnose(
    teacher: Teacher,
    students: dict[str, Teacher],
    data: DataBundle,
    *,
    augment: str,
    seed: int,
    samples: int,
    teacher_params: int | None,
    student_params: int | None,
    losses: dict[str, float] | None = None,
) -> KDDiagnosis:
    """Compute the evidence on ``samples`` training (and validation) images; see the module docstring.

    Args:
        teacher: the teacher as it is used for distillation.
        students: models to compare with the teacher, by name (``{"student": ..., "baseline": ...}``).
        data: the run's data.
        augment: the training augmentation preset of the student.
        seed: its seed (the augmented views are the ones of epoch 0 of that seed).
        samples: at most this many training and validation images.
        teacher_params, student_params: parameter counts (None when unknown, e.g. an ONNX teacher).
        losses: the student's final training-loss terms.
    """
    task = data.task
    idx, images, y = _sample(data, "train", samples, seed)
    _, val_images, _ = _sample(data, "val", samples, seed)
    t_train, t_val = _logits(teacher, images), _logits(teacher, val_images)
    conf = _confidence(t_train, task)
    diag: dict[str, Any] = {
        "samples": len(idx),
        "augment": augment,
        "teacher_params": teacher_params,
        "student_params": student_params,
        "params_ratio": teacher_params / student_params if teacher_params and student_params else None,
        "teacher_acc_train": _accuracy(t_train, y, task),
        "teacher_confidence_train": float(conf.mean()),
        "teacher_confident_fraction": float((conf >= 0.99).mean()),
        "final_losses": losses or {},
    }
    preset = Augment.preset(augment)
    if not preset.is_identity:
        aug = AugmentedDataset(data.train, preset, seed=seed)
        views = torch.stack([aug.apply(images[j], aug.params(int(i), 0)) for j, i in enumerate(idx)])
        if task is Task.SEGMENTATION:  # the masks move with their images
            y = np.stack(
                [aug.apply_mask(torch.from_numpy(y[j]), aug.params(int(i), 0)).numpy() for j, i in enumerate(idx)]
            )
        diag["teacher_acc_augmented"] = _accuracy(_logits(teacher, views), y, task)
        diag["augmented_drop"] = diag["teacher_acc_train"] - diag["teacher_acc_augmented"]
    diag["agreement"] = {
        name: {
            "train": _agreement(_logits(m, images), t_train, task),
            "val": _agreement(_logits(m, val_images), t_val, task),
        }
        for name, m in students.items()
    }
    return KDDiagnosis(**diag)


def suggestions(d: KDDiagnosis | None, *, helps: bool | None, seeds: int, gain: float | None) -> list[str]:
    """What to try, each from a figure of the diagnosis that is out of range, whatever the verdict.

    A finding (an augmentation that misleads the teacher, an over-confident teacher, a capacity gap) is a
    suggestion even when distillation helps: the gain could be larger. When it does not help, the one-seed and
    the no-single-cause lines are added.
    """
    if d is None:
        return []
    out = []
    if d.augmented_drop is not None and d.augmented_drop >= AUG_DROP:
        out.append(
            f"the augmentation '{d.augment}' changes what the images show: the teacher is right on "
            f"{100 * d.teacher_acc_train:.1f}% of clean training images but {100 * d.teacher_acc_augmented:.1f}% "
            "of augmented views, so its soft labels there teach wrong answers; use a milder augmentation "
            "(student.train.augment: none, or one without flips or large rotations)"
        )
    if d.teacher_confidence_train >= CONFIDENT:
        out.append(
            f"the teacher is {100 * d.teacher_confidence_train:.1f}% confident on its own training images "
            f"({100 * d.teacher_confident_fraction:.0f}% of them above 0.99): its soft labels carry little beyond "
            "the labels; try a higher temperature (kd:1,T=8), the dist or dkd loss, or a teacher trained with "
            "label smoothing or for fewer epochs"
        )
    agree = d.agreement.get("student", {}).get("train")
    if d.params_ratio and d.params_ratio >= CAPACITY_RATIO and (agree is None or agree < LOW_AGREEMENT):
        kd = {k: round(v, 4) for k, v in d.final_losses.items() if k != "loss"}
        out.append(
            f"capacity gap: the teacher has {d.params_ratio:.0f}x the student's parameters and the student "
            f"agrees with it on {100 * (agree or 0):.1f}% of training images (final losses {kd}); try a larger "
            "student or an intermediate teacher assistant (Mirzadeh et al. 2020)"
        )
    if helps is not False:
        return out
    if seeds == 1 and gain is not None:
        out.append(f"one seed cannot separate a difference of {gain:+.4f} from seed noise; run with --seeds 3")
    if not out:
        out.append("no single cause stands out: try other losses (dist, dkd, kd:1,T=1) or a lower KD weight")
    return out


def _auc(score: np.ndarray, pos: np.ndarray) -> float:
    """Binary AUROC as the Mann-Whitney U from average ranks (ties count 1/2), as ``roc_auc_score`` gives it."""
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _metric(logits: np.ndarray, y: np.ndarray, task: Task, metric: str) -> float:
    """One metric, cheaply (bootstrap resamples): accuracy, balanced accuracy and AUROC directly (the same values
    as :func:`~edgekd.metrics.compute_metrics`), others through it."""
    if metric == "acc":
        return float((logits.argmax(1) == y).mean())
    if metric == "balanced_acc":  # mean recall over the classes present (sklearn's balanced_accuracy_score)
        present = np.unique(y)
        if len(present) < 2:
            return math.nan
        pred = logits.argmax(1)
        return float(np.mean([(pred[y == c] == c).mean() for c in present]))
    if metric == "auroc" and task is Task.BINARY and logits.shape[1] == 2:
        return _auc(logits[:, 1] - logits[:, 0], y == 1)  # the logit margin ranks as P(positive) does
    if metric == "auroc" and task is Task.MULTICLASS:
        # macro one-vs-rest over the classes (NaN when one is absent, as compute_metrics), on probabilities:
        # the softmax of class k does not rank as its logit does
        k = logits.shape[1]
        if len(np.unique(y)) < k:
            return math.nan
        probs = probabilities(logits, task)
        return float(np.mean([_auc(probs[:, c], y == c) for c in range(k)]))
    return float(compute_metrics(logits, y, task).get(metric, math.nan))


def bootstrap_gains(
    distilled: list[np.ndarray],
    baseline: list[np.ndarray],
    targets: np.ndarray,
    task: Task,
    metrics: list[str],
    *,
    n: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """95 % paired-bootstrap intervals of the validation gains (distilled minus baseline, averaged over seeds).

    Each of ``n`` resamples draws the validation images with replacement and scores every seed's distilled and
    baseline logits on the same draw (Efron & Tibshirani 1993, the paired bootstrap of a difference), for every
    metric on the same draws, so each interval is the noise of a validation set this size. A gain is positive
    when distillation is better (for ``loss``, lower). Empty for multi-label tasks; a metric undefined on every
    draw is left out.
    """
    if task is Task.MULTILABEL or not metrics:
        return {}
    if task is Task.SEGMENTATION:
        return _bootstrap_per_image(distilled, baseline, targets, metrics, n=n, seed=seed)
    y = np.asarray(targets).reshape(-1).astype(int)
    rng = np.random.default_rng(seed)
    gains: dict[str, list[float]] = {m: [] for m in metrics}
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        for m in metrics:
            diffs = [
                _metric(a[idx], y[idx], task, m) - _metric(b[idx], y[idx], task, m) for a, b in zip(distilled, baseline)
            ]
            gains[m].append((1.0 if higher_is_better(m) else -1.0) * float(np.mean(diffs)))
    out = {}
    for m, g in gains.items():
        if np.isfinite(g).any():
            lo, hi = np.nanpercentile(g, [2.5, 97.5])
            out[m] = (float(lo), float(hi))
    return out


def per_image_scores(logits: np.ndarray, masks: np.ndarray, metric: str) -> np.ndarray:
    """A segmenter's ``metric`` (``dice``, ``iou``, ``hd95``, ``acc``) per image: the mean over the foreground
    classes present in that image's mask (:func:`~edgekd.metrics.dice_iou`, :func:`~edgekd.metrics.hd95`);
    NaN for an image without foreground."""
    masks = np.asarray(masks)
    pred = mask_predictions(logits, tuple(masks.shape[-2:]))
    k = logits.shape[1]
    if metric == "acc":
        return (pred == masks).reshape(len(pred), -1).mean(1)
    if metric == "hd95":
        per = np.array([[hd95(p == c, g == c) for c in range(1, k)] for p, g in zip(pred, masks)])
    else:
        dice, iou = dice_iou(pred, masks, k)
        per = (dice if metric == "dice" else iou)[:, 1:]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an image without foreground: NaN, left out
        return np.nanmean(per, axis=1)


def _bootstrap_per_image(
    distilled: list[np.ndarray],
    baseline: list[np.ndarray],
    masks: np.ndarray,
    metrics: list[str],
    *,
    n: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """The paired bootstrap of :func:`bootstrap_gains` for a segmenter: the validation images are resampled and
    each metric is the mean of its per-image values (:func:`per_image_scores`) on the draw."""
    rng = np.random.default_rng(seed)
    rows = len(masks)
    draws = [rng.integers(0, rows, rows) for _ in range(n)]
    out = {}
    for m in metrics:
        sign = 1.0 if higher_is_better(m) else -1.0
        diff = np.mean(
            [per_image_scores(a, masks, m) - per_image_scores(b, masks, m) for a, b in zip(distilled, baseline)],
            axis=0,
        )
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            g = np.array([sign * np.nanmean(diff[idx]) for idx in draws])
        if np.isfinite(g).any():
            lo, hi = np.nanpercentile(g, [2.5, 97.5])
            out[m] = (float(lo), float(hi))
    return out


def bootstrap_gain(
    distilled: list[np.ndarray],
    baseline: list[np.ndarray],
    targets: np.ndarray,
    task: Task,
    metric: str,
    *,
    n: int = 1000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The interval of one metric (:func:`bootstrap_gains`); None for multi-label tasks."""
    return bootstrap_gains(distilled, baseline, targets, task, [metric], n=n, seed=seed).get(metric)


def _seed_values(cards: list[ModelCard], split: str, metric: str) -> list[float]:
    return [float(c.metrics.get(split, {}).get(metric, math.nan)) for c in cards]


def _secondary(
    distilled: list[ModelCard], baseline: list[ModelCard], names: list[str], cis: dict[str, tuple[float, float]]
) -> dict[str, SecondaryGain]:
    out = {}
    for m in names:
        sign = 1.0 if higher_is_better(m) else -1.0
        gains = {
            split: sign
            * float(np.nanmean(np.subtract(_seed_values(distilled, split, m), _seed_values(baseline, split, m))))
            for split in ("val", "test")
        }
        if not any(math.isfinite(g) for g in gains.values()):
            continue  # not computed for these models (e.g. AUROC of a split missing a class)
        ci = cis.get(m)
        out[m] = SecondaryGain(
            val=gains["val"],
            test=gains["test"],
            ci=list(ci) if ci else None,
            significant=None if ci is None else not (ci[0] <= 0 <= ci[1]),
        )
    return out


def _against(gain: float, sec: SecondaryGain) -> bool:
    """The secondary moves against a deciding gain of ``gain`` beyond its noise (without an interval: at all)."""
    if sec.val is None or not math.isfinite(sec.val):
        return False
    if gain > 0:
        return sec.ci[1] < 0 if sec.ci else sec.val < 0
    return sec.ci[0] > 0 if sec.ci else sec.val > 0


def _fmt_secondary(m: str, sec: SecondaryGain) -> str:
    ci = f" (95% CI {sec.ci[0]:+.4f} to {sec.ci[1]:+.4f})" if sec.ci else ""
    return f"val {m} {sec.val:+.4f}{ci}"


def compare_students(
    distilled: list[ModelCard],
    baseline: list[ModelCard] | None,
    *,
    metric: str,
    keep: str = "better",
    diagnosis: KDDiagnosis | None = None,
    val_ci: tuple[float, float] | None = None,
    secondary: list[str] | None = None,
    secondary_ci: dict[str, tuple[float, float]] | None = None,
) -> KDComparison:
    """Distilled against no-teacher students over seeds on ``metric``; decide which the later stages use.

    Distillation *helps* when its validation gain on ``metric`` is positive, beyond the noise where ``val_ci``
    is given (a positive gain whose interval contains 0 is *not shown to help*, and the message says so), and no
    ``secondary`` metric (default: :func:`secondary_metrics` of the task) moves the other way beyond its noise
    (``secondary_ci``, from :func:`bootstrap_gains`; without an interval any opposite move counts). A
    disagreement is said in the message and is never called a gain.

    ``keep="better"`` keeps the distilled student unless the baseline is better beyond noise: on ``metric`` (when
    ``val_ci`` contains 0 the two are not told apart and the distilled student stays, and the message says so;
    without an interval any advantage of the baseline counts), or on a secondary metric that disagrees with a
    deciding gain (a gain bought with a loss elsewhere is not taken). ``"distilled"`` / ``"baseline"`` force the
    choice.
    """
    d = seed_stats(distilled, metric)
    cmp: dict[str, Any] = {
        "metric": metric,
        "seeds": len(distilled),
        "distilled": d,
        "keep": keep,
        "diagnosis": diagnosis,
    }
    if not baseline:
        cmp["message"] = "no baseline was trained (distill.baseline: false): the KD gain is not known"
        cmp["suggestions"] = suggestions(diagnosis, helps=None, seeds=len(distilled), gain=None)
        return KDComparison(**cmp)
    b = seed_stats(baseline, metric)
    sign = 1.0 if higher_is_better(metric) else -1.0  # a gain is positive when distillation is better
    pairs = {
        k: np.subtract(getattr(d, k), getattr(b, k)) * (sign if k in ("val", "test") else 1.0)
        for k in ("val", "test", "val_acc", "test_acc")
    }
    gain, gain_t = float(pairs["val"].mean()), float(pairs["test"].mean())
    task = distilled[0].task
    names = secondary_metrics(metric, task) if secondary is None else [m for m in secondary if m != metric]
    sec = _secondary(distilled, baseline, names, secondary_ci or {})
    disagree = [m for m, g in sec.items() if _against(gain, g)]
    significant = None if val_ci is None else not (val_ci[0] <= 0 <= val_ci[1])
    helps = gain > 0 and not disagree and significant is not False
    baseline_wins = (gain < 0 and significant is not False) or (gain > 0 and bool(disagree))
    chosen = {"distilled": "student", "baseline": "baseline"}.get(keep) or ("baseline" if baseline_wins else "student")
    sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
    spread = f" ± {sd(pairs['val']):.4f}" if len(distilled) > 1 else ""
    ci = (
        ""
        if val_ci is None
        else (
            f" (95% CI {val_ci[0]:+.4f} to {val_ci[1]:+.4f}"
            f"{'' if significant else ': within the noise of the validation set'})"
        )
    )
    if helps:
        verdict = "helps"
    elif gain > 0 and disagree:
        verdict = "is NOT a gain: the metrics disagree"
    elif gain > 0:
        verdict = "is NOT shown to help (its gain is inside the noise)"
    else:
        verdict = "does NOT beat the same student trained without the teacher"
    msg = f"distillation {verdict}: val {metric} {gain:+.4f}{spread}{ci}, test {gain_t:+.4f}"
    if disagree:
        word = "but" if gain > 0 else "though"
        msg += (
            f"; {word} "
            + ", ".join(_fmt_secondary(m, sec[m]) for m in disagree)
            + (" beyond its noise" if len(disagree) == 1 else " beyond their noise")
        )
    msg += f"; the later stages use the {'distilled student' if chosen == 'student' else 'no-teacher baseline'}"
    if chosen == "student" and not helps and keep == "better":
        msg += " (no significant difference on validation)"
    cmp.update(
        baseline=b,
        gain_val=gain,
        gain_val_std=sd(pairs["val"]),
        gain_test=gain_t,
        gain_test_std=sd(pairs["test"]),
        gain_val_acc=float(pairs["val_acc"].mean()),
        gain_test_acc=float(pairs["test_acc"].mean()),
        helps=helps,
        chosen=chosen,
        message=msg,
        gain_val_ci=list(val_ci) if val_ci else None,
        significant=significant,
        secondary=sec,
        disagree=disagree,
        suggestions=suggestions(diagnosis, helps=helps, seeds=len(distilled), gain=gain),
    )
    return KDComparison(**cmp)
