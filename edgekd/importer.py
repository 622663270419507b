"""`edgekd import`: a user checkpoint, or a MONAI Bundle folder, becomes a model directory."""

from __future__ import annotations

from pathlib import Path

from edgekd.data import load_data
from edgekd.errors import InvalidInputError
from edgekd.modeldir import Lineage, ModelCard, ModelSpec, save_model_dir, sha256_file
from edgekd.specs import IntendedUse
from edgekd.students import build_model, check_input_size, count_params
from edgekd.students._monai import check_network_def
from edgekd.teachers import import_checkpoint, read_monai_bundle
from edgekd.teachers._checkpoint import strip_prefixes
from edgekd.teachers._monai import META_FILE

__all__ = ["import_model"]


def import_model(
    checkpoint: str | Path,
    *,
    model: str | None,
    data: str,
    out: str | Path,
    small_input: bool = False,
    in_chans: int | None = None,
    input_size: int | None = None,
    trust_pickle: bool = False,
    intended_use: IntendedUse | None = None,
) -> ModelCard:
    """Load ``checkpoint`` into ``model``'s architecture and save it with ``data``'s labels and preprocessing.

    A MONAI Bundle folder (it has ``configs/metadata.json``; ``model`` ``monai:`` or ``None``) becomes a
    ``monai:bundle`` model with the bundle's own preprocessing; see :func:`import_monai`. ``intended_use``
    (default: the header values of DICOM training data, else none) goes into the model card.
    """
    if (model or "").startswith("monai:") or (model is None and (Path(checkpoint) / META_FILE).is_file()):
        return import_monai(checkpoint, data=data, out=out, trust_pickle=trust_pickle, intended_use=intended_use)
    if not model:
        raise InvalidInputError(f"no architecture for {checkpoint}", "pass --model, e.g. --model small:resnet18")
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
        intended_use=intended_use or bundle.intended_use,
    )
    save_model_dir(net, card, out)
    return card


def import_monai(
    bundle_dir: str | Path,
    *,
    data: str,
    out: str | Path,
    trust_pickle: bool = False,
    intended_use: IntendedUse | None = None,
) -> ModelCard:
    """A MONAI Bundle as a model directory: spec ``monai:bundle`` holding its ``network_def``, its weights,
    the bundle's preprocessing and ``data``'s labels.

    Raises:
        DependencyError: monai is missing (exit 5).
        ArtifactError: the bundle is incomplete, or pickled/TorchScript weights without ``trust_pickle``.
        InvalidInputError: not a 2D classification bundle, a ``network_def`` that needs more than itself
            (expressions, references to other keys), or ``data`` with another number of classes.
    """
    mb = read_monai_bundle(bundle_dir)
    check_network_def(mb.network_def)
    bundle = load_data(data)
    if bundle.num_classes != mb.num_classes:
        raise InvalidInputError(
            f"MONAI bundle {bundle_dir} has {mb.num_classes} classes, {data} has {bundle.num_classes}",
            "pass --data with the bundle's classes",
        )
    spec = ModelSpec(
        name="monai:bundle", num_classes=mb.num_classes, in_chans=mb.in_chans, kwargs={"network_def": mb.network_def}
    )
    loaded = mb.build_network(trust_pickle=trust_pickle)  # the teacher loader's weight rules (pickle, TorchScript)
    net = build_model(spec)
    net.load_state_dict(strip_prefixes(loaded.state_dict()), strict=True)
    preprocess = mb.preprocess(bundle)
    check_input_size(net, spec.name, preprocess.input_size, mb.in_chans)
    card = ModelCard(
        spec=spec,
        task=bundle.task,
        label_names=list(bundle.label_names),
        preprocess=preprocess,
        params=count_params(net.eval()),
        lineage=Lineage(stage="import", data=bundle.spec, parent=str(bundle_dir), parent_sha256=mb.fingerprint()),
        intended_use=intended_use or bundle.intended_use,
    )
    save_model_dir(net, card, out)
    return card
