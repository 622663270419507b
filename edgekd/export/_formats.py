"""The export formats, one table (after Ultralytics ``export_formats()``), and :class:`ExportConfig`.

Each format is one :class:`ExportFormat` entry of :data:`FORMATS`: its name, what it is, the file it adds to a
bundle, the extra it needs, whether it needs a GPU, and the function that writes it. There are two kinds:

* ``file``: a model file inside the bundle (``model.onnx``, ``model.fp16.onnx``, ``model.engine``). Its writer
  takes the :class:`FileJob` of the bundle being written (model, card, settings, parity samples, the files made so
  far) and returns the files it made. ONNX graphs are made first (the TensorRT lint then runs on them), the other
  file formats after, each in table order;
* ``output``: the whole output is something else, made from a bundle: a Triton model repository, a MONAI Bundle.
  Its writer takes an :class:`OutputJob` (the bundle, ``out``, the settings) and returns the manifest to report.
  ``picks`` lists the file formats that may go with it to choose which file of the bundle it ships.

Adding a format is one entry here plus its writer function. :class:`ExportConfig` is the one typed config of
`edgekd export` (the CLI, :func:`~edgekd.export.export_bundle` and the ``export:`` section of `edgekd run` share
it): the single source of the export defaults and their validation.

Example:
    >>> [f.name for f in FORMATS.values() if f.kind is FormatKind.FILE]
    ['onnx', 'onnx-fp16', 'engine', 'openvino', 'executorch']
    >>> ExportConfig(formats="onnx,onnx-fp16").formats
    ['onnx', 'onnx-fp16']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator
from torch import nn

from edgekd._config import StageConfig
from edgekd.errors import InvalidInputError, VerificationError
from edgekd.export._bundle import BundleFile
from edgekd.export._executorch import add_executorch, require_executorch, write_executorch
from edgekd.export._fp16 import to_fp16
from edgekd.export._manifest import Manifest
from edgekd.export._monai import export_monai_bundle, require_monai
from edgekd.export._onnx import EXPORTERS, MAX_OPSET, MIN_OPSET, export_onnx
from edgekd.export._openvino import add_openvino, require_openvino, write_openvino
from edgekd.export._parity import ParityResult, Samples, parity_check
from edgekd.export._tensorrt import build_engine, require_tensorrt, sidecar_path
from edgekd.export._triton import export_triton
from edgekd.export._types import Precision
from edgekd.modeldir import ModelCard

__all__ = [
    "ExportConfig",
    "ExportFormat",
    "FormatKind",
    "FileJob",
    "OutputJob",
    "FORMATS",
    "CHECKS",
    "DEFAULT_TIMING_CACHE",
    "parse_formats",
    "split_list",
]

CHECKS = ("tensorrt",)
DEFAULT_TIMING_CACHE = Path("~/.cache/edgekd/tensorrt-timing.cache")
BASE_NAME = "model"  # every model file of a bundle is BASE_NAME + its format's suffix


class FormatKind(str, Enum):
    """What a format is: a model file inside the bundle, or the kind of the whole output."""

    FILE = "file"
    OUTPUT = "output"


@dataclass
class FileJob:
    """The bundle being written, as the ``file`` writers see it.

    Attributes:
        work: the scratch directory the files are written to (copied into the bundle at the end).
        model, card: the PyTorch model and its card (params and MACs filled in).
        cfg: the export settings.
        samples, ref: the parity samples and the PyTorch logits for them.
        say: one line per step.
        made: every file made so far, in order; ``shipped`` holds the names of those that go into the bundle.
        parity: the parity result of every ONNX graph made.
        exporter: how the ONNX graph was made (:func:`~edgekd.export.export_onnx`'s record).
        extra, versions: additions to ``manifest["extra"]`` and ``manifest["versions"]``.
    """

    work: Path
    model: nn.Module
    card: ModelCard
    cfg: ExportConfig
    samples: Samples
    ref: np.ndarray
    say: Callable[[str], None]
    made: list[BundleFile] = field(default_factory=list)
    shipped: set[str] = field(default_factory=set)
    parity: list[ParityResult] = field(default_factory=list)
    exporter: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def path(self, fmt: str) -> Path:
        return self.work / f"{BASE_NAME}{FORMATS[fmt].suffix}"

    def onnx_files(self) -> list[BundleFile]:
        return [f for f in self.made if f.kind == "onnx"]

    def ship(self, f: BundleFile) -> None:
        """Put ``f`` into the bundle even when its format was not asked for (e.g. the ONNX an engine is built from)."""
        self.shipped.add(f.name)

    def check_parity(self, f: BundleFile) -> BundleFile:
        """Compare ``f`` (an ONNX file) with the PyTorch model on the parity samples; a failure raises."""
        res = parity_check(
            f.source,
            None,
            self.card,
            samples=self.samples.inputs,
            reference_logits=self.ref,
            precision=f.precision,
            sample_source=self.samples.source,
        )
        if not res.passed:
            raise VerificationError(
                res.summary(),
                "the exported graph does not reproduce the PyTorch model; try "
                "--no-simplify or another --opset (EDGEKD_DEBUG=1 for details)",
            )
        self.parity.append(res)
        return f


@dataclass(frozen=True)
class OutputJob:
    """An ``output`` export, as its writer sees it.

    Attributes:
        bundle: the bundle it is made from (given, or exported from a model directory just before).
        out: where the output goes.
        cfg: the export settings.
        pick: the file format given with it to choose the bundle's file (None: the writer's default).
        source: the model directory the bundle was exported from here (None: the bundle was given).
        overwrite: replace an earlier edgekd output.
        say: one line per step.
    """

    bundle: Path
    out: Path
    cfg: ExportConfig
    pick: ExportFormat | None
    source: str | None
    overwrite: bool
    say: Callable[[str], None]


@dataclass(frozen=True)
class ExportFormat:
    """One export format (an entry of :data:`FORMATS`).

    Attributes:
        name: what ``--format`` takes.
        kind: a file inside the bundle, or the kind of the whole output (:class:`FormatKind`).
        description: what it is, in a few words (``edgekd export --help`` lists them).
        write: the writer (``FileJob -> list[BundleFile]`` for files, ``OutputJob -> Manifest`` for outputs).
        suffix: the file's name in the bundle is ``model`` + suffix (files only).
        onnx: the file is an ONNX graph (parity-checked, linted, runnable by ONNX Runtime).
        always: made for every bundle (the graph the others derive from); shipped only when asked for.
        precision: the precision of its file (None: that of the graph it is built from).
        target: the deployment target a bundle holding it is for (None: ``onnxruntime``).
        extra: the ``pip install 'edgekd[EXTRA]'`` it needs (None: the base install).
        requires: checked before any work; raises :class:`~edgekd.errors.DependencyError` when unavailable.
        gpu: writing it needs a GPU.
        picks: outputs only: the file formats that may go with it (at most one) to choose the bundle's file;
            empty: it is exported alone.
        owns_out: outputs only: ``out`` is the output itself (checked like a bundle directory), not a folder it
            writes into.
        extend: files only: adds the format to an existing bundle (``(bundle, cfg, say) -> Manifest``), so
            ``edgekd export BUNDLE --format openvino`` converts a quantized bundle's files; None: from a model
            directory only.
    """

    name: str
    kind: FormatKind
    description: str
    write: Callable[..., Any]
    suffix: str = ""
    onnx: bool = False
    always: bool = False
    precision: Precision | None = None
    target: str | None = None
    extra: str | None = None
    requires: Callable[[], Any] | None = None
    gpu: bool = False
    picks: tuple[str, ...] = ()
    owns_out: bool = True
    extend: Callable[..., Manifest] | None = None


# ---------------------------------------------------------------------------------------------------------------
# The writers


def write_onnx(job: FileJob) -> list[BundleFile]:
    """``model.onnx``: the exported, simplified and checked graph (FP32, or INT8 for a fake-quantized model)."""
    path, cfg = job.path("onnx"), job.cfg
    job.exporter = export_onnx(
        job.model,
        job.card,
        path,
        opset=cfg.opset,
        dynamic_batch=not cfg.static,
        simplify=cfg.simplify,
        exporter=cfg.exporter,
    )
    # A fake-quantized model is an INT8 model: judged by top-1 agreement, not by FP32 logit error.
    precision = Precision.INT8 if job.exporter["fake_quant"] else Precision.FP32
    return [job.check_parity(BundleFile(source=path, name=path.name, kind="onnx", precision=precision))]


def write_onnx_fp16(job: FileJob) -> list[BundleFile]:
    """``model.fp16.onnx``: the graph with FP16 weights and compute, FP32 inputs and outputs."""
    path = job.path("onnx-fp16")
    to_fp16(job.onnx_files()[0].source, path)
    return [job.check_parity(BundleFile(source=path, name=path.name, kind="onnx", precision=Precision.FP16))]


def write_engine(job: FileJob) -> list[BundleFile]:
    """``model.engine`` (+ its JSON sidecar), built from the last ONNX graph made, which ships with it: an engine
    only runs on one GPU and TensorRT version."""
    onnx, path, cfg = job.onnx_files()[-1], job.path("engine"), job.cfg
    job.ship(onnx)
    job.say("building the TensorRT engine")
    job.extra["engine"] = build_engine(
        onnx.source,
        path,
        min_batch=cfg.min_batch,
        opt_batch=cfg.opt_batch,
        max_batch=cfg.max_batch,
        workspace_mb=cfg.workspace_mb,
        timing_cache=cfg.timing_cache,
    )
    job.versions["tensorrt"] = require_tensorrt().__version__
    return [
        BundleFile(source=path, name=path.name, kind="engine", precision=onnx.precision),
        BundleFile(source=sidecar_path(path), name=sidecar_path(path).name, kind="engine-meta"),
    ]


def write_triton(job: OutputJob) -> Manifest:
    """A Triton model repository entry (:func:`~edgekd.export.export_triton`) of one ONNX file of the bundle:
    the picked format's, else the bundle's first (INT8 for a quantized bundle; FP32 for one exported here); with
    ``openvino`` picked, the bundle's OpenVINO IR for Triton's OpenVINO backend (``backend: "openvino"``)."""
    precision = job.pick.precision.value if job.pick and job.pick.precision else None
    if job.source is not None:
        precision = precision or Precision.FP32.value
    backend = "openvino" if job.pick is not None and job.pick.name == "openvino" else "onnxruntime"
    return export_triton(
        job.bundle,
        job.out,
        precision=precision,
        max_batch=job.cfg.max_batch,
        overwrite=job.overwrite,
        source=job.source,
        log=job.say,
        backend=backend,
    )


def write_monai(job: OutputJob) -> Manifest:
    """A MONAI Bundle (:func:`~edgekd.export.export_monai_bundle`) with the bundle's ONNX files."""
    return export_monai_bundle(job.bundle, job.out, source=job.source, overwrite=job.overwrite, log=job.say)


