"""The parts of a run around the loop: the student to train, class weights, evaluation, the finished model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd._io import atomic_write_text
from edgekd.data import DataBundle, make_loader
from edgekd.distill._config import ClassWeighting
from edgekd.distill._loop import FitResult, predict, resolve_device
from edgekd.errors import InvalidInputError
from edgekd.metrics import compute_metrics
from edgekd.modeldir import is_model_dir, load_model_dir, save_model_dir
from edgekd.monitor import save_reference
from edgekd.specs import ChannelMode, IntendedUse, Lineage, ModelCard, ModelSpec, Preprocess, Task
from edgekd.students import build_model, check_spec_input_size, model_task

__all__ = ["resolve_student", "class_weights", "finish_run", "evaluate_split"]


def class_weights(data: DataBundle, mode: ClassWeighting) -> torch.Tensor | None:
    """``balanced`` weights ``N / (K * n_c)`` for single-label tasks, ``neg/pos`` for multi-label ones."""
    if mode is ClassWeighting.NONE:
        return None
    if data.task is Task.MULTILABEL:
        y = data.labels("train").astype(np.float64)
        pos = y.sum(0).clip(min=1)
        return torch.tensor((len(y) - pos) / pos, dtype=torch.float32)
    counts = data.class_counts().astype(np.float64).clip(min=1)
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def resolve_student(
    model: str,
    data: DataBundle,
    *,
    small_input: bool = False,
    pretrained: bool = False,
    channels: ChannelMode = ChannelMode.ADAPT,
    input_size: int | None = None,
) -> tuple[torch.nn.Module, ModelSpec, Preprocess, str | None]:
    """Build the model to train: a registry name (fresh or pretrained) or an existing model directory.

    Returns the model, its spec, its preprocessing and the parent directory (for lineage).
    """
    size = (input_size, input_size) if input_size else None
    if is_model_dir(model):
        net, card = load_model_dir(model)
        if (card.task is Task.SEGMENTATION) != (data.task is Task.SEGMENTATION):
            raise InvalidInputError(
                f"{model} is a {card.task.value} model but the data is a {data.task.value} task",
                "train it on data of its own task",
            )
        if card.spec.num_classes != data.num_classes:
            raise InvalidInputError(
                f"{model} has {card.spec.num_classes} outputs but the data has {data.num_classes} classes",
                "train a fresh model with --model NAME, or use matching data",
            )
        return net, card.spec, card.preprocess, str(model)
    _check_model_task(model, data.task)
    in_chans = data.channels if channels is ChannelMode.ADAPT else 3
    spec = ModelSpec(name=model, num_classes=data.num_classes, in_chans=in_chans, small_input=small_input)
    check_spec_input_size(spec, size or data.image_size)  # before building (and downloading weights), on `meta`
    net = build_model(spec, pretrained=pretrained)
    return net, spec, data.preprocess(input_size=size, in_chans=in_chans), None


def _check_model_task(model: str, task: Task) -> None:
    """A classifier cannot learn masks, nor a segmenter labels: refuse the pair before building anything."""
    kind = model_task(model)
    if kind is None or (kind == "segmentation") == (task is Task.SEGMENTATION):
        return
    if task is Task.SEGMENTATION:
        raise InvalidInputError(
            f"{model} is a classifier and the data is a segmentation task (masks)",
            "use a segmentation model, e.g. small:unet_w8, small:unet_w32 or tv:lraspp_mobilenet_v3_large",
        )
    raise InvalidInputError(
        f"{model} is a segmentation model and the data is a {task.value} task", "use a classifier, e.g. small:resnet8"
    )


def evaluate_split(
    model, preprocess: Preprocess, data: DataBundle, split: str, *, batch_size: int = 256, device: str = "auto"
) -> dict[str, Any]:
    """Metrics of ``model`` on one split of ``data`` (PyTorch, eval mode)."""
    dev = resolve_device(device)
    model.to(dev)
    loader = make_loader(data.split(split), batch_size, shuffle=False)
    logits, targets = predict(model, preprocess, loader, dev)
    return compute_metrics(logits, targets, data.task)


def finish_run(
    model,
    result: FitResult,
    *,
    spec: ModelSpec,
    preprocess: Preprocess,
    data: DataBundle,
    out: Path,
    lineage: Lineage,
    eval_test: bool = True,
    intended_use: IntendedUse | None = None,
) -> ModelCard:
    """Load the best weights, evaluate on test, and write the model directory and its history into ``out``."""
    model.load_state_dict(result.best_state)
    model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    metrics: dict[str, dict] = {
        "val": result.val_metrics,
        "best_epoch": {"epoch": result.best_epoch, "metric": result.select_metric},
    }
    if eval_test:
        metrics["test"] = evaluate_split(model, preprocess, data, "test", device="cpu")
    card = ModelCard(
        spec=spec,
        task=data.task,
        label_names=list(data.label_names),
        preprocess=preprocess,
        metrics=metrics,
        lineage=lineage,
        intended_use=intended_use if intended_use is not None else data.intended_use,
    )
    save_model_dir(model, card, out)
    save_reference(model, preprocess, data, out)  # drift statistics of the finished model on val (edgekd drift)
    atomic_write_text(out / "history.jsonl", "".join(json.dumps(h, default=float) + "\n" for h in result.history))
    return card
