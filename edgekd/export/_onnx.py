"""PyTorch -> ONNX export with a per-model exporter choice, ``onnx.checker`` and onnxslim clean-up.

The exporter landscape (PyTorch 2.9 and later):

* ``torch.onnx.export(..., dynamo=True)`` is the default since PyTorch 2.9. It traces with
  ``torch.export``, needs the ``onnxscript`` package and implements opset 18 and later only: asked for
  opset 17 it emits opset 18 after a failed down-conversion. It cannot trace fake-quantized modules
  (``torch.ao.quantization.FakeQuantize`` branches on tensor values, which ``torch.export`` rejects).
* ``dynamo=False`` is the TorchScript exporter: deprecated but still shipped. It honours any opset from
  9, turns ``FakeQuantize`` into ``QuantizeLinear``/``DequantizeLinear`` pairs (the QDQ form TensorRT
  reads) and is several times faster on small CNNs.

``exporter="auto"`` therefore uses TorchScript for fake-quantized models and for opsets below 18, and
tries dynamo otherwise, falling back to TorchScript when dynamo is unavailable or fails. The choice and
its reason are returned and recorded in the bundle manifest.

Example:
    >>> model, card = load_model_dir("runs/student")
    >>> info = export_onnx(model, card, "model.onnx")
    >>> info["exporter"], info["opset"], info["inputs"][0]["shape"]
    ('torchscript', 17, ['batch', 1, 28, 28])
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import os
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.export._types import INPUT_NAME, OUTPUT_NAME, onnx_io
from edgekd.modeldir import ModelCard

__all__ = ["export_onnx", "has_fake_quant", "choose_exporter", "EXPORTERS", "DYNAMO_MIN_OPSET"]

EXPORTERS = ("auto", "torchscript", "dynamo")
DYNAMO_MIN_OPSET = 18
MIN_OPSET, MAX_OPSET = 9, 23
# Class-name fragments of fake-quantization modules from torch.ao, pytorch-quantization and ModelOpt.
_FAKE_QUANT_NAMES = ("fakequant", "quantizer", "quantstub")


class _LogitsOnly(nn.Module):
    """Export wrapper: a model returning a tuple, a dict or an object with ``.logits`` exports its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, dict):
            return out["logits"] if "logits" in out else next(iter(out.values()))
        if hasattr(out, "logits"):
            return out.logits
        return out[0]


def has_fake_quant(model: nn.Module) -> bool:
    """Whether ``model`` contains fake-quantization modules (QAT), detected by type and class name.

    Example:
        >>> has_fake_quant(torch.nn.Conv2d(1, 1, 3))
        False
    """
    from torch.ao.quantization import FakeQuantizeBase

    for m in model.modules():
        if isinstance(m, FakeQuantizeBase):
            return True
        name = type(m).__name__.lower()
        if any(k in name for k in _FAKE_QUANT_NAMES):
            return True
    return False


def _dynamo_available() -> bool:
    return importlib.util.find_spec("onnxscript") is not None


def choose_exporter(model: nn.Module, opset: int, exporter: str = "auto") -> tuple[str, str]:
    """Pick ``"torchscript"`` or ``"dynamo"`` for ``model`` at ``opset`` and say why.

    Args:
        model: the network to export.
        opset: the requested ONNX opset.
        exporter: ``"auto"``, ``"torchscript"`` or ``"dynamo"`` (an explicit choice is honoured if possible).

    Returns:
        ``(exporter, reason)``.

    Raises:
        InvalidInputError: an unknown exporter, or dynamo asked for a fake-quantized model or an opset below 18.
        DependencyError: dynamo asked for without ``onnxscript`` installed.
    """
    if exporter not in EXPORTERS:
        raise InvalidInputError(f"unknown exporter {exporter!r}", f"use one of {', '.join(EXPORTERS)}")
    fake_quant = has_fake_quant(model)
    if exporter == "torchscript":
        return "torchscript", "requested"
    if exporter == "dynamo":
        if fake_quant:
            raise InvalidInputError(
                "the dynamo exporter cannot trace fake-quantized models", "use exporter torchscript"
            )
        if opset < DYNAMO_MIN_OPSET:
            raise InvalidInputError(
                f"the dynamo exporter implements opset >= {DYNAMO_MIN_OPSET}, not {opset}",
                f"pass opset {DYNAMO_MIN_OPSET} or use exporter torchscript",
            )
        if not _dynamo_available():
            raise DependencyError("the dynamo exporter needs onnxscript", "pip install onnxscript")
        return "dynamo", "requested"
    if fake_quant:
        return "torchscript", "fake-quantized model: the dynamo exporter cannot trace FakeQuantize modules"
    if opset < DYNAMO_MIN_OPSET:
        return "torchscript", f"opset {opset}: the dynamo exporter implements opset >= {DYNAMO_MIN_OPSET} only"
    if not _dynamo_available():
        return "torchscript", "the dynamo exporter needs onnxscript, which is not installed"
    return "dynamo", "default exporter of PyTorch >= 2.9"