def extend_openvino(bundle: Path, cfg: ExportConfig, say: Callable[[str], None]) -> Manifest:
    """``openvino`` on a bundle: IR of its FP32/INT8 ONNX files (:func:`~edgekd.export._openvino.add_openvino`)."""
    return add_openvino(bundle, log=say)


def extend_executorch(bundle: Path, cfg: ExportConfig, say: Callable[[str], None]) -> Manifest:
    """``executorch`` on a bundle: programs of its source model, INT8 by PT2E for a PTQ bundle
    (:func:`~edgekd.export._executorch.add_executorch`)."""
    return add_executorch(bundle, max_batch=cfg.max_batch, log=say)


# ---------------------------------------------------------------------------------------------------------------
# The table


def _table(*formats: ExportFormat) -> dict[str, ExportFormat]:
    return {f.name: f for f in formats}


FORMATS: dict[str, ExportFormat] = _table(
    ExportFormat(
        "onnx",
        FormatKind.FILE,
        "FP32 ONNX graph, always exported as the parity reference",
        write_onnx,
        suffix=".onnx",
        onnx=True,
        always=True,
        precision=Precision.FP32,
    ),
    ExportFormat(
        "onnx-fp16",
        FormatKind.FILE,
        "FP16 ONNX graph, FP32 inputs and outputs",
        write_onnx_fp16,
        suffix=".fp16.onnx",
        onnx=True,
        precision=Precision.FP16,
    ),
    ExportFormat(
        "engine",
        FormatKind.FILE,
        "TensorRT engine, needs a GPU",
        write_engine,
        suffix=".engine",
        target="tensorrt",
        extra="tensorrt",
        requires=require_tensorrt,
        gpu=True,
    ),
    ExportFormat(
        "openvino",
        FormatKind.FILE,
        "OpenVINO IR (model.xml/.bin) of each FP32/INT8 ONNX graph",
        write_openvino,
        suffix=".xml",
        extra="openvino",
        requires=require_openvino,
        extend=extend_openvino,
    ),
    ExportFormat(
        "executorch",
        FormatKind.FILE,
        "ExecuTorch program (XNNPACK), dynamic batch up to max-batch",
        write_executorch,
        suffix=".pte",
        extra="executorch",
        requires=require_executorch,
        extend=extend_executorch,
    ),
    ExportFormat(
        "triton",
        FormatKind.OUTPUT,
        "Triton model repository",
        write_triton,
        target="triton",
        picks=("onnx", "onnx-fp16", "openvino"),
        owns_out=False,
    ),
    ExportFormat(
        "monai-bundle",
        FormatKind.OUTPUT,
        "MONAI Bundle",
        write_monai,
        target="monai",
        extra="monai",
        requires=require_monai,
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# The config


def split_list(values: str | Sequence[str]) -> list[str]:
    """``"a, b"`` or ``["a", "b,c"]`` -> de-duplicated, lower-case items."""
    items = values.split(",") if isinstance(values, str) else [p for v in values for p in str(v).split(",")]
    return list(dict.fromkeys(v.strip().lower() for v in items if v.strip()))


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    """``"onnx,onnx-fp16"`` or a list -> validated, de-duplicated formats (an unknown one names the valid ones).

    Example:
        >>> parse_formats("onnx, engine")
        ['onnx', 'engine']
    """
    out = split_list(formats)
    bad = [f for f in out if f not in FORMATS]
    if bad or not out:
        raise InvalidInputError(f"unknown export format {bad[0] if bad else ''!r}", f"use {', '.join(FORMATS)}")
    return out


def _check_combination(names: list[str]) -> None:
    """At most one output kind, alone or with one of the file formats it ``picks``."""
    outputs = [FORMATS[n] for n in names if FORMATS[n].kind is FormatKind.OUTPUT]
    if len(outputs) > 1:
        raise ValueError(f"{' and '.join(f.name for f in outputs)} are separate outputs: export them one at a time")
    if not outputs:
        return
    out, rest = outputs[0], [n for n in names if n != outputs[0].name]
    if not out.picks and rest:
        raise ValueError(f"--format {out.name} is exported alone: run edgekd export once per format")
    if len(rest) > 1 or any(n not in out.picks for n in rest):
        raise ValueError(
            f"--format {','.join(names)}: a {out.description} holds one ONNX model; use {out.name} "
            f"alone, or with {' or '.join(out.picks)} to pick the precision"
        )


class ExportConfig(StageConfig):
    """Settings of `edgekd export` (CLI flags, ``--config`` YAML, :func:`~edgekd.export.export_bundle`, and the
    ``export:`` section of `edgekd run`).

    Attributes:
        formats: :data:`FORMATS` names: ``onnx`` (FP32; always exported, shipped when listed), ``onnx-fp16``,
            ``engine``; or one output kind: ``triton`` (a Triton model repository at ``out`` from a model
            directory or a bundle; ``max_batch`` is its ``max_batch_size``; ``onnx`` / ``onnx-fp16`` next to it pick
            the file) or ``monai-bundle`` alone (needs ``edgekd[monai]``). A comma-separated string is accepted.
        opset: ONNX opset (TensorRT 10 parses 9..20).
        static: fix the batch dimension to 1 instead of a dynamic batch.
        simplify: clean the graph with onnxslim.
        exporter: ``auto``, ``torchscript`` or ``dynamo`` (see :func:`~edgekd.export.export_onnx`).
        data: data spec of the parity samples (default: the model's training data, else synthetic).
        n_samples: parity samples.
        check: ``["tensorrt"]`` runs the TensorRT lint on the ONNX files and fails on errors.
        min_batch, opt_batch, max_batch: the TensorRT optimization profile of a dynamic batch.
        workspace_mb: the TensorRT builder's workspace limit (MiB).
        timing_cache: the TensorRT timing cache reused across engine builds (None: none).
        target_sensitivity: binary tasks: store the operating threshold reaching this sensitivity on the
            validation split (by the bundle's first ONNX file) in ``manifest.extra.operating_point``, which
            ``edgekd predict`` / ``serve`` then decide at. The out-of-distribution reference
            (``drift_reference.npz``) is computed on the same pass whenever the data loads.
    """

    formats: list[str] = Field(default_factory=lambda: ["onnx"])
    opset: int = Field(17, ge=MIN_OPSET, le=MAX_OPSET)
    static: bool = False
    simplify: bool = True
    exporter: str = "auto"
    data: str | None = None
    n_samples: int = Field(64, ge=1)
    check: list[str] = Field(default_factory=list)
    min_batch: int = Field(1, ge=1)
    opt_batch: int = Field(8, ge=1)
    max_batch: int = Field(32, ge=1)
    workspace_mb: int = Field(1024, ge=1)
    timing_cache: Path | None = DEFAULT_TIMING_CACHE
    target_sensitivity: float | None = Field(None, gt=0, lt=1)

    @field_validator("formats", mode="before")
    @classmethod
    def _formats(cls, v: Any) -> Any:
        if isinstance(v, (str, list, tuple)):
            out = split_list(v)
            bad = [f for f in out if f not in FORMATS]
            if bad or not out:
                raise ValueError(f"unknown export format {bad[0] if bad else ''!r}; use {', '.join(FORMATS)}")
            _check_combination(out)
            return out
        return v

    @field_validator("check", mode="before")
    @classmethod
    def _checks(cls, v: Any) -> Any:
        if isinstance(v, (str, list, tuple)):
            out = split_list(v)
            bad = [c for c in out if c not in CHECKS]
            if bad:
                raise ValueError(f"unknown check {bad[0]!r}; use {', '.join(CHECKS)}")
            return out
        return v

    @field_validator("exporter")
    @classmethod
    def _exporter(cls, v: str) -> str:
        if v not in EXPORTERS:
            raise ValueError(f"unknown exporter {v!r}; use one of {', '.join(EXPORTERS)}")
        return v

    @model_validator(mode="after")
    def _profile(self) -> ExportConfig:
        if not self.min_batch <= self.opt_batch <= self.max_batch and not self.output:
            raise ValueError(
                f"need 1 <= min-batch <= opt-batch <= max-batch, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        return self

    @property
    def selected(self) -> list[ExportFormat]:
        """The :data:`FORMATS` entries of ``formats``, in the order given."""
        return [FORMATS[n] for n in self.formats]

    @property
    def output(self) -> ExportFormat | None:
        """The output kind asked for (``triton``, ``monai-bundle``), or None for a bundle."""
        return next((f for f in self.selected if f.kind is FormatKind.OUTPUT), None)

    def profile(self) -> dict[str, int] | None:
        """The TensorRT optimization profile of a dynamic batch (``None`` for a static export)."""
        return (
            None
            if self.static
            else {"min_batch": self.min_batch, "opt_batch": self.opt_batch, "max_batch": self.max_batch}
        )
