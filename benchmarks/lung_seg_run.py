"""`edgekd run examples/lung-seg.yaml` from scratch, timed (issue 26 item 6 acceptance), and its figures as JSON.

Runs the example pipeline into a fresh run directory (the wall time is the whole run: teacher, baseline, distilled
student, pruned, INT8, export, benchmark, report), then writes ``benchmarks/results/lung_seg_run.json``: the wall
time and per-stage seconds, every row's test Dice / IoU / HD95 / pixel accuracy, params and p50 latency per batch,
the KD verdict with its interval, the hand-off decisions, the INT8 - FP32 Dice of the quantized file against its
parent, the hand-off's speedup over the teacher at batch 1 and 8, and the environment (CPU named).

    python benchmarks/lung_seg_run.py                 # the acceptance run (<= 15 min on 2 idle cores is the goal)
    python benchmarks/lung_seg_run.py --quick         # smoke: 32 px, 2 epochs, no pruning (~3 min)
    python benchmarks/lung_seg_run.py --set seeds=3   # any `edgekd run --set` override
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.pipeline import run_pipeline  # noqa: E402
from edgekd.report import write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK = [
    "teacher.input_size=32",
    "student.input_size=32",
    "teacher.train.epochs=2",
    "student.train.epochs=2",
    "prune=null",
    "quantize=[]",
]


def _rows(summary: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": r.name,
            "label": r.label,
            "test": {k: r.test.get(k) for k in ("dice", "iou", "hd95", "acc")},
            "val_dice": r.val.get("dice"),
            "params": r.params,
            "p50_ms": {b: lat.p50_ms for b, lat in r.latency.items()},
            "speedup": {b: lat.speedup for b, lat in r.latency.items()},
            "handoff": list(r.handoff),
        }
        for r in summary.rows
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "examples" / "lung-seg.yaml"))
    p.add_argument("--out", default="runs/lung-seg-bench")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    out = Path(a.out)
    if out.exists():
        shutil.rmtree(out)  # from scratch: the timing must include every stage
    overrides = (QUICK if a.quick else []) + a.overrides
    t0 = time.perf_counter()
    summary = run_pipeline(a.config, out, overrides=overrides, report=write_report, progress=False)
    wall = time.perf_counter() - t0
    stages = {}
    for f in sorted((out / "stages").glob("*.json")):
        stages[f.stem] = json.loads(f.read_text()).get("seconds")
    rows = _rows(summary)
    by = {r["name"]: r for r in rows}
    int8 = next((r for r in rows if r["name"].startswith("int8")), None)
    parent = by.get(str(summary.kd.get("chosen") or "student"), by.get("student", {}))  # what INT8 quantized
    payload = {
        "config": a.config,
        "overrides": overrides,
        "wall_s": wall,
        "stage_seconds": stages,
        "rows": rows,
        "kd": summary.kd,
        "handoff": summary.handoff.model_dump(mode="json"),
        "int8_minus_parent_test_dice": (
            int8["test"]["dice"] - parent.get("test", {}).get("dice", float("nan")) if int8 else None
        ),
        "report": str(out / "report" / "index.html"),
        "environment": environment(),
    }
    default = "lung_seg_run_quick.json" if a.quick else "lung_seg_run.json"
    write_json(a.json or REPO / "benchmarks" / "results" / default, payload)
    print(f"wall time {wall / 60:.1f} min; KD: {summary.kd.get('message', '')}")


if __name__ == "__main__":
    main()
