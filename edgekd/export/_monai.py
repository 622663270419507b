"""A student as a MONAI Bundle (``edgekd export --format monai-bundle``).

Written atomically as ``OUT/``::

    configs/metadata.json    MONAI's metadata (version, changelog, monai/pytorch/numpy versions, the network's
                             input/output format, task, intended use, the decision-support disclaimer) and an
                             ``edgekd`` block: lineage, metrics, the exact preprocessing and file sha256s
    configs/inference.json   ``network_def`` (:func:`edgekd_network`, built from the model spec), ``network``,
                             ``preprocessing`` (MONAI transforms equal to edgekd's recipe), ``postprocessing``
                             (softmax or sigmoid), ``inferer``
    models/model.pt          the weights as a plain state dict (MONAI's convention; loads with weights_only)
    models/model.safetensors the same weights, no pickle
    models/model.onnx        the parity-checked ONNX file(s) of the source (``model.int8.onnx`` from a quantized
                             bundle)
    docs/README.md           what the model is, how to run it with MONAI, its limits
    .edgekd                  marks the folder as edgekd's output (what was exported from where)

The network needs ``edgekd`` where the bundle runs (``required_packages_version`` says so): MONAI instantiates
``edgekd.export._monai.edgekd_network`` from the config. Before the folder is renamed into place, MONAI's own
tools check it: ``monai.bundle.verify_net_in_out`` on the config and metadata, and the network MONAI builds and
loads, fed through MONAI's preprocessing transforms, must reproduce edgekd's logits (max abs error <= 1e-4).

Example:
    >>> manifest = export_bundle("runs/student", "bundles/student-monai", formats="monai-bundle")
    >>> manifest.extra["monai_bundle"]["max_abs_error"] < 1e-4
    True
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from edgekd._io import check_output
from edgekd.errors import ArtifactError, DependencyError, VerificationError
from edgekd.export._manifest import Manifest, read_manifest
from edgekd.modeldir import ModelCard, atomic_dir, is_model_dir, load_model_dir, sha256_file
from edgekd.specs import ChannelMode, ModelSpec, Preprocess, Task, package_versions
from edgekd.students import apply_structure, build_model

__all__ = [
    "export_monai_bundle",
    "edgekd_network",
    "monai_metadata",
    "monai_inference_config",
    "require_monai",
    "MONAI_TOLERANCE",
]

MONAI_TOLERANCE = 1e-4
META_SCHEMA = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
DISCLAIMER = (
    "This model is a research and engineering artifact for clinical decision support only. It is not a "
    "medical device, has not been cleared or approved by any regulator, and must not be used as the "
    "sole basis for a diagnosis or treatment decision."
)
_MARKER = ".edgekd"
_EXTRA = "pip install 'edgekd[monai]'"


def edgekd_network(spec: dict[str, Any], structure: dict[str, dict[str, int]] | None = None) -> nn.Module:
    """Build an edgekd architecture (a pruned one with its ``structure``) without weights.

    This is the ``_target_`` of the exported bundle's ``network_def``: MONAI calls it with the model spec from
    the config, then loads ``models/model.pt`` into the result.
    """
    model = build_model(ModelSpec.model_validate(spec))
    if structure:
        apply_structure(model, structure)
    return model


def require_monai():
    try:
        import monai
        import monai.bundle
    except ImportError as e:
        raise DependencyError(f"--format monai-bundle needs the MONAI package ({e})", _EXTRA) from e
    return monai


def _value_range(pre: Preprocess) -> list[float]:
    lo = min((0.0 - m) / s for m, s in zip(pre.mean, pre.std))
    hi = max((1.0 - m) / s for m, s in zip(pre.mean, pre.std))
    return [round(lo, 6), round(hi, 6)]


def monai_metadata(card: ModelCard, *, versions: dict[str, str], files: dict[str, str], source: str) -> dict:
    """``configs/metadata.json`` for ``card`` (MONAI metadata schema 20240725 plus an ``edgekd`` block)."""
    pre = card.preprocess
    chan = {str(i): ("image" if pre.in_chans == 1 else f"channel {i}") for i in range(pre.in_chans)}
    return {
        "schema": META_SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by edgekd {versions.get('edgekd', '')} from {source}".strip()},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {"edgekd": versions.get("edgekd", ""), "safetensors": versions["safetensors"]},
        "name": f"edgekd {card.spec.name}",
        "task": _task_text(card),
        "description": f"A compact {card.spec.name} student ({card.params or 0:,} parameters) made by edgekd "
        f"(stage {card.lineage.stage}), for edge deployment.",
        "authors": "edgekd",
        "copyright": "the model's owners; see the training data's licence",
        "intended_use": "Clinical decision support and research only. " + DISCLAIMER,
        "data_source": card.lineage.data or "unknown",
        "data_type": "uint8 2D images",
        "image_classes": f"{pre.data_channels}-channel 2D image, preprocessed to {pre.in_chans}x"
        f"{pre.input_size[0]}x{pre.input_size[1]} (see edgekd.preprocess)",
        "label_classes": ", ".join(card.label_names),
        "pred_classes": ", ".join(card.label_names),
        "eval_metrics": {
            k: v
            for split in card.metrics.values()
            for k, v in split.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
        "references": ["edgekd lineage in the 'edgekd' block of this file"],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "regular",
                    "num_channels": pre.in_chans,
                    "spatial_shape": list(pre.input_size),
                    "dtype": "float32",
                    "value_range": _value_range(pre),
                    "is_patch_data": False,
                    "channel_def": chan,
                }
            },
            "outputs": {"pred": _output_format(card)},
        },
        "edgekd": {
            "spec": card.spec.model_dump(mode="json"),
            "task": card.task.value,
            "preprocess": card.preprocess.model_dump(mode="json"),
            "metrics": card.metrics,
            "lineage": card.lineage.model_dump(mode="json"),
            "params": card.params,
            "macs": card.macs,
            "source": source,
            "files": files,
            "disclaimer": DISCLAIMER,
        },
    }


def _task_text(card: ModelCard) -> str:
    if card.task is Task.SEGMENTATION:
        return f"2D image segmentation ({', '.join(card.label_names[1:])} against {card.label_names[0]})"
    kind = "Multi-label" if card.task is Task.MULTILABEL else "Multi-class"
    return f"{kind} image classification ({card.task.value})"


def _output_format(card: ModelCard) -> dict[str, Any]:
    """The ``pred`` entry of ``network_data_format``: class logits, or per-pixel logits of a segmenter."""
    n = len(card.label_names)
    channels = {str(i): name for i, name in enumerate(card.label_names)}
    if card.task is Task.SEGMENTATION:  # MONAI's own segmentation bundles describe their output this way
        return {
            "type": "image",
            "format": "segmentation",
            "num_channels": n,
            "spatial_shape": list(card.preprocess.input_size),
            "dtype": "float32",
            "value_range": [],
            "is_onehot": False,
            "is_patch_data": False,
            "channel_def": channels,
        }
    return {
        "type": "logits",
        "format": "classes",
        "num_channels": n,
        "spatial_shape": [1, n],
        "dtype": "float32",
        "value_range": [],
        "is_onehot": False,
        "channel_def": channels,
    }


def _transforms(pre: Preprocess) -> list[dict[str, Any]]:
    """MONAI array transforms equal to ``pre`` for one ``uint8`` image ``[C, H, W]``."""
    steps: list[dict[str, Any]] = [
        {"_target_": "EnsureType", "dtype": "$torch.float32", "track_meta": False},
        {"_target_": "ScaleIntensityRange", "a_min": 0.0, "a_max": 1.0 / pre.scale, "b_min": 0.0, "b_max": 1.0},
        {
            "_target_": "Resize",
            "spatial_size": list(pre.input_size),
            "mode": pre.interpolation,
            "align_corners": False,
            "anti_aliasing": False,
        },
    ]
    if pre.channel_mode is ChannelMode.REPEAT:
        steps.append({"_target_": "RepeatChannel", "repeats": pre.in_chans // pre.data_channels})
    steps.append(
        {"_target_": "NormalizeIntensity", "subtrahend": list(pre.mean), "divisor": list(pre.std), "channel_wise": True}
    )
    return steps


def monai_inference_config(card: ModelCard) -> dict[str, Any]:
    """``configs/inference.json``: the network, its weights, preprocessing, postprocessing and inferer."""
    activation = {"sigmoid": True} if card.task is Task.MULTILABEL else {"softmax": True}
    post: dict[str, Any] = {"_target_": "Activations", **activation}
    if card.task is Task.SEGMENTATION:  # the mask: per-pixel softmax, then the class index (AsDiscrete argmax)
        post = {"_target_": "Compose", "transforms": [post, {"_target_": "AsDiscrete", "argmax": True}]}
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "edgekd.export._monai.edgekd_network",
            "spec": card.spec.model_dump(mode="json"),
            "structure": card.structure,
        },
        "network": "$@network_def.to(@device)",
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "load_weights": "$@network.load_state_dict(torch.load(@checkpoint, map_location=@device, weights_only=True))",
        "preprocessing": {"_target_": "Compose", "transforms": _transforms(card.preprocess)},
        "postprocessing": post,
        "inferer": {"_target_": "SimpleInferer"},
        "initialize": ["$@load_weights", "$@network.eval()"],
    }


def _readme(card: ModelCard, files: list[str]) -> str:
    pre = card.preprocess
    return f"""# {card.spec.name} (edgekd student, MONAI Bundle)

