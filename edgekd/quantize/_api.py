"""`edgekd quantize`: a model directory to a verified INT8 (or FP16) bundle for one deployment target.

The run: export the FP32 ONNX; make the low-precision file with the chosen method (``ptq``: ONNX Runtime
static QDQ quantization with calibration and optional sensitivity analysis; ``qat``: quantization-aware
training with distillation; ``fp16``: FP16 weights and compute for GPU targets); check parity against PyTorch
(INT8/FP16: top-1 agreement) and, for ``tensorrt``, the TensorRT lint; evaluate FP32 and low-precision files
through ONNX Runtime on the test split with the metrics of `edgekd eval`; write the bundle (the low-precision
ONNX, the FP32 reference, parity results, the accuracy change in ``manifest["extra"]["quantization"]``).

The shipped FP32 reference is the exact FP32 source of the low-precision file, so parity and `edgekd verify`
compare each file with one set of reference logits: the input model for ``ptq``/``fp16``; for ``qat`` the
QAT-tuned weights without quantizers (``metrics["fp32_qat_tuned"]``). The reported change (``delta``) is always
against the *input* FP32 model (``metrics["fp32"]``): what the compression cost.

A failed check raises before anything is written (:func:`edgekd.export.write_bundle` is atomic): failure
leaves nothing at ``out``.

Example:
    >>> cfg = QuantizeConfig(method="ptq", target="cpu-x86", calibration="entropy")
    >>> result = quantize_model_dir("runs/student", "bundles/student-int8", cfg)
    >>> result.delta["acc"]  # points of accuracy INT8 minus FP32 (ONNX Runtime, test split)
"""

from __future__ import annotations

import math
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, Field
from torch import nn

from edgekd._config import StageConfig
from edgekd._cpu import cpu_isa
from edgekd._io import check_output
from edgekd.data import DataBundle
from edgekd.distill import DEFAULT_LOSSES, LossTexts, TeacherText, TrainConfig
from edgekd.errors import InvalidInputError, VerificationError
from edgekd.export import (
    BundleFile,
    Precision,
    Reference,
    export_onnx,
    lint_onnx,
    parity_check,
    to_fp16,
    torch_logits,
    validate_bundle_file,
    write_bundle,
)
from edgekd.modeldir import WEIGHTS_FILE, Lineage, ModelCard, load_model_and_data, sha256_file
from edgekd.quantize._choose import OnnxLatencyFn, choose_scheme, kernels_for
from edgekd.quantize._data import CalibrationReader, evaluate_onnx, split_inputs
from edgekd.quantize._ptq import Calibration, prepare_onnx, qdq_summary
from edgekd.quantize._qat import QAT_BACKENDS, qat_finetune, strip_fake_quant
from edgekd.quantize._sensitivity import SensitivityReport, sensitivity_search
from edgekd.quantize._targets import SCHEMES, TARGETS, QuantTarget, resolve_target, target_for_isa
from edgekd.specs import current_command
from edgekd.teachers import load_teacher

__all__ = ["QuantMethod", "QuantizeConfig", "QuantizeResult", "quantize_model_dir", "BUDGET_METRICS"]

BUDGET_METRICS = ("acc", "auroc", "balanced_acc", "f1_macro")
REFERENCE_BYTES = 8 << 20  # at most this much of parity inputs stored in the bundle for `edgekd verify`
SENSITIVITY_SAMPLES = 2000  # at most this many validation samples decide the sensitivity budget
TRT_PROFILE = {"min_batch": 1, "opt_batch": 8, "max_batch": 32}


class QuantMethod(str, Enum):
    PTQ = "ptq"
    QAT = "qat"
    FP16 = "fp16"


# Flat keys of a quantize config file: the CLI's --loss, and the QAT settings by name (or under ``qat:``, the
# layout `edgekd quantize --config` read before).
_FLAT = {"loss": "losses", "qat": "train", **{name: f"train.{name}" for name in TrainConfig.model_fields}}


