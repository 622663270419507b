"""The device latency table: every candidate of a space timed on *this* device with random weights.

Weights do not change how long a dense network takes, so no data, teacher or training is needed (`edgekd device
profile` runs on the target alone: a Jetson or an ARM box is profiled there and the search runs elsewhere with
``--device-table``). Each architecture is built with random weights and written as the file its runtime runs:
an FP32 ONNX export, its FP16 conversion (:func:`edgekd.export.to_fp16`), the INT8 QDQ file of the quantization
target's default scheme calibrated on random inputs (:func:`edgekd.quantize.quantize_onnx`), or an OpenVINO /
ExecuTorch bundle (:func:`edgekd.export.export_bundle`); then everything is timed by :func:`edgekd.bench.benchmark`
in one call (warm-up, timed loop, percentiles; the same machine state for all), at each batch size.

The JSON records the device fingerprint (CPU model, ISA flags, threads), the runtime versions, the input shape,
each candidate's spec, MACs, parameters, activation bytes, layer count and its latency percentiles.

Example:
    >>> table = profile_device(default_space(), ProfileSettings(batches=[1, 32]))
    >>> write_table(table, "device.json")
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from edgekd._config import StageConfig
from edgekd._io import atomic_write_text
from edgekd.bench import BenchSettings, benchmark, capture_environment
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export import ExportConfig, export_bundle, export_onnx, to_fp16
from edgekd.modeldir import save_model_dir
from edgekd.quantize import CalibrationReader, get_target, prepare_onnx, quantize_onnx
from edgekd.search._space import Architecture, Candidate, Precision, SearchSpace, enumerate_candidates
from edgekd.specs import Lineage, ModelCard, ModelSpec, Preprocess, Task
from edgekd.students import build_model, count_macs, count_params

__all__ = [
    "TABLE_FORMAT",
    "ProfileSettings",
    "TableEntry",
    "DeviceTable",
    "profile_device",
    "write_table",
    "read_table",
    "arch_features",
    "count_layers",
    "random_card",
    "check_shape",
]

TABLE_FORMAT = 1
PERCENTILES = ("p50", "p90", "p95", "p99")


class ProfileSettings(StageConfig):
    """How a device is profiled (the ``profile:`` section of a search config).

    Attributes:
        batches: batch sizes to time (a search reads the entries at its budget's batch).
        input_shape: ``[C, H, W]`` of the model input (the search checks it against its data).
        num_classes: classifier outputs.
        target: the INT8 quantization target whose default scheme INT8 candidates use (``edgekd quantize
            --help`` lists them).
        threads: runtime threads (None: the physical core count, as `edgekd bench`).
        min_s, min_iters, warmup_s: the timing loop per candidate and batch.
    """

    model_config = ConfigDict(frozen=True)

    batches: list[int] = Field(default_factory=lambda: [1], min_length=1)
    input_shape: list[int] = Field(default_factory=lambda: [1, 28, 28], min_length=3, max_length=3)
    num_classes: int = Field(2, ge=1)
    target: str = "cpu-x86"
    threads: int | None = Field(None, ge=1)
    min_s: float = Field(0.5, ge=0)
    min_iters: int = Field(20, ge=1)
    warmup_s: float = Field(0.2, ge=0)


class TableEntry(BaseModel):
    """One candidate at one batch size: what it is, how big, and how long it took (milliseconds)."""

    key: str
    label: str
    candidate: Candidate
    batch: int
    macs: int
    params: int
    act_bytes: int
    layers: int | None = None  # convolutions and linear layers (one kernel launch each); None in older tables
    percentiles: dict[str, float]
    mean_ms: float
    n: int
    cv: float
    options: dict[str, Any] = Field(default_factory=dict)


class DeviceTable(BaseModel):
    """The device latency table (``device.json``)."""

    format: int = TABLE_FORMAT
    device: dict[str, Any]
    runtimes: dict[str, str]
    input_shape: list[int]
    num_classes: int
    target: str
    scheme: str
    settings: dict[str, Any]
    entries: list[TableEntry]

    def lookup(self, candidate: Candidate, batch: int) -> TableEntry | None:
        for e in self.entries:
            if e.key == candidate.key and e.batch == batch:
                return e
        return None


def random_card(arch: Architecture, shape: Sequence[int], num_classes: int) -> ModelCard:
    c, h, w = (int(s) for s in shape)
    spec = ModelSpec(name=arch.model, num_classes=num_classes, in_chans=c, kwargs=arch.kwargs)
    pre = Preprocess(input_size=(h, w), data_channels=c, in_chans=c, mean=(0.5,) * c, std=(0.5,) * c)
    task = Task.BINARY if num_classes == 2 else Task.MULTICLASS
    labels = [f"class{i}" for i in range(num_classes)]
    return ModelCard(spec=spec, task=task, label_names=labels, preprocess=pre, lineage=Lineage(stage="random"))


def count_layers(model: torch.nn.Module) -> int:
    """Convolutions and linear layers: each is one kernel call at run time (normalisation and activations fold
    into them), whose fixed cost dominates a small network's latency."""
    return sum(
        isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)) for m in model.modules()
    )


