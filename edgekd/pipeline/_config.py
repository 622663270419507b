"""The `edgekd run` configuration: one YAML file, validated with pydantic, errors naming the key and its line.

A pipeline file names the data, the teacher (trained here, imported from a checkpoint, or an existing model
directory / ONNX file), the student, the distillation losses, pruning, the quantization targets, the export
formats, the benchmark configurations, an optional regression baseline and the report. Every section is
typed; an unknown key or a wrong type is an :class:`~edgekd.errors.InvalidInputError` (exit 3) naming the
key path and the file line, e.g. ``pneumonia.yaml line 14: unknown key student.train.epoch (did you mean
epochs?)``. ``--set student.train.epochs=3`` overrides any key (the value is read as YAML: ``3``, ``null``,
``[onnx, onnx-fp16]``). The resolved configuration is what :func:`~edgekd.pipeline.run_pipeline` saves as
``pipeline.yaml`` in the run directory, and it reads back as a pipeline file.

Example:
    >>> cfg = load_pipeline_config("examples/pneumonia.yaml", overrides=["student.train.epochs=2"])
    >>> cfg.student.model, cfg.student.train.epochs
    ('small:resnet8', 2)
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgekd._config import validation_message
from edgekd.bench import BenchConfig, GateConfig
from edgekd.distill import DEFAULT_LOSSES, LossTexts, TrainConfig
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export import ExportConfig
from edgekd.metrics import METRIC_NAMES
from edgekd.pipeline._budget import BudgetSection
from edgekd.prune import PruneConfig, PruneTarget
from edgekd.quantize import QuantizeConfig
from edgekd.specs import ChannelMode, IntendedUse

__all__ = [
    "PipelineConfig",
    "TeacherSection",
    "StudentSection",
    "DistillSection",
    "PruneSection",
    "QuantizeSection",
    "ExportSection",
    "BenchSection",
    "RegressionSection",
    "ReportSection",
    "HandoffSection",
    "KeepChoice",
    "HandoffKeep",
    "load_pipeline_config",
    "parse_overrides",
    "config_from_mapping",
]


class KeepChoice(str, Enum):
    """Which student the later stages compress when distillation is compared with the no-teacher baseline."""

    BETTER = "better"  # the distilled one unless the baseline is better on validation beyond noise (bootstrap)
    DISTILLED = "distilled"
    BASELINE = "baseline"


class HandoffKeep(str, Enum):
    """Whether a compression stage's output is carried forward (``keep:`` of prune, quantize and export).

    ``auto``: only when it is faster than its parent at every benchmarked batch and its validation metric is
    within ``handoff.max_drop`` of the parent's; ``always``: regardless (it is still measured, and the run says so).
    """

    AUTO = "auto"
    ALWAYS = "always"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ModelFields(_Section):
    small_input: bool = False
    channels: ChannelMode = ChannelMode.ADAPT
    input_size: int | None = Field(None, ge=1)
    pretrained: bool = False


class TeacherSection(_ModelFields):
    """The teacher: ``model`` to train one here (or, with ``checkpoint``, to import one), or ``path``.

    Attributes:
        model: registry name to train (``small:resnet18``, ``tv:resnet50``).
        checkpoint: a ``.pt``/``.pth``/``.safetensors`` state dict of ``model``, imported instead of trained.
        path: an existing model directory or ``onnx:FILE.onnx``, used as it is (not copied).
        trust_pickle: allow a pickled ``checkpoint`` (unpickling runs code).
        train: the training settings when ``model`` is trained here.
    """

    model: str | None = None
    checkpoint: str | None = None
    path: str | None = None
    trust_pickle: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSection:
        if (self.model is None) == (self.path is None):
            raise ValueError("give exactly one of teacher.model (train or import one) or teacher.path (use one)")
        if self.checkpoint and not self.model:
            raise ValueError("teacher.checkpoint needs teacher.model (its architecture)")
        return self

    @property
    def mode(self) -> str:
        """``train``, ``import`` or ``path``."""
        return "path" if self.path else ("import" if self.checkpoint else "train")


class StudentSection(_ModelFields):
    """The compact student (the same architecture and training settings serve the no-teacher baseline)."""

    model: str = Field(min_length=1)
    train: TrainConfig = Field(default_factory=TrainConfig)


class DistillSection(_Section):
    """Distillation and its comparison with a student trained without the teacher.

    Attributes:
        losses: loss terms (``edgekd losses``).
        cache_teacher: store teacher logits in ``RUN/teacher_cache`` (a re-run of the student stage reuses them).
        cache_topk: store only the top-k logits.
        baseline: also train the student without the teacher (same seed, schedule, augmentation).
        keep: which student the later stages compress.
        diagnose_samples: training samples the diagnostics look at (teacher confidence, augmented views).
        metric: the validation metric that decides whether distillation helps, also the report's Pareto view and
            summary: ``auto`` (AUROC for binary tasks, balanced accuracy for multi-class, AUROC for multi-label)
            or a metric name (``acc``, ``balanced_acc``, ``auroc``, ``f1_macro``...).
    """

    losses: LossTexts = Field(default_factory=lambda: list(DEFAULT_LOSSES))
    cache_teacher: bool = True
    cache_topk: int | None = Field(None, ge=1)
    baseline: bool = True
    keep: KeepChoice = KeepChoice.BETTER
    diagnose_samples: int = Field(1024, ge=16)
    metric: str = "auto"

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v != "auto" and v not in METRIC_NAMES:
            raise ValueError(f"unknown metric {v!r}; choose auto or one of {', '.join(METRIC_NAMES)}")
        return v


class PruneSection(PruneConfig):
    """:class:`~edgekd.prune.PruneConfig` with the target written as one of ``target_macs``, ``target_params``,
    ``ratio`` or ``target_latency_ms`` (with ``batch`` and ``backend``, as on the command line), and which model
    recovery distils from.

    Attributes:
        recovery_teacher: ``parent`` (the unpruned student, the `edgekd prune` default) or ``teacher``.
        keep: a list: module paths never pruned (as in `edgekd prune`); ``auto`` / ``always``: the hand-off
            choice (:class:`HandoffKeep`) for the pruned model (then no module is exempt).
    """

    recovery_teacher: typing.Literal["parent", "teacher"] = "parent"
    keep: HandoffKeep | list[str] = Field(default_factory=list)

    @field_validator("keep", mode="before")
    @classmethod
    def _keep_kind(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in {k.value for k in HandoffKeep}:
            raise ValueError("give auto or always (the hand-off choice), or a list of module paths never pruned")
        return v

    @property
    def handoff_keep(self) -> HandoffKeep:
        return self.keep if isinstance(self.keep, HandoffKeep) else HandoffKeep.AUTO

    @property
    def module_keep(self) -> list[str]:
        return [] if isinstance(self.keep, HandoffKeep) else list(self.keep)

    def prune_config(self, seed: int) -> PruneConfig:
        """The :class:`~edgekd.prune.PruneConfig` this section states: recovery trained with ``seed``, the modules
        never pruned as ``keep`` (``keep: auto|always`` is the hand-off choice, not pruning's); no recovery
        teacher (the pipeline names it by stage, see :func:`~edgekd.pipeline.plan`)."""
        fields = {name: getattr(self, name) for name in PruneConfig.model_fields}
        fields.update(train=self.train.model_copy(update={"seed": seed}), keep=self.module_keep, teacher=None)
        return PruneConfig(**fields)

    @model_validator(mode="before")
    @classmethod
    def _flat_target(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        keys = ("target_macs", "target_params", "ratio", "target_latency_ms", "batch", "backend")
        flat = {k: values.pop(k) for k in keys if k in values}
        if flat or "target" not in values:
            values["target"] = PruneTarget.from_options(**flat)
        return values


class QuantizeSection(QuantizeConfig):
    """One quantization target (:class:`~edgekd.quantize.QuantizeConfig`), checked when the file is read.

    Attributes:
        keep: hand off its low-precision file only when measured faster within the accuracy budget
            (``auto``), or regardless (``always``).
    """

    keep: HandoffKeep = HandoffKeep.AUTO

    @model_validator(mode="after")
    def _names(self) -> QuantizeSection:
        self.check()
        return self

    @property
    def stage_name(self) -> str:
        return f"{'fp16' if self.method.value == 'fp16' else 'int8'}-{self.target}"

    def quantize_config(self, seed: int) -> QuantizeConfig:
        """The :class:`~edgekd.quantize.QuantizeConfig` this entry states (QAT trained with ``seed``)."""
        fields = {name: getattr(self, name) for name in QuantizeConfig.model_fields}
        return QuantizeConfig(**{**fields, "train": self.train.model_copy(update={"seed": seed})})


class ExportSection(ExportConfig):
    """The export bundle of the final FP32 model: :class:`~edgekd.export.ExportConfig` (FP16 too by default), with
    the run's ``data`` and ``target_sensitivity``; ``keep`` is the hand-off choice of its FP16 file
    (:class:`HandoffKeep`)."""

    keep: HandoffKeep = HandoffKeep.AUTO
    formats: list[str] = Field(default_factory=lambda: ["onnx", "onnx-fp16"])

    @model_validator(mode="after")
    def _run_keys(self) -> ExportSection:
        for key in ("data", "target_sensitivity"):
            if getattr(self, key) is not None:  # (null in a saved pipeline.yaml)
                raise ValueError(f"export.{key}: the run's top-level `{key}` key sets it")
        return self

    def export_config(self, data: str, target_sensitivity: float) -> ExportConfig:
        """The :class:`~edgekd.export.ExportConfig` of the ``bundle`` stage."""
        fields = {name: getattr(self, name) for name in ExportConfig.model_fields}
        return ExportConfig(**{**fields, "data": data, "target_sensitivity": target_sensitivity})


class BenchSection(BenchConfig):
    """Benchmark configurations: :class:`~edgekd.bench.BenchConfig` with the run's defaults (ONNX Runtime, batches 1
    and 32, shorter timing); the gate is the ``regression`` section."""

    backends: list[str] | None = Field(default_factory=lambda: ["ort"])
    batches: list[int] = Field(default_factory=lambda: [1, 32], min_length=1)
    min_s: float = Field(1.0, ge=0)
    min_iters: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _no_gate(self) -> BenchSection:
        if self.gate != GateConfig():  # (the defaults in a saved pipeline.yaml)
            raise ValueError("bench.gate: set the gate with the top-level `regression` section")
        return self

    def bench_config(self) -> BenchConfig:
        """The :class:`~edgekd.bench.BenchConfig` these settings state."""
        return BenchConfig(**{name: getattr(self, name) for name in BenchConfig.model_fields})


class HandoffSection(_Section):
    """How `edgekd run` decides whether a compression stage is carried forward (see :mod:`edgekd.pipeline._handoff`).

    Attributes:
        max_drop: the most the validation metric (``student.train.select_metric``) may fall below the parent's,
            in points (x100), for the child to be kept.
        rounds: interleaved rounds of the latency comparison (:func:`~edgekd.bench.compare_latency`); each model is
            timed ``bench.min_s / rounds`` seconds per round.
    """

    max_drop: float = Field(0.5, ge=0)
    rounds: int = Field(5, ge=2)


RegressionSection = GateConfig  # a benchmark baseline and budget to gate on (`edgekd bench --baseline`): exit 7


class ReportSection(_Section):
    """The HTML report: Grad-CAM sample, calibration operating point, augmentation grid.

    Attributes:
        enabled: write ``RUN/report/index.html``.
        gradcam_images: test images in the Grad-CAM comparison.
        gradcam_misclassified: how many of them are misclassified by some model (when there are that many).
        augment_samples: augmented training views in the augmentation grid.
    """

    enabled: bool = True
    gradcam_images: int = Field(12, ge=1)
    gradcam_misclassified: int = Field(4, ge=0)
    augment_samples: int = Field(16, ge=1)


class PipelineConfig(_Section):
    """One `edgekd run`: the stages from data to a reviewed edge bundle.

    Attributes:
        name: a label for tables and the report.
        data: data spec (``pneumoniamnist``, ``imagefolder:DIR,size=224``, ...).
        download: allow downloads (``tv:`` data, pretrained weights).
        seed: the base seed of every stage (training seeds are ``seed``, ``seed + 1``, ...).
        seeds: train the teacher (when trained here), the baseline and the student over this many seeds.
        target_sensitivity: the operating point: the threshold reaching it on validation, reported on test.
        prune, export, bench, regression: ``null`` leaves the stage out (the hand-off checks then measure with
            the default ``bench`` settings).
        quantize: one entry per target; an empty list leaves quantization out.
        handoff: the accuracy budget and rounds of the hand-off decisions.
        intended_use: what the models are meant for (``"modality=CR,DX body_part=CHEST"`` or a mapping
            ``{modality: [CR, DX], body_part: [CHEST]}``), recorded in every model card and bundle and enforced by
            ``edgekd predict`` / ``serve``; null: DICOM data records its training headers, other data none.
    """

    name: str = "run"
    data: str = "pneumoniamnist"
    download: bool = False
    seed: int = Field(0, ge=0)
    seeds: int = Field(1, ge=1)
    target_sensitivity: float = Field(0.95, gt=0, le=1)
    teacher: TeacherSection
    student: StudentSection
    distill: DistillSection = Field(default_factory=DistillSection)
    prune: PruneSection | None = None
    quantize: list[QuantizeSection] = Field(default_factory=lambda: [QuantizeSection()])
    export: ExportSection | None = Field(default_factory=ExportSection)
    bench: BenchSection | None = Field(default_factory=BenchSection)
    regression: RegressionSection | None = None
    handoff: HandoffSection = Field(default_factory=HandoffSection)
    report: ReportSection = Field(default_factory=ReportSection)
    intended_use: IntendedUse | None = None
    budget: BudgetSection | None = None  # search for the student under a latency budget (pipeline/_budget.py)

    @field_validator("intended_use", mode="before")
    @classmethod
    def _parse_intended_use(cls, value: Any) -> Any:
        if isinstance(value, (str, list, tuple)):
            return IntendedUse.parse(list(value) if not isinstance(value, str) else value) if value else None
        return value

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.budget is not None and (self.distill.baseline or self.seeds > 1):
            raise ValueError("budget: searches one student: set distill.baseline: false and seeds: 1")
        for where, train in (("teacher", self.teacher.train), ("student", self.student.train)):
            if "seed" in train.model_fields_set:
                raise ValueError(f"{where}.train.seed: set the run's seed with the top-level `seed` key")
        names = [q.stage_name for q in self.quantize]
        if len(set(names)) != len(names):
            raise ValueError(f"two quantize entries make the same stage ({', '.join(names)}): one per method/target")
        return self

    def resolved(self) -> dict[str, Any]:
        """The JSON-ready mapping saved as ``pipeline.yaml`` (it reads back through :func:`config_from_mapping`).

        The teacher's and student's ``train.seed`` are left out: the run's top-level ``seed`` sets them (a file that
        gives one is refused), so a saved file holding the default would not read back."""
        no_seed = {"train": {"seed"}}
        return self.model_dump(mode="json", exclude={"teacher": no_seed, "student": no_seed})


# ---------------------------------------------------------------------------------------------------------------
# Reading: YAML with line numbers, --set overrides, one-line errors naming the key and the line.


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).replace("-", "_"): _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _key_lines(text: str) -> dict[tuple, int]:
    """``{key path: 1-based line}`` for every mapping key and list item of a YAML document."""
    lines: dict[tuple, int] = {}

    def walk(node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = str(k.value).replace("-", "_")
                lines[(*path, key)] = k.start_mark.line + 1
                walk(v, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[(*path, i)] = v.start_mark.line + 1
                walk(v, (*path, i))

    walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    return lines


def parse_overrides(overrides: Sequence[str]) -> list[tuple[tuple[str, ...], Any]]:
    """``["student.train.epochs=3"]`` -> ``[(("student", "train", "epochs"), 3)]`` (values read as YAML).

    Raises:
        InvalidInputError: an item without ``=`` or with an empty key.
    """
    out = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        path = tuple(p.strip().replace("-", "_") for p in key.split("."))
        if not sep or not all(path):
            raise InvalidInputError(f"--set {item!r} is not KEY=VALUE", "e.g. --set student.train.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        out.append((path, _normal(value)))
    return out


def _apply(raw: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node: Any = raw
    for i, key in enumerate(path[:-1]):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise InvalidInputError(f"--set {'.'.join(path)}: {'.'.join(path[:i])} is not a mapping")
        if not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    last = path[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise InvalidInputError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a mapping")


def _model_at(model: type[BaseModel], path: Sequence) -> type[BaseModel] | None:
    """The pydantic model class that holds the keys at ``path`` below ``model`` (None when not a model)."""
    current: Any = model
    for key in path:
        if isinstance(key, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or key not in current.model_fields:
            return None
        current = _unwrap(current.model_fields[key].annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _error(e: ValidationError, source: str, lines: dict[tuple, int], overridden: set[tuple]) -> InvalidInputError:
    """One line for the first error: where (file line or --set), the key path, what is wrong."""
    err = e.errors()[0]
    loc = _key_path(err.get("loc", ()))
    key = ".".join(str(p) for p in loc) or "value"
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    prefixes = [loc[:i] for i in range(len(loc), 0, -1)]
    where = next((f"--set {'.'.join(map(str, p))}" for p in prefixes if p in overridden), None)
    if where is None:
        line = next((lines[p] for p in prefixes if p in lines), None)
        where = f"{source} line {line}" if line else source
    if err.get("type") == "extra_forbidden":
        holder = _model_at(PipelineConfig, loc[:-1])
        valid = sorted(holder.model_fields) if holder else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=2)
        hint = (
            f"did you mean {' or '.join(close)}?" if close else (f"valid keys: {', '.join(valid)}" if valid else None)
        )
        return InvalidInputError(f"{where}: unknown key {key}{more}", hint)
    msg = validation_message(e, "key").split(": ", 1)[-1]
    got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
    return InvalidInputError(f"{where}: {key}: {msg}{got}")


def _key_path(loc: Sequence) -> tuple:
    """A pydantic location without the type tags unions add (``list[str]``, ``function-after[...]``)."""
    out: list = []
    for i, part in enumerate(loc):
        holder = _model_at(PipelineConfig, out)
        if isinstance(part, int) or holder is None or part in holder.model_fields or i == len(loc) - 1:
            out.append(part)
    return tuple(out)


def config_from_mapping(
    raw: dict[str, Any],
    *,
    source: str = "config",
    lines: dict[tuple, int] | None = None,
    overrides: Sequence[str] = (),
) -> PipelineConfig:
    """Validate a mapping (a parsed pipeline file) after applying ``overrides``; see :func:`load_pipeline_config`."""
    raw = _normal(raw)
    overridden = set()
    for path, value in parse_overrides(overrides):
        _apply(raw, path, value)
        overridden.add(path)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise _error(e, source, lines or {}, overridden) from None


def load_pipeline_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML file (``safe_load``: a config never executes code), apply ``--set`` overrides, validate.

    Raises:
        ArtifactError: the file is missing or not UTF-8 text (exit 4).
        InvalidInputError: invalid YAML, an unknown key, a wrong type or value; the message names the key and
            the line of the file, or the ``--set`` that gave it (exit 3).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"pipeline file {path} does not exist", "pass a YAML file such as examples/pneumonia.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"pipeline file {path} is not UTF-8 text", "pass a YAML file") from None
    try:
        raw = yaml.safe_load(text) or {}
        lines = _key_lines(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise InvalidInputError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{path} must hold a mapping of key: value", "see examples/pneumonia.yaml")
    return config_from_mapping(raw, source=str(path), lines=lines, overrides=overrides)