class QuantizeConfig(StageConfig):
    """Everything that decides a quantization run: the single source of `edgekd quantize`'s defaults (the same
    class serves the CLI, Python callers and the pipeline).

    Attributes:
        method: ``ptq``, ``qat`` or ``fp16``.
        target: a registered target (:data:`~edgekd.quantize.TARGETS`): decides the INT8 scheme.
        calibration: ``minmax``, ``entropy`` or ``percentile``.
        calib_samples: training samples for calibration.
        sensitivity: keep the most sensitive nodes in FP32 until ``max_drop`` is met (PTQ).
        max_drop: allowed validation drop of ``metric``, in points.
        metric: the budget's metric.
        max_fp32_nodes: most nodes the sensitivity search keeps in FP32.
        parity_samples: test samples of the parity check.
        opset: ONNX opset of the export.
        qat_backend: ``auto``, ``modelopt`` or ``torch``.
        kd, teacher, losses: who teaches QAT: with ``kd`` the ``teacher`` (default: the FP32 model itself) through
            the ``losses`` (parsed when the config is built); without it, labels only.
        freeze_bn: keep the FP32 batch-norm statistics during QAT (standard practice; see ``freeze_bn_stats``).
        train: QAT fine-tuning hyper-parameters.
        eval_split: split on which FP32 and low-precision files are compared.
    """

    flat_keys: ClassVar = _FLAT

    method: QuantMethod = QuantMethod.PTQ
    target: str = "cpu-x86"
    calibration: Calibration = Calibration.MINMAX
    calib_samples: int = Field(256, ge=1)
    sensitivity: bool = False
    max_drop: float = Field(0.5, ge=0)
    metric: str = "acc"
    max_fp32_nodes: int | None = Field(None, ge=1)
    parity_samples: int = Field(256, ge=8)
    opset: int = Field(17, ge=13)
    qat_backend: str = "auto"
    # who teaches QAT
    kd: bool = True
    teacher: TeacherText = None
    losses: LossTexts = Field(default_factory=lambda: list(DEFAULT_LOSSES))
    freeze_bn: bool = True
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2, lr=1e-4, warmup_epochs=0.0))
    eval_split: str = "test"

    def check(self) -> None:
        """Validate names and combinations (pydantic validators would hide the helpful errors).

        Raises:
            UnknownNameError: an unknown target or QAT backend (exit 3, with close names).
            InvalidInputError: an unknown budget metric, or ``fp16`` for a CPU target (exit 3).
        """
        target = TARGETS.get(self.target)
        if self.qat_backend != "auto":
            QAT_BACKENDS.get(self.qat_backend)
        if self.metric not in BUDGET_METRICS:
            raise InvalidInputError(f"unknown budget metric {self.metric!r}", f"use one of {', '.join(BUDGET_METRICS)}")
        if self.method is QuantMethod.FP16 and not target.gpu:
            raise InvalidInputError(
                f"--method fp16 is for GPU targets; {self.target} is a CPU target",
                "use --target tensorrt, or --method ptq/qat for CPUs",
            )


class QuantizeResult(BaseModel):
    """What a quantization run made and measured (also in ``manifest["extra"]["quantization"]``)."""

    source: str
    out: str
    data: str
    method: QuantMethod
    target: str
    precision: str
    scheme: dict[str, Any]
    isa: dict[str, Any] | None = None
    split: str
    metrics: dict[str, dict[str, Any]]
    delta: dict[str, float]
    sizes: dict[str, int]
    parity: list[dict[str, Any]]
    lint_errors: list[str] = Field(default_factory=list)
    qdq: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    sensitivity: SensitivityReport | None = None
    qat: dict[str, Any] | None = None
    scheme_choice: dict[str, Any] | None = None


def _calibration_inputs(data: DataBundle, card: ModelCard, cfg: QuantizeConfig) -> np.ndarray:
    return split_inputs(data, "train", card.preprocess, n=cfg.calib_samples, seed=cfg.train.seed)[0]


class _Job:
    """What the low-precision makers share: the run's inputs, scratch directory and parity samples."""

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        source: Path,
        work: Path,
        data: DataBundle,
        cfg: QuantizeConfig,
        target: QuantTarget,
        latency: OnnxLatencyFn | None,
        progress: bool,
    ) -> None:
        self.model, self.card, self.source, self.work, self.data = model, card, source, work, data
        self.cfg, self.target, self.latency, self.progress = cfg, target, latency, progress
        self.x, _ = split_inputs(data, "test", card.preprocess, n=cfg.parity_samples, spread=True)

    def choose(self, fp32: Path, reference: nn.Module, calib: np.ndarray, name: str) -> tuple[Path, dict[str, Any]]:
        """Pre-process ``fp32`` and quantize it with the target's best scheme (see :mod:`._choose`)."""
        pre = prepare_onnx(fp32, self.work / f"{name}.pre.onnx")
        scratch = self.work / f"{name}-schemes"
        scratch.mkdir()
        return choose_scheme(
            pre,
            scratch,
            self.target,
            CalibrationReader(calib, batch_size=32),
            x=self.x,
            ref=torch_logits(reference, self.x),
            card=self.card,
            calibration=self.cfg.calibration,
            latency=self.latency,
            fp32=fp32,
            strict=not self.cfg.sensitivity,
        )


