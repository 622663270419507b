"""`kill -9` of `edgekd run` in the middle of a stage, the same command again, and the table against an uninterrupted run.

Given a finished, uninterrupted run directory (the reference, e.g. the one `make demo` wrote) and its pipeline
file, this script:

1. starts a new run directory holding copies of the reference's finished stages named by ``--reuse`` (default
   the teacher: the slowest stage, identical by content hash, so the new run skips it exactly as a re-run would);
2. runs ``edgekd run PIPELINE --out NEW`` and sends SIGKILL once the ``--kill-in`` stage (default ``student``) is
   running and has written its first epoch's checkpoint;
3. runs the same command again and records which stages were skipped, resumed and run;
4. compares every row's test and validation metrics and operating point with the reference's.

Pass: the second command exits 0, the killed stage is ``resumed``, the stages finished before the kill are
``skipped``, and every metric equals the reference's (``--tol``, default 1e-9). Latency is not compared (it is
measured anew).

    python benchmarks/run_resume.py runs/pneumonia examples/pneumonia.yaml --out runs/bench/run_resume.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402


def _cmd(config: Path, out: Path, json_out: Path) -> list[str]:
    return [sys.executable, "-m", "edgekd", "run", str(config), "--out", str(out), "--json", str(json_out), "-q"]


def _seed_run(reference: Path, new: Path, reuse: list[str]) -> None:
    if new.exists():
        shutil.rmtree(new)
    (new / "stages").mkdir(parents=True)
    shutil.copy2(reference / ".edgekd", new / ".edgekd")
    for name in reuse:
        shutil.copytree(reference / name, new / name)
        shutil.copy2(reference / "stages" / f"{name}.json", new / "stages" / f"{name}.json")


def _kill_when_running(proc: subprocess.Popen, run: Path, stage: str, timeout: float) -> float:
    ckpt = run / f".{stage}.edgekd-run" / "checkpoint" / "last.safetensors"
    t0 = time.time()
    while proc.poll() is None and time.time() - t0 < timeout:
        if ckpt.exists():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return time.time() - t0
        time.sleep(0.05)
    raise SystemExit(f"the run did not reach a checkpoint of stage {stage} (exit {proc.poll()})")


def _compare(ref: dict, new: dict, tol: float) -> list[dict]:
    out = []
    ref_rows = {r["name"]: r for r in ref["rows"]}
    for row in new["rows"]:
        base = ref_rows[row["name"]]
        for group in ("test", "val", "operating_point"):
            for k, v in row[group].items():
                b = base[group].get(k)
                same = b == v or (isinstance(v, float) and isinstance(b, float) and abs(v - b) <= tol)
                out.append({"row": row["name"], "metric": f"{group}.{k}", "reference": b, "resumed": v, "equal": same})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path, help="a finished, uninterrupted run directory")
    ap.add_argument("config", type=Path, help="its pipeline file")
    ap.add_argument("--new", type=Path, default=None, help="the run directory to kill and resume (default REF-resume)")
    ap.add_argument("--reuse", default="teacher", help="comma-separated finished stages copied from the reference")
    ap.add_argument("--kill-in", default="student", help="the training stage to kill after its first checkpoint")
    ap.add_argument("--tol", type=float, default=1e-9)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/run_resume.json"))
    args = ap.parse_args()
    new = args.new or args.reference.with_name(args.reference.name + "-resume")
    reuse = [s for s in args.reuse.split(",") if s]
    _seed_run(args.reference, new, reuse)
    ref = json.loads((args.reference / "summary.json").read_text())
    t0 = time.time()
    proc = subprocess.Popen(
        _cmd(args.config, new, new.with_suffix(".killed.json")), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed_after = _kill_when_running(proc, new, args.kill_in, args.timeout)
    record = json.loads((new / "stages" / f"{args.kill_in}.json").read_text())
    t1 = time.time()
    again = subprocess.run(_cmd(args.config, new, new.with_suffix(".json")), capture_output=True, text=True)
    resumed_s = time.time() - t1
    if again.returncode != 0:
        print(again.stderr[-3000:])
        return 1
    summary = json.loads(new.with_suffix(".json").read_text())
    status = {s["name"]: s["status"] for s in summary["stages"]}
    diffs = _compare(ref, summary, args.tol)
    ok = (
        status.get(args.kill_in) == "resumed"
        and all(status.get(s) == "skipped" for s in reuse)
        and all(d["equal"] for d in diffs)
    )
    result = {
        "ok": ok,
        "reference": str(args.reference),
        "new": str(new),
        "killed_in": args.kill_in,
        "killed_after_s": killed_after,
        "record_status_at_kill": record["status"],
        "second_run_s": resumed_s,
        "total_s": time.time() - t0,
        "status": status,
        "metrics_compared": len(diffs),
        "metrics_different": [d for d in diffs if not d["equal"]],
        "environment": environment(),
    }
    write_json(args.out, result)
    print(
        f"killed in {args.kill_in} after {killed_after:.0f} s; second run {resumed_s:.0f} s; stages: "
        + ", ".join(f"{k} {v}" for k, v in status.items())
        + f"; {len(diffs) - len(result['metrics_different'])}/"
        f"{len(diffs)} metrics equal to the uninterrupted run: {'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
