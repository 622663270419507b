"""edgekd.report: the HTML report of a run (Pareto, calibration, Grad-CAM agreement) and `edgekd explain`.

* :func:`write_report`: ``RUN/report/index.html`` from a finished `edgekd run` directory: a self-contained page
  (PNG figures embedded, no network needed) made with matplotlib;
* :func:`gradcam_maps` / :func:`cam_agreement`: Grad-CAM maps with the maintained ``grad-cam`` library at a
  model's last stage, and the agreement of two models' maps (Spearman rank correlation, top-20 % IoU);
* :func:`explain`: Grad-CAM overlays of chosen or sampled images for review, optionally against another model.

Example:
    >>> write_report("runs/pneumonia")
    >>> explain("runs/pneumonia/student", "review", images=["3", "17"], compare="runs/pneumonia/teacher")
"""

from edgekd.report._explain import ExplainedImage, ExplainResult, explain
from edgekd.report._gradcam import (
    CAM_METHOD,
    TOP_FRACTION,
    CamResult,
    cam_agreement,
    default_cam_layer,
    fmt_score,
    gradcam_maps,
)
from edgekd.report._html import SECTION_IDS, SEG_SECTION_IDS, section_ids
from edgekd.report._report import REPORT_DIR, read_summary, write_report

__all__ = [
    "write_report",
    "read_summary",
    "REPORT_DIR",
    "SECTION_IDS",
    "SEG_SECTION_IDS",
    "section_ids",
    "gradcam_maps",
    "cam_agreement",
    "fmt_score",
    "default_cam_layer",
    "CamResult",
    "CAM_METHOD",
    "TOP_FRACTION",
    "explain",
    "ExplainResult",
    "ExplainedImage",
]
