"""edgekd.teachers: loading the networks that students learn from.

A teacher is any zoo model (:func:`edgekd.students.build_model`), a model directory, or a user
checkpoint imported into a zoo architecture with :func:`import_checkpoint`. Checkpoints are read
without unpickling arbitrary objects unless ``trust_pickle`` is set (STYLE.md habits).

Example:
    >>> from edgekd.specs import ModelSpec
    >>> spec = ModelSpec(name="small:resnet32x4", num_classes=100)
    >>> teacher = import_checkpoint("ckpt_epoch_240.pth", spec=spec)
"""

from edgekd.teachers._checkpoint import TORCH_SUFFIXES, import_checkpoint, load_checkpoint_state, strip_prefixes
from edgekd.teachers._monai import MonaiBundle, download_monai_bundle, read_monai_bundle, require_monai
from edgekd.teachers._teacher import Teacher, load_teacher, state_fingerprint

__all__ = [
    "load_checkpoint_state",
    "import_checkpoint",
    "strip_prefixes",
    "TORCH_SUFFIXES",
    "Teacher",
    "load_teacher",
    "state_fingerprint",
    "MonaiBundle",
    "read_monai_bundle",
    "download_monai_bundle",
    "require_monai",
]
