"""MONAI Bundles as teachers: ``--teacher monai:BUNDLE_DIR`` (and ``monai:zoo:NAME[@VERSION]`` to download one).

A MONAI Bundle (https://docs.monai.io/en/stable/mb_specification.html) is a folder::

    configs/metadata.json            task, versions and the network's input/output format
    configs/inference.json|yaml      the network (``network_def``) and its transforms, as MONAI config
    models/model.safetensors|pt|ts   the weights

The files are read with MONAI's own bundle API (:class:`monai.bundle.ConfigParser`): the network is the
``network_def`` component the config names, built by MONAI and loaded with the bundle's weights (a
safetensors file or a plain state dict; a pickled full model or a TorchScript ``model.ts`` only with
``trust_pickle``, since both run code chosen by the bundle's author). A ``network_def`` holding Python
expressions (``$...``) is refused without ``trust_pickle`` for the same reason; plain ``_target_`` components
are built as MONAI builds them (they import the classes they name).

The teacher keeps the bundle's own preprocessing: ``network_data_format.inputs.image`` gives the spatial size,
the channels and the value range the network reads (``value_range [a, b]`` becomes ``x = a + (b - a) * u8 / 255``);
a bundle written by edgekd also stores its exact :class:`~edgekd.specs.Preprocess`. Only classification bundles
are accepted for now (``outputs.pred.format`` ``classes``, or a task that says classification).

``monai`` is an optional extra (``pip install 'edgekd[monai]'``); every entry point raises
:class:`~edgekd.errors.DependencyError` (exit 5) naming it when it is missing.

Example:
    >>> bundle = read_monai_bundle("bundles/xray_classifier")
    >>> bundle.num_classes, bundle.spatial_size
    (2, (224, 224))
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.modeldir import sha256_file
from edgekd.specs import Preprocess
from edgekd.teachers._checkpoint import load_checkpoint_state, strip_prefixes

__all__ = [
    "MonaiBundle",
    "read_monai_bundle",
    "require_monai",
    "download_monai_bundle",
    "resolve_monai_ref",
    "MONAI_EXTRA_HINT",
]

MONAI_EXTRA_HINT = "pip install 'edgekd[monai]'"
META_FILE = "configs/metadata.json"
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
WEIGHT_NAMES = ("model.safetensors", "model.pt", "model.pth", "model.ts")
_TRUST_HINT = "pass --trust-pickle only if you trust the bundle's author: it runs code"
_ZOO_DIR_ENV = "EDGEKD_MONAI_DIR"


def require_monai(what: str = "MONAI Bundles"):
    """Import :mod:`monai.bundle` or raise a :class:`DependencyError` naming the ``monai`` extra."""
    try:
        import monai.bundle
    except ImportError as e:
        raise DependencyError(f"{what} need the MONAI package ({e})", MONAI_EXTRA_HINT) from e
    return monai.bundle


@dataclass
class MonaiBundle:
    """What edgekd reads from a MONAI Bundle (see :func:`read_monai_bundle`).

    Attributes:
        root: the bundle folder.
        metadata: ``configs/metadata.json`` as a dict.
        config_file: the inference config.
        weights: the weights file.
        num_classes, in_chans, spatial_size: from ``network_data_format``.
        label_names: ``outputs.pred.channel_def`` in logit order (``class_i`` where missing).
        preprocess_fields: the intensity recipe (``mean``, ``std``, ``scale``) of the bundle's input.
        network_def: the ``network_def`` config (as written, before MONAI resolves it).
    """

    root: Path
    metadata: dict[str, Any]
    config_file: Path
    weights: Path
    num_classes: int
    in_chans: int
    spatial_size: tuple[int, int]
    label_names: list[str]
    preprocess_fields: dict[str, Any] = field(default_factory=dict)
    network_def: Any = None

    def fingerprint(self) -> str:
        """sha256 over the weights, the inference config and the metadata (what decides the outputs)."""
        parts = [sha256_file(self.weights), sha256_file(self.config_file), sha256_file(self.root / META_FILE)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    def preprocess(self, data) -> Preprocess:
        """The bundle's preprocessing for ``data``'s raw images (its channels repeated when the bundle wants more)."""
        exact = self.metadata.get("edgekd", {}).get("preprocess")
        if exact:
            return Preprocess.model_validate(exact)
        pre = data.preprocess(input_size=self.spatial_size, in_chans=self.in_chans)
        return pre.model_copy(update=self.preprocess_fields)

    def build_network(self, *, trust_pickle: bool = False) -> nn.Module:
        """Build ``network_def`` with MONAI's :class:`ConfigParser` and load the weights (eval mode)."""
        if self.weights.suffix == ".ts":
            if not trust_pickle:
                raise ArtifactError(f"{self.weights} is a TorchScript model", _TRUST_HINT)
            return _Scripted(torch.jit.load(str(self.weights), map_location="cpu")).eval()
        if _has_expression(self.network_def) and not trust_pickle:
            raise ArtifactError(f"the network_def of {self.config_file} runs Python expressions ($...)", _TRUST_HINT)
        net = _parse(self.root, self.config_file, self.metadata).get_parsed_content("network_def", instantiate=True)
        if not isinstance(net, nn.Module):
            raise ArtifactError(f"network_def in {self.config_file} builds a {type(net).__name__}, not a torch module")
        found = load_checkpoint_state(self.weights, trust_pickle=trust_pickle)
        state = strip_prefixes(found.state_dict()) if isinstance(found, nn.Module) else found
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise ArtifactError(
                f"{self.weights} does not match the bundle's network_def: {lines[1 if len(lines) > 1 else 0]}",
                "the weights were saved from another network",
            ) from e
        return net.eval()


