"""Pure data: the typed specs every stage shares (pydantic models and enums; no model is built here).

* :class:`Preprocess` (with :class:`Task` and :class:`ChannelMode`): the exact recipe from a raw ``uint8``
  image to a model's input tensor. Datasets yield raw images ``[C, H, W]`` at their native size; a model sees
  them only through its own recipe, which is what lets a teacher and a student with different input sizes and
  normalisations share one data loader, and what ``preprocess.json`` in a bundle describes to the receiving
  side: ``x = (resize(u8 / 255) [repeat channels] - mean) / std``.
* :class:`ModelSpec`: what to build (registry name and the arguments that change the architecture).
* :class:`Lineage` and :class:`ModelCard`: the contents of a model directory's ``edgekd.json``.
* :class:`IntendedUse`: the kind of image a model is meant for (DICOM Modality, BodyPartExamined, ViewPosition,
  photometric interpretation), recorded from DICOM training data or declared, and checked against an input's
  header by ``edgekd predict`` and ``edgekd serve``.

Example:
    >>> spec = ModelSpec(name="small:resnet8x4", num_classes=2, in_chans=1)
    >>> pre = Preprocess(input_size=(28, 28), data_channels=1, in_chans=1, mean=(0.5,), std=(0.25,))
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
import shlex
import sys
from dataclasses import dataclass
from enum import Enum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekd.errors import InvalidInputError

__all__ = [
    "Task",
    "ChannelMode",
    "Preprocess",
    "ModelSpec",
    "Lineage",
    "ModelCard",
    "IntendedUse",
    "ScopeCheck",
    "SCOPE_KEYS",
    "FORMAT_VERSION",
    "package_versions",
    "current_command",
]

FORMAT_VERSION = 1


class Task(str, Enum):
    """What the labels mean. Binary tasks use two logits and softmax, like multi-class ones.

    ``segmentation``: one class index per pixel (``C`` classes, background included, so a lung mask has 2);
    the model outputs ``[N, C, H, W]`` logits and the targets are ``int64 [N, H, W]`` masks.
    """

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    SEGMENTATION = "segmentation"


class ChannelMode(str, Enum):
    """How data channels reach model channels when they differ (grayscale data, RGB model)."""

    ADAPT = "adapt"  # the model is built with in_chans == data channels (first conv adapted)
    REPEAT = "repeat"  # the data channel is repeated to the model's channel count


class Preprocess(BaseModel):
    """Exact recipe from a raw ``uint8`` image to the model's input tensor.

    Attributes:
        input_size: ``(H, W)`` the model expects; images of another size are resized (bilinear).
        data_channels: channels of the raw images.
        in_chans: channels of the model input.
        channel_mode: how ``data_channels`` becomes ``in_chans``.
        mean, std: per model-input channel, applied after scaling to ``[0, 1]``.
    """

    model_config = ConfigDict(frozen=True)

    input_size: tuple[int, int]
    data_channels: int = Field(ge=1)
    in_chans: int = Field(ge=1)
    channel_mode: ChannelMode = ChannelMode.ADAPT
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    scale: float = 1.0 / 255.0

    @model_validator(mode="after")
    def _check(self) -> Preprocess:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise InvalidInputError(
                f"preprocess mean/std have {len(self.mean)}/{len(self.std)} values for {self.in_chans} channels",
                "give one mean and one std per model input channel",
            )
        if self.channel_mode is ChannelMode.ADAPT and self.data_channels != self.in_chans:
            raise InvalidInputError(
                f"channel mode 'adapt' needs in_chans == data channels ({self.in_chans} != {self.data_channels})",
                "use channel mode 'repeat' to feed grayscale data to a 3-channel model",
            )
        if self.channel_mode is ChannelMode.REPEAT and self.in_chans % self.data_channels:
            raise InvalidInputError(
                f"cannot repeat {self.data_channels} data channels to {self.in_chans}",
                "repeat only works from 1 channel (or a divisor of the model's channels)",
            )
        return self

    def with_model(self, *, input_size: tuple[int, int] | None = None, in_chans: int | None = None) -> Preprocess:
        """The same data recipe for a model with another input size or channel count."""
        in_chans = in_chans or self.in_chans
        mode = ChannelMode.ADAPT if in_chans == self.data_channels else ChannelMode.REPEAT
        mean, std = self.mean, self.std
        if in_chans != len(mean):
            mean = tuple(float(np.mean(mean)) for _ in range(in_chans))
            std = tuple(float(np.mean(std)) for _ in range(in_chans))
        return self.model_copy(
            update=dict(
                input_size=tuple(input_size or self.input_size),
                in_chans=in_chans,
                channel_mode=mode,
                mean=mean,
                std=std,
            )
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Apply to a ``uint8`` (or already float in [0, 255]) batch ``[N, C, H, W]`` on any device."""
        x = images.float() * self.scale
        if tuple(x.shape[-2:]) != tuple(self.input_size):
            x = F.interpolate(x, size=self.input_size, mode=self.interpolation, align_corners=False)
        if self.channel_mode is ChannelMode.REPEAT and x.shape[1] != self.in_chans:
            x = x.repeat(1, self.in_chans // x.shape[1], 1, 1)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def numpy(self, images: np.ndarray) -> np.ndarray:
        """The same recipe on a numpy ``uint8`` batch ``[N, C, H, W]``, returning float32 (for ONNX Runtime)."""
        return self(torch.from_numpy(np.ascontiguousarray(images))).numpy().astype(np.float32)


class ModelSpec(BaseModel):
    """What to build: a registry name plus the arguments that change the architecture.

    Attributes:
        name: a source-qualified name, e.g. ``tv:resnet18``, ``small:resnet8x4``, ``timm:resnet18``.
        num_classes: classifier outputs (2 for binary tasks, the label count for multi-label ones).
        in_chans: input channels of the first layer.
        small_input: 3x3 stride-1 stem without max-pool, for inputs of at most 64 px.
        kwargs: extra builder keyword arguments (validated by the builder).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    num_classes: int = Field(ge=1)
    in_chans: int = Field(default=3, ge=1)
    small_input: bool = False
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Lineage(BaseModel):
    """Where a model came from."""

    command: str = ""
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    parent: str | None = None  # path of the parent model directory
    parent_sha256: str | None = None  # sha256 of the parent's weights file
    data: str | None = None
    teachers: list[str] = Field(default_factory=list)
    losses: list[str] = Field(default_factory=list)
    stage: str = "train"
    versions: dict[str, str] = Field(default_factory=dict)
    notes: dict[str, Any] = Field(default_factory=dict)


# IntendedUse key -> the DICOM attribute it is checked against.
SCOPE_KEYS = {
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view": "ViewPosition",
    "photometric": "PhotometricInterpretation",
}
_CS = re.compile(r"[A-Z0-9 _]{1,16}")  # DICOM's Code String: what these attributes may hold


def _photometric_family(value: str) -> str:
    """Grayscale or colour: the DICOM reader inverts MONOCHROME1 and converts YBR and palettes to RGB."""
    return "grayscale" if value.startswith("MONOCHROME") else "colour"


def _bad_code(fields: dict[str, Any]) -> str | None:
    for key in SCOPE_KEYS:
        for v in fields.get(key) or ():
            if not isinstance(v, str) or not _CS.fullmatch(v):
                return f"intended use {key}={v!r} is not a DICOM code string"
    return None


@dataclass(frozen=True)
class ScopeCheck:
    """The result of checking one input against an :class:`IntendedUse`.

    Attributes:
        status: ``in-scope``, ``out-of-scope`` (refused unless allowed), ``not-checkable`` (answered and
            flagged: the input carries no header to check, or lacks a checked attribute), ``unrestricted``
            (the model records no intended use) or ``not-an-image`` (a DICOM object that is no image to
            classify: always refused).
        reason: one line for the user (empty when in scope).
    """

    status: str
    reason: str = ""

    @property
    def refused(self) -> bool:
        """Refused unless out-of-scope inputs are allowed (``not-an-image`` is refused whatever the flag)."""
        return self.status in ("out-of-scope", "not-an-image")


class IntendedUse(BaseModel):
    """What a model is meant to classify, as DICOM attribute values (empty: not restricted).

    Recorded from the DICOM headers of the training split (``source="dicom"``), or declared by the user
    (``--intended-use modality=CR,DX body_part=CHEST``, ``source="declared"``). Only these coarse values are
    kept, never an identifier: each is a DICOM Code String (upper case letters, digits, space, ``_``; at most
    16 characters). ``photometric`` is compared as grayscale (``MONOCHROME1``/``MONOCHROME2``) or colour
    (``RGB``, ``YBR_*``, ``PALETTE COLOR``), since the reader converts within each family.

    Example:
        >>> use = IntendedUse.parse(["modality=CR,DX body_part=CHEST"])
        >>> use.check({"Modality": "CR", "BodyPartExamined": "EXTREMITY"}).reason
        'BodyPartExamined EXTREMITY is outside the intended use (CHEST)'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    view: tuple[str, ...] = ()
    photometric: tuple[str, ...] = ()
    source: str = "declared"

    @model_validator(mode="after")
    def _codes(self) -> IntendedUse:
        bad = _bad_code(self.model_dump())
        if bad:
            raise ValueError(bad)
        return self

    @classmethod
    def parse(cls, values: list[str] | tuple[str, ...] | str, *, source: str = "declared") -> IntendedUse:
        """``["modality=CR,DX body_part=CHEST"]`` (items split on spaces or ``;``) -> an :class:`IntendedUse`.

        Raises:
            InvalidInputError: an unknown key, a missing ``=`` or a value that is no code string (exit 3).
        """
        items = [values] if isinstance(values, str) else list(values)
        fields: dict[str, tuple[str, ...]] = {}
        for item in " ".join(items).replace(";", " ").split():
            key, sep, raw = item.partition("=")
            key = key.strip().lower().replace("-", "_")
            if not sep or key not in SCOPE_KEYS:
                raise InvalidInputError(
                    f"--intended-use {item!r}: expected KEY=V1,V2 with KEY one of {', '.join(SCOPE_KEYS)}",
                    "e.g. --intended-use 'modality=CR,DX body_part=CHEST'",
                )
            vals = tuple(dict.fromkeys(v.strip().upper() for v in raw.split(",") if v.strip()))
            if not vals:
                raise InvalidInputError(f"--intended-use {item!r} names no value", f"e.g. {key}=CR")
            fields[key] = fields.get(key, ()) + vals
        bad = _bad_code(fields)
        if bad:
            raise InvalidInputError(
                bad,
                "use upper-case letters, digits, '_' or spaces (at most 16 characters), "
                "e.g. --intended-use 'modality=CR,DX body_part=CHEST'",
            )
        return cls(**fields, source=source)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, k) for k in SCOPE_KEYS)

    def describe(self) -> str:
        """``modality CR, DX; body_part CHEST`` (or ``any image``)."""
        parts = [f"{k} {', '.join(getattr(self, k))}" for k in SCOPE_KEYS if getattr(self, k)]
        return "; ".join(parts) or "any image"

    def check(self, attributes: dict[str, str] | None) -> ScopeCheck:
        """Check an input's DICOM attributes (``None``: the input is no DICOM file, e.g. a PNG)."""
        if self.empty:
            return ScopeCheck("unrestricted")
        if attributes is None:
            return ScopeCheck(
                "not-checkable",
                f"not a DICOM file: its modality, body part and view cannot be "
                f"checked against the intended use ({self.describe()})",
            )
        outside, missing = [], []
        for key, tag in SCOPE_KEYS.items():
            allowed = getattr(self, key)
            value = (attributes.get(tag) or "").strip().upper()
            if not allowed:
                continue
            if not value:
                missing.append(tag)
            elif key == "photometric":
                if _photometric_family(value) not in {_photometric_family(a) for a in allowed}:
                    outside.append(f"{tag} {value} is outside the intended use ({', '.join(allowed)})")
            elif value not in allowed:
                outside.append(f"{tag} {value} is outside the intended use ({', '.join(allowed)})")
        if outside:
            return ScopeCheck("out-of-scope", "; ".join(outside))
        if missing:
            return ScopeCheck(
                "not-checkable",
                f"the file records no {', '.join(missing)} to check against the intended use ({self.describe()})",
            )
        return ScopeCheck("in-scope")


class ModelCard(BaseModel):
    """Contents of ``edgekd.json``."""

    format_version: int = FORMAT_VERSION
    spec: ModelSpec
    task: Task
    label_names: list[str]
    preprocess: Preprocess
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)
    lineage: Lineage = Field(default_factory=Lineage)
    structure: dict[str, dict[str, int]] | None = None
    params: int | None = None
    macs: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    intended_use: IntendedUse | None = None


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide how a model behaves, for lineage and benchmark records."""
    out = {"python": platform.python_version()}
    for pkg in ("edgekd", "torch", "torchvision", "onnx", "onnxruntime", "torch-pruning", "numpy", "timm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def current_command() -> str:
    """This process's command line as a user would retype it (``edgekd train ...``), for lineage records.

    Empty when edgekd runs inside another program (a Python caller records its own ``command``).
    """
    prog = Path(sys.argv[0]).name if sys.argv else ""
    if prog == "edgekd" or (prog == "__main__.py" and "edgekd" in sys.argv[0]):
        return "edgekd " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return ""
