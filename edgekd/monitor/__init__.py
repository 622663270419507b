"""edgekd.monitor: is new data still like the data a model was validated on? (`edgekd drift`)

* :func:`save_reference` / :func:`compute_reference`: class-probability and confidence histograms of a model
  on its validation split and Gaussian models of its penultimate features and image statistics (fitted on the
  training split, calibrated on the validation split), stored in the model directory at the end of training
  (``drift_reference.npz``); :func:`ood_levels`: the levels one image is out of distribution beyond;
* :func:`check_drift`: new images against that reference: the share of images far out in feature or
  image-statistics space (Mahalanobis), a KS test on confidence and a population-stability index per class,
  with a verdict.

The package sits below the training engine (which stores the reference when a run finishes) and above the
model directory and data layers it reads.

Example:
    >>> report = check_drift("runs/student", "folder:/data/new_site", threshold=0.05)
    >>> report.verdict, report.score
"""

from edgekd.monitor._drift import (
    DEFAULT_THRESHOLD,
    EXPECTED_RATE,
    DriftReport,
    check_drift,
    far_images,
    psi,
    save_reference,
)
from edgekd.monitor._reference import (
    IMAGE_STATISTICS,
    MAX_FIT_IMAGES,
    MIN_IMAGES,
    OOD_QUANTILE,
    REFERENCE_FILE,
    Gaussian,
    Outputs,
    Reference,
    compute_reference,
    image_probabilities,
    logits_and_features,
    model_outputs,
    ood_levels,
    read_reference,
    reference_from_outputs,
    unit_image_statistics,
    write_reference,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "EXPECTED_RATE",
    "DriftReport",
    "check_drift",
    "far_images",
    "psi",
    "save_reference",
    "REFERENCE_FILE",
    "Gaussian",
    "Outputs",
    "Reference",
    "compute_reference",
    "model_outputs",
    "read_reference",
    "write_reference",
    "IMAGE_STATISTICS",
    "MAX_FIT_IMAGES",
    "MIN_IMAGES",
    "OOD_QUANTILE",
    "ood_levels",
    "reference_from_outputs",
    "unit_image_statistics",
    "logits_and_features",
    "image_probabilities",
]
