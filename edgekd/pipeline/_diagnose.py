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

Example:
    >>> cmp = compare_students({"student": [card]}, {"baseline": [card_b]}, metric="auroc")
    >>> cmp.helps, cmp.gain_val
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from scipy.stats import rankdata

from edgekd.data import Augment, AugmentedDataset, DataBundle
from edgekd.metrics import compute_metrics, higher_is_better, probabilities
from edgekd.modeldir import ModelCard
from edgekd.specs import Task
from edgekd.teachers import Teacher

__all__ = [
    "SeedStats", "KDDiagnosis", "KDComparison", "seed_stats", "diagnose", "compare_students", "suggestions",
    "bootstrap_gain",
]  # fmt: skip

# Evidence thresholds of the suggestions (see `suggestions`).
AUG_DROP = 0.03  # teacher accuracy on augmented views this much below the clean views: the augmentation misleads
CONFIDENT = 0.97  # mean top-class probability on its own training images: little beyond the labels
CAPACITY_RATIO = 20.0  # teacher / student parameters
LOW_AGREEMENT = 0.95  # student-teacher top-1 agreement on training images


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
        return {f"{k}_{s}": getattr(self, s_fn)(getattr(self, k)) for k in ("val", "test", "val_acc", "test_acc")
                for s, s_fn in (("mean", "_mean"), ("std", "_std"))}  # fmt: skip


def seed_stats(cards: list[ModelCard], metric: str) -> SeedStats:
    """The ``metric`` (and accuracy) on val (best epoch) and test of each seed's model card."""

    def get(card: ModelCard, split: str, m: str) -> float:
        return float(card.metrics.get(split, {}).get(m, math.nan))

    return SeedStats(val=[get(c, "val", metric) for c in cards], test=[get(c, "test", metric) for c in cards],
                     val_acc=[get(c, "val", "acc") for c in cards], test_acc=[get(c, "test", "acc") for c in cards])  # fmt: skip


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


