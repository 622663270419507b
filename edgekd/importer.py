"""`edgekd import`: a user checkpoint becomes a model directory."""

from __future__ import annotations

from pathlib import Path

from edgekd.data import load_data
from edgekd.modeldir import Lineage, ModelCard, ModelSpec, save_model_dir, sha256_file
from edgekd.students import check_input_size, count_params
from edgekd.teachers import import_checkpoint

__all__ = ["import_model"]


def import_model(
    checkpoint: str | Path,
    *,
    model: str,
    data: str,
    out: str | Path,
    small_input: bool = False,
    in_chans: int | None = None,
    input_size: int | None = None,
    trust_pickle: bool = False,
) -> ModelCard:
    """Load ``checkpoint`` into ``model``'s architecture and save it with ``data``'s labels and preprocessing."""
    bundle = load_data(data)
    chans = in_chans or bundle.channels
    spec = ModelSpec(name=model, num_classes=bundle.num_classes, in_chans=chans, small_input=small_input)
    net = import_checkpoint(checkpoint, spec=spec, trust_pickle=trust_pickle)
    size = (input_size, input_size) if input_size else None
    check_input_size(net, model, size or bundle.image_size, chans)  # before the model directory is written
    card = ModelCard(
        spec=spec,
        task=bundle.task,
        label_names=list(bundle.label_names),
        preprocess=bundle.preprocess(input_size=size, in_chans=chans),
        params=count_params(net),
        lineage=Lineage(
            stage="import", data=bundle.spec, parent=str(checkpoint), parent_sha256=sha256_file(checkpoint)
        ),
    )
    save_model_dir(net, card, out)
    return card
