"""`edgekd distill --baseline`: distil, train the same student without the teacher, and say which is better.

Example:
    >>> s = DistillConfig(student="small:resnet8", teachers=["runs/teacher"], train=TrainConfig(epochs=6))
    >>> cmp = distill_with_baseline(s, "runs/student")  # also writes runs/student-baseline
    >>> cmp.helps, cmp.suggestions
"""

from __future__ import annotations

import os
from pathlib import Path

from edgekd._io import atomic_write_text, check_output
from edgekd.data import DataBundle, load_data
from edgekd.distill import DistillConfig, distill_model, train_model
from edgekd.errors import InvalidInputError
from edgekd.metrics import task_select_metric
from edgekd.modeldir import read_card
from edgekd.pipeline._diagnose import KDComparison, bootstrap_gain, compare_students, diagnose, final_losses
from edgekd.pipeline._evaluate import split_logits
from edgekd.teachers import load_teacher

__all__ = ["distill_with_baseline", "baseline_dir", "COMPARISON_FILE"]

COMPARISON_FILE = "kd_comparison.json"


def baseline_dir(out: str | os.PathLike) -> Path:
    """Where the no-teacher student of a distillation to ``out`` goes: ``OUT-baseline`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.name}-baseline")


def distill_with_baseline(
    settings: DistillConfig,
    out: str | os.PathLike,
    *,
    baseline_out: str | os.PathLike | None = None,
    data: DataBundle | None = None,
    overwrite: bool = False,
    progress: bool = True,
    diagnose_samples: int = 1024,
    command: str | None = None,
) -> KDComparison:
    """Distil ``settings`` into ``out``, train the same student without teachers into ``baseline_out``, compare.

    The baseline has the same student, seed, schedule and augmentation, with the task loss only. The result
    (also ``OUT/kd_comparison.json``) says plainly whether distillation beat the baseline on validation and,
    when it did not, what to try, from the evidence of :func:`~edgekd.pipeline.diagnose` (first teacher).

    Raises:
        InvalidInputError: no teacher; an output exists without ``overwrite`` (checked for both before any work).
    """
    if not settings.teachers:
        raise InvalidInputError("no teacher given", "pass --teacher DIR (a model directory from `edgekd train`)")
    base_out = Path(baseline_out) if baseline_out is not None else baseline_dir(out)
    refs = tuple(t for t in settings.teachers if Path(t).exists())
    check_output(out, overwrite=overwrite, inputs=(settings.student, *refs))
    check_output(base_out, overwrite=overwrite, inputs=(settings.student, *refs), flag="baseline output")
    bundle = (
        data if data is not None else load_data(settings.data, download=settings.download, seed=settings.train.seed)
    )
    card = distill_model(settings, out, data=bundle, overwrite=overwrite, progress=progress, command=command)
    plain = settings.model_copy(update={"teachers": [], "losses": [], "cache": None, "teacher_weights": None})
    base = train_model(plain, base_out, data=bundle, overwrite=overwrite, progress=progress, command=command)
    teacher = load_teacher(
        settings.teachers[0], data=bundle, pretrained=settings.pretrained_teacher, trust_pickle=settings.trust_pickle
    )
    models = {"student": load_teacher(str(out), data=bundle), "baseline": load_teacher(str(base_out), data=bundle)}
    t_params = read_card(settings.teachers[0]).params if Path(settings.teachers[0]).is_dir() else None
    diagnosis = diagnose(
        teacher,
        models,
        bundle,
        augment=settings.train.augment,
        seed=settings.train.seed,
        samples=diagnose_samples,
        teacher_params=t_params,
        student_params=read_card(out).params,
        losses=final_losses(out),
    )
    (val_d, y), (val_b, _) = (split_logits(models[k], bundle, "val") for k in ("student", "baseline"))
    metric = task_select_metric(settings.train.select_metric, bundle.task)  # segmentation: dice
    ci = bootstrap_gain([val_d], [val_b], y, bundle.task, metric, seed=settings.train.seed)
    cmp = compare_students([card], [base], metric=metric, keep="better", diagnosis=diagnosis, val_ci=ci)
    keep = out if cmp.chosen == "student" else base_out
    cmp = cmp.model_copy(update={"message": cmp.message.split("; the later stages")[0] + f"; use {keep}"})
    atomic_write_text(Path(out) / COMPARISON_FILE, cmp.model_dump_json(indent=2) + "\n")
    return cmp
