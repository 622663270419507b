"""edgekd.data: datasets from named sources, reproducible loaders, augmentation and the Preprocess spec.

Data is named by a spec string ``source[:arg][,key=value...]`` (see :func:`list_sources`):

=================  =================================================================
``pneumoniamnist``  bundled PneumoniaMNIST chest X-rays (MedMNIST v2, CC BY 4.0)
``medmnist:F.npz``  any 2D MedMNIST-format file (binary, multi-class or multi-label)
``imagefolder:D``   class sub-folders, optionally under train/ val/ test/
``csv:F.csv``       ``path,label[,split]`` rows
``dicom:D``         DICOM files (pydicom) in class sub-folders or with ``labels=F.csv``
``lungseg``         bundled chest X-rays with lung masks (segmentation, 43 patients, CC BY)
``seg:PATH``        image/mask pairs: ``images/`` + ``masks/`` folders or ``image,mask[,patient][,split]`` CSV
``softlabels:F``    teacher soft labels from ``edgekd label``, images matched by content hash
``synthetic:...``   generated learnable images (``classes=,n=,size=,channels=,seed=,task=``)
``tv:NAME``         torchvision datasets (CIFAR10, MNIST, ...; ``--download`` once)
=================  =================================================================

Datasets yield raw ``uint8 [C, H, W]`` images; every model normalises them with its own
:class:`Preprocess` (``bundle.preprocess(input_size=..., in_chans=...)``).

Example:
    >>> bundle = load_data("pneumoniamnist")
    >>> train = AugmentedDataset(bundle.train, Augment.preset("medical"), seed=0)
    >>> loader = make_loader(train, 128, shuffle=True, seed=0)
    >>> pre = bundle.preprocess(input_size=(28, 28))
    >>> images, targets = next(iter(loader))
    >>> x = pre(images)  # float [128, 1, 28, 28], normalised
"""

from edgekd.data import _csv, _dicom, _imagefolder, _medmnist, _seg, _softlabels, _synthetic, _torchvision  # noqa: F401, I001  (register sources)
from edgekd.data._augment import Augment, AugmentedDataset
from edgekd.data._bundle import DataBundle
from edgekd.data._dataset import ArrayDataset, FileDataset, UnsupportedImage, decode_image, image_info
from edgekd.data._dicom import DicomDataset, decode_dicom_bytes, read_dicom
from edgekd.data._seg import SegArrayDataset, SegFileDataset, patient_split
from edgekd.data._softlabels import SoftLabelDataset, SoftLabels, read_soft_labels, write_soft_labels
from edgekd.data._unlabeled import ImageSet, load_images
from edgekd.data._load import SOURCES, list_sources, load_data
from edgekd.data._loader import make_loader
from edgekd.data._spec import parse_data_spec
from edgekd.specs import ChannelMode, Preprocess, Task

__all__ = [
    "DataBundle",
    "load_data",
    "list_sources",
    "parse_data_spec",
    "make_loader",
    "Augment",
    "AugmentedDataset",
    "ArrayDataset",
    "FileDataset",
    "UnsupportedImage",
    "decode_image",
    "image_info",
    "DicomDataset",
    "SegArrayDataset",
    "SegFileDataset",
    "patient_split",
    "read_dicom",
    "decode_dicom_bytes",
    "ImageSet",
    "load_images",
    "SoftLabels",
    "SoftLabelDataset",
    "read_soft_labels",
    "write_soft_labels",
    "SOURCES",
    "Task",
    "ChannelMode",
    "Preprocess",
]
