"""The run context of `edgekd run`: the output names, :class:`Stage`, and :class:`PipelineRunner` (the state of one run and
the skip / resume / run loop of one stage), which the stage executors (:mod:`._stages`) and
:func:`~edgekd.pipeline.run_pipeline` (:mod:`._run`) both use.

A :class:`Stage` carries its typed config (a pydantic model: the stage's own config class, e.g.
:class:`~edgekd.export.ExportConfig`, or a small model of what else it depends on) and the FP32 ``source`` it starts
from; its key (:func:`~edgekd.pipeline.stage_key`) is computed from that config's JSON, the source, the hashes of the
outputs it reads and, when it reads the data, the data's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgekd.bench import BenchConfig
from edgekd.data import DataBundle, load_data
from edgekd.distill import is_resumable
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export import read_manifest
from edgekd.modeldir import ModelCard, is_model_dir, read_card
from edgekd.pipeline._config import HandoffKeep, HandoffSection, KeepChoice, PipelineConfig
from edgekd.pipeline._handoff import KEEP_PREFIX
from edgekd.pipeline._state import StageRecord, artifact_hash, now, read_record, stage_key, write_record
from edgekd.prune import PruneConfig
from edgekd.quantize import QuantizeConfig
from edgekd.specs import ChannelMode, IntendedUse, current_command
from edgekd.students import count_macs
from edgekd.teachers import Teacher, load_teacher

__all__ = [
    "Stage",
    "PipelineRunner",
    "ReferenceStage",
    "ImportStage",
    "SelectStage",
    "PruneStage",
    "QuantizeStage",
    "HandoffStage",
    "EvalStage",
    "BenchStage",
    "ReportFn",
    "StageOutcome",
    "onnx_file",
    "clean_leftovers",
    "data_fingerprint",
    "artifact_size",
    "KD_FILE",
    "BENCH_FILE",
    "EVAL_DIR",
    "REPORT_FILE",
    "CONFIG_FILE",
    "SUMMARY_FILE",
]

CONFIG_FILE = "pipeline.yaml"
SUMMARY_FILE = "summary.json"

KD_FILE = "kd.json"
BENCH_FILE = "bench.json"
EVAL_DIR = "eval"
REPORT_FILE = "report/index.html"


class ReportFn(Protocol):
    """Writes the report of a finished run directory and returns the HTML file (e.g. ``edgekd.report.write_report``)."""

    def __call__(self, run_dir: str | os.PathLike, *, progress: bool = True) -> Path: ...


class StageOutcome(BaseModel):
    """What happened to a stage in this run: ``ran``, ``resumed`` or ``skipped`` (unchanged)."""

    name: str
    kind: str
    status: str
    seconds: float
    output: str
    output_sha256: str | None = None
    key: str


class _StageModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceStage(_StageModel):
    """``teacher`` given as a path: a model directory or an ONNX file, used as it is."""

    path: str
    onnx: bool


class ImportStage(_StageModel):
    """``teacher`` imported from a checkpoint of a registry architecture."""

    model: str
    checkpoint: str
    checkpoint_sha256: str | None
    data: str
    small_input: bool
    input_size: int | None
    channels: ChannelMode
    intended_use: IntendedUse | None = None


class SelectStage(_StageModel):
    """``select``: distilled against the no-teacher baseline on validation, and the diagnostics."""

    metric: str
    keep: KeepChoice
    augment: str
    samples: int
    seed: int


class PruneStage(_StageModel):
    """``pruned``: the pruning config, and who teaches recovery (a stage name; None: the unpruned parent)."""

    prune: PruneConfig
    recovery_teacher: str | None


class QuantizeStage(_StageModel):
    """``int8-TARGET`` / ``fp16-TARGET``: one quantization target and the operating point's sensitivity."""

    quantize: QuantizeConfig
    target_sensitivity: float


class HandoffStage(_StageModel):
    """``keep-CHILD``: is ``child`` (a table row; its file of ``precision``) carried forward over its FP32 parent?"""

    child: str
    child_source: str
    precision: str | None
    keep: HandoffKeep
    device: str | None
    metric: str
    handoff: HandoffSection
    bench: BenchConfig


class EvalStage(_StageModel):
    """``eval-NAME``: metrics, ECE, operating point and logits of one artifact (its file of ``precision``)."""

    precision: str | None
    target_sensitivity: float


class BenchStage(_StageModel):
    """``bench``: the benchmark of the table's artifacts (row stage, source stage, precision)."""

    rows: list[tuple[str, str, str | None]]
    bench: BenchConfig


