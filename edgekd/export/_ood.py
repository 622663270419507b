"""What a bundle knows about the images it was validated on: the OOD reference and the operating point.

Both are computed when the bundle is written, by the bundle's own primary ONNX file (INT8 for a quantized
bundle) on the validation split of the model's data, so that the deployed file's numbers are the ones checked:

* **out-of-distribution reference** (``drift_reference.npz``, the format of a model directory's, see
  :mod:`edgekd.monitor`): Gaussian references of the *penultimate features* and of the 13 *image statistics*,
  fitted on the training split (at most :data:`~edgekd.monitor.MAX_FIT_IMAGES` images) and calibrated on the
  held-out validation split.
  The features are read from the ONNX graph itself: the input of the classifier (the last ``Gemm`` /
  ``MatMul`` before the logits, through any ``DequantizeLinear`` / ``QuantizeLinear`` / ``Cast``), added as
  an extra graph output when a session is created (:func:`feature_session`; the file is not changed, so its
  hashes and parity hold). A graph without such a layer gets the image-statistics space only (recorded). The
  image statistics come from the preprocessed input with its normalisation undone, so a server computes them
  from an Open Inference Protocol tensor exactly as from an image file.
* **operating point** (``manifest.extra.operating_point``): for a binary task, the highest threshold on
  P(positive) whose validation sensitivity reaches ``target_sensitivity``
  (:func:`edgekd.metrics.threshold_for_sensitivity`), with the sensitivity and specificity it gives there.

Example:
    >>> check = validate_bundle_file(Path("work/model.int8.onnx"), card, data, target_sensitivity=0.95)
    >>> check.operating_point["threshold"], check.reference.meta["feature_tensor"]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from edgekd.data import DataBundle, load_data, make_loader
from edgekd.errors import ArtifactError
from edgekd.metrics import probabilities, threshold_for_sensitivity
from edgekd.monitor import (
    MIN_IMAGES,
    OOD_QUANTILE,
    Outputs,
    Reference,
    image_probabilities,
    reference_from_outputs,
    unit_image_statistics,
)
from edgekd.monitor._reference import confidence_of, fit_subset
from edgekd.specs import ModelCard, Preprocess, Task

__all__ = [
    "BundleCheck",
    "feature_tensor",
    "feature_session",
    "input_statistics",
    "validate_bundle_file",
    "validation_data",
]

_THROUGH = {"DequantizeLinear", "QuantizeLinear", "Identity", "Cast"}


def feature_tensor(path: str | os.PathLike) -> str | None:
    """The name of the classifier's input tensor in an ONNX file (see the module docstring), or None."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    name = graph.output[0].name
    for _ in range(len(graph.node)):
        node = producer.get(name)
        if node is None:
            return None
        if node.op_type in _THROUGH:
            name = node.input[0]
        elif node.op_type == "Add":  # MatMul + bias
            name = next((i for i in node.input if i in producer and producer[i].op_type == "MatMul"), "")
        elif node.op_type in ("Gemm", "MatMul"):
            return node.input[0]
        else:
            return None
    return None


def feature_session(path: str | os.PathLike, tensor: str | None, *, threads: int = 0):
    """An ONNX Runtime CPU session whose outputs are the file's own, then ``tensor`` (when given)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    if tensor is not None and tensor not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.ValueInfoProto(name=tensor))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}") from e


def input_statistics(x: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """The 13 image statistics (``float64 [N, 13]``) of preprocessed inputs, their normalisation undone."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float64))
    mean = torch.tensor(preprocess.mean, dtype=t.dtype).view(1, -1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=t.dtype).view(1, -1, 1, 1)
    return unit_image_statistics(t * std + mean).numpy()


@dataclass
class BundleCheck:
    """What :func:`validate_bundle_file` found on the validation split."""

    reference: Reference | None
    operating_point: dict[str, Any] | None
    ood: dict[str, Any] = field(default_factory=dict)


def _session_run(session, wanted: list[str], name: str, x: np.ndarray) -> list[np.ndarray]:
    """``session.run`` over ``x``; a static-batch file runs in slices of its batch (the last one zero-padded)."""
    fixed = session.get_inputs()[0].shape[0]
    if not isinstance(fixed, int) or fixed <= 0 or fixed == len(x):
        return session.run(wanted, {name: x})
    parts = []
    for i in range(0, len(x), fixed):
        chunk = x[i : i + fixed]
        pad = np.zeros((fixed - len(chunk), *x.shape[1:]), x.dtype)
        parts.append([o[: len(chunk)] for o in session.run(wanted, {name: np.concatenate([chunk, pad])})])
    return [np.concatenate([p[j] for p in parts]) for j in range(len(wanted))]