{_task_text(card)} of {pre.data_channels}-channel 2D images; classes: {", ".join(card.label_names)}.

**Intended use.** {DISCLAIMER}

## Run it with MONAI

Needs `monai` and `edgekd` (the network is `edgekd.export._monai.edgekd_network`).

```python
from monai.bundle import ConfigParser
p = ConfigParser(); p.read_config("configs/inference.json"); p.read_meta("configs/metadata.json")
p["bundle_root"] = "."                      # this folder
p.get_parsed_content("initialize")          # builds the network and loads models/model.pt
net, pre = p.get_parsed_content("network"), p.get_parsed_content("preprocessing")
logits = net(pre(image_uint8_chw)[None])    # image: uint8 [C, H, W]
```

Check it: `python -m monai.bundle verify_net_in_out --net_id network_def --meta_file configs/metadata.json
--config_file configs/inference.json`.

## Files

{chr(10).join(f"- `{f}`" for f in files)}

Preprocessing (also in `configs/metadata.json` under `edgekd.preprocess`): scale to [0, 1], resize to
{pre.input_size[0]}x{pre.input_size[1]} (bilinear, no antialiasing), normalise with mean {list(pre.mean)} and std
{list(pre.std)}. Metrics, lineage and file sha256s are in the `edgekd` block of the metadata.
"""


def _sources(bundle: Path) -> tuple[Path, list[Path]]:
    """The model directory a bundle was made from and the bundle's ONNX files."""
    manifest = read_manifest(bundle)
    model_dir = (manifest.extra.get("quantization") or {}).get("source") or manifest.extra.get("source")
    if not model_dir or not is_model_dir(model_dir):
        raise ArtifactError(
            f"bundle {bundle} does not name an existing model directory it was made from",
            "export the model directory instead, or run from the folder the bundle was made in",
        )
    return Path(model_dir), [bundle / f.name for f in manifest.model_files() if f.name.endswith(".onnx")]