@dataclass(frozen=True)
class Stage:
    """One stage: ``execute(runner, stage, resume) -> result summary`` writes ``output``.

    Attributes:
        name, kind, output: the stage, what it does, where its output goes (relative to the run directory).
        config: its typed config (what its key hashes, with ``source``); None for a stage that depends on its
            inputs alone.
        execute: the executor (:mod:`._stages`).
        inputs: the stages whose outputs it reads (their hashes join its key).
        source: the FP32 stage a compression, export, evaluation or hand-off stage starts from.
        carry: the compression stage whose hand-off decision picks ``source`` at run time (see :mod:`._stages`);
            the runner fills ``source`` in before computing the key.
        uses_data: it reads the data (the data's fingerprint joins its key).
        resumable: an interrupted run continues from its checkpoint.
    """

    name: str
    kind: str
    output: str
    config: BaseModel | None
    execute: Callable[[PipelineRunner, Stage, bool], dict[str, Any]]
    inputs: tuple[str, ...] = ()
    source: str | None = None
    carry: str | None = None
    uses_data: bool = False
    resumable: bool = False

    @property
    def settings(self) -> dict[str, Any]:
        """What the key hashes and ``RUN/stages/NAME.json`` records: the config's JSON and the source."""
        out = self.config.model_dump(mode="json") if self.config is not None else {}
        return {**out, "source": self.source} if self.source is not None else out