class KDComparison(BaseModel):
    """Distilled against no-teacher students, the decision and the suggestions.

    Attributes:
        metric: the validation metric that decides (the student's ``select_metric``).
        distilled, baseline: per-seed figures (``baseline`` None without a baseline run).
        gain_val, gain_test: distilled minus baseline, means over seeds; ``*_std`` their spread.
        gain_val_ci: 95 % paired-bootstrap interval of ``gain_val`` (:func:`bootstrap_gain`); significant: it
            excludes 0.
        helps: distillation beats the baseline on validation (None without a baseline).
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
    keep: str = "better"
    chosen: str = "student"
    diagnosis: KDDiagnosis | None = None
    suggestions: list[str] = Field(default_factory=list)
    message: str = ""


@torch.no_grad()
def _logits(model: Teacher, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    return torch.cat([model.logits(images[i : i + batch]).float().cpu() for i in range(0, len(images), batch)]).numpy()


def _accuracy(logits: np.ndarray, y: np.ndarray, task: Task) -> float:
    if task is Task.MULTILABEL:
        return float(((probabilities(logits, task) >= 0.5) == (y > 0.5)).mean())
    return float((logits.argmax(1) == y.reshape(-1)).mean())


def _agreement(a: np.ndarray, b: np.ndarray, task: Task) -> float:
    if task is Task.MULTILABEL:
        return float(((a > 0) == (b > 0)).mean())
    return float((a.argmax(1) == b.argmax(1)).mean())


def _confidence(logits: np.ndarray, task: Task) -> np.ndarray:
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
        "samples": len(idx), "augment": augment, "teacher_params": teacher_params, "student_params": student_params,
        "params_ratio": teacher_params / student_params if teacher_params and student_params else None,
        "teacher_acc_train": _accuracy(t_train, y, task), "teacher_confidence_train": float(conf.mean()),
        "teacher_confident_fraction": float((conf >= 0.99).mean()), "final_losses": losses or {},
    }  # fmt: skip
    preset = Augment.preset(augment)
    if not preset.is_identity:
        aug = AugmentedDataset(data.train, preset, seed=seed)
        views = torch.stack([aug.apply(images[j], aug.params(int(i), 0)) for j, i in enumerate(idx)])
        diag["teacher_acc_augmented"] = _accuracy(_logits(teacher, views), y, task)
        diag["augmented_drop"] = diag["teacher_acc_train"] - diag["teacher_acc_augmented"]
    diag["agreement"] = {name: {"train": _agreement(_logits(m, images), t_train, task),
                                "val": _agreement(_logits(m, val_images), t_val, task)}
                         for name, m in students.items()}  # fmt: skip
    return KDDiagnosis(**diag)


def suggestions(d: KDDiagnosis | None, *, helps: bool | None, seeds: int, gain: float | None) -> list[str]:
    """What to try when distillation does not beat the baseline, each from a figure of the diagnosis."""
    if helps is not False or d is None:
        return []
    out = []
    if d.augmented_drop is not None and d.augmented_drop >= AUG_DROP:
        out.append(f"the augmentation '{d.augment}' changes what the images show: the teacher is right on "
                   f"{100 * d.teacher_acc_train:.1f}% of clean training images but {100 * d.teacher_acc_augmented:.1f}% "
                   "of augmented views, so its soft labels there teach wrong answers; use a milder augmentation "
                   "(student.train.augment: none, or one without flips or large rotations)")  # fmt: skip
    if d.teacher_confidence_train >= CONFIDENT:
        out.append(f"the teacher is {100 * d.teacher_confidence_train:.1f}% confident on its own training images "
                   f"({100 * d.teacher_confident_fraction:.0f}% of them above 0.99): its soft labels carry little beyond "
                   "the labels; try a higher temperature (kd:1,T=8), the dist or dkd loss, or a teacher trained with "
                   "label smoothing or for fewer epochs")  # fmt: skip
    agree = d.agreement.get("student", {}).get("train")
    if d.params_ratio and d.params_ratio >= CAPACITY_RATIO and (agree is None or agree < LOW_AGREEMENT):
        kd = {k: round(v, 4) for k, v in d.final_losses.items() if k != "loss"}
        out.append(f"capacity gap: the teacher has {d.params_ratio:.0f}x the student's parameters and the student "
                   f"agrees with it on {100 * (agree or 0):.1f}% of training images (final losses {kd}); try a larger "
                   "student or an intermediate teacher assistant (Mirzadeh et al. 2020)")  # fmt: skip
    if seeds == 1 and gain is not None:
        out.append(f"one seed cannot separate a difference of {gain:+.4f} from seed noise; run with --seeds 3")
    if not out:
        out.append("no single cause stands out: try other losses (dist, dkd, kd:1,T=1) or a lower KD weight")
    return out


def _metric(logits: np.ndarray, y: np.ndarray, task: Task, metric: str) -> float:
    """One metric, cheaply (bootstrap resamples): AUROC and accuracy directly, others through compute_metrics."""
    if metric == "acc":
        return float((logits.argmax(1) == y).mean())
    if metric == "auroc" and task is Task.BINARY and logits.shape[1] == 2:
        if len(np.unique(y)) < 2:
            return math.nan
        # Mann-Whitney U from average ranks (ties count 1/2); the logit margin ranks as P(positive) does
        ranks = rankdata(logits[:, 1] - logits[:, 0])
        pos = y == 1
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(compute_metrics(logits, y, task).get(metric, math.nan))


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
    """95 % paired-bootstrap interval of the validation gain (distilled minus baseline, averaged over seeds).

    Each of ``n`` resamples draws the validation images with replacement and scores every seed's distilled and
    baseline logits on the same draw (Efron & Tibshirani 1993, the paired bootstrap of a difference), so the
    interval is the noise of a validation set this size. None for multi-label tasks.
    """
    if task is Task.MULTILABEL:
        return None
    y = np.asarray(targets).reshape(-1).astype(int)
    sign = 1.0 if higher_is_better(metric) else -1.0
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n):
        idx = rng.integers(0, len(y), len(y))
        diffs = [_metric(a[idx], y[idx], task, metric) - _metric(b[idx], y[idx], task, metric)
                 for a, b in zip(distilled, baseline)]  # fmt: skip
        gains.append(sign * float(np.mean(diffs)))
    lo, hi = np.nanpercentile(gains, [2.5, 97.5])
    return float(lo), float(hi)


def compare_students(
    distilled: list[ModelCard],
    baseline: list[ModelCard] | None,
    *,
    metric: str,
    keep: str = "better",
    diagnosis: KDDiagnosis | None = None,
    val_ci: tuple[float, float] | None = None,
) -> KDComparison:
    """Distilled against no-teacher students over seeds on ``metric``; decide which the later stages use.

    ``keep="better"`` keeps the distilled student unless the baseline is better on validation beyond noise:
    when ``val_ci`` (:func:`bootstrap_gain`) contains 0 the two are not told apart and the distilled student
    stays, and the message says so; without an interval any advantage of the baseline counts.
    ``"distilled"`` / ``"baseline"`` force the choice.
    """
    d = seed_stats(distilled, metric)
    cmp: dict[str, Any] = {"metric": metric, "seeds": len(distilled), "distilled": d, "keep": keep,
                           "diagnosis": diagnosis}  # fmt: skip
    if not baseline:
        cmp["message"] = "no baseline was trained (distill.baseline: false): the KD gain is not known"
        return KDComparison(**cmp)
    b = seed_stats(baseline, metric)
    sign = 1.0 if higher_is_better(metric) else -1.0  # a gain is positive when distillation is better
    pairs = {k: np.subtract(getattr(d, k), getattr(b, k)) * (sign if k in ("val", "test") else 1.0)
             for k in ("val", "test", "val_acc", "test_acc")}  # fmt: skip
    gain, gain_t = float(pairs["val"].mean()), float(pairs["test"].mean())
    helps = gain > 0
    significant = None if val_ci is None else not (val_ci[0] <= 0 <= val_ci[1])
    baseline_wins = gain < 0 and significant is not False
    chosen = {"distilled": "student", "baseline": "baseline"}.get(keep) or ("baseline" if baseline_wins else "student")
    sd = lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0  # noqa: E731
    spread = f" ± {sd(pairs['val']):.4f}" if len(distilled) > 1 else ""
    ci = "" if val_ci is None else (f" (95% CI {val_ci[0]:+.4f} to {val_ci[1]:+.4f}"
                                    f"{'' if significant else ': within the noise of the validation set'})")  # fmt: skip
    verdict = "helps" if helps else "does NOT beat the same student trained without the teacher"
    msg = f"distillation {verdict}: val {metric} {gain:+.4f}{spread}{ci}, test {gain_t:+.4f}"
    msg += f"; the later stages use the {'distilled student' if chosen == 'student' else 'no-teacher baseline'}"
    if chosen == "student" and not helps and keep == "better":
        msg += " (no significant difference on validation)"
    cmp.update(baseline=b, gain_val=gain, gain_val_std=sd(pairs["val"]), gain_test=gain_t,
               gain_test_std=sd(pairs["test"]), gain_val_acc=float(pairs["val_acc"].mean()),
               gain_test_acc=float(pairs["test_acc"].mean()), helps=helps, chosen=chosen, message=msg,
               gain_val_ci=list(val_ci) if val_ci else None, significant=significant,
               suggestions=suggestions(diagnosis, helps=helps, seeds=len(distilled), gain=gain))  # fmt: skip
    return KDComparison(**cmp)
