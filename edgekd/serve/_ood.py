"""Per-image out-of-distribution scores from the reference a bundle (or model directory) carries.

The reference (``drift_reference.npz``, see :mod:`edgekd.monitor`) holds Gaussian models of the penultimate
features and of 13 image statistics, fitted on training images, with the squared Mahalanobis distances of the
held-out validation images. One image's score in a space is its squared distance over that space's level
(:func:`~edgekd.monitor.ood_levels`: the space's 99.5th validation percentile times one factor that calibrates
the two spaces *jointly*); its ``ood_score`` is the larger of the two, and ``out_of_distribution`` is
``ood_score > 1``: beyond the 99.5th percentile (:data:`~edgekd.monitor.OOD_QUANTILE`) of the combined score on
the validation images, so about 0.5 % of in-distribution images are flagged in all (not 0.5 % per space). A
space's value above 1 says that space alone raised the flag. Mahalanobis distance as an out-of-distribution
detector: Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018.

The image statistics are computed from the preprocessed model input with its normalisation undone, so an
Open Inference Protocol tensor is scored exactly like an image file. A non-finite input or feature scores
``inf`` and is flagged.

Example:
    >>> scorer = OODScorer.load(read_reference("bundles/int8"), model.preprocess)
    >>> s = scorer.score(x, features)[0]
    >>> s.score, s.out_of_distribution, s.spaces
    (0.41, False, {'features': 0.41, 'image': 0.22})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgekd.export import input_statistics
from edgekd.monitor import OOD_QUANTILE, Reference, ood_levels
from edgekd.specs import Preprocess

__all__ = ["OODScore", "OODScorer"]


@dataclass(frozen=True)
class OODScore:
    """One image: the score (max over spaces of distance / the space's jointly calibrated level), the flag, per space."""

    score: float
    out_of_distribution: bool
    spaces: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        finite = bool(np.isfinite(self.score))
        return {
            "ood_score": round(self.score, 4) if finite else None,
            "out_of_distribution": self.out_of_distribution,
            "ood_spaces": {k: round(v, 4) if np.isfinite(v) else None for k, v in self.spaces.items()},
        }


@dataclass
class OODScorer:
    """Scores preprocessed batches against a :class:`~edgekd.monitor.Reference`."""

    reference: Reference
    preprocess: Preprocess
    levels: dict[str, float]
    description: str

    @classmethod
    def load(cls, reference: Reference | None, preprocess: Preprocess, *, where: str = "") -> OODScorer | None:
        """A scorer for ``reference``, or None when it has no distance statistics."""
        if reference is None or not reference.spaces:
            return None
        m = reference.meta
        by = f", by {m['model_file']}" if m.get("model_file") else ""
        fit = f" (fitted on {m['fit_images']} {m['fit']} images)" if m.get("fit") else ""
        desc = (
            f"{where or 'drift_reference.npz'}: {' + '.join(reference.spaces)} spaces{fit}, calibrated on "
            f"{m.get('images')} {m.get('split', 'val')} images of {m.get('data')}{by}; flagged beyond the "
            f"{100 * OOD_QUANTILE:g}th percentile of the combined score"
        )
        return cls(reference, preprocess, ood_levels(reference), desc)

    def score(self, x: np.ndarray, features: np.ndarray | None) -> list[OODScore]:
        """Scores of a preprocessed batch ``x`` ``[N, C, H, W]`` with the model's penultimate ``features``."""
        ratios: dict[str, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for name in self.reference.spaces:
                if name == "features":
                    if features is None:
                        continue
                    f = np.asarray(features, dtype=np.float64).reshape(len(x), -1)
                    if f.shape[1] != int(self.reference.meta.get("feature_dim", f.shape[1])):
                        continue  # another file of the bundle with other features: image statistics only
                    vals = self.reference.d2("features", f)
                else:
                    vals = self.reference.d2("image", input_statistics(x, self.preprocess))
                ratios[name] = np.where(np.isfinite(vals), vals / max(self.levels[name], 1e-12), np.inf)
        out = []
        for i in range(len(x)):
            per = {k: float(v[i]) for k, v in ratios.items()}
            s = max(per.values()) if per else float("nan")
            out.append(OODScore(s, bool(s > 1.0) or not np.isfinite(s) and bool(per), per))
        return out