class PipelineRunner:
    """The state of one `edgekd run`: configuration, run directory, data, stage records (used by the stages)."""

    def __init__(
        self, cfg: PipelineConfig, root: Path, *, report: ReportFn | None, progress: bool, log: Callable[[str], None]
    ) -> None:
        self.cfg, self.root, self.report_fn, self.progress, self.log = cfg, root, report, progress, log
        self.records: dict[str, StageRecord] = {}
        self.outcomes: list[StageOutcome] = []
        self.stages: dict[str, Stage] = {}
        self.val_cache: dict[tuple[str, str | None], dict[str, Any]] = {}  # validation metrics per artifact

    @cached_property
    def data(self) -> DataBundle:
        return load_data(self.cfg.data, download=self.cfg.download, seed=self.cfg.seed)

    @cached_property
    def data_fingerprint(self) -> str:
        return data_fingerprint(self.data)

    def path(self, output: str) -> Path:
        return Path(output) if Path(output).is_absolute() else self.root / output

    def command(self, st: Stage) -> str:
        return f"{current_command() or 'edgekd.pipeline.run_pipeline'}  # stage {st.name} of {self.root}"

    def teacher_ref(self, name: str) -> str:
        """How the training engine names the output of stage ``name`` as a teacher (``onnx:`` for ONNX files)."""
        st = self.stages[name]
        path = self.path(st.output)
        onnx = isinstance(st.config, ReferenceStage) and st.config.onnx
        return f"onnx:{path}" if onnx else str(path)

    def load(self, name: str) -> Teacher:
        return load_teacher(self.teacher_ref(name), data=self.data, trust_pickle=self.cfg.teacher.trust_pickle)

    def card(self, name: str) -> ModelCard | None:
        path = self.path(self.stages[name].output)
        return read_card(path) if is_model_dir(path) else None

    def chosen(self) -> str:
        kd = json.loads(self.path(KD_FILE).read_text())
        return kd["chosen"]

    def final_fp32(self, source: str) -> Path:
        """The FP32 model directory a compression stage starts from (``select``: the chosen student)."""
        return self.path(self.chosen() if source == "select" else self.stages[source].output)

    def carried(self, name: str) -> str:
        """The FP32 stage carried forward after compression stage ``name``: ``name`` when its hand-off decision
        (``keep-NAME``, already run or skipped) kept it, else what it was measured against (``select``...)."""
        rec = self.records.get(KEEP_PREFIX + name)
        if rec is None or "kept" not in rec.result:
            raise ArtifactError(f"stage {name} has no hand-off decision yet", "the run's plan is out of order")
        return name if rec.result["kept"] else rec.settings["source"]

    def resolve(self, st: Stage) -> Stage:
        """``st`` with its FP32 source filled in when a hand-off decision picks it (``Stage.carry``)."""
        if st.carry is None:
            return st
        source = self.carried(st.carry)
        st = replace(st, source=source, inputs=tuple(dict.fromkeys((*st.inputs, source))))
        self.stages[st.name] = st
        return st

    def artifact_path(self, source: str, precision: str | None) -> Path:
        path = self.path(self.stages[source].output)
        return onnx_file(path, precision) if precision else path

    def artifact(self, name: str, source: str, precision: str | None) -> tuple[Teacher, dict[str, Any]]:
        """The artifact of a table row as a runnable model, and its params, MACs and size."""
        path = self.artifact_path(source, precision)
        if precision:
            m = read_manifest(path.parent)
            model = load_teacher(f"onnx:{path}", data=self.data)
            info = {"kind": "onnx", "params": m.params, "macs": m.macs, "size_bytes": path.stat().st_size}
            fp32 = self.stages[source].source  # the FP32 model it was made from (resolved)
            if info["macs"] is None and fp32 in self.stages:  # a card without MACs: the same graph's, counted
                info["macs"] = self._fp32_macs(fp32)
        else:
            model = self.load(source)
            card = self.card(source)
            info = {
                "kind": "model_dir" if card else "onnx",
                "params": card.params if card else None,
                "macs": card.macs if card else None,
                "size_bytes": artifact_size(path),
            }
            if card and card.macs is None:
                info["macs"] = _count_macs(model, card)
        return model, {**info, "artifact": self.rel(path), "precision": precision or "fp32"}

    def _fp32_macs(self, source: str) -> int | None:
        path = self.final_fp32(source)
        card = read_card(path)
        return card.macs if card.macs is not None else _count_macs(load_teacher(str(path), data=self.data), card)

    def rel(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def write_report(self) -> Path:
        if self.report_fn is None:
            raise InvalidInputError("no report function given", "pass report=edgekd.report.write_report")
        return self.report_fn(self.root, progress=self.progress)

    # -- the loop ----------------------------------------------------------------------------------------------

    def execute(self, st: Stage) -> None:
        """Skip, resume or run one stage (see the module docstring) and record what happened."""
        st = self.resolve(st)
        inputs = {n: self.records[n].output_sha256 or "" for n in st.inputs}
        if st.uses_data:  # the data's content, not only its name, decides the stage
            inputs["data"] = self.data_fingerprint
        key = stage_key(st.settings, inputs)
        rec, out = read_record(self.root, st.name), self.path(st.output)
        if (
            rec is not None
            and rec.done
            and rec.key == key
            and rec.output_sha256
            and artifact_hash(out) == rec.output_sha256
        ):
            self.records[st.name] = rec
            self.outcomes.append(
                StageOutcome(
                    name=st.name,
                    kind=st.kind,
                    status="skipped",
                    seconds=0.0,
                    output=rec.output,
                    output_sha256=rec.output_sha256,
                    key=key,
                )
            )
            self.log(f"[dim]{st.name}: unchanged, skipped[/]")
            return
        resume = bool(rec is not None and not rec.done and rec.key == key and st.resumable and is_resumable(out))
        self.log(
            f"[bold]{st.name}[/]: {'resuming the interrupted ' + st.kind if resume else st.kind} -> {self.rel(out)}"
        )
        if self.root.resolve() in out.resolve().parents:
            clean_leftovers(self.root, self.rel(out))
        record = StageRecord(
            name=st.name,
            kind=st.kind,
            key=key,
            settings=st.settings,
            inputs=inputs,
            output=self.rel(out),
            resumed=resume,
        )
        write_record(self.root, record)
        t0 = time.perf_counter()
        result = st.execute(self, st, resume)
        seconds = time.perf_counter() - t0
        record = record.model_copy(
            update={
                "status": "done",
                "output_sha256": artifact_hash(out),
                "finished": now(),
                "seconds": seconds,
                "result": result,
            }
        )
        write_record(self.root, record)
        self.records[st.name] = record
        self.outcomes.append(
            StageOutcome(
                name=st.name,
                kind=st.kind,
                status="resumed" if resume else "ran",
                seconds=seconds,
                output=record.output,
                output_sha256=record.output_sha256,
                key=key,
            )
        )


def data_fingerprint(data: DataBundle) -> str:
    """sha256 over each split's size, labels and content: the pixels of in-memory data, the path, size and
    modification time of each file of file-backed data (an edited image folder changes the key)."""
    h = hashlib.sha256(data.spec.encode())
    for split in ("train", "val", "test"):
        ds = data.split(split)
        h.update(f"|{split}|{len(ds)}|".encode())
        h.update(np.ascontiguousarray(data.labels(split)).tobytes())
        images, paths = getattr(ds, "images", None), getattr(ds, "paths", None)
        if isinstance(images, np.ndarray):
            h.update(np.ascontiguousarray(images).tobytes())
        elif paths is not None:
            for f in paths:
                st = os.stat(f)
                h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def artifact_size(path: Path) -> int | None:
    if path.is_file():
        return path.stat().st_size
    weights = path / "model.safetensors"
    return weights.stat().st_size if weights.is_file() else None


def _count_macs(model: Teacher, card: ModelCard) -> int | None:
    pre = card.preprocess
    return count_macs(model.model, (1, pre.in_chans, *pre.input_size)) if model.model is not None else None


def onnx_file(bundle: Path, precision: str) -> Path:
    """The ONNX file of ``precision`` in a bundle."""
    manifest = read_manifest(bundle)
    for f in manifest.model_files():
        if f.precision is not None and f.precision.value == precision and f.name.endswith(".onnx"):
            return bundle / f.name
    raise FileNotFoundError(f"{bundle} has no {precision} ONNX file")


def clean_leftovers(root: Path, output: str) -> None:
    """Remove temporary directories a killed stage left beside its output (``.NAME.*.tmp``, ``.NAME.old``)."""
    out = root / output
    for p in list(out.parent.glob(f".{out.name}.*.tmp")) + [out.with_name(f".{out.name}.old")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
