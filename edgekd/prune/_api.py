"""`edgekd prune`: structural pruning of a model directory with recovery fine-tuning, to a new model directory.

The run: load the model and its data; prune in ``steps`` steps with Torch-Pruning towards the target
(:mod:`._pruner`), fine-tuning after every step with the teacher (default: the unpruned model itself) or with
cross-entropy only (:func:`edgekd.distill.finetune`); evaluate; write an ordinary model directory whose card stores the pruned
widths (``structure``), so it reloads without pickle, exports and benchmarks like any other. Params, MACs,
weights size and ONNX Runtime CPU latency before and after go into ``prune_report.json`` and the return value.

**Widths the hardware likes** (``round_to``): channel counts are rounded to a multiple that is fast on the target.
``round_to="auto"`` (the default) asks the ``width_probe`` the caller passes (`edgekd prune` passes
:func:`edgekd.bench.width_multiple`: a short ONNX Runtime CPU probe, cached per device) for that multiple; without
a probe (plain library use) the widths are *not rounded*, with a ``UserWarning`` and ``source: "not rounded: no
width probe given"`` in the report, never an assumed constant. An integer rounds to it; None does not round.

**A latency budget** (``PruneTarget(kind="latency")``): MACs are not latency, so the run measures. NetAdapt
(Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation for Mobile Applications", ECCV 2018) proposes
a smaller network, measures it on the target and repeats until the budget is met, fine-tuning a little per
step and longer at the end. Here one proposal removes the globally least important channels (the criterion's
ranking) down to a MACs fraction ``k_{i+1} = k_i * clip(sqrt(aim / t_i), 0.75, 1 - latency_step)`` (half-way, in
log, to what proportional scaling would need; 5 to 25 % of the MACs per proposal), and the measured p50
``t_i`` at the target's batch (through the ``latency`` function) decides: the run stops at the first proposal with
``t_i <= aim = budget * (1 - latency_margin)`` (the margin, 5 % by default, is there so that an independent
re-measurement with `edgekd bench` also meets the budget). Latency is not monotonic in MACs (a width can fall off
a fast kernel), so a proposal that got slower does not stop the run. NetAdapt's per-layer proposals, each
fine-tuned and compared on accuracy, cost a fine-tuning per layer per step; the global ranking replaces them.
A budget the unpruned model already meets prunes nothing (the output is the unpruned model and the report says
so); a budget that cannot be met (the pruner is out of channels first) fails with the smallest latency measured
and writes nothing.

The output is written atomically: a failed run leaves nothing at ``out``.

Example:
    >>> cfg = PruneConfig(importance="lamp", target=PruneTarget.from_options(target_macs=0.5), steps=2,
    ...                   recovery_epochs=3)
    >>> report = prune_model_dir("runs/student", "runs/student-pruned", cfg)
    >>> report.after.macs / report.before.macs, report.metrics_after["test"]["auroc"]
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import yaml
from pydantic import BaseModel, Field, field_validator
from torch import nn

from edgekd._config import StageConfig
from edgekd._io import atomic_dir, atomic_write_text, check_output, sha256_file
from edgekd.data import DataBundle, make_loader
from edgekd.distill import DEFAULT_LOSSES, LossTexts, TeacherText, TrainConfig, evaluate_split, finetune
from edgekd.distill._settings import SEG_DEFAULT_LOSSES  # the segmentation defaults (not re-exported)
from edgekd.errors import InvalidInputError
from edgekd.metrics import higher_is_better, selection_value, task_select_metric
from edgekd.modeldir import WEIGHTS_FILE, Lineage, ModelCard, load_model_and_data, load_model_dir, save_model_dir
from edgekd.prune._importance import IMPORTANCE, accumulate_gradients, recalibrate_batchnorm
from edgekd.prune._measure import LatencyFn, ModelStats, WidthProbeFn, model_stats
from edgekd.prune._pruner import ChannelPruner
from edgekd.prune._target import PruneTarget
from edgekd.specs import Task, current_command
from edgekd.students import build_model, capture_structure, count_macs
from edgekd.teachers import load_teacher

__all__ = ["PruneConfig", "PruneReport", "prune_model_dir", "parse_round_to", "REPORT_FILE", "AUTO"]

REPORT_FILE = "prune_report.json"
WORK_DIR = ".recovery"
AUTO = "auto"
# A latency proposal removes at most this fraction of the current MACs (at least ``latency_step``).
MAX_PROPOSAL = 0.25


def parse_round_to(value: Any) -> int | Literal["auto"] | None:
    """``round_to`` from CLI text or a config value: ``auto``, ``none``/``null``/None, or a positive integer.

    Raises:
        InvalidInputError: anything else (exit 3).
    """
    text = str(value).strip().lower() if value is not None else "none"
    if text == AUTO:
        return AUTO
    if text in ("none", "null", ""):
        return None
    if not isinstance(value, bool) and text.isdigit() and int(text) >= 1:
        return int(text)
    raise InvalidInputError(
        f"--round-to must be auto, none or a positive integer, got {value!r}",
        "auto measures the widths this machine runs fast; 8 rounds to multiples of 8",
    )


# Flat keys of a prune config file: the CLI's option names of the target, and the recovery settings by name (or
# under ``recovery:``, the layout `edgekd prune --config` read before). ``epochs`` is not one: ``recovery_epochs``.
_FLAT = {
    "ratio": "target.ratio",
    "target_macs": "target.macs",
    "target_params": "target.params",
    "target_latency_ms": "target.latency_ms",
    "batch": "target.batch",
    "backend": "target.backend",
    "loss": "losses",
    "recovery": "train",
    **{name: f"train.{name}" for name in TrainConfig.model_fields if name != "epochs"},
}


class PruneConfig(StageConfig):
    """Everything that decides a pruning run: the single source of `edgekd prune`'s defaults (saved as
    ``config.yaml`` next to the output; the same class serves the CLI, Python callers and the pipeline).

    Attributes:
        importance: channel-importance criterion (:data:`~edgekd.prune.IMPORTANCE`).
        target: what to reach (:class:`PruneTarget`; in a file ``target: {macs: 0.5}`` or ``target_macs: 0.5``).
        steps: pruning steps, each followed by recovery fine-tuning.
        global_pruning: rank the channels of all layers together (else the same ratio per layer).
        round_to: keep channel counts multiples of this: ``"auto"`` (default) asks the run's width probe, None
            does not round (see the module docstring for ``"auto"`` without a probe).
        keep: module paths never pruned (the classifier's outputs are always kept).
        max_layer_ratio: no layer loses more than this fraction of its channels.
        recovery_epochs: fine-tuning epochs after each step (0: none).
        kd, teacher, losses: who teaches recovery: with ``kd`` the ``teacher`` (a model directory, ONNX file, ...;
            default the unpruned model itself) through the ``losses``; without it, cross-entropy only.
        taylor_batches: batches of gradients before each step for the ``taylor`` criterion.
        bn_batches: after each pruning step, re-estimate the batch-norm statistics on this many training batches
            (:func:`~edgekd.prune.recalibrate_batchnorm`), kept when validation scores them better than the old
            ones; 0: keep the unpruned network's statistics.
        latency_batch: batch size of the ORT CPU latency measurement (None or 0: not measured; a latency target
            measures at its own batch).
        latency_s: minimum timed seconds per latency measurement (also each measurement of a latency run).
        latency_margin: a latency run aims this fraction under the budget (re-measurements vary).
        latency_step: a latency proposal removes at least this fraction of the current MACs.
        short_term_epochs: a latency run's fine-tuning epochs after each proposal (NetAdapt's short-term
            fine-tuning; 0: none); ``recovery_epochs`` is then the long-term fine-tuning at the end.
        train: recovery hyper-parameters (its ``epochs`` is ``recovery_epochs``).
    """

    flat_keys: ClassVar = _FLAT
    unread: ClassVar = {"train.epochs": "recovery_epochs (and short_term_epochs for a latency target)"}

    importance: str = "l2"
    target: PruneTarget
    steps: int = Field(1, ge=1)
    global_pruning: bool = True
    round_to: int | Literal["auto"] | None = AUTO
    keep: list[str] = Field(default_factory=list)
    max_layer_ratio: float = Field(0.9, gt=0, le=1)
    recovery_epochs: int = Field(2, ge=0)
    # who teaches recovery
    kd: bool = True
    teacher: TeacherText = None
    losses: LossTexts = Field(default_factory=lambda: list(DEFAULT_LOSSES))
    taylor_batches: int = Field(4, ge=1)
    bn_batches: int = Field(16, ge=0)
    latency_batch: int | None = Field(32, ge=1)
    latency_s: float = Field(2.0, gt=0)
    latency_margin: float = Field(0.05, ge=0, lt=0.5)
    latency_step: float = Field(0.05, gt=0, le=MAX_PROPOSAL)
    short_term_epochs: int = Field(0, ge=0)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_epochs=0.0))

    @field_validator("latency_batch", mode="before")
    @classmethod
    def _no_latency(cls, v: Any) -> Any:
        return None if v == 0 and not isinstance(v, bool) else v

    @field_validator("round_to", mode="before")
    @classmethod
    def _round_to(cls, v: Any) -> Any:
        return parse_round_to(v)

    def check(self) -> None:
        """Validate what a pydantic validator would turn into a generic error.

        Raises:
            UnknownNameError: an unknown importance criterion (exit 3, with close names).
            InvalidInputError: ``steps`` other than 1 with a latency target (exit 3).
        """
        IMPORTANCE.get(self.importance)
        if self.target.is_latency and self.steps != 1:
            raise InvalidInputError(
                "--steps does not apply to a latency target: it prunes in measured proposals until the budget is met",
                "drop --steps; --short-term-epochs fine-tunes between proposals, --recovery-epochs at the end",
            )


class PruneReport(BaseModel):
    """What a pruning run did and measured (``prune_report.json``).

    ``round_to`` says which channel multiple was used and where it came from (``source``: ``config``, the width
    probe's ``measured``/``cached`` with its device ``fingerprint`` and table, or ``not rounded: ...``).
    ``latency_target`` (latency targets only) holds the budget, the aim under it, the unpruned and final p50 and
    whether it was met; each of its ``steps`` records the measured p50 (``latency_ms``, ``batch``, ``threads``)
    and the MACs kept.
    """

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
    round_to: dict[str, Any] = Field(default_factory=dict)
    latency_target: dict[str, Any] | None = None
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


_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _recalibrate(model: nn.Module, card: ModelCard, data: DataBundle, cfg: PruneConfig, record: dict) -> None:
    """Adaptive BN after a pruning step (before its latency, recovery and evaluation), kept only when it measures
    better on validation than the statistics the step left (a tie changes nothing: a barely trained network's
    recovery can rest on its old statistics); the record says how many samples and both scores."""
    if not cfg.bn_batches:
        return
    stale = {k: v.clone() for k, v in model.state_dict().items() if k.endswith(_BN_BUFFERS)}
    if not stale:  # no batch norm: nothing to re-estimate, no validation pass spent on it
        return
    metric = task_select_metric(cfg.train.select_metric, data.task)
    judged = len(data.val) > 0
    before = _val_score(model, card, data, metric) if judged else None
    loader = make_loader(data.train, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed + int(record["step"]))
    seen = recalibrate_batchnorm(model, (b for _, b in zip(range(cfg.bn_batches), loader)), card.preprocess)
    model.eval()
    if not seen:
        return
    after = _val_score(model, card, data, metric) if judged else None
    keep = before is None or (after > before if higher_is_better(metric) else after < before)
    if not keep:
        model.load_state_dict(stale, strict=False)
    record["bn_recalibrated"] = seen
    record["bn_val"] = {"metric": metric, "stale": before, "re_estimated": after, "kept": keep}


def _val_score(model: nn.Module, card: ModelCard, data: DataBundle, metric: str) -> float:
    return selection_value(evaluate_split(model, card.preprocess, data, "val", device="cpu"), metric)


def _teacher(cfg: PruneConfig, source: Path, data: DataBundle):
    if not cfg.kd or not cfg.recovery_epochs:
        return None, None
    ref = cfg.teacher or str(source)
    return load_teacher(ref, data=data), ref


def _recovery_kind(cfg: PruneConfig, teacher_ref: str | None) -> str:
    return "none" if not cfg.recovery_epochs else ("kd" if teacher_ref else "ce")


def _make_pruner(
    model: nn.Module, card: ModelCard, data: DataBundle, cfg: PruneConfig, round_to: int | None
) -> ChannelPruner:
    pre = card.preprocess
    return ChannelPruner(
        model,
        (1, pre.in_chans, *pre.input_size),
        importance=cfg.importance,
        target=cfg.target,
        steps=cfg.steps,
        global_pruning=cfg.global_pruning,
        round_to=round_to,
        keep=cfg.keep,
        num_classes=card.spec.num_classes,
        max_layer_ratio=cfg.max_layer_ratio,
        grad_fn=_grad_fn(data, card, cfg),
    )


def recovery_losses(cfg: PruneConfig, task: Task) -> list[str]:
    """The recovery losses: as configured, except that a segmenter left at the classification default
    (``ce + kd``) recovers with the segmentation default (``ce + dice + pixkd``: per-pixel KD)."""
    if task is Task.SEGMENTATION and list(cfg.losses) == list(DEFAULT_LOSSES):
        return list(SEG_DEFAULT_LOSSES)
    return list(cfg.losses)


def _recover(
    model: nn.Module,
    card: ModelCard,
    data: DataBundle,
    cfg: PruneConfig,
    work: Path,
    teacher,
    progress: bool,
    *,
    epochs: int,
    step: int | str,
    seed: int,
) -> list[dict]:
    """Fine-tune ``model`` for ``epochs`` (KD from ``teacher`` or CE); the history rows carry ``step``."""
    torch.manual_seed(seed)
    train_cfg = cfg.train.model_copy(update={"epochs": max(1, epochs)})
    hist = finetune(
        model,
        card.preprocess,
        data,
        train_cfg,
        work,
        teacher=teacher,
        losses=recovery_losses(cfg, card.task),
        progress=progress,
    )
    return [{"step": step, **h} for h in hist]


def _recovered_val(hist: list[dict]) -> dict[str, Any]:
    return {key: v for key, v in hist[-1].items() if key.startswith("val_")}


def _prune_and_recover(
    pruner: ChannelPruner,
    model: nn.Module,
    card: ModelCard,
    data: DataBundle,
    cfg: PruneConfig,
    work: Path,
    teacher,
    progress: bool,
) -> tuple[list[dict], list[dict]]:
    steps, history = [], []
    for k in range(cfg.steps):
        record = pruner.step()
        _recalibrate(model, card, data, cfg, record)
        if cfg.recovery_epochs:
            hist = _recover(
                model,
                card,
                data,
                cfg,
                work / f"step{k + 1}",
                teacher,
                progress,
                epochs=cfg.recovery_epochs,
                step=k + 1,
                seed=cfg.train.seed + k,
            )
            history += hist
            record["recovered_val"] = _recovered_val(hist)
        steps.append(record)
    return steps, history


# ---------------------------------------------------------------------------------------------------------------
# Latency target (NetAdapt) and hardware widths


def _resolve_round_to(
    cfg: PruneConfig, card: ModelCard, width_probe: WidthProbeFn | None
) -> tuple[int | None, dict[str, Any]]:
    """The multiple channel counts are rounded to, and where it came from (for the report and lineage)."""
    if cfg.round_to != AUTO:
        return cfg.round_to, {"requested": cfg.round_to, "multiple": cfg.round_to, "source": "config"}
    if width_probe is None:
        warnings.warn(
            "round_to='auto' without a width probe: channel counts are not rounded (pass width_probe="
            "edgekd.bench.width_multiple, as `edgekd prune` does, or an integer round_to)",
            UserWarning,
            stacklevel=3,
        )
        return None, {"requested": AUTO, "multiple": None, "source": "not rounded: no width probe given"}
    multiple, record = width_probe(card)
    return (int(multiple) if multiple > 1 else None), {"requested": AUTO, **record, "multiple": int(multiple)}


def _measure(latency: LatencyFn, model: nn.Module, card: ModelCard, cfg: PruneConfig) -> tuple[float, int]:
    ((ms, threads),) = latency([model], card, batch=cfg.target.batch, seconds=cfg.latency_s)
    return float(ms), int(threads)


def _latency_plan(cfg: PruneConfig, model: nn.Module, card: ModelCard, latency: LatencyFn | None) -> dict | None:
    """Measure the unpruned model against a latency budget before any work (None: not a latency target)."""
    t = cfg.target
    if not t.is_latency:
        return None
    if latency is None:
        raise InvalidInputError(
            "a latency target needs a latency function to measure with",
            "pass latency=edgekd.bench.model_latency_ms (the CLI and pipeline do)",
        )
    ms, threads = _measure(latency, model, card, cfg)
    aim = t.value * (1 - cfg.latency_margin)
    return {
        "budget_ms": t.value,
        "aim_ms": aim,
        "margin": cfg.latency_margin,
        "batch": t.batch,
        "backend": t.backend.value,
        "unpruned_ms": ms,
        "threads": threads,
        "met": ms <= aim,
        "already_met": ms <= aim,
        "final_ms": None,
    }


def _unreachable(plan: dict, steps: list[dict], round_to: int | None) -> InvalidInputError:
    ms, kept = min([(plan["unpruned_ms"], 1.0)] + [(s["latency_ms"], s["macs_kept"]) for s in steps])
    rounding = f", round to a smaller multiple than {round_to} (--round-to)" if round_to and round_to > 1 else ""
    return InvalidInputError(
        f"the latency budget {plan['budget_ms']:g} ms at batch {plan['batch']} cannot be reached: smallest measured "
        f"{ms:.3g} ms at {kept:.0%} of the MACs (unpruned {plan['unpruned_ms']:.3g} ms, {len(steps)} proposals)",
        f"relax the budget, raise --max-layer-ratio or drop --keep{rounding}, or prune another model",
    )


def _latency_search(
    pruner: ChannelPruner,
    model: nn.Module,
    card: ModelCard,
    data: DataBundle,
    cfg: PruneConfig,
    plan: dict,
    latency: LatencyFn,
    work: Path,
    teacher,
    progress: bool,
) -> tuple[list[dict], list[dict]]:
    """NetAdapt's loop: propose a smaller model, measure it, repeat until the measured p50 meets the aim.

    Keeps going past a proposal that got no faster (latency is not monotonic in MACs); fails when the pruner
    runs out of channels first. The proposal size is in the module docstring.
    """
    steps, history, kept, ms = [], [], 1.0, plan["unpruned_ms"]
    while ms > plan["aim_ms"]:
        if pruner.exhausted:
            raise _unreachable(plan, steps, pruner.round_to)
        kept *= min(1 - cfg.latency_step, max(1 - MAX_PROPOSAL, math.sqrt(plan["aim_ms"] / ms)))
        record = pruner.prune_to(kept)
        kept = record["macs_kept"]
        _recalibrate(model, card, data, cfg, record)
        prev, (ms, threads) = ms, _measure(latency, model, card, cfg)
        record.update(latency_ms=ms, batch=plan["batch"], threads=threads, faster=ms < prev, met=ms <= plan["aim_ms"])
        if cfg.short_term_epochs:
            k = record["step"]
            hist = _recover(
                model,
                card,
                data,
                cfg,
                work / f"step{k}",
                teacher,
                progress,
                epochs=cfg.short_term_epochs,
                step=k,
                seed=cfg.train.seed + k,
            )
            history += hist
            record["recovered_val"] = _recovered_val(hist)
        steps.append(record)
    if steps and cfg.recovery_epochs:  # long-term fine-tuning of the chosen network
        history += _recover(
            model,
            card,
            data,
            cfg,
            work / "final",
            teacher,
            progress,
            epochs=cfg.recovery_epochs,
            step="final",
            seed=cfg.train.seed + len(steps) + 1,
        )
    return steps, history


def _latencies(
    source_model: nn.Module,
    pruned: nn.Module,
    card: ModelCard,
    cfg: PruneConfig,
    before: ModelStats,
    after: ModelStats,
    latency: LatencyFn | None,
) -> tuple[ModelStats, ModelStats, float | None]:
    """Both latencies in one call of ``latency``, one right after the other (same machine state)."""
    batch = cfg.target.batch if cfg.target.is_latency else cfg.latency_batch
    if not batch or latency is None:
        return before, after, None
    (b_ms, threads), (a_ms, _) = latency([source_model, pruned], card, batch=batch, seconds=cfg.latency_s)
    lat = {"latency_batch": batch, "latency_threads": threads}
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
    widths: dict[str, Any],
    plan: dict | None,
) -> ModelCard:
    notes = {
        "importance": cfg.importance,
        "target": cfg.target.model_dump(mode="json"),
        "steps": cfg.steps,
        "global": cfg.global_pruning,
        "round_to": widths.get("multiple"),
        "round_to_requested": cfg.round_to,
        "round_to_source": widths.get("source"),
        "keep": cfg.keep,
        "recovery_epochs": cfg.recovery_epochs,
        "recovery": _recovery_kind(cfg, teacher_ref),
    }
    if widths.get("fingerprint_id"):
        notes["width_fingerprint"] = widths["fingerprint_id"]
    if plan is not None:
        notes["latency"] = {k: plan[k] for k in ("budget_ms", "batch", "backend", "unpruned_ms", "final_ms", "met")}
        if plan["already_met"]:
            notes["recovery"] = "none"  # nothing was pruned, so nothing was fine-tuned
    lineage = Lineage(
        command=command,
        parent=str(source),
        parent_sha256=sha256_file(source / WEIGHTS_FILE),
        data=data.spec,
        teachers=[teacher_ref] if teacher_ref else [],
        losses=recovery_losses(cfg, card.task) if teacher_ref else ["ce"],
        stage="prune",
        notes=notes,
    )
    pre = card.preprocess
    return card.model_copy(
        update={
            "structure": capture_structure(model, reference=build_model(card.spec)) or None,
            "params": None,
            "macs": count_macs(model, (1, pre.in_chans, *pre.input_size)),
            "metrics": {**metrics, "before_prune": before},
            "lineage": lineage,
        }
    )


def prune_model_dir(
    source: str | Path,
    out: str | Path,
    cfg: PruneConfig,
    *,
    data: str | DataBundle | None = None,
    latency: LatencyFn | None = None,
    width_probe: WidthProbeFn | None = None,
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
        latency: measures models' latency for the report and for a latency target (e.g.
            :func:`edgekd.bench.model_latency_ms`); None: latency is not measured (a latency target needs it).
        width_probe: finds the channel multiple for ``round_to="auto"`` (e.g. :func:`edgekd.bench.width_multiple`);
            None: ``"auto"`` does not round, with a warning.
        overwrite: replace an earlier edgekd output at ``out`` (never other files, never ``source``).
        progress: show progress bars.
        command: the command line, for the lineage.

    Raises:
        ArtifactError: ``source`` is missing or malformed (exit 4).
        InvalidInputError: a bad criterion, target, ``--keep`` path or data, or a latency budget that cannot be
            reached (exit 3; nothing is written).
    """
    cfg.check()
    source, out = Path(source), Path(out)
    check_output(
        out, overwrite=overwrite, inputs=(source, cfg.teacher if cfg.teacher and Path(cfg.teacher).exists() else None)
    )
    torch.manual_seed(cfg.train.seed)
    model, card, bundle = load_model_and_data(source, data, seed=cfg.train.seed)
    original, _ = load_model_dir(source)
    plan = _latency_plan(cfg, model, card, latency)  # before any work: a budget already met prunes nothing
    round_to, widths = _resolve_round_to(cfg, card, width_probe)
    pruner = _make_pruner(model, card, bundle, cfg, round_to)
    before_metrics = _evaluate(model, card, bundle)
    before = model_stats(model, card, weights=source / WEIGHTS_FILE)
    teacher, teacher_ref = _teacher(cfg, source, bundle) if not (plan and plan["already_met"]) else (None, None)
    with atomic_dir(out) as tmp:
        if plan is None:
            steps, history = _prune_and_recover(pruner, model, card, bundle, cfg, tmp / WORK_DIR, teacher, progress)
        else:
            steps, history = _latency_search(
                pruner, model, card, bundle, cfg, plan, latency, tmp / WORK_DIR, teacher, progress
            )
            plan["met"] = plan["already_met"] or steps[-1]["met"]
        shutil.rmtree(tmp / WORK_DIR, ignore_errors=True)  # per-epoch checkpoints of the recovery runs
        metrics = _evaluate(model, card, bundle)
        before, after, speedup = _latencies(original, model, card, cfg, before, model_stats(model, card), latency)
        if plan is not None:  # re-measured after recovery (same widths): above the budget means the speed moved
            plan["final_ms"] = after.latency_ms
            plan["final_met"] = after.latency_ms is not None and after.latency_ms <= plan["budget_ms"]
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
            widths,
            plan,
        )
        save_model_dir(model, new_card, tmp)
        after = after.model_copy(update={"size_bytes": (tmp / WEIGHTS_FILE).stat().st_size})
        report = PruneReport(
            source=str(source),
            out=str(out),
            data=bundle.spec,
            importance=cfg.importance,
            target=cfg.target,
            target_met=plan["met"] if plan else all(s["goal_met"] for s in steps),
            recovery=_recovery_kind(cfg, teacher_ref) if steps else "none",
            teacher=teacher_ref,
            classifier=pruner.classifier,
            keep=cfg.keep,
            round_to=widths,
            latency_target=plan,
            steps=steps,
            before=before,
            after=after,
            latency_speedup=speedup,
            metrics_before=before_metrics,
            metrics_after=metrics,
        )
        atomic_write_text(tmp / REPORT_FILE, report.model_dump_json(indent=2))
        atomic_write_text(tmp / "config.yaml", yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
        atomic_write_text(tmp / "history.jsonl", "".join(json.dumps(h, default=float) + "\n" for h in history))
    return report
