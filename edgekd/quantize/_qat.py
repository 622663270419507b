"""Quantization-aware training with distillation from the FP32 teacher, exported to QDQ ONNX.

The model gets fake quantizers on the inputs and weights of every Conv/Linear, their activation ranges are
calibrated, and it is fine-tuned through the shared loop (:func:`edgekd.distill.fit`) with ``ce + kd``
against a teacher, by default the FP32 model itself: the INT8 student learns to reproduce the FP32 model's
soft outputs, which recovers more than labels alone (the QAT + KD recipe of e.g. Mishra & Marr, "Apprentice",
ICLR 2018).

Backends (:data:`QAT_BACKENDS`, ``auto`` picks the first available):

* ``modelopt``: NVIDIA Model Optimizer (``nvidia-modelopt``, the maintained successor of
  pytorch-quantization), ``mtq.quantize(model, INT8_DEFAULT_CFG, forward_loop)``: int8 symmetric inputs
  (per tensor) and weights (per channel), max calibration. Optional dependency (``pip install
  nvidia-modelopt requests huggingface_hub``); it runs on CPU.
* ``torch``: PyTorch's own fake-quant ops (:mod:`._fakequant`), same placement, with the activation
  scheme of the target. Always available.

Deployment graph per target:

* ``tensorrt``: the fake-quantized model is exported by the TorchScript exporter straight to QDQ
  (symmetric int8, zero points 0: what TensorRT's explicit quantization reads) and linted.
* ``cpu-x86`` / ``cpu-arm``: ONNX Runtime's CPU kernels need its own QDQ layout (batch norm folded, Q after
  each fused Conv-ReLU, U8S8 on x86), which a PyTorch QAT export does not have. The QAT-tuned weights are
  therefore exported in FP32 and quantized by ONNX Runtime with the target's scheme
  (:func:`~edgekd.quantize.quantize_onnx`). Weight rounding is identical to what the model trained with
  (symmetric int8 per output channel is invariant to the per-channel batch-norm fold) and the activation
  ranges are re-calibrated.

Example:
    >>> qat, info = qat_finetune(model, card, data, get_target("tensorrt"), cfg, "work/qat", teacher=teacher,
    ...                          calib=x_calib)
    >>> export_onnx(qat, card, "model.int8.onnx")  # QuantizeLinear/DequantizeLinear pairs
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.data import DataBundle
from edgekd.distill import DEFAULT_LOSSES, TrainConfig, finetune
from edgekd.errors import DependencyError
from edgekd.modeldir import ModelCard
from edgekd.quantize._fakequant import calibrate, insert_fake_quant
from edgekd.quantize._targets import QuantScheme
from edgekd.registry import Registry
from edgekd.students import apply_structure, build_model
from edgekd.teachers import Teacher

__all__ = ["QATBackend", "QAT_BACKENDS", "resolve_backend", "qat_finetune", "strip_fake_quant", "freeze_bn_stats"]


class QATBackend(ABC):
    """One way to insert and calibrate fake quantizers."""

    name = ""

    @staticmethod
    def unavailable() -> str | None:
        """Why the backend cannot run here (None when it can)."""
        return None

    @abstractmethod
    def prepare(self, model: nn.Module, scheme: QuantScheme, batches: list[torch.Tensor]) -> nn.Module:
        """Return ``model`` with fake quantizers, calibrated on preprocessed ``batches``."""


QAT_BACKENDS: Registry[type[QATBackend]] = Registry("QAT backend")


@QAT_BACKENDS.register("torch")
class TorchFakeQuantBackend(QATBackend):
    """PyTorch fake-quant ops (see :mod:`._fakequant`)."""

    name = "torch"

    def prepare(self, model: nn.Module, scheme: QuantScheme, batches: list[torch.Tensor]) -> nn.Module:

        insert_fake_quant(model, scheme)
        calibrate(model, batches)
        return model


@QAT_BACKENDS.register("modelopt")
class ModelOptBackend(QATBackend):
    """NVIDIA Model Optimizer ``mtq.quantize`` with ``INT8_DEFAULT_CFG`` (max calibration)."""

    name = "modelopt"

    @staticmethod
    def unavailable() -> str | None:
        if importlib.util.find_spec("modelopt") is None:
            return "nvidia-modelopt is not installed (pip install nvidia-modelopt requests huggingface_hub)"
        return None

    def prepare(self, model: nn.Module, scheme: QuantScheme, batches: list[torch.Tensor]) -> nn.Module:
        try:
            import modelopt.torch.quantization as mtq
        except ImportError as e:  # its import also needs requests and huggingface_hub
            raise DependencyError(
                f"nvidia-modelopt cannot be imported: {e}", "pip install nvidia-modelopt requests huggingface_hub"
            ) from e

        def forward_loop(m: nn.Module) -> None:
            for x in batches:
                m(x)

        model.eval()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Inserted N quantizers": keep --json clean
            return mtq.quantize(model, copy.deepcopy(mtq.INT8_DEFAULT_CFG), forward_loop)


def resolve_backend(name: str = "auto") -> QATBackend:
    """The named backend, or with ``auto`` ModelOpt when installed, else the built-in one.

    Raises:
        UnknownNameError: an unknown backend name (exit 3).
        DependencyError: the named backend is not installed (exit 5).
    """
    if name == "auto":
        name = "modelopt" if ModelOptBackend.unavailable() is None else "torch"
    cls = QAT_BACKENDS.get(name)
    if reason := cls.unavailable():
        raise DependencyError(f"QAT backend {name} is unavailable: {reason}", "use --qat-backend torch")
    return cls()


def strip_fake_quant(qat: nn.Module, card: ModelCard) -> nn.Module:
    """A plain FP32 model (the card's architecture) holding the QAT-tuned weights, without quantizers."""
    plain = build_model(card.spec)
    if card.structure:
        apply_structure(plain, card.structure)
    keys = set(plain.state_dict())
    plain.load_state_dict({k: v for k, v in qat.state_dict().items() if k in keys}, strict=True)
    return plain.eval()


def freeze_bn_stats(model: nn.Module) -> int:
    """Stop batch-norm running statistics from updating (momentum 0); returns how many layers were frozen.

    QAT fine-tunes a trained model for a short time, usually without the augmentation it was trained with;
    letting the running statistics drift to the fine-tuning batches moves the deployed model's decision
    threshold more than the quantization does. Freezing them is standard QAT practice (Jacob et al. 2018,
    section 3.2; PyTorch's ``freeze_bn_stats``). Training still normalises with batch statistics.
    """
    frozen = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
            frozen += 1
    return frozen


def _batches(x: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, len(x), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))


