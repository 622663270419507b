"""edgekd.students: the model zoo (compact students and the torchvision/timm models around them).

Models are named by source (STYLE.md principle 3): ``tv:resnet18``, ``timm:resnet18``,
``small:resnet8x4``. :data:`MODELS` is the one registry of builders; :func:`build_model` turns a
:class:`~edgekd.specs.ModelSpec` into a network; :func:`count_params`, :func:`count_macs` and
:func:`tap_points` describe any ``nn.Module``.

Students written here (for images of at most 64 px):

* CIFAR ResNets ``small:resnet8/14/20/32`` and ``small:resnet8x4/32x4`` (He et al. 2016; Tian et al. 2020);
* wide ResNets ``small:wrn_16_2`` and ``small:wrn_40_2`` (Zagoruyko & Komodakis 2016);
* ``small:mobilenetv2_x0_5``, a small-image MobileNetV2 (Sandler et al. 2018);
* ``small:tinycnn``, ~50 k parameters, for tests and smoke runs;
* segmentation: U-Nets ``small:unet_w4`` .. ``small:unet_w64`` (Ronneberger et al. 2015) and torchvision's
  ``tv:lraspp_mobilenet_v3_large`` / ``tv:deeplabv3_mobilenet_v3_large`` (``[N, C, H, W]`` logits);
* ``small:<tv name>``: torchvision ResNet/ResNeXt/Wide-ResNet, MobileNetV2/V3, EfficientNet, RegNet,
  ShuffleNetV2 and MNASNet with a stride-1 stem (``small:resnet18`` == ``tv:resnet18`` with
  ``small_input=True``).

Example:
    >>> from edgekd.specs import ModelSpec
    >>> model = build_model(ModelSpec(name="small:resnet8x4", num_classes=2, in_chans=1))
    >>> count_params(model), count_macs(model, (1, 1, 28, 28)), tap_points(model)
    (1207778, 135099392, ['layer1', 'layer2', 'layer3'])
"""

from edgekd.students._counting import count_macs, count_params
from edgekd.students._structure import apply_structure, capture_structure
from edgekd.students._taps import FeatureTaps, ModelOutputs, check_layers, default_layer, tap_points
from edgekd.students._zoo import (
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    MODELS,
    SOURCES,
    build_model,
    check_input_size,
    check_spec_input_size,
    default_zoo_names,
    is_student,
    list_models,
    min_input_size,
    model_task,
    parse_model_name,
    probe_forward,
    zoo_rows,
)

__all__ = [
    "MAX_INPUT_SIZE",
    "MODELS",
    "SOURCES",
    "parse_model_name",
    "build_model",
    "check_input_size",
    "check_spec_input_size",
    "min_input_size",
    "MIN_INPUT_SIZE",
    "probe_forward",
    "list_models",
    "count_params",
    "count_macs",
    "tap_points",
    "FeatureTaps",
    "ModelOutputs",
    "check_layers",
    "default_layer",
    "apply_structure",
    "capture_structure",
    "zoo_rows",
    "default_zoo_names",
    "is_student",
    "model_task",
]
