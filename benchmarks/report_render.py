"""Render an `edgekd run` report in headless Chromium and check it the way a person would see it.

Checks, on the page as the browser built it (``--dump-dom`` after the load event):

* every section of the report is present (``edgekd.report.section_ids`` of the run's task, with the search
  section for a budget run; read from ``RUN/summary.json`` beside ``RUN/report``) and has content;
* every image decoded (the page's own load script records ``data-images-loaded`` / ``data-images-total``);
* nothing was fetched from the network (the page has no ``http`` source, script or stylesheet).

It also writes a full-page screenshot (``--screenshot``) to look at. Chromium is Debian's ``chromium`` package;
when it is missing the script installs it (``apt-get update && apt-get install -y chromium``, needs root).

Usage:
    python benchmarks/report_render.py runs/pneumonia/report/index.html --out runs/bench/report_render.json
    # -> runs/bench/report_render.json and runs/bench/report_render.png

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.report import SECTION_IDS, section_ids  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
]


def chromium() -> str:
    """The Chromium binary; installed with apt-get when missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    print("chromium is missing: apt-get update && apt-get install -y chromium", flush=True)
    subprocess.run(["apt-get", "update"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"], check=True, stdout=subprocess.DEVNULL
    )
    found = shutil.which("chromium")
    if not found:
        raise SystemExit("chromium could not be installed")
    return found


def dump_dom(binary: str, page: Path, profile: Path) -> str:
    # --virtual-time-budget lets the load event (and the page's image check) run before the DOM is dumped.
    cmd = [binary, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout


def screenshot(binary: str, page: Path, png: Path, profile: Path, height: int) -> None:
    cmd = [
        binary,
        *FLAGS,
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        f"--window-size=1320,{height}",
        f"--screenshot={png}",
        page.as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


def expected_sections(page: Path) -> tuple[str, ...]:
    """The sections the run's report must have (its summary.json says the task and whether it searched)."""
    summary = page.parent.parent / "summary.json"
    if not summary.is_file():
        return SECTION_IDS
    s = json.loads(summary.read_text())
    return section_ids(s.get("task", "binary"), search=bool(s.get("search")))


def check(dom: str, ids: tuple[str, ...] = SECTION_IDS) -> dict:
    body = re.search(r"<body([^>]*)>", dom)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))) if body else {}
    sections = {}
    for sid in ids:
        m = re.search(rf'<section id="{sid}">(.*?)</section>', dom, re.S)
        sections[sid] = {
            "present": bool(m),
            "chars": len(m.group(1)) if m else 0,
            "images": len(re.findall(r"<img ", m.group(1))) if m else 0,
        }
    total, loaded = int(attrs.get("data-images-total", -1)), int(attrs.get("data-images-loaded", -1))
    remote = re.findall(r'(?:src|href)="(https?:[^"]+)"', dom)
    ok = (
        all(s["present"] and s["chars"] > 100 for s in sections.values())
        and total > 0
        and loaded == total
        and not remote
    )
    return {"ok": ok, "sections": sections, "images_total": total, "images_loaded": loaded, "remote_refs": remote}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="report/index.html of a run")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/report_render.json"))
    ap.add_argument("--height", type=int, default=9000, help="screenshot height in pixels")
    args = ap.parse_args()
    page = args.page.resolve()
    binary = chromium()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="edgekd-chromium-") as profile:
        ids = expected_sections(page)
        result = check(dump_dom(binary, page, Path(profile)), ids)
        png = args.out.with_suffix(".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        screenshot(binary, page, png, Path(profile), args.height)
    result.update(page=str(page), screenshot=str(png), chromium=version, environment=environment())
    write_json(args.out, result)
    missing = [s for s, v in result["sections"].items() if not v["present"]]
    print(
        f"sections: {len(ids) - len(missing)}/{len(ids)} present{' (missing ' + ', '.join(missing) + ')' if missing else ''}; "
        f"images loaded {result['images_loaded']}/{result['images_total']}; remote references {len(result['remote_refs'])}; "
        f"{'OK' if result['ok'] else 'FAILED'}"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
