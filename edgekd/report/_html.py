"""A self-contained HTML page: inline CSS, PNG figures as data URIs, no script or font from the network.

The page carries a tiny inline script that, once loaded, records in ``<body data-images-loaded=N
data-images-total=M>`` how many of its images decoded, so a headless browser can check the page the way a
person sees it (``benchmarks/report_render.py``).

Example:
    >>> page = Page("run pneumonia")
    >>> page.section("summary", "Summary", table(["a"], [[1]]), figure(png_bytes, "caption"))
    >>> html_text = page.render()
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["Page", "table", "figure", "paragraph", "esc", "fmt", "SECTION_IDS", "SEG_SECTION_IDS", "section_ids"]

# Every section the report writes, in order (the render check looks for each): a classifier's, a segmenter's
# (Dice / IoU / HD95 per stage and mask overlays instead of ROC, calibration and Grad-CAM), and "search" after the
# summary when the run searched for its student under a latency budget (``budget:``).
SECTION_IDS = ("summary", "kd", "pareto", "size", "roc", "calibration", "curves", "gradcam", "environment", "lineage")
SEG_SECTION_IDS = ("summary", "kd", "pareto", "size", "seg-metrics", "overlays", "curves", "environment", "lineage")


def section_ids(task: str, *, search: bool = False) -> tuple[str, ...]:
    """The sections of the report of a run of ``task`` (``summary.json["task"]``), in page order."""
    ids = SEG_SECTION_IDS if task == "segmentation" else SECTION_IDS
    return (ids[0], "search", *ids[1:]) if search else ids


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin:24px 0 4px}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:10px 0;font-size:.86em}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f4f7}td:first-child,th:first-child{text-align:left}figure{margin:12px 0}
figcaption{font-size:.85em;color:#555;max-width:1000px}img{max-width:100%;height:auto;border:1px solid #eee}
.verdict{padding:10px 14px;border-radius:6px;margin:10px 0}.good{background:#e8f5e9}.bad{background:#fff3e0}
.muted{color:#666;font-size:.9em}code{background:#f3f4f7;padding:0 3px;border-radius:3px}nav a{margin-right:12px}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(v: Any, digits: int = 4) -> str:
    """Numbers for tables: NaN/None as ``n/a``, large integers with separators."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return esc(v)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, cls: str = "") -> str:
    """An HTML table; cells that are already HTML (strings starting with ``<``) are kept as they are."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, str) and c.startswith('<') else fmt(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure(png: bytes, caption: str, *, alt: str | None = None) -> str:
    """A PNG embedded as a data URI, with its caption."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{esc(alt or caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{text}</p>'


class Page:
    """Sections in order, rendered into one HTML document."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title, self.subtitle = title, subtitle
        self.sections: list[tuple[str, str, str]] = []

    def section(self, sid: str, heading: str, *parts: str) -> None:
        self.sections.append((sid, heading, "".join(parts)))

    def render(self) -> str:
        nav = "".join(f'<a href="#{sid}">{esc(h)}</a>' for sid, h, _ in self.sections)
        body = "".join(f'<section id="{sid}"><h2>{esc(h)}</h2>{content}</section>' for sid, h, content in self.sections)
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(self.title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style>'
            f"<script>{_SCRIPT}</script></head><body><h1>{esc(self.title)}</h1>"
            f'<p class="muted">{self.subtitle}</p><nav>{nav}</nav>{body}</body></html>\n'
        )