class _Scripted(nn.Module):
    """A TorchScript module in a plain module (ScriptModules refuse ``requires_grad_`` and hooks on themselves)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _has_expression(obj: Any) -> bool:
    if isinstance(obj, str):
        return obj.startswith("$")
    if isinstance(obj, dict):
        return any(_has_expression(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_expression(v) for v in obj)
    return False


def _parse(root: Path, config_file: Path, metadata: dict[str, Any]):
    bundle = require_monai()
    parser = bundle.ConfigParser()
    parser.read_config(str(config_file))
    parser.read_meta(metadata)
    parser["bundle_root"] = str(root)  # relative paths in the config are relative to the bundle, not the cwd
    return parser


def _find(root: Path, folder: str, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / folder / name).is_file():
            return root / folder / name
    raise ArtifactError(
        f"MONAI bundle {root} has no {what} ({', '.join(f'{folder}/{n}' for n in names)})",
        "pass the folder that holds configs/ and models/",
    )


def _is_classification(meta: dict[str, Any], pred: dict[str, Any]) -> bool:
    fmt = str(pred.get("format", "")).lower()
    if fmt in ("classes", "class", "classification"):
        return True
    return not fmt and "classif" in str(meta.get("task", "")).lower()


def _intensity(image: dict[str, Any]) -> dict[str, Any]:
    """``value_range [a, b]`` -> mean/std such that ``(u8 / 255 - mean) / std = a + (b - a) * u8 / 255``."""
    lo, hi = (image.get("value_range") or [0, 1])[:2]
    if not hi > lo:
        raise ArtifactError(f"network_data_format inputs.image.value_range {[lo, hi]} is not an increasing range")
    chans = int(image["num_channels"])
    return {"mean": (-lo / (hi - lo),) * chans, "std": (1.0 / (hi - lo),) * chans}


def _io_format(root: Path, meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    fmt = meta.get("network_data_format") or {}
    image = (fmt.get("inputs") or {}).get("image")
    pred = (fmt.get("outputs") or {}).get("pred")
    if not isinstance(image, dict) or not isinstance(pred, dict):
        raise ArtifactError(
            f"{root / META_FILE} has no network_data_format inputs.image / outputs.pred",
            "a MONAI bundle's metadata describes its network's input and output",
        )
    if not _is_classification(meta, pred):
        raise InvalidInputError(
            f"MONAI bundle {root} is a {meta.get('task') or pred.get('format') or 'non-classification'} model: "
            "edgekd distils classification bundles only",
            "use a bundle whose outputs.pred.format is 'classes'",
        )
    return image, pred


def read_monai_bundle(path: str | os.PathLike) -> MonaiBundle:
    """Read a MONAI Bundle's metadata and find its inference config and weights (nothing is built yet).

    Raises:
        DependencyError: ``monai`` is not installed (exit 5).
        ArtifactError: a missing folder, metadata, config or weights file, or metadata without the network's
            input/output format, or a 3D network.
        InvalidInputError: not a classification bundle.
    """
    bundle = require_monai()
    root = Path(path)
    if not root.is_dir():
        raise ArtifactError(f"MONAI bundle {root} does not exist", "pass the bundle folder after monai:")
    meta_file = _find(root, "configs", ("metadata.json",), "metadata")
    config_file = _find(root, "configs", CONFIG_NAMES, "inference config")
    weights = _find(root, "models", WEIGHT_NAMES, "weights")
    try:
        meta = bundle.ConfigParser.load_config_file(str(meta_file))
        raw = bundle.ConfigParser.load_config_file(str(config_file))
    except Exception as e:  # MONAI raises json/yaml errors as they come
        raise ArtifactError(f"cannot read {root}'s configs: {str(e).splitlines()[0]}", "the bundle is damaged") from e
    if "network_def" not in raw:
        raise ArtifactError(f"{config_file} has no network_def", "MONAI bundles name their network as network_def")
    image, pred = _io_format(root, meta)
    size = list(image.get("spatial_shape") or [])
    if len(size) != 2 or not all(isinstance(s, int) for s in size):
        raise ArtifactError(
            f"MONAI bundle {root} takes spatial shape {image.get('spatial_shape')}: edgekd "
            "distils 2D networks with a fixed input size",
            "use a 2D classification bundle",
        )
    classes = int(pred["num_channels"])
    chan_def = pred.get("channel_def") or {}
    labels = [str(chan_def.get(str(i), chan_def.get(i, f"class_{i}"))) for i in range(classes)]
    return MonaiBundle(
        root=root,
        metadata=meta,
        config_file=config_file,
        weights=weights,
        num_classes=classes,
        in_chans=int(image["num_channels"]),
        spatial_size=(int(size[0]), int(size[1])),
        label_names=labels,
        preprocess_fields=_intensity(image),
        network_def=raw["network_def"],
    )


def download_monai_bundle(
    name: str,
    *,
    version: str | None = None,
    bundle_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download ``name`` from the MONAI Model Zoo with :func:`monai.bundle.download` (needs internet).

    The bundle goes to ``bundle_dir`` (default ``$EDGEKD_MONAI_DIR`` or ``~/.cache/edgekd/monai``); one already
    there is used as it is.

    Raises:
        DependencyError: ``monai`` missing, or the download failed (offline, unknown name).
    """
    bundle = require_monai("downloading MONAI Bundles")
    where = Path(bundle_dir or os.environ.get(_ZOO_DIR_ENV) or Path.home() / ".cache" / "edgekd" / "monai")
    target = where / name
    if (target / META_FILE).is_file():
        return target
    (log or (lambda _m: None))(f"downloading MONAI bundle {name} to {where}")
    try:
        bundle.download(name=name, version=version, bundle_dir=str(where), progress=False)
    except Exception as e:  # network, HTTP and archive errors come in many types
        raise DependencyError(
            f"cannot download MONAI bundle {name!r}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}",
            "check the name and the internet connection, or download it elsewhere and pass monai:BUNDLE_DIR",
        ) from e
    if not (target / META_FILE).is_file():
        raise ArtifactError(f"the download of {name!r} has no {META_FILE} under {target}", "pass monai:BUNDLE_DIR")
    return target


def resolve_monai_ref(ref: str) -> Path:
    """``monai:DIR`` -> DIR; ``monai:zoo:NAME[@VERSION]`` -> the downloaded bundle folder."""
    body = ref[len("monai:") :] if ref.startswith("monai:") else ref
    if not body:
        raise InvalidInputError(f"bad MONAI teacher {ref!r}", "write monai:BUNDLE_DIR or monai:zoo:NAME[@VERSION]")
    if body.startswith("zoo:"):
        name, _, version = body[len("zoo:") :].partition("@")
        return download_monai_bundle(name, version=version or None)
    return Path(body)