def _prepare(model: nn.Module) -> nn.Module:
    """An eval-mode CPU copy; fake-quant observers are frozen so export sees fixed scales."""
    m = copy.deepcopy(model).cpu().eval()
    if has_fake_quant(m):
        from torch.ao.quantization import disable_observer

        m.apply(disable_observer)
    return _LogitsOnly(m).eval()


def _export_torchscript(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice of this exporter; the choice is recorded
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            do_constant_folding=True,
        )


def _export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic else None
    # The dynamo exporter prints its progress; keep the CLI output to our own lines.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes,
            external_data=False,
        )
    program.save(str(path), external_data=False)


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _run_exporter(name: str, model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    fn = _export_dynamo if name == "dynamo" else _export_torchscript
    try:
        fn(model, x, path, opset, dynamic)
    except Exception as e:  # exporters raise many unrelated types; we report the first line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"the {name} exporter failed: {msg}", "try --opset 17 or another exporter") from e


def _export_with_fallback(
    model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool, exporter: str, reason: str, auto: bool
) -> tuple[str, str]:
    if exporter == "dynamo":
        try:
            _run_exporter("dynamo", model, x, path, opset, dynamic)
            got = _opset(onnx.load(str(path), load_external_data=False))
            if got == opset:
                return exporter, reason
            why = f"the dynamo exporter produced opset {got} instead of {opset}"
        except ArtifactError as e:
            if not auto:
                raise
            why = e.message
        if not auto:
            raise ArtifactError(why, "use exporter torchscript")
        exporter, reason = "torchscript", f"fell back from dynamo: {why}"
    _run_exporter("torchscript", model, x, path, opset, dynamic)
    return exporter, reason


def _simplify(path: Path) -> bool:
    """Clean the graph with onnxslim (constant folding, BN folding, dead-node removal)."""
    import onnxslim

    before = onnx.load(str(path))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(before)
    except Exception as e:  # onnxslim raises plain exceptions; the unsimplified graph is still valid
        raise ArtifactError(f"onnxslim failed on the exported graph: {e}", "pass --no-simplify") from e
    if slim is None:
        return False
    onnx.save(slim, str(path))
    return True


def _check(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ArtifactError(f"exported ONNX fails onnx.checker: {str(e).splitlines()[0]}") from e


def export_onnx(
    model: nn.Module,
    card: ModelCard,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = True,
    exporter: str = "auto",
    static_batch: int = 1,
) -> dict[str, Any]:
    """Export ``model`` to ONNX: input ``"input"`` (normalised float32 NCHW), output ``"logits"``.

    Args:
        model: the PyTorch network (any device; it is copied to CPU and set to eval mode, not changed).
        card: its model card; ``card.preprocess`` gives the input size and channels.
        path: the ``.onnx`` file to write.
        opset: ONNX opset (default 17; TensorRT 10 parses 9 to 20).
        dynamic_batch: make the batch dimension symbolic (``"batch"``); otherwise fix it to ``static_batch``.
        simplify: clean the graph with onnxslim.
        exporter: ``"auto"`` (see the module docstring), ``"torchscript"`` or ``"dynamo"``.
        static_batch: the batch size of a static export.

    Returns:
        ``exporter``, ``exporter_reason``, ``opset``, ``dynamic_batch``, ``simplified``, ``fake_quant``,
        ``inputs`` and ``outputs`` (name, shape, dtype), ``torch`` (version).

    Raises:
        InvalidInputError: an opset outside 9..23 or a bad exporter choice.
        ArtifactError: the exporter, onnxslim or ``onnx.checker`` failed.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InvalidInputError(f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}", "the default is 17")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name, reason = choose_exporter(model, opset, exporter)
    pre = card.preprocess
    batch = 2 if dynamic_batch else int(static_batch)  # batch 2 keeps tracers from specialising on 1
    x = torch.zeros(batch, pre.in_chans, *pre.input_size)
    name, reason = _export_with_fallback(
        _prepare(model), x, path, opset, dynamic_batch, name, reason, auto=exporter == "auto"
    )
    simplified = _simplify(path) if simplify else False
    _check(path)
    inputs, outputs = onnx_io(path)
    return {
        "exporter": name,
        "exporter_reason": reason,
        "opset": _opset(onnx.load(str(path), load_external_data=False)),
        "dynamic_batch": dynamic_batch,
        "simplified": simplified,
        "fake_quant": has_fake_quant(model),
        "inputs": [i.model_dump() for i in inputs],
        "outputs": [o.model_dump() for o in outputs],
        "torch": torch.__version__,
    }
