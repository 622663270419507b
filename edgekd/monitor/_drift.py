"""`edgekd drift`: does new data still look like the data a model was validated on?

The model runs on the new images; its outputs are compared with the reference statistics stored at training
time (:mod:`edgekd.monitor._reference`):

* **score (the verdict)**: the share of new images that lie far from the validation images: the combined
  squared Mahalanobis distance (penultimate-feature space and image-statistics space: contrast, sharpness,
  noise; the max of the per-space distances over their quantiles, see :func:`~edgekd.monitor.ood_levels`)
  beyond its 99th percentile on the held-out validation images. Without drift 1 % of images
  (:data:`EXPECTED_RATE`) are that far; a new scanner or site moves many more. The score is compared
  with a threshold (:data:`DEFAULT_THRESHOLD`, 0.05: five times the expected share) and a one-sided binomial
  test gives the p-value of that many far images under "no drift" (Mahalanobis distance as an
  out-of-distribution score: Lee et al., NeurIPS 2018). Counting far *images* makes it sensitive to a minority
  of shifted images: a 10 % mix of another scanner raises it by about 10 points even when the class balance
  and the average confidence barely move;
* **confidence**: a two-sample Kolmogorov-Smirnov test of the top-1 probability against the reference;
* **class probabilities**: the population-stability index per class over 10 probability bins,
  ``PSI = sum_b (a_b - e_b) ln(a_b / e_b)`` (above 0.25 is the usual "major shift");
* per space, the far images and the mean squared distance of the new images over the reference's.

``signals`` lists which tests flag (the score above the threshold, and the secondary tests KS p < 0.01 and a PSI > 0.25). A model directory without
a reference (e.g. pruned or imported) can be given one on the fly from a data spec's validation split
(``reference_data``), computed in memory and never written.

Example:
    >>> report = check_drift("runs/student", "folder:/data/site_b")
    >>> report.verdict, round(report.score, 3)
    ('drift', 0.412)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from edgekd._io import sha256_file
from edgekd.data import DataBundle, load_data, load_images
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.modeldir import WEIGHTS_FILE, load_model_dir
from edgekd.monitor._reference import (
    MIN_IMAGES,
    Outputs,
    Reference,
    compute_reference,
    confidence_of,
    model_outputs,
    ood_levels,
    prob_histograms,
    read_reference,
    write_reference,
)
from edgekd.specs import Preprocess

__all__ = ["DriftReport", "check_drift", "far_images", "save_reference", "DEFAULT_THRESHOLD", "EXPECTED_RATE", "psi"]

DEFAULT_THRESHOLD = 0.05
EXPECTED_RATE = 0.01  # the share of reference images counted far, all spaces together (calibrated jointly)
PSI_MAJOR = 0.25
KS_ALPHA = 0.01


@dataclass
class DriftReport:
    """The figures of one drift check and its verdict (``drift`` when ``score > threshold``)."""

    model: str
    data: str
    split: str
    images: int
    score: float
    threshold: float
    drift: bool
    far_images: int
    expected_rate: float
    binomial_pvalue: float
    far_by_space: dict[str, int]
    mean_d2_ratio: dict[str, float]
    ks_statistic: float
    ks_pvalue: float
    psi: dict[str, float]
    reference: dict[str, Any] = field(default_factory=dict)
    signals: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "drift" if self.drift else "no drift"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = 1e-4) -> float:
    """Population-stability index of two histograms (counts), empty bins floored at ``eps``.

    Example:
        >>> psi(np.array([50, 50]), np.array([50, 50]))
        0.0
    """
    e = np.maximum(expected / max(expected.sum(), 1), eps)
    a = np.maximum(actual / max(actual.sum(), 1), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def save_reference(model, preprocess: Preprocess, data: DataBundle, out: str | Path) -> Path:
    """Compute the reference (fitted on ``data``'s training split, calibrated on its validation split) and write it
    into the model directory ``out``."""
    meta = {"data": data.spec, "split": "val", "weights_sha256": sha256_file(Path(out) / WEIGHTS_FILE)}
    ref = compute_reference(model, preprocess, data.val, data.task, data.num_classes, fit_on=data.train, meta=meta)
    return write_reference(out, ref)


def far_images(ref: Reference, out: Outputs) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per image: far in any space (the score's numerator), far per space, and the distances per space.

    The levels are :func:`~edgekd.monitor.ood_levels` at ``1 - EXPECTED_RATE``, calibrated on all spaces
    together, so :data:`EXPECTED_RATE` of the reference's own images count as far.
    """
    level = ood_levels(ref, 1 - EXPECTED_RATE)
    d2 = {name: ref.d2(name, out.space(name)) for name in ref.spaces}
    far_by = {name: d2[name] > level[name] for name in ref.spaces}
    return np.logical_or.reduce(list(far_by.values())), far_by, d2


def _reference(model_dir: Path, model, card, reference_data: str | None, seed: int) -> Reference:
    if reference_data is not None:
        bundle = load_data(reference_data, seed=seed)
        if bundle.num_classes != card.spec.num_classes:
            raise InvalidInputError(
                f"--reference-data {reference_data} has {bundle.num_classes} classes, the model {card.spec.num_classes}"
            )
        meta = {"data": bundle.spec, "split": "val", "computed": "on the fly"}
        return compute_reference(
            model, card.preprocess, bundle.val, card.task, card.spec.num_classes, fit_on=bundle.train, meta=meta
        )
    ref = read_reference(model_dir)
    if ref is None:
        raise ArtifactError(
            f"{model_dir} holds no drift reference (models from edgekd train, distill and update do)",
            "pass --reference-data SPEC to compute one from that data's validation split",
        )
    if ref.meta.get("weights_sha256") not in (None, sha256_file(model_dir / WEIGHTS_FILE)):
        raise ArtifactError(
            f"the drift reference in {model_dir} was computed for other weights",
            "pass --reference-data SPEC to compute a matching one",
        )
    return ref


def check_drift(
    model_dir: str | Path,
    data: str,
    *,
    split: str = "test",
    threshold: float | None = None,
    reference_data: str | None = None,
    seed: int = 0,
) -> DriftReport:
    """Compare the images of ``data`` with the model's reference statistics (see the module docstring).

    Args:
        model_dir: a model directory (its ``drift_reference.npz``, or ``reference_data``).
        data: new images: ``folder:DIR``, ``dicom:DIR`` or a data spec (``split`` of it; labels ignored).
        split: the split of a labelled spec (``test`` by default: the held-out data).
        threshold: the score above which the verdict is drift (default :data:`DEFAULT_THRESHOLD`).
        reference_data: compute the reference from this spec's validation split instead of the stored one.
        seed: seed of the data split when ``data`` is a spec.

    Raises:
        ArtifactError: no (usable) reference, unreadable data (exit 4).
        InvalidInputError: a bad threshold or data that does not fit the model (exit 3).
    """
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not 0 <= threshold <= 1:
        raise InvalidInputError(f"threshold {threshold} must be in [0, 1]", f"e.g. {DEFAULT_THRESHOLD}")
    model_dir = Path(model_dir)
    model, card = load_model_dir(model_dir)
    ref = _reference(model_dir, model, card, reference_data, seed)
    if not ref.spaces:
        raise ArtifactError(
            f"the drift reference of {model_dir} has no distance statistics (fewer than "
            f"{MIN_IMAGES} validation images)",
            "pass --reference-data SPEC with a larger validation split",
        )
    pre = card.preprocess
    images = load_images(data, channels=pre.data_channels, size=tuple(pre.input_size), split=split, seed=seed)
    if len(images) == 0:
        raise InvalidInputError(f"{data} holds no images")
    out = model_outputs(model, pre, images.dataset, card.task, card.spec.num_classes)
    far_mask, far_by, d2 = far_images(ref, out)
    far, n = int(far_mask.sum()), len(far_mask)
    score = far / n
    ks = stats.ks_2samp(ref.confidence, confidence_of(out.probs, card.task))
    hists = prob_histograms(out.probs)
    per_class = {name: psi(ref.prob_hist[k], hists[k]) for k, name in enumerate(card.label_names)}
    signals = [
        s
        for s, on in (
            ("far images", score > threshold),
            ("confidence", ks.pvalue < KS_ALPHA),
            ("class probabilities", max(per_class.values()) > PSI_MAJOR),
        )
        if on
    ]
    return DriftReport(
        model=str(model_dir),
        data=images.spec,
        split=images.split or "all",
        images=n,
        score=score,
        threshold=threshold,
        drift=score > threshold,
        far_images=far,
        expected_rate=EXPECTED_RATE,
        binomial_pvalue=float(stats.binomtest(far, n, EXPECTED_RATE, alternative="greater").pvalue),
        far_by_space={k: int(v.sum()) for k, v in far_by.items()},
        mean_d2_ratio={k: float(d2[k].mean() / g.ref_d2.mean()) for k, g in ref.spaces.items()},
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        psi=per_class,
        reference=ref.meta,
        signals=signals,
    )
