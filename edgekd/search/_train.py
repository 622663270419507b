"""Candidate trainings: distillation from the teacher, one content-hashed segment per rung.

Each architecture that fits starts as a seeded random-init model directory (``DIR/init/KEY``: the zoo builder
with the candidate's width/depth arguments, so a rung's student reloads without pickle) and is distilled rung by
rung: the segment of rung ``i`` trains ``halving.segments[i]`` epochs from rung ``i - 1``'s model into
``DIR/trainings/KEY``, where ``KEY`` is the sha256 of everything the segment depends on (architecture, data,
teacher weights, losses, optimisation settings, epochs, seed and the previous segment's key). A re-run finds a
finished segment by its key and skips it; an interrupted one resumes from its checkpoint (the training engine's
``--resume``). The teacher's logits are cached once in ``DIR/teacher_cache`` for every candidate (the cache is
keyed by teacher, data and augmentation, never by the student).

Each segment is an independent job once its parent exists: :func:`segment_job` gives the arguments another
engine (SLURM array tasks, Ray Tune trials) needs to run it with `edgekd distill`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from edgekd._io import sha256_file
from edgekd.data import DataBundle
from edgekd.distill import CacheSettings, DistillConfig, is_resumable, run_training
from edgekd.errors import TrainingDivergedError
from edgekd.modeldir import WEIGHTS_FILE, is_model_dir, read_card, save_model_dir
from edgekd.search._config import SearchConfig
from edgekd.search._space import Architecture
from edgekd.specs import Lineage, ModelCard, ModelSpec
from edgekd.students import build_model

__all__ = ["train_chain", "Training", "teacher_identity", "segment_key", "init_model_dir", "train_segment", "val_score"]

KEY_FORMAT = 1


class Training(BaseModel):
    """One finished segment: which architecture, how far it has trained, where, and its metrics."""

    arch: str
    label: str
    rung: int
    epochs: int
    key: str
    dir: str
    val: dict[str, Any]
    test: dict[str, Any]
    score: float
    reused: bool
    seconds: float
    failed: str | None = None  # the training did not learn or diverged: the reason (the chain stops there)


def teacher_identity(teacher: str) -> str:
    """What identifies the teacher's weights: the sha256 of a model directory's weights or of a file."""
    path = Path(teacher.removeprefix("onnx:"))
    if is_model_dir(path):
        return sha256_file(path / WEIGHTS_FILE)
    if path.is_file():
        return sha256_file(path)
    return teacher


def segment_key(arch: Architecture, cfg: SearchConfig, data_spec: str, teacher_id: str, rung: int, parent: str) -> str:
    """The content hash of one rung's training (see the module docstring)."""
    record = {
        "format": KEY_FORMAT,
        "arch": {"model": arch.model, "kwargs": arch.kwargs},
        "data": data_spec,
        "teacher": teacher_id,
        "losses": list(cfg.losses),
        "train": cfg.train.model_dump(mode="json", exclude={"epochs"}),
        "epochs": cfg.halving.segments[rung],
        "rung": rung,
        "parent": parent,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:20]


def init_model_dir(arch: Architecture, bundle: DataBundle, out: Path, seed: int) -> Path:
    """The seeded random-init model directory an architecture's first rung starts from."""
    if is_model_dir(out):
        return out
    spec = ModelSpec(name=arch.model, num_classes=bundle.num_classes, in_chans=bundle.channels, kwargs=arch.kwargs)
    torch.manual_seed(seed)
    model = build_model(spec)
    card = ModelCard(
        spec=spec,
        task=bundle.task,
        label_names=list(bundle.label_names),
        preprocess=bundle.preprocess(in_chans=bundle.channels),
        lineage=Lineage(stage="init", data=bundle.spec, notes={"search_arch": arch.label}),
    )
    return save_model_dir(model, card, out)


def val_score(card: ModelCard, metric: str) -> float:
    """The validation metric that ranks candidates (``train.select_metric``; accuracy when it is missing)."""
    val = card.metrics.get("val", {})
    value = val.get(metric, val.get("acc"))
    return float(value) if value is not None else float("-inf")


def segment_settings(cfg: SearchConfig, parent: Path, rung: int, cache_dir: Path, resume: bool) -> DistillConfig:
    """The distillation run of one segment (what `edgekd distill --student PARENT ...` would run)."""
    views = max(cfg.halving.segments)  # one cache for every segment: same views whatever the rung
    return DistillConfig(
        student=str(parent),
        data=cfg.data,
        teachers=[cfg.teacher],
        losses=list(cfg.losses),
        cache=CacheSettings(dir=str(cache_dir), views=views) if cfg.cache_teacher else None,
        resume=resume,
        train=cfg.train.model_copy(update={"epochs": cfg.halving.segments[rung]}),
    )


def train_segment(
    arch: Architecture,
    rung: int,
    parent: Path,
    key: str,
    out_root: Path,
    cfg: SearchConfig,
    bundle: DataBundle,
    *,
    progress: bool = False,
) -> Training:
    """Train one segment into ``out_root/trainings/KEY`` (skipped when it is there already)."""
    out = out_root / "trainings" / key
    start = time.perf_counter()
    reused = is_model_dir(out)
    if not reused:
        settings = segment_settings(cfg, parent, rung, out_root / "teacher_cache", is_resumable(out))
        try:
            run_training(settings, out, data=bundle, progress=progress, command="edgekd search")
        except TrainingDivergedError as e:  # one candidate that does not learn ends its chain, not the search
            return Training(
                arch=arch.key,
                label=arch.label,
                rung=rung,
                epochs=cfg.halving.rungs[rung],
                key=key,
                dir="",
                val={},
                test={},
                score=float("-inf"),
                reused=False,
                seconds=time.perf_counter() - start,
                failed=str(e).split(" (hint")[0],
            )
    card = read_card(out)
    return Training(
        arch=arch.key,
        label=arch.label,
        rung=rung,
        epochs=cfg.halving.rungs[rung],
        key=key,
        dir=str(out),
        val=card.metrics.get("val", {}),
        test=card.metrics.get("test", {}),
        score=val_score(card, cfg.train.select_metric),
        reused=reused,
        seconds=0.0 if reused else time.perf_counter() - start,
    )


def train_chain(
    cfg: SearchConfig,
    arch: Architecture,
    out: Path,
    bundle: DataBundle,
    teacher_id: str,
    rungs: int,
    progress: bool = False,
    report: Any = None,
) -> list[Training]:
    """Train ``arch`` through its first ``rungs`` rungs without halving (finished segments are reused), calling
    ``report`` after each (Ray Tune's ``tune.report``); a failed segment ends the chain."""
    parent, parent_key, done = init_model_dir(arch, bundle, out / "init" / arch.key, cfg.train.seed), "init", []
    for rung in range(rungs):
        key = segment_key(arch, cfg, bundle.spec, teacher_id, rung, parent_key)
        t = train_segment(arch, rung, parent, key, out, cfg, bundle, progress=progress)
        done.append(t)
        if t.failed:  # Tune records the trial as finished with the score it reached (-inf: never learned)
            if report is not None:
                report({"score": -1.0, "epochs": t.epochs, "rung": rung, "failed": t.failed})
            break
        parent, parent_key = Path(t.dir), key
        if report is not None:
            report({"score": t.score, "epochs": t.epochs, "rung": rung})
    return done


def segment_job(settings: DistillConfig, out: Path) -> dict[str, Any]:
    """The `edgekd distill` flags of one segment (for SLURM array tasks or another engine)."""
    return {"out": str(out), **settings.record()}
