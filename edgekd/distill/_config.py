"""The training configuration shared by `edgekd train`, `edgekd distill` and recovery fine-tuning."""

from __future__ import annotations

from enum import Enum

from pydantic import ConfigDict, Field, field_validator

from edgekd._config import StageConfig
from edgekd.data import Augment
from edgekd.metrics import METRIC_NAMES

__all__ = ["TrainConfig", "OptimizerName", "ClassWeighting", "DeviceName", "AmpDtype"]


class OptimizerName(str, Enum):
    SGD = "sgd"
    ADAMW = "adamw"


class ClassWeighting(str, Enum):
    NONE = "none"
    BALANCED = "balanced"  # weight_c = N / (K * n_c), as scikit-learn's "balanced"


class DeviceName(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class AmpDtype(str, Enum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"


class TrainConfig(StageConfig):
    """Hyper-parameters of one training run; saved next to every output as ``config.yaml``."""

    model_config = ConfigDict(extra="forbid", use_enum_values=False)

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerName = OptimizerName.ADAMW
    lr: float = Field(2e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weighting: ClassWeighting = ClassWeighting.NONE
    augment: str = "none"
    seed: int = 0
    device: DeviceName = DeviceName.AUTO
    amp: bool | None = None  # None: on when training on CUDA
    amp_dtype: AmpDtype = AmpDtype.AUTO  # auto: fp16 on CUDA (with a gradient scaler), bf16 on CPU
    compile: bool = False  # torch.compile the student's forward (CUDA; the first steps are slow)
    channels_last: bool | None = None  # None: on when training on CUDA
    select_metric: str = "auroc"
    grad_clip: float | None = Field(None, gt=0)
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)  # for smoke runs and benchmarks
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-identical reruns and resumes

    @field_validator("select_metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in METRIC_NAMES:
            raise ValueError(f"unknown metric {v!r}; choose one of {', '.join(METRIC_NAMES)}")
        return v

    @field_validator("augment")
    @classmethod
    def _known_augment(cls, v: str) -> str:
        if v != "none" and v not in Augment.presets():
            raise ValueError(f"unknown augmentation {v!r}; choose none or one of {', '.join(Augment.presets())}")
        return v