def arch_features(model: torch.nn.Module, shape: Sequence[int]) -> tuple[int, int, int]:
    """MACs, parameters and activation bytes (FP32 outputs of every leaf module) of one sample."""
    total = [0]

    def hook(_m, _inp, out) -> None:
        if isinstance(out, torch.Tensor):
            total[0] += out.numel() * 4

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    finally:
        for h in handles:
            h.remove()
    return count_macs(model, (1, *shape)), count_params(model), total[0]


def _random_inputs(shape: Sequence[int], n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)


def _files(
    arch: Architecture, cands: list[Candidate], cfg: ProfileSettings, work: Path
) -> tuple[dict[str, tuple[Path, str, str | None]], tuple[int, int, int, int]]:
    """The file each candidate of ``arch`` runs (path, backend, bundle precision) and the arch's features (MACs,
    parameters, activation bytes, layers)."""
    torch.manual_seed(0)
    card = random_card(arch, cfg.input_shape, cfg.num_classes)
    model = build_model(card.spec).eval()
    feats = (*arch_features(model, cfg.input_shape), count_layers(model))
    out: dict[str, tuple[Path, str, str | None]] = {}
    fp32 = work / f"{arch.key}-fp32.onnx"
    export_onnx(model, card, fp32)
    for c in cands:
        if c.runtime == "ort" and c.precision is Precision.FP32:
            out[c.key] = (fp32, "ort", None)
        elif c.runtime == "ort" and c.precision is Precision.FP16:
            to_fp16(fp32, work / f"{arch.key}-fp16.onnx")
            out[c.key] = (work / f"{arch.key}-fp16.onnx", "ort", None)
        elif c.runtime == "ort":
            prepared = prepare_onnx(fp32, work / f"{arch.key}-prep.onnx")
            reader = CalibrationReader(_random_inputs(cfg.input_shape), batch_size=8)
            quantize_onnx(prepared, work / f"{arch.key}-int8.onnx", get_target(cfg.target), reader)
            out[c.key] = (work / f"{arch.key}-int8.onnx", "ort", None)
        else:
            out[c.key] = (_bundle(model, card, arch, c.runtime, work), c.runtime, "fp32")
    return out, feats


def _bundle(model: torch.nn.Module, card: ModelCard, arch: Architecture, runtime: str, work: Path) -> Path:
    """A verified bundle of the random-weights model for ``runtime`` (OpenVINO IR or an ExecuTorch program)."""
    src = save_model_dir(model, card, work / f"{arch.key}-dir")
    out = work / f"{arch.key}-{runtime}"
    export_bundle(src, out, ExportConfig(formats=[runtime]))
    return out