def _run(
    session, feature: str | None, pre: Preprocess, dataset: Dataset, task: Task
) -> tuple[Outputs, np.ndarray, np.ndarray]:
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    wanted = [out_name] + ([feature] if feature else [])
    logits, feats, stats, targets = [], [], [], []
    for images, y in make_loader(dataset, 256, shuffle=False):
        x = pre.numpy(images.numpy())
        outs = _session_run(session, wanted, in_name, x)
        logits.append(np.asarray(outs[0], dtype=np.float32))
        feats.append(np.asarray(outs[1], dtype=np.float64).reshape(len(x), -1) if feature else np.zeros((len(x), 0)))
        stats.append(input_statistics(x, pre))
        targets.append(y.numpy())
    z = np.concatenate(logits)
    probs = (
        image_probabilities(torch.from_numpy(z), task).numpy() if task is Task.SEGMENTATION else probabilities(z, task)
    )
    out = Outputs(probs.astype(np.float64), np.concatenate(feats), np.concatenate(stats))
    return out, z, np.concatenate(targets)


def _operating_point(z: np.ndarray, y: np.ndarray, target: float, where: str) -> dict[str, Any] | None:
    p = probabilities(z, Task.BINARY)[:, 1]
    y = y.astype(int).reshape(-1)
    t = threshold_for_sensitivity(p, y, target)
    if not math.isfinite(t):
        return None
    pred = p >= t
    return {
        "threshold": t,
        "target_sensitivity": float(target),
        "split": "val",
        "source": where,
        "sensitivity": float(pred[y == 1].mean()),
        "specificity": float((~pred[y == 0]).mean()) if (y == 0).any() else math.nan,
        "n": int(len(y)),
    }


def validation_data(card: ModelCard, data: str | DataBundle | None) -> tuple[DataBundle | None, str]:
    """The data whose validation split a bundle is checked on: ``data``, else the card's training data.

    A spec given explicitly must load; the recorded one may be unavailable (e.g. not downloaded here), which
    gives ``(None, reason)`` and a bundle without OOD reference or operating point.
    """
    if isinstance(data, DataBundle):
        return data, data.spec
    spec = data or card.lineage.data
    if not spec:
        return None, "no data given and none recorded in the model card"
    if data:
        return load_data(spec), spec
    try:
        return load_data(spec), spec
    except Exception as e:  # the recorded data may be gone: the bundle is still written, without these
        return None, f"recorded data {spec!r} unavailable ({str(e).splitlines()[0]})"


def validate_bundle_file(
    path: Path,
    card: ModelCard,
    data: DataBundle | None,
    *,
    target_sensitivity: float | None = None,
    reason: str = "no validation data",
) -> BundleCheck:
    """The OOD reference and (binary tasks, ``target_sensitivity`` given) the operating point of the ONNX file
    ``path`` on ``data``'s validation split; ``data=None`` (unavailable: ``reason``) gives neither."""
    if data is None:
        return BundleCheck(None, None, {"available": False, "reason": reason})
    if data.num_classes != card.spec.num_classes:
        return BundleCheck(None, None, {"available": False, "reason": f"data {data.spec} has other classes"})
    feature = feature_tensor(path)
    session = feature_session(path, feature, threads=2)
    out, z, y = _run(session, feature, card.preprocess, data.val, data.task)
    where = f"validation split of {data.spec} by {path.name}"
    point = None
    if target_sensitivity is not None and card.task is Task.BINARY and (y == 1).any():
        point = _operating_point(z, y, target_sensitivity, where)
    if len(out.probs) < MIN_IMAGES:
        reason = f"{len(out.probs)} validation images (fewer than {MIN_IMAGES})"
        return BundleCheck(None, point, {"available": False, "reason": reason})
    meta = {
        "data": data.spec,
        "split": "val",
        "model_file": path.name,
        "feature_tensor": feature,
        "computed": "by the bundle's ONNX file",
    }
    # the Gaussians are fitted on training images, their distances calibrated on the validation ones
    fit, _, _ = _run(session, feature, card.preprocess, fit_subset(data.train), data.task)
    ref = reference_from_outputs(out, card.task, fit=fit, meta=meta)
    ood = {
        "available": True,
        "reference": "drift_reference.npz",
        "model_file": path.name,
        "feature_tensor": feature,
        "spaces": list(ref.spaces),
        "images": len(out.probs),
        "data": data.spec,
        "fit": ref.meta["fit"],
        "fit_images": ref.meta["fit_images"],
        "calibrated_on": "val",
        "quantile": OOD_QUANTILE,
        "val_confidence_median": float(np.median(confidence_of(out.probs, card.task))),
    }
    return BundleCheck(ref, point, ood)
