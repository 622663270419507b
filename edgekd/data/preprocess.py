"""The preprocessing recipe stored with every model and shipped in every bundle.

Datasets yield raw ``uint8`` images shaped ``[C, H, W]`` at their native size; a model sees them only
through its own :class:`Preprocess`. That is what lets a teacher and a student with different input
sizes and normalisations share one data loader, and what ``preprocess.json`` in a bundle describes to
the receiving side: ``x = (resize(u8 / 255) [repeat channels] - mean) / std``.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekd.errors import InvalidInputError

__all__ = ["Task", "ChannelMode", "Preprocess"]


class Task(str, Enum):
    """What the labels mean. Binary tasks use two logits and softmax, like multi-class ones."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"


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
