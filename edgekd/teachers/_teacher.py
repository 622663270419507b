"""Teachers for distillation: a PyTorch model or an ONNX file, each with its own preprocessing.

A :class:`Teacher` turns the raw ``uint8`` batch the student also sees into logits (and, for PyTorch
teachers, tapped features), applying *its own* :class:`~edgekd.data.preprocess.Preprocess`: teacher and
student may differ in input size, channels and normalisation. :func:`load_teacher` accepts:

==============================  ===========================================================================
``runs/teacher``                a model directory (loaded lazily: a complete teacher cache never loads it)
``onnx:FILE.onnx`` / ``F.onnx`` an ONNX model run by ONNX Runtime (CUDA when present, else CPU); logit
                                losses only. Preprocessing from ``preprocess.json`` next to the file, else
                                the data's statistics at the model's input size and channels.
``ckpt:FILE@MODEL[,opts]``      a user checkpoint (state dict / safetensors) for a registry architecture,
                                e.g. ``ckpt:resnet50_xray.pt@tv:resnet50,size=224,chans=3``; options
                                ``size=``, ``chans=``, ``small_input=1``
``monai:BUNDLE_DIR``            a MONAI Bundle (classification); ``monai:zoo:NAME[@VERSION]`` downloads one
                                from the MONAI Model Zoo. Its own preprocessing; needs ``edgekd[monai]``
``tv:NAME[,size=N]``            a registry model with its pretrained weights (``pretrained=True``): only
                                when the weights' classes are the data's classes, since a random head
                                (or a random teacher) teaches nothing
==============================  ===========================================================================

Example:
    >>> data = load_data("pneumoniamnist")
    >>> teacher = load_teacher("runs/teacher", data=data)
    >>> teacher.logits(images_u8).shape
    torch.Size([128, 2])
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.modeldir import (
    WEIGHTS_FILE,
    is_model_dir,
    load_model_dir,
    read_card,
    read_json,
    sha256_file,
    validate_file,
)
from edgekd.specs import ModelSpec, Preprocess, Task
from edgekd.students import FeatureTaps, ModelOutputs, build_model, parse_model_name
from edgekd.teachers._checkpoint import import_checkpoint
from edgekd.teachers._monai import read_monai_bundle, resolve_monai_ref

__all__ = ["Teacher", "load_teacher", "state_fingerprint"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_REEXPORT = "re-export the bundle, or fix or remove preprocess.json"
_REFS = "a model directory, onnx:FILE.onnx, ckpt:FILE@MODEL or a registry name such as tv:resnet50 (with --pretrained)"


def state_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``model.state_dict()`` (identifies its weights)."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(value.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Teacher:
    """A frozen model that produces soft targets for a raw ``uint8`` batch.

    Attributes:
        name: the reference it was loaded from (recorded in the student's lineage).
        kind: ``"torch"`` or ``"onnx"``.
        preprocess: the teacher's own preprocessing.
        num_classes: logits per sample.
        fingerprint: sha256 identifying the weights (the model file, or the state dict).

    Build one with :func:`load_teacher`, :meth:`from_module` or :meth:`from_onnx`.
    """

    def __init__(
        self,
        *,
        name: str,
        kind: str,
        preprocess: Preprocess,
        num_classes: int,
        fingerprint: str,
        loader: Callable[[], nn.Module] | None = None,
        session: Any = None,
    ) -> None:
        self.name, self.kind, self.preprocess = name, kind, preprocess
        self.num_classes, self.fingerprint = num_classes, fingerprint
        self._loader, self._session = loader, session
        self._model: nn.Module | None = None
        self._onnx_batch: int | None = None
        self._placed: tuple[torch.device, bool] | None = None
        self.channels_last = False

    @classmethod
    def from_module(
        cls, model: nn.Module, preprocess: Preprocess, *, name: str = "module", num_classes: int | None = None
    ) -> Teacher:
        """Wrap an in-memory PyTorch model (e.g. the unpruned parent in prune recovery).

        The model is put in eval mode with gradients off (it is frozen from now on). ``num_classes`` defaults
        to the width of the model's output on one dummy input.
        """
        model.eval().requires_grad_(False)
        if num_classes is None:
            num_classes = _output_width(model, preprocess)
        t = cls(
            name=name,
            kind="torch",
            preprocess=preprocess,
            num_classes=num_classes,
            fingerprint=state_fingerprint(model),
        )
        t._model = model
        return t

    @classmethod
    def from_onnx(
        cls, path: str | Path, preprocess: Preprocess | None = None, *, data=None, name: str | None = None
    ) -> Teacher:
        """An ONNX model run through ONNX Runtime; ``preprocess`` or ``data`` (to derive it) is required."""
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"ONNX teacher {path} does not exist", "check the path after onnx:")
        session = _onnx_session(path)
        if preprocess is None:
            if data is None:
                raise InvalidInputError("an ONNX teacher needs a Preprocess or the data to derive one")
            preprocess = _onnx_preprocess(path, session, data)
        t = cls(
            name=name or f"onnx:{path}",
            kind="onnx",
            preprocess=preprocess,
            num_classes=0,
            fingerprint=sha256_file(path),
            session=session,
        )
        shape = session.get_inputs()[0].shape
        t._onnx_batch = shape[0] if isinstance(shape[0], int) else None
        dummy = torch.zeros(t._onnx_batch or 1, preprocess.data_channels, *preprocess.input_size, dtype=torch.uint8)
        t.num_classes = int(t.logits(dummy).shape[1])
        return t

    @property
    def model(self) -> nn.Module | None:
        """The PyTorch module (loaded on first use), or ``None`` for an ONNX teacher."""
        if self._model is None and self._loader is not None:
            self._model = self._loader().eval().requires_grad_(False)
            self._loader = None
        return self._model

    def describe(self) -> dict[str, Any]:
        """What identifies this teacher's outputs (for cache fingerprints and lineage)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "weights_sha256": self.fingerprint,
            "num_classes": self.num_classes,
            "preprocess": json.loads(self.preprocess.model_dump_json()),
        }

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``[N, C]`` for a raw ``uint8`` batch ``[N, C, H, W]``, on the batch's device."""
        if self.kind == "onnx":
            return self._onnx_logits(images)
        return self.run(images).logits

    @torch.no_grad()
    def run(self, images: torch.Tensor, paths: Sequence[str] = ()):
        """Logits and the outputs of the modules at ``paths`` (PyTorch teachers only)."""
        model = self._on_device(images.device)
        x = self.preprocess(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with FeatureTaps(model, paths, who=f"teacher {self.name}") as feats:
            logits = model(x)
        return ModelOutputs(logits, dict(feats))

    def _on_device(self, device: torch.device) -> nn.Module:
        model = self.model
        if model is None:
            raise InvalidInputError(
                f"teacher {self.name} is an ONNX model: it gives logits only",
                "use logit losses (kd, dkd, dist, mlkd) with an ONNX teacher",
            )
        # Move (and re-layout) only when something changed: a module-wide .to() walks every parameter.
        p = next(model.parameters(), None)
        if self._placed != (device, self.channels_last) or (p is not None and p.device != device):
            model.to(device)
            if self.channels_last:
                model.to(memory_format=torch.channels_last)
            self._placed = (device, self.channels_last)
        return model

    def _onnx_logits(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images.cpu()).numpy().astype(np.float32)
        feed = self._session.get_inputs()[0].name
        step = self._onnx_batch or len(x)
        outs = []
        for i in range(0, len(x), step):  # a model exported with a fixed batch runs chunk by chunk
            chunk = x[i : i + step]
            pad = step - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
            out = self._session.run(None, {feed: chunk})[0]
            outs.append(out[: len(out) - pad])
        return torch.from_numpy(np.concatenate(outs)).float().to(images.device)


def _output_width(model: nn.Module, preprocess: Preprocess) -> int:
    p = next(model.parameters(), None)
    x = torch.zeros(1, preprocess.data_channels, *preprocess.input_size, dtype=torch.uint8)
    with torch.no_grad():
        return int(model(preprocess(x.to(p.device if p is not None else "cpu"))).shape[1])


def _onnx_session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise DependencyError("ONNX teachers need onnxruntime", "pip install onnxruntime") from e
    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0]}", "re-export the model") from e


