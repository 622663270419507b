"""The preprocessing recipe stored with every model and shipped in every bundle (defined in :mod:`edgekd.specs`)."""

from edgekd.specs import ChannelMode, Preprocess, Task

__all__ = ["Task", "ChannelMode", "Preprocess"]
