"""`edgekd train` and `edgekd distill`: one run, from settings to a model directory.

Both commands are the same run (:func:`run_training`): seed, data, student, teachers, objective, the shared
:class:`~edgekd.distill.Trainer`, lineage, test evaluation, model directory. A run without teachers trains
with the task loss; with teachers it distils.

The run works in ``.OUT.edgekd-run/`` beside ``OUT`` (checkpoint, ``config.yaml``, the default teacher
cache) and renames it to ``OUT`` only once the model is complete, so a failed, diverged or interrupted run
never touches an existing ``OUT``. What is left of the work folder after a failure (:func:`_after_failure`):
a run that diverged after a good epoch, or was interrupted (Ctrl-C) after one, keeps it with the checkpoint of
that epoch for ``--resume``, and its message says where; any other failure (a full disk or a permission error,
an invalid input found late, a crash) removes it. A killed process cannot clean up: the next run to the same
``OUT`` replaces the folder, or continues it with ``--resume``.

Example:
    >>> s = RunSettings(student="small:resnet8", teachers=["runs/teacher"], train=TrainConfig(epochs=6))
    >>> card = distill_model(s, "runs/student")
    >>> card.lineage.stage, card.lineage.losses
    ('distill', ['ce:1', 'kd:1,T=4'])
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from edgekd._io import MARKER_FILE, atomic_write_text, check_output, is_edgekd_artifact, replace_dir, sha256_file
from edgekd.data import DataBundle, load_data
from edgekd.distill._cache import TeacherCache
from edgekd.distill._checkpoint import has_checkpoint
from edgekd.distill._dist import DistContext, all_max, init_distributed
from edgekd.distill._distill import DistillObjective
from edgekd.distill._finetune import task_objective
from edgekd.distill._loop import fit, resolve_device
from edgekd.distill._objective import Objective, SupervisedObjective
from edgekd.distill._settings import RunSettings
from edgekd.distill._train import finish_run, resolve_student
from edgekd.distill._unlabeled import flush_unlabeled, unlabeled_notes, with_unlabeled
from edgekd.errors import ArtifactError, EdgeKDError, Interrupted, InvalidInputError, TrainingDivergedError
from edgekd.modeldir import WEIGHTS_FILE, is_model_dir, read_card
from edgekd.specs import Lineage, ModelCard, Task, current_command
from edgekd.teachers import Teacher, load_teacher

__all__ = ["run_training", "train_model", "distill_model", "work_dir"]


def work_dir(out: str | Path) -> Path:
    """Where a run to ``out`` keeps its checkpoint until the model is complete."""
    out = Path(out)
    return out.with_name(f".{out.name}.edgekd-run")


def _inputs(settings: RunSettings) -> tuple[str, ...]:
    refs = [settings.student, *settings.teachers]
    return tuple(r for r in refs if Path(r).exists())


def _prepare(settings: RunSettings, out: Path, overwrite: bool, ctx: DistContext) -> Path:
    """Check the output before any work (every rank); rank 0 creates the work folder; return it."""
    work = _check_prepare(settings, out, overwrite)
    if ctx.is_main and work != out and not settings.resume:
        if work.exists():  # an earlier run that failed or was not resumed: ours to replace
            shutil.rmtree(work)
        work.mkdir(parents=True)
        (work / MARKER_FILE).write_text("edgekd training run in progress\n")
    ctx.barrier()
    return work


def _check_prepare(settings: RunSettings, out: Path, overwrite: bool) -> Path:
    work = work_dir(out)
    if settings.resume:
        if has_checkpoint(work):
            return work
        if has_checkpoint(out):  # a finished run: resuming it re-writes the same model
            return out
        raise ArtifactError(f"--resume: no checkpoint for {out} (looked in {work} and {out})", "start without --resume")
    check_output(out, overwrite=overwrite, inputs=_inputs(settings))
    if settings.cache is not None and settings.cache.dir and Path(settings.cache.dir).is_file():
        raise InvalidInputError(f"--cache-dir {settings.cache.dir} is a file", "give a folder for the teacher cache")
    if work.exists() and not is_edgekd_artifact(work):
        raise InvalidInputError(f"{work} exists and was not written by edgekd", "remove it or choose another --out")
    return work


def _open_cache(
    settings: RunSettings, work: Path, teachers, bundle: DataBundle, ctx: DistContext
) -> TeacherCache | None:
    """Rank 0 opens (creates or checks) the cache first; then every other rank opens the same files."""
    c = settings.cache
    if c is None:
        return None
    if bundle.task is Task.SEGMENTATION:
        raise InvalidInputError(
            "the teacher cache stores one logit row per image; a segmentation teacher's score maps are not cached",
            "drop --cache-teacher: the teacher runs live every step",
        )
    cache = None
    for turn in (True, False):
        if ctx.is_main == turn:
            cache = TeacherCache.open(
                Path(c.dir) if c.dir else work / "teacher_cache",
                teachers=teachers,
                data=bundle,
                augment=settings.train.augment,
                seed=settings.train.seed,
                views=c.views or settings.train.epochs,
                topk=c.topk,
                readonly=c.readonly,
            )
        ctx.barrier()
    if ctx.enabled:
        cache.share(lambda filled: all_max(filled, ctx), writer=ctx.is_main)
    return cache


def run_training(
    settings: RunSettings,
    out: str | Path,
    *,
    data: DataBundle | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> ModelCard:
    """Train (no teachers) or distil (teachers) as ``settings`` say; write the best epoch to ``out``.

    Args:
        settings: the run (see :class:`RunSettings`).
        out: the model directory to write (also gets ``checkpoint/``, ``config.yaml``, ``history.jsonl``).
        data: an already loaded bundle instead of ``settings.data``.
        overwrite: replace an earlier edgekd output at ``out`` (never other files, never an input).
        progress: show progress bars.
        command: the command line for the lineage (default: this process's).

    Raises:
        InvalidInputError: bad settings, an existing ``out`` without ``overwrite`` (exit 3).
        TrainingDivergedError: the loss diverged or the run learned nothing (exit 8; the hint says whether a
            checkpoint is kept for ``--resume``).
        ArtifactError: unreadable inputs, a missing or mismatching checkpoint on resume, a full disk or a
            permission error while writing (exit 4; the work folder is removed).
    """
    out, cfg = Path(out), settings.train
    torch.manual_seed(cfg.seed)
    bundle = data if data is not None else load_data(settings.data, download=settings.download, seed=cfg.seed)
    net, spec, pre, parent = resolve_student(
        settings.student,
        bundle,
        small_input=settings.small_input,
        pretrained=settings.pretrained,
        channels=settings.channels,
        input_size=settings.input_size,
    )
    teachers = [
        load_teacher(t, data=bundle, pretrained=settings.pretrained_teacher, trust_pickle=settings.trust_pickle)
        for t in settings.teachers
    ]
    ctx = init_distributed(resolve_device(cfg.device).type)
    work = _prepare(settings, out, overwrite, ctx)
    try:
        return _run_in(
            work, settings, out, bundle, net, spec, pre, parent, teachers, ctx, progress=progress, command=command
        )
    except BaseException as e:
        problem = _after_failure(e, settings, work, out, ctx)
        if problem is None:
            raise
        raise problem from e


def _run_in(
    work: Path,
    settings: RunSettings,
    out: Path,
    bundle: DataBundle,
    net,
    spec,
    pre,
    parent,
    teachers: list[Teacher],
    ctx: DistContext,
    *,
    progress: bool,
    command: str | None,
) -> ModelCard:
    """The run inside its work folder: objective, loop, lineage, test evaluation, model directory, rename."""
    cfg = settings.train
    cache = _open_cache(settings, work, teachers, bundle, ctx)
    objective = task_objective(
        net,
        pre,
        bundle,
        settings.train,
        teachers,
        settings.loss_terms_for(bundle.task),
        teacher_weights=settings.teacher_weights,
        cache=cache,
    )
    objective = with_unlabeled(objective, settings, bundle, net, work)  # --unlabeled: KD on unlabelled images too
    if ctx.is_main:
        record = yaml.safe_dump({**settings.record(), "data": bundle.spec, "world_size": ctx.world}, sort_keys=False)
        atomic_write_text(work / "config.yaml", record)
    try:
        result = fit(net, objective, bundle, cfg, work, preprocess=pre, resume=settings.resume, progress=progress)
    except BaseException as e:
        if cache is not None and not ctx.enabled and not isinstance(e, OSError):  # keep what was computed (a shared
            cache.flush()  # cache's flush is collective; after a disk error there is nothing to keep it on)
        raise
    if cache is not None:
        cache.flush()
    flush_unlabeled(objective)
    lineage = Lineage(
        command=command if command is not None else current_command(),
        parent=parent,
        data=bundle.spec,
        stage=settings.stage,
        teachers=[t.name for t in teachers],
        losses=["ce"] if isinstance(objective, SupervisedObjective) else settings.loss_terms_for(bundle.task),
        notes={"runtime": result.runtime, **_notes(objective, teachers, cache, work), **unlabeled_notes(objective)},
        parent_sha256=sha256_file(Path(parent) / WEIGHTS_FILE) if parent else None,
    )
    if not ctx.is_main:  # rank 0 evaluates and writes the model directory; the others read its card
        ctx.barrier()
        return read_card(out)
    card = finish_run(
        net,
        result,
        spec=spec,
        preprocess=pre,
        data=bundle,
        out=work,
        lineage=lineage,
        intended_use=settings.intended_use,
    )
    if work != out:
        (work / MARKER_FILE).unlink(missing_ok=True)  # edgekd.json marks the finished model directory
        replace_dir(work, out)
    ctx.barrier()
    return card


def _after_failure(
    e: BaseException, settings: RunSettings, work: Path, out: Path, ctx: DistContext
) -> EdgeKDError | None:
    """Keep the work folder only where ``--resume`` can use it; return the error to raise instead (None: ``e``).

    Kept (rank 0 decides; the folder is shared): the run diverged after a good epoch or was interrupted after
    one, and the message says so; or the folder existed before this run (``--resume``: never removed, its older
    checkpoint is intact). Removed otherwise, so a full disk, a read-only folder or a crash leaves nothing beside
    ``OUT``.
    """
    if work == out or not ctx.is_main:
        return None
    disk = isinstance(e, OSError)
    resumable = isinstance(e, (KeyboardInterrupt, Interrupted)) or (
        isinstance(e, TrainingDivergedError) and bool(e.epochs_done)
    )
    keep = settings.resume or (resumable and has_checkpoint(work))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    if disk:
        what = {
            errno.ENOSPC: "no space left on the device",
            errno.EDQUOT: "the disk quota is exceeded",
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
            errno.EROFS: "the file system is read-only",
        }.get(e.errno, e.strerror or type(e).__name__)
        where = f" writing {e.filename}" if e.filename else ""
        left = (
            f"the checkpoint in {work} is kept for --resume"
            if keep
            else f"the unfinished run's work folder {work} was removed, nothing was written to {out}"
        )
        return ArtifactError(
            f"training to {out} failed: {what}{where}", f"free disk space or fix the permissions and run again; {left}"
        )
    if isinstance(e, TrainingDivergedError) and keep and e.epochs_done:
        e.hint = (
            f"{e.hint}; the checkpoint after epoch {e.epochs_done} (the last good one) is kept in {work}: run "
            "the same command with a lower --lr and --resume to continue from it"
        )
    elif isinstance(e, TrainingDivergedError) and not settings.resume:
        e.hint = f"{e.hint}; nothing is kept beside {out}"
    return None


def train_model(settings: RunSettings, out: str | Path, **kwargs: Any) -> ModelCard:
    """Supervised training (`edgekd train`): :func:`run_training` for settings without teachers.

    Example:
        >>> card = train_model(RunSettings(student="small:resnet18", train=TrainConfig(epochs=2)), "runs/t")
        >>> card.metrics["test"]["auroc"]
    """
    if settings.teachers:
        raise InvalidInputError("train_model got teachers", "use distill_model (edgekd distill) to distil")
    return run_training(settings, out, **kwargs)


def distill_model(settings: RunSettings, out: str | Path, **kwargs: Any) -> ModelCard:
    """Distillation (`edgekd distill`): :func:`run_training` for settings with at least one teacher."""
    if not settings.teachers:
        raise InvalidInputError("no teacher given", "pass --teacher DIR (a model directory from `edgekd train`)")
    return run_training(settings, out, **kwargs)


def _notes(objective: Objective, teachers: list[Teacher], cache: TeacherCache | None, work: Path) -> dict[str, Any]:
    if not isinstance(objective, DistillObjective):
        return {}
    notes: dict[str, Any] = {
        "teacher_weights": objective.teacher_weights,
        "teacher_sha256": [t.fingerprint for t in teachers],
        "teacher_calls": objective.teacher_calls,
    }
    if cache is not None:
        where = cache.directory.resolve()  # inside the run: relative, as the model directory is renamed into place
        where = where.relative_to(work.resolve()) if where.is_relative_to(work.resolve()) else where
        notes["cache"] = {
            "dir": str(where),
            "status": cache.status,
            "views": cache.views,
            "topk": cache.topk,
            "hits": cache.hits,
            "misses": cache.misses,
        }
    return notes


def is_resumable(out: str | Path) -> bool:
    """True when a run to ``out`` left a checkpoint that ``--resume`` can continue."""
    return has_checkpoint(work_dir(out)) or (is_model_dir(out) and has_checkpoint(Path(out)))
