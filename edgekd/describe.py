"""`edgekd inspect`: what a model is (params, MACs, size, tap points) without training it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgekd.modeldir import WEIGHTS_FILE, ModelSpec, is_model_dir, load_model_dir
from edgekd.students import build_model, count_macs, count_params, tap_points

__all__ = ["describe_model"]


def describe_model(
    ref: str, *, num_classes: int = 2, input_size: int = 224, in_chans: int = 3, small_input: bool = False
) -> dict[str, Any]:
    """Describe a model directory or a registry name.

    For a model directory the stored spec and input size are used; for a name, the arguments.

    Example:
        >>> describe_model("small:resnet8x4", num_classes=2, input_size=28, in_chans=1)["params"]
    """

    if is_model_dir(ref):
        model, card = load_model_dir(ref)
        h, w = card.preprocess.input_size
        chans, spec = card.preprocess.in_chans, card.spec
        size_bytes = os.path.getsize(Path(ref) / WEIGHTS_FILE)
        extra = {
            "task": card.task.value,
            "labels": card.label_names,
            "metrics": card.metrics,
            "lineage": card.lineage.model_dump(),
            "pruned": bool(card.structure),
        }
    else:
        spec = ModelSpec(name=ref, num_classes=num_classes, in_chans=in_chans, small_input=small_input)
        model = build_model(spec)
        h = w = input_size
        chans = in_chans
        size_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        extra = {}
    return {
        "model": ref,
        "spec": spec.model_dump(),
        "input_shape": [1, chans, h, w],
        "params": count_params(model),
        "macs": count_macs(model, (1, chans, h, w)),
        "size_bytes": size_bytes,
        "tap_points": tap_points(model),
        **extra,
    }