def _check_with_monai(root: Path, model: nn.Module, card: ModelCard) -> float:
    """MONAI's verify_net_in_out, then MONAI's network + transforms against edgekd's logits; returns max |diff|."""
    monai = require_monai()
    meta, config = str(root / "configs/metadata.json"), str(root / "configs/inference.json")
    try:
        monai.bundle.verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu")
    except Exception as e:  # MONAI raises ValueError/KeyError/... for a bundle it cannot run
        raise VerificationError(f"monai.bundle.verify_net_in_out failed: {e}", "EDGEKD_DEBUG=1 for details") from e
    parser = monai.bundle.ConfigParser()
    parser.read_config(config)
    parser.read_meta(meta)
    parser["bundle_root"], parser["device"] = str(root), "$torch.device('cpu')"
    parser.get_parsed_content("initialize")
    net, pre = parser.get_parsed_content("network"), parser.get_parsed_content("preprocessing")
    gen = torch.Generator().manual_seed(0)
    p = card.preprocess
    images = torch.randint(0, 256, (8, p.data_channels, *p.input_size), generator=gen, dtype=torch.uint8)
    with torch.no_grad():
        theirs = net(torch.stack([torch.as_tensor(pre(img)) for img in images]))
        ours = model(p(images))
    err = float((torch.as_tensor(theirs).float() - ours.float()).abs().max())
    if not np.isfinite(err) or err > MONAI_TOLERANCE:
        raise VerificationError(
            f"the MONAI bundle's outputs differ from edgekd's by {err:.3g} (> {MONAI_TOLERANCE})",
            "EDGEKD_DEBUG=1 for details",
        )
    return err