def profile_device(space: SearchSpace, cfg: ProfileSettings | None = None, *, progress: bool = False) -> DeviceTable:
    """Time every candidate of ``space`` on this device with random weights (see the module docstring).

    Raises:
        DependencyError: a runtime of the space is not installed (exit 5, naming its extra).
        InvalidInputError: an architecture does not fit the input shape (exit 3).
    """
    cfg = cfg or ProfileSettings()
    cands = enumerate_candidates(space)
    by_arch: dict[str, list[Candidate]] = {}
    for c in cands:
        by_arch.setdefault(c.arch.key, []).append(c)
    settings = BenchSettings(
        warmup_s=cfg.warmup_s,
        warmup_iters=3,
        min_s=cfg.min_s,
        min_iters=cfg.min_iters,
        threads=cfg.threads,
        roofline=False,
        keep_times=False,
        include_hostname=False,
    )
    entries: list[TableEntry] = []
    with tempfile.TemporaryDirectory(prefix="edgekd-profile-") as tmp:
        for group in by_arch.values():
            files, feats = _files(group[0].arch, group, cfg, Path(tmp))
            entries += _time_group(group, files, feats, cfg, settings, progress)
    env = capture_environment(threads=cfg.threads, include_hostname=False)
    device = {
        "cpu": env.cpu.model_dump(mode="json"),
        "platform": env.platform,
        "gpus": [g.model_dump() for g in env.gpus],
    }
    runtimes = {k: v for k, v in env.versions.items() if k in ("onnxruntime", "torch")}
    for name in {c.runtime for c in cands} - {"ort"}:  # the packages the other runners run on
        try:
            runtimes[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return DeviceTable(
        device=device,
        runtimes=runtimes,
        input_shape=list(cfg.input_shape),
        num_classes=cfg.num_classes,
        target=cfg.target,
        scheme=get_target(cfg.target).name,
        settings=cfg.model_dump(mode="json"),
        entries=entries,
    )


def _time_group(
    group: list[Candidate],
    files: dict[str, tuple[Path, str, str | None]],
    feats: tuple[int, int, int, int],
    cfg: ProfileSettings,
    settings: BenchSettings,
    progress: bool,
) -> list[TableEntry]:
    """One architecture's candidates, each on its backend, every batch (one benchmark call per backend)."""
    out = []
    for c in group:
        path, backend, precision = files[c.key]
        report = benchmark(
            [str(path)],
            backends=[backend],
            devices=["cpu"],
            batches=tuple(cfg.batches),
            precision=precision,
            settings=settings,
            progress=progress,
        )
        for r in report.results:
            s = r.stats
            out.append(
                TableEntry(
                    key=c.key,
                    label=c.label,
                    candidate=c,
                    batch=r.batch,
                    macs=feats[0],
                    params=feats[1],
                    act_bytes=feats[2],
                    layers=feats[3],
                    percentiles={"p50": s.p50_ms, "p90": s.p90_ms, "p95": s.p95_ms, "p99": s.p99_ms},
                    mean_ms=s.mean_ms,
                    n=s.n,
                    cv=s.cv,
                    options={"threads": r.options.get("threads") or report.settings.threads},
                )
            )
    return out


def write_table(table: DeviceTable, path: str | os.PathLike) -> None:
    """Write ``table`` as JSON, atomically."""
    atomic_write_text(path, table.model_dump_json(indent=2) + "\n")


def read_table(path: str | os.PathLike) -> DeviceTable:
    """Read a device table written by :func:`write_table` / `edgekd device profile`.

    Raises:
        ArtifactError: missing, not JSON, or not a device table (exit 4).
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"device table {path} does not exist", "write one with `edgekd device profile`")
    try:
        table = DeviceTable.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ArtifactError(
            f"{path} is not an edgekd device table: {str(e).splitlines()[0]}", "write one with `edgekd device profile`"
        ) from None
    if table.format > TABLE_FORMAT:
        raise ArtifactError(f"{path} has table format {table.format}, newer than this edgekd", "upgrade edgekd")
    return table


def check_shape(table: DeviceTable, shape: Sequence[int], num_classes: int, where: str) -> None:
    """Refuse a table measured for another input (exit 3)."""
    if list(table.input_shape) != list(shape) or table.num_classes != num_classes:
        raise InvalidInputError(
            f"the device table {where} was measured for input {table.input_shape} with {table.num_classes} classes, "
            f"the data has {list(shape)} with {num_classes}",
            "profile again with --input-shape and --classes of this data",
        )