def _ptq(job: _Job, fp32: Path, calib: np.ndarray) -> tuple[Path, dict[str, Any]]:
    cfg = job.cfg
    chosen, record = job.choose(fp32, job.model, calib, "model")
    details: dict[str, Any] = {
        "calibration": {"method": cfg.calibration.value, "samples": len(calib)},
        "scheme_choice": record,
    }
    if not cfg.sensitivity:
        return chosen, details
    x_val, y_val = split_inputs(job.data, "val", job.card.preprocess, n=SENSITIVITY_SAMPLES, spread=True)
    scratch = job.work / "sensitivity"
    scratch.mkdir()
    dst = job.work / "model.int8.onnx"
    details["sensitivity"] = sensitivity_search(
        job.work / "model.pre.onnx",
        dst,
        SCHEMES.get(record["chosen"]),
        CalibrationReader(calib, batch_size=32),
        x_val=x_val,
        y_val=y_val,
        task=job.data.task,
        work=scratch,
        calibration=cfg.calibration,
        metric=cfg.metric,
        max_drop=cfg.max_drop,
        max_nodes=cfg.max_fp32_nodes,
        kernels=record["kernels"],
    )
    return dst, details


def _qat(job: _Job, calib: np.ndarray) -> tuple[Path, dict[str, Any]]:
    cfg, card = job.cfg, job.card
    teacher = load_teacher(cfg.teacher or str(job.source), data=job.data) if cfg.kd else None
    scheme = SCHEMES.get(job.target.schemes[0])  # fake quantization with the target's default scheme
    qat, record = qat_finetune(
        job.model,
        card,
        job.data,
        scheme,
        cfg.train,
        job.work / "qat",
        calib=calib,
        backend=cfg.qat_backend,
        teacher=teacher,
        losses=cfg.losses,
        freeze_bn=cfg.freeze_bn,
        progress=job.progress,
    )
    tuned_model, tuned = strip_fake_quant(qat, card), job.work / "model.qat-fp32.onnx"
    export_onnx(tuned_model, card, tuned, opset=cfg.opset)
    details: dict[str, Any] = {"qat": record, "reference": (tuned_model, tuned)}
    if job.target.name == "tensorrt":  # the fake-quant graph is TensorRT's explicit-quantization input
        dst = job.work / "model.int8.onnx"
        record["export"] = export_onnx(qat, card, dst, opset=cfg.opset)
        details["scheme_choice"] = {
            "target": "tensorrt",
            "kernels": kernels_for(job.target),
            "isa": cpu_isa().isa,
            "chosen": scheme.name,
            "reason": "QAT fake-quantization graph",
            "trials": [],
        }
        return dst, details
    dst, details["scheme_choice"] = job.choose(tuned, tuned_model, calib, "model.qat")
    details["calibration"] = {"method": cfg.calibration.value, "samples": len(calib)}
    return dst, details


def _fp16(fp32: Path, work: Path) -> tuple[Path, dict[str, Any]]:
    dst = work / "model.fp16.onnx"
    to_fp16(fp32, dst)
    return dst, {}


# Metrics that are no fractions: their change is reported in their own unit (HD95: pixels), not in points.
_OWN_UNIT = frozenset({"hd95", "loss", "ece_bins"})


def _delta(fp32: dict[str, Any], low: dict[str, Any]) -> dict[str, float]:
    """Low precision minus FP32, in points (x100), for every scalar metric both have (HD95 in pixels)."""
    out = {}
    for k, v in fp32.items():
        w = low.get(k)
        if isinstance(v, float) and isinstance(w, float) and not (math.isnan(v) or math.isnan(w)):
            out[k] = (w - v) if k in _OWN_UNIT else 100.0 * (w - v)
    return out


def _verify(parity: list, lint: list, target: QuantTarget) -> None:
    failed = [p for p in parity if not p.passed]
    errors = [str(f) for f in lint if f.severity == "error"]
    if not failed and not errors:
        return
    message = "; ".join([*(p.summary() for p in failed), *errors[:3]]) + ("" if len(errors) <= 3 else " ...")
    if errors and not failed:
        hint = "fix the TensorRT lint findings above (see `edgekd export --check tensorrt`)"
    elif any(p.precision is not Precision.INT8 for p in failed):
        hint = "the FP32/FP16 file differs from PyTorch: check the export (`edgekd export` reports the same check)"
    elif failed[0].kernels == "native" and target_for_isa(cpu_isa().isa) not in (None, target.name):
        hint = f"this {cpu_isa().isa} CPU's INT8 kernels differ from {target.name}'s: use --target {target_for_isa(cpu_isa().isa)}"
    else:
        hint = "try --calibration entropy or percentile, --sensitivity, or --method qat"
    raise VerificationError(message, hint)