def _onnx_preprocess(path: Path, session, data) -> Preprocess:
    side = path.with_name("preprocess.json")
    if side.is_file():
        return validate_file(Preprocess, read_json(side, _REEXPORT), side, _REEXPORT)
    shape = session.get_inputs()[0].shape
    if len(shape) != 4:
        raise InvalidInputError(f"ONNX teacher {path} takes input shape {shape}, not [N, C, H, W]")
    chans = shape[1] if isinstance(shape[1], int) else data.channels
    size = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None
    return data.preprocess(input_size=size, in_chans=chans)


def _parse_options(ref: str, text: str, allowed: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for piece in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = piece.partition("=")
        if not eq or key not in allowed or not value.strip().isdigit():
            raise InvalidInputError(
                f"bad option {piece!r} in teacher {ref!r}", f"options are {', '.join(k + '=N' for k in allowed)}"
            )
        out[key] = int(value)
    return out


def _check_fit(teacher: Teacher, data, task: Task | None = None) -> Teacher:
    if teacher.num_classes != data.num_classes:
        raise InvalidInputError(
            f"teacher {teacher.name} has {teacher.num_classes} outputs but the data has {data.num_classes} classes",
            "use a teacher trained on this data's labels",
        )
    if task is not None and (task is Task.MULTILABEL) != (data.task is Task.MULTILABEL):
        raise InvalidInputError(
            f"teacher {teacher.name} was trained for a {task.value} task, the data is {data.task.value}",
            "use a teacher trained on this data",
        )
    if teacher.preprocess.data_channels != data.channels:
        raise InvalidInputError(
            f"teacher {teacher.name} reads {teacher.preprocess.data_channels}-channel images, "
            f"the data has {data.channels}",
            "use a teacher trained on this data",
        )
    return teacher


def _model_dir_teacher(ref: str, data) -> Teacher:
    card = read_card(ref)
    teacher = Teacher(
        name=str(ref),
        kind="torch",
        preprocess=card.preprocess,
        num_classes=card.spec.num_classes,
        fingerprint=sha256_file(Path(ref) / WEIGHTS_FILE),
        loader=lambda: load_model_dir(ref)[0],
    )
    return _check_fit(teacher, data, card.task)


def _checkpoint_teacher(ref: str, data, trust_pickle: bool) -> Teacher:
    body = ref[len("ckpt:") :]
    path, at, rest = body.rpartition("@")
    if not at or not path or not rest:
        raise InvalidInputError(f"bad checkpoint teacher {ref!r}", "write ckpt:FILE@MODEL, e.g. ckpt:t.pt@tv:resnet50")
    name, _, opt_text = rest.partition(",")
    opts = _parse_options(ref, opt_text, ("size", "chans", "small_input"))
    if not Path(path).is_file():
        raise ArtifactError(f"checkpoint {path} does not exist", "check the path in ckpt:FILE@MODEL")
    chans = opts.get("chans", data.channels)
    spec = ModelSpec(name=name, num_classes=data.num_classes, in_chans=chans, small_input=bool(opts.get("small_input")))
    size = (opts["size"], opts["size"]) if "size" in opts else None
    pre = data.preprocess(input_size=size, in_chans=chans)
    fingerprint = hashlib.sha256(f"{sha256_file(path)}|{spec.model_dump_json()}".encode()).hexdigest()
    teacher = Teacher(
        name=ref,
        kind="torch",
        preprocess=pre,
        num_classes=data.num_classes,
        fingerprint=fingerprint,
        loader=lambda: import_checkpoint(path, spec=spec, trust_pickle=trust_pickle),
    )
    return _check_fit(teacher, data)


def _monai_teacher(ref: str, data, trust_pickle: bool) -> Teacher:
    bundle = read_monai_bundle(resolve_monai_ref(ref))
    teacher = Teacher(
        name=ref,
        kind="torch",
        preprocess=bundle.preprocess(data),
        num_classes=bundle.num_classes,
        fingerprint=bundle.fingerprint(),
        loader=lambda: bundle.build_network(trust_pickle=trust_pickle),
    )
    return _check_fit(teacher, data)


def _pretrained_classes(name: str) -> int | None:
    source, bare = name.split(":", 1)
    if source == "tv":
        import torchvision

        return len(torchvision.models.get_model_weights(bare).DEFAULT.meta["categories"])
    return None


def _registry_teacher(ref: str, data, pretrained: bool) -> Teacher:
    name, _, opt_text = ref.partition(",")
    source, _ = parse_model_name(name)
    if not pretrained or source == "small":
        raise InvalidInputError(
            f"teacher {name} would have random weights: a random teacher teaches nothing",
            "train one first (edgekd train --model NAME ...) and pass its model directory, or pass --pretrained "
            "for a tv:/timm: model whose pretrained classes are the data's classes",
        )
    classes = _pretrained_classes(name)
    if classes is not None and classes != data.num_classes:
        raise InvalidInputError(
            f"pretrained {name} predicts {classes} classes, the data has {data.num_classes}: its new head would be "
            "random",
            f"fine-tune it first: edgekd train --model {name} --pretrained ... and pass the model directory",
        )
    opts = _parse_options(ref, opt_text, ("size",))
    size = opts.get("size", 224)
    pre = data.preprocess(input_size=(size, size), in_chans=3).model_copy(
        update={"mean": _IMAGENET_MEAN, "std": _IMAGENET_STD}
    )
    spec = ModelSpec(name=name, num_classes=data.num_classes, in_chans=3)
    model = build_model(spec, pretrained=True)
    return _check_fit(Teacher.from_module(model, pre, name=ref, num_classes=data.num_classes), data)


def load_teacher(ref: str, *, data, pretrained: bool = False, trust_pickle: bool = False) -> Teacher:
    """Load a teacher from a reference string (see the module docstring for the forms).

    Args:
        ref: a model directory, ``onnx:FILE`` / ``FILE.onnx``, ``ckpt:FILE@MODEL[,opts]`` or a registry name.
        data: the :class:`~edgekd.data.DataBundle` distilled on (classes, channels, statistics).
        pretrained: allow a registry name with its pretrained weights.
        trust_pickle: allow unpickling a checkpoint that is a full pickled model (runs code).

    Raises:
        InvalidInputError: a random (registry, not pretrained) teacher, classes or channels that do not match
            the data, a malformed reference.
        ArtifactError: a missing or unreadable file or directory.
        DependencyError: onnxruntime missing, pretrained weights not downloadable.

    Example:
        >>> load_teacher("onnx:teacher.onnx", data=data).kind
        'onnx'
    """
    ref = str(ref).strip()
    if ref.startswith("onnx:") or ref.lower().endswith(".onnx"):
        path = ref[len("onnx:") :] if ref.startswith("onnx:") else ref
        return _check_fit(Teacher.from_onnx(path, data=data, name=ref), data)
    if ref.startswith("ckpt:"):
        return _checkpoint_teacher(ref, data, trust_pickle)
    if ref.startswith("monai:"):
        return _monai_teacher(ref, data, trust_pickle)
    if is_model_dir(ref):
        return _model_dir_teacher(ref, data)
    if Path(ref).exists():
        return _model_dir_teacher(ref, data)  # read_card explains what is missing
    if ":" in ref and ref.split(":", 1)[0] in ("tv", "timm", "small"):
        return _registry_teacher(ref, data, pretrained)
    raise ArtifactError(f"teacher {ref!r} does not exist", f"give {_REFS}")
