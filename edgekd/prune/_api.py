"""`edgekd prune`: structural pruning of a model directory with recovery fine-tuning, to a new model directory.

The run: load the model and its data; prune in ``steps`` steps with Torch-Pruning towards the target
(:mod:`._pruner`), fine-tuning after every step with the teacher (default: the unpruned model itself) or with
cross-entropy only (:func:`edgekd.distill.finetune`); evaluate; write an ordinary model directory whose card stores the pruned
widths (``structure``), so it reloads without pickle, exports and benchmarks like any other. Params, MACs,
weights size and ONNX Runtime CPU latency before and after go into ``prune_report.json`` and the return value.

The output is written atomically: a failed run leaves nothing at ``out``.

Example:
    >>> cfg = PruneConfig(importance="lamp", target=PruneTarget.from_options(target_macs=0.5), steps=2,
    ...                   recovery_epochs=3)
    >>> report = prune_model_dir("runs/student", "runs/student-pruned", cfg)
    >>> report.after.macs / report.before.macs, report.metrics_after["test"]["auroc"]
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgekd._io import atomic_dir, atomic_write_text, check_output, sha256_file
from edgekd.data import DataBundle, make_loader
from edgekd.distill import DEFAULT_LOSSES, TrainConfig, evaluate_split, finetune
from edgekd.modeldir import WEIGHTS_FILE, Lineage, ModelCard, load_model_and_data, load_model_dir, save_model_dir
from edgekd.prune._importance import IMPORTANCE, accumulate_gradients
from edgekd.prune._measure import LatencyFn, ModelStats, model_stats
from edgekd.prune._pruner import ChannelPruner
from edgekd.prune._target import PruneTarget
from edgekd.specs import current_command
from edgekd.students import build_model, capture_structure, count_macs
from edgekd.teachers import load_teacher

__all__ = ["PruneConfig", "PruneReport", "prune_model_dir", "REPORT_FILE"]

REPORT_FILE = "prune_report.json"
WORK_DIR = ".recovery"


class PruneConfig(BaseModel):
    """Everything that decides a pruning run (saved as ``config.yaml`` next to the output).

    Attributes:
        importance: channel-importance criterion (:data:`~edgekd.prune.IMPORTANCE`).
        target: what to reach (:class:`PruneTarget`).
        steps: pruning steps, each followed by recovery fine-tuning.
        global_pruning: rank the channels of all layers together (else the same ratio per layer).
        round_to: keep channel counts multiples of this.
        keep: module paths never pruned (the classifier's outputs are always kept).
        max_layer_ratio: no layer loses more than this fraction of its channels.
        recovery_epochs: fine-tuning epochs after each step (0: none).
        kd: distil from the teacher during recovery (else cross-entropy only).
        teacher: the teacher (model directory, ONNX file, ...); default the unpruned model itself.
        losses: loss terms with a teacher.
        taylor_batches: batches of gradients before each step for the ``taylor`` criterion.
        latency_batch: batch size of the ORT CPU latency measurement (None: not measured).
        latency_s: minimum timed seconds per latency measurement.
        train: recovery hyper-parameters (its ``epochs`` is ``recovery_epochs``).
    """

    model_config = ConfigDict(extra="forbid")

    importance: str = "l2"
    target: PruneTarget
    steps: int = Field(1, ge=1)
    global_pruning: bool = True
    round_to: int | None = Field(None, ge=1)
    keep: list[str] = Field(default_factory=list)
    max_layer_ratio: float = Field(0.9, gt=0, le=1)
    recovery_epochs: int = Field(2, ge=0)
    kd: bool = True
    teacher: str | None = None
    losses: list[str] = Field(default_factory=lambda: list(DEFAULT_LOSSES))
    taylor_batches: int = Field(4, ge=1)
    latency_batch: int | None = Field(32, ge=1)
    latency_s: float = Field(2.0, gt=0)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_epochs=0.0))

    def check(self) -> None:
        """Validate the registry names (a pydantic validator would turn the helpful error into a generic one).

        Raises:
            UnknownNameError: an unknown importance criterion (exit 3, with close names).
        """
        IMPORTANCE.get(self.importance)


class PruneReport(BaseModel):
    """What a pruning run did and measured (``prune_report.json``)."""

    source: str
    out: str
    data: str
    importance: str
    target: PruneTarget
    target_met: bool
    recovery: str  # "kd", "ce" or "none"
    teacher: str | None = None
    classifier: str
    keep: list[str] = Field(default_factory=list)
    steps: list[dict[str, Any]] = Field(default_factory=list)
    before: ModelStats
    after: ModelStats
    latency_speedup: float | None = None
    metrics_before: dict[str, Any] = Field(default_factory=dict)
    metrics_after: dict[str, Any] = Field(default_factory=dict)


def _evaluate(model: nn.Module, card: ModelCard, data: DataBundle) -> dict[str, Any]:
    return {split: evaluate_split(model, card.preprocess, data, split, device="cpu") for split in ("val", "test")}


def _grad_fn(data: DataBundle, card: ModelCard, cfg: PruneConfig):
    def fill(model: nn.Module) -> None:
        loader = make_loader(data.train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed)
        batches = (b for i, b in zip(range(cfg.taylor_batches), loader))
        accumulate_gradients(model, batches, card.preprocess, data.task)

    return fill


def _teacher(cfg: PruneConfig, source: Path, data: DataBundle):
    if not cfg.kd or not cfg.recovery_epochs:
        return None, None
    ref = cfg.teacher or str(source)
    return load_teacher(ref, data=data), ref


def _recovery_kind(cfg: PruneConfig, teacher_ref: str | None) -> str:
    return "none" if not cfg.recovery_epochs else ("kd" if teacher_ref else "ce")


def _prune_and_recover(
    model: nn.Module, card: ModelCard, data: DataBundle, cfg: PruneConfig, work: Path, teacher, progress: bool
) -> tuple[ChannelPruner, list[dict], list[dict]]:
    pre = card.preprocess
    pruner = ChannelPruner(model, (1, pre.in_chans, *pre.input_size), importance=cfg.importance, target=cfg.target,
                           steps=cfg.steps, global_pruning=cfg.global_pruning, round_to=cfg.round_to, keep=cfg.keep,
                           num_classes=card.spec.num_classes, max_layer_ratio=cfg.max_layer_ratio,
                           grad_fn=_grad_fn(data, card, cfg))  # fmt: skip
    steps, history = [], []
    train_cfg = cfg.train.model_copy(update={"epochs": max(1, cfg.recovery_epochs)})
    for k in range(cfg.steps):
        record = pruner.step()
        if cfg.recovery_epochs:
            torch.manual_seed(cfg.train.seed + k)
            hist = finetune(model, pre, data, train_cfg, work / f"step{k + 1}", teacher=teacher, losses=cfg.losses,
                           progress=progress)  # fmt: skip
            history += [{"step": k + 1, **h} for h in hist]
            record["recovered_val"] = {key: v for key, v in hist[-1].items() if key.startswith("val_")}
        steps.append(record)
    return pruner, steps, history


def _latencies(source_model: nn.Module, pruned: nn.Module, card: ModelCard, cfg: PruneConfig, before: ModelStats,
               after: ModelStats, latency: LatencyFn | None) -> tuple[ModelStats, ModelStats, float | None]:  # fmt: skip
    """Both latencies in one call of ``latency``, one right after the other (same machine state)."""
    if not cfg.latency_batch or latency is None:
        return before, after, None
    (b_ms, threads), (a_ms, _) = latency([source_model, pruned], card, batch=cfg.latency_batch, seconds=cfg.latency_s)
    lat = {"latency_batch": cfg.latency_batch, "latency_threads": threads}
    before = before.model_copy(update={"latency_ms": b_ms, **lat})
    after = after.model_copy(update={"latency_ms": a_ms, **lat})
    return before, after, b_ms / a_ms if a_ms > 0 else None


def _pruned_card(
    model: nn.Module,
    card: ModelCard,
    source: Path,
    data: DataBundle,
    cfg: PruneConfig,
    metrics: dict,
    before: dict,
    teacher_ref: str | None,
    command: str,
) -> ModelCard:
    notes = {"importance": cfg.importance, "target": cfg.target.model_dump(mode="json"), "steps": cfg.steps,
             "global": cfg.global_pruning, "round_to": cfg.round_to, "keep": cfg.keep,
             "recovery_epochs": cfg.recovery_epochs, "recovery": _recovery_kind(cfg, teacher_ref)}  # fmt: skip
    lineage = Lineage(command=command, parent=str(source), parent_sha256=sha256_file(source / WEIGHTS_FILE),
                      data=data.spec, teachers=[teacher_ref] if teacher_ref else [],
                      losses=list(cfg.losses) if teacher_ref else ["ce"], stage="prune", notes=notes)  # fmt: skip
    pre = card.preprocess
    return card.model_copy(update={
        "structure": capture_structure(model, reference=build_model(card.spec)) or None,
        "params": None, "macs": count_macs(model, (1, pre.in_chans, *pre.input_size)),
        "metrics": {**metrics, "before_prune": before}, "lineage": lineage,
    })  # fmt: skip


def prune_model_dir(
    source: str | Path,
    out: str | Path,
    cfg: PruneConfig,
    *,
    data: str | DataBundle | None = None,
    latency: LatencyFn | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> PruneReport:
    """Prune the model directory ``source`` into a new model directory ``out`` (see the module docstring).

    Args:
        source: the model directory to prune.
        out: the pruned model directory to write (new, or an earlier edgekd output with ``overwrite``).
        cfg: the run's configuration.
        data: data spec or bundle (default: the data in the source's lineage).
        latency: measures models' latency for the report (e.g. :func:`edgekd.bench.model_latency_ms`); None:
            latency is not measured.
        overwrite: replace an earlier edgekd output at ``out`` (never other files, never ``source``).
        progress: show progress bars.
        command: the command line, for the lineage.

    Raises:
        ArtifactError: ``source`` is missing or malformed (exit 4).
        InvalidInputError: a bad criterion, target, ``--keep`` path or data (exit 3).
    """
    cfg.check()
    source, out = Path(source), Path(out)
    check_output(
        out, overwrite=overwrite, inputs=(source, cfg.teacher if cfg.teacher and Path(cfg.teacher).exists() else None)
    )
    torch.manual_seed(cfg.train.seed)
    model, card, bundle = load_model_and_data(source, data, seed=cfg.train.seed)
    original, _ = load_model_dir(source)
    before_metrics = _evaluate(model, card, bundle)
    before = model_stats(model, card, weights=source / WEIGHTS_FILE)
    teacher, teacher_ref = _teacher(cfg, source, bundle)
    with atomic_dir(out) as tmp:
        pruner, steps, history = _prune_and_recover(model, card, bundle, cfg, tmp / WORK_DIR, teacher, progress)
        shutil.rmtree(tmp / WORK_DIR, ignore_errors=True)  # per-epoch checkpoints of the recovery runs
        metrics = _evaluate(model, card, bundle)
        new_card = _pruned_card(
            model,
            card,
            source,
            bundle,
            cfg,
            metrics,
            before_metrics,
            teacher_ref,
            command if command is not None else current_command(),
        )
        save_model_dir(model, new_card, tmp)
        after = model_stats(model, new_card, weights=tmp / WEIGHTS_FILE)
        before, after, speedup = _latencies(original, model, card, cfg, before, after, latency)
        report = PruneReport(
            source=str(source), out=str(out), data=bundle.spec, importance=cfg.importance, target=cfg.target,
            target_met=all(s["goal_met"] for s in steps), recovery=_recovery_kind(cfg, teacher_ref),
            teacher=teacher_ref, classifier=pruner.classifier, keep=cfg.keep,
            steps=steps, before=before, after=after, latency_speedup=speedup, metrics_before=before_metrics,
            metrics_after=metrics,
        )  # fmt: skip
        atomic_write_text(tmp / REPORT_FILE, report.model_dump_json(indent=2))
        atomic_write_text(tmp / "config.yaml", yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
        atomic_write_text(tmp / "history.jsonl", "".join(json.dumps(h, default=float) + "\n" for h in history))
    return report