def _isa_record(cfg: QuantizeConfig, target: QuantTarget, choice: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the manifest says of the instruction set the INT8 file was checked on (None for FP16)."""
    if choice is None:
        return None
    info = cpu_isa()
    native = choice["kernels"] == "native"
    return {
        "requested": cfg.target,
        "target": target.name,
        "scheme": choice["chosen"],
        "verified_isa": info.isa if native else None,
        "kernels": choice["kernels"],
        "built_on": {"isa": info.isa, "cpu": info.model, "flags": info.flags},
        "device_isa": target.isa,
        "reason": choice.get("reason", ""),
    }


def _quantized_card(
    card: ModelCard, source: Path, data: DataBundle, cfg: QuantizeConfig, metrics: dict, details: dict, command: str
) -> ModelCard:
    qat = details.get("qat") or {}
    choice = details.get("scheme_choice") or {}
    notes = {
        "method": cfg.method.value,
        "target": cfg.target,
        "resolved_target": choice.get("target"),
        "scheme": choice.get("chosen"),
        "calibration": details.get("calibration"),
        "fp32_nodes": details["sensitivity"].fp32_nodes if details.get("sensitivity") else [],
        "qat_backend": qat.get("backend"),
    }
    lineage = Lineage(
        command=command,
        parent=str(source),
        parent_sha256=sha256_file(source / WEIGHTS_FILE),
        data=data.spec,
        teachers=[qat["teacher"]] if qat.get("teacher") else [],
        losses=qat.get("losses", []),
        stage="quantize",
        notes=notes,
    )
    return card.model_copy(update={"lineage": lineage, "metrics": {**card.metrics, "onnxruntime": metrics}})


def _make_low_precision(job: _Job, fp32: Path) -> tuple[Path, dict[str, Any]]:
    if job.cfg.method is QuantMethod.FP16:
        return _fp16(fp32, job.work)
    calib = _calibration_inputs(job.data, job.card, job.cfg)
    if job.cfg.method is QuantMethod.QAT:
        return _qat(job, calib)
    return _ptq(job, fp32, calib)


def _check(job: _Job, reference: nn.Module, fp32: Path, low: Path, precision, kernels: str) -> dict[str, Any]:
    """Parity of both shipped files against their PyTorch source, and the TensorRT lint; raises on failure."""
    x, card = job.x, job.card
    ref = torch_logits(reference, x)
    source = f"{len(x)} {job.data.spec} test samples"
    parity = [
        parity_check(
            low, None, card, samples=x, reference_logits=ref, precision=precision, sample_source=source, kernels=kernels
        ),
        parity_check(fp32, None, card, samples=x, reference_logits=ref, sample_source=source),
    ]
    lint = lint_onnx(low, target="tensorrt", profile=TRT_PROFILE) if job.target.name == "tensorrt" else []
    _verify(parity, lint, job.target)
    keep = max(1, min(len(x), REFERENCE_BYTES // max(1, x[0].nbytes)))
    return {"parity": parity, "lint": lint, "reference": Reference(x[:keep], ref[:keep])}


def _measure(files: dict[str, Path], data: DataBundle, card: ModelCard, split: str) -> dict[str, dict[str, Any]]:
    """`edgekd eval` metrics of each ONNX file, run through ONNX Runtime on ``split``."""
    return {name: evaluate_onnx(path, data, split, card.preprocess) for name, path in files.items()}


def _result(
    source: Path,
    out: Path,
    data: DataBundle,
    cfg: QuantizeConfig,
    precision,
    metrics: dict,
    sizes: dict,
    checked: dict,
    low: Path,
    details: dict,
    isa: dict | None,
) -> QuantizeResult:
    choice = details.get("scheme_choice")
    scheme = SCHEMES.get(choice["chosen"]).describe() if choice else {"name": "fp16"}
    return QuantizeResult(
        source=str(source),
        out=str(out),
        data=data.spec,
        method=cfg.method,
        target=choice["target"] if choice else cfg.target,
        precision=precision.value,
        scheme=scheme,
        isa=isa,
        split=cfg.eval_split,
        metrics=metrics,
        delta=_delta(metrics["fp32"], metrics[precision.value]),
        sizes=sizes,
        parity=[p.model_dump(mode="json") for p in checked["parity"]],
        lint_errors=[str(f) for f in checked["lint"] if f.severity == "error"],
        qdq=qdq_summary(low) if precision.value == "int8" else None,
        calibration=details.get("calibration"),
        sensitivity=details.get("sensitivity"),
        qat=_qat_summary(details.get("qat")),
        scheme_choice=choice,
    )


def quantize_model_dir(
    source: str | Path,
    out: str | Path,
    cfg: QuantizeConfig,
    *,
    data: str | DataBundle | None = None,
    latency: OnnxLatencyFn | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    target_sensitivity: float | None = None,
) -> QuantizeResult:
    """Quantize the model directory ``source`` into the bundle ``out`` (see the module docstring).

    Args:
        source: the FP32 model directory.
        out: the bundle to write.
        cfg: the run's configuration.
        data: data spec or bundle (default: the data in the source's lineage).
        latency: times ONNX files on this CPU (:func:`edgekd.bench.onnx_latency_ms`), to choose between the
            schemes that pass parity on a target this CPU runs natively; None: the first passing scheme in the
            target's order is taken (recorded).
        overwrite: replace an earlier edgekd output at ``out``.
        progress: show progress bars.
        command: the command line, for the lineage.
        target_sensitivity: binary tasks: store the operating threshold of the low-precision file reaching
            this sensitivity on the validation split in ``manifest.extra.operating_point`` (what ``edgekd
            predict`` / ``serve`` decide at). The bundle's out-of-distribution reference is computed by the
            same file on the same pass.

    Raises:
        ArtifactError: ``source`` is missing or malformed (exit 4).
        InvalidInputError: a bad target, method/target pair, metric or data (exit 3).
        DependencyError: the QAT backend asked for is not installed (exit 5).
        VerificationError: parity failed or the TensorRT lint found errors; nothing is written (exit 6).
    """
    cfg.check()
    target = resolve_target(cfg.target)
    source, out = Path(source), Path(out)
    teacher = cfg.teacher if cfg.teacher and Path(cfg.teacher).exists() else None
    check_output(out, overwrite=overwrite, inputs=(source, teacher))
    model, card, bundle = load_model_and_data(source, data, seed=cfg.train.seed)
    precision = Precision.FP16 if cfg.method is QuantMethod.FP16 else Precision.INT8
    with tempfile.TemporaryDirectory(prefix="edgekd-quantize-") as tmp:
        job = _Job(model, card, source, Path(tmp), bundle, cfg, target, latency, progress)
        fp32 = job.work / "model.onnx"
        exporter = export_onnx(model, card, fp32, opset=cfg.opset)
        low, details = _make_low_precision(job, fp32)
        # The FP32 file shipped beside the low-precision one is its exact FP32 source: the input model, or
        # for QAT the QAT-tuned weights without quantizers (so `edgekd verify` checks both against one reference).
        ref_model, ref_onnx = details.pop("reference", (model, fp32))
        choice = details.get("scheme_choice")
        checked = _check(job, ref_model, ref_onnx, low, precision, choice["kernels"] if choice else "native")
        files = {"fp32": fp32, precision.value: low, **({"fp32_qat_tuned": ref_onnx} if ref_onnx != fp32 else {})}
        metrics = _measure(files, bundle, card, cfg.eval_split)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        isa = _isa_record(cfg, target, choice)
        result = _result(source, out, bundle, cfg, precision, metrics, sizes, checked, low, details, isa)
        shipped = [
            BundleFile(
                source=low, name="model.int8.onnx" if precision is Precision.INT8 else low.name, precision=precision
            ),
            BundleFile(source=ref_onnx, name=fp32.name, precision=Precision.FP32),
        ]
        extra = {
            "quantization": {
                **result.model_dump(mode="json", exclude={"out"}),
                "fp32_reference": "qat-tuned" if ref_onnx != fp32 else "source",
                "config": cfg.model_dump(mode="json"),
            }
        }
        card_q = _quantized_card(
            card,
            source,
            bundle,
            cfg,
            {cfg.eval_split: metrics},
            details,
            command if command is not None else current_command(),
        )
        check = validate_bundle_file(low, card_q, bundle, target_sensitivity=target_sensitivity)
        if check.operating_point is not None:
            extra["operating_point"] = check.operating_point
        write_bundle(
            out,
            card=card_q,
            files=shipped,
            parity=checked["parity"],
            target=target.name,
            reference=checked["reference"],
            exporter=exporter,
            lint=checked["lint"],
            extra=extra,
            profile=TRT_PROFILE if target.name == "tensorrt" else None,
            isa=isa,
            ood_reference=check.reference,
            ood=check.ood,
        )
    return result


def _qat_summary(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: v for k, v in record.items() if k != "export"}