def qat_finetune(
    model: nn.Module,
    card: ModelCard,
    data: DataBundle,
    scheme: QuantScheme,
    cfg: TrainConfig,
    work: str | Path,
    *,
    calib: np.ndarray,
    backend: str = "auto",
    teacher: Teacher | None = None,
    losses: Sequence[str] = DEFAULT_LOSSES,
    freeze_bn: bool = True,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Fake-quantize a copy of ``model``, calibrate it on ``calib`` and fine-tune it with the teacher.

    Args:
        model: the FP32 model (not changed).
        card: its card (preprocessing, architecture).
        data: the training data.
        scheme: the target's scheme (the built-in backend simulates its activation type).
        cfg: fine-tuning hyper-parameters.
        work: scratch directory for the loop's checkpoint.
        calib: preprocessed calibration inputs.
        backend: ``auto``, ``modelopt`` or ``torch``.
        teacher: distil from it (None: labels only).
        losses: loss terms with a teacher.
        freeze_bn: keep the batch-norm running statistics of the FP32 model (see :func:`freeze_bn_stats`).
        progress: show progress bars.

    Returns:
        The fine-tuned fake-quantized model (CPU, eval mode) and a record (backend, history).
    """
    qb = resolve_backend(backend)
    torch.manual_seed(cfg.seed)
    qat = qb.prepare(copy.deepcopy(model).cpu(), scheme, list(_batches(calib, cfg.batch_size)))
    if freeze_bn:
        freeze_bn_stats(qat)
    history = finetune(qat, card.preprocess, data, cfg, work, teacher=teacher, losses=losses, progress=progress)
    return qat, {
        "backend": qb.name,
        "epochs": cfg.epochs,
        "history": history,
        "teacher": teacher.name if teacher is not None else None,
        "losses": list(losses) if teacher is not None else ["ce"],
        "freeze_bn": freeze_bn,
    }