def _versions(monai) -> dict[str, str]:
    return {
        **package_versions(),
        "monai": monai.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": version("safetensors"),
    }


def _write(tmp: Path, model: nn.Module, card: ModelCard, onnx_files: list[Path], source: str, versions: dict) -> dict:
    for sub in ("configs", "models", "docs"):
        (tmp / sub).mkdir()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, tmp / "models/model.pt")
    save_file(state, str(tmp / "models/model.safetensors"))
    for f in onnx_files:
        shutil.copyfile(f, tmp / "models" / f.name)
    names = sorted(f"models/{p.name}" for p in (tmp / "models").iterdir())
    hashes = {n: sha256_file(tmp / n) for n in names}
    meta = monai_metadata(card, versions=versions, files=hashes, source=source)
    (tmp / "configs/metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / "configs/inference.json").write_text(json.dumps(monai_inference_config(card), indent=2) + "\n")
    (tmp / "docs/README.md").write_text(_readme(card, ["configs/metadata.json", "configs/inference.json", *names]))
    return hashes


def export_monai_bundle(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    *,
    source: str | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Manifest:
    """Write an edgekd bundle (e.g. a quantized one) as a MONAI Bundle.

    The bundle's ONNX files (FP32, INT8) are shipped as they are, with the weights of the model directory it was
    made from. ``edgekd export --format monai-bundle`` of a model directory exports and parity-checks it to a
    temporary bundle first (see :data:`~edgekd.export.FORMATS`) and passes the model directory as ``source``.

    Returns:
        A :class:`Manifest` describing the export (``extra["monai_bundle"]``: files, sha256s, MONAI's check).

    Raises:
        DependencyError: ``monai`` is not installed (checked before any work; exit 5).
        VerificationError: MONAI's ``verify_net_in_out`` failed, or its outputs differ from edgekd's; nothing
            is written (exit 6).
    """
    say = log or (lambda _m: None)
    monai = require_monai()
    bundle, out = Path(bundle), Path(out)
    source = source or str(bundle)
    check_output(out, overwrite=overwrite, inputs=(bundle, source))
    model_dir, onnx_files = _sources(bundle)
    model, card = load_model_dir(model_dir)
    versions = _versions(monai)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        hashes = _write(tmp, model, card, onnx_files, source, versions)
        say("checking the bundle with monai.bundle (verify_net_in_out, outputs against edgekd's)")
        err = _check_with_monai(tmp, model, card)
        say(f"MONAI bundle outputs match edgekd's: max abs error {err:.2e}")
        record = {
            "source": source,
            "model_dir": str(model_dir),
            "files": hashes,
            "max_abs_error": err,
            "monai_version": monai.__version__,
        }
        (tmp / _MARKER).write_text(json.dumps(record, indent=2) + "\n")
    say(f"MONAI bundle written: {out}")
    return Manifest(
        name=card.spec.name,
        target="monai",
        task=card.task,
        label_names=list(card.label_names),
        metrics=card.metrics,
        preprocess=card.preprocess.model_dump(mode="json"),
        spec=card.spec.model_dump(mode="json"),
        params=card.params,
        macs=card.macs,
        versions=versions,
        lineage=card.lineage.model_dump(mode="json"),
        extra={"monai_bundle": record},
    )
