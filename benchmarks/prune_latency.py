"""Measure, don't assume: does `edgekd prune --target-latency-ms` give a model that `edgekd bench` finds within budget?

1. a model directory (``--model DIR``, or ``--student`` (small:resnet8) trained on ``--data`` (PneumoniaMNIST)
   for ``--epochs``, reused when already there);
2. its ONNX Runtime CPU p50 at ``--batch`` measured with `edgekd bench`;
3. `edgekd prune MODEL --target-latency-ms BUDGET --batch B` with ``BUDGET = --budget-fraction * p50`` (default
   0.75: between the p50 and half of it), widths rounded by the measured probe (``--round-to auto``);
4. the pruned model timed independently by `edgekd bench`, in the same call as the unpruned one (one right after
   the other, same machine state), and compared with the budget.

The JSON holds both figures (prune's own per-step measurements and bench's), the probe's chosen multiple and
where it came from, the CPU flags and the load average. Timings on a shared machine move; run it when quiet.

    python benchmarks/prune_latency.py                       # trains small:resnet8 for 1 epoch first
    python benchmarks/prune_latency.py --model runs/student --batch 1 --budget-fraction 0.6
    python benchmarks/prune_latency.py --quick               # smoke run: a few training steps, short timings
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.modeldir import is_model_dir  # noqa: E402

NOTE_ALREADY_MET = (
    "the unpruned model met the budget when prune measured it: the machine's speed changed between "
    "the measurements; rerun when quiet"
)


def edgekd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgekd", *args]


def run_json(args: list[str], path: Path) -> dict[str, Any]:
    """Run an edgekd command that writes ``--json path`` and return what it wrote."""
    print("$ edgekd " + " ".join(args), flush=True)
    path.unlink(missing_ok=True)  # a stale report must not be read back (and --json refuses an existing file)
    subprocess.run(edgekd(*args, "--json", str(path)), check=True)
    return json.loads(path.read_text())


def get_model(args, work: Path) -> Path:
    """``--model``, or a student trained here (reused when a finished one exists)."""
    if args.model:
        return Path(args.model)
    path = work / "model"
    if not is_model_dir(path):
        steps = ["--max-steps-per-epoch", "10"] if args.quick else []
        cmd = [
            "train",
            "--model",
            args.student,
            "--data",
            args.data,
            "--epochs",
            str(args.epochs),
            "--batch-size",
            "128",
            *steps,
            "--out",
            str(path),
            "--overwrite",
            "--quiet",
        ]
        print("$ edgekd " + " ".join(cmd), flush=True)
        subprocess.run(edgekd(*cmd), check=True)
    return path


def bench_p50(paths: list[Path], args, out: Path) -> dict[str, float]:
    """`edgekd bench` ORT CPU p50 (ms) at ``--batch`` of each path, by artifact name."""
    report = run_json(
        [
            "bench",
            *map(str, paths),
            "--backend",
            "ort",
            "--device",
            "cpu",
            "--batch",
            str(args.batch),
            "--min-s",
            str(args.bench_s),
            "--no-roofline",
            "--no-times",
            "--quiet",
        ],
        out,
    )
    return {r["name"]: r["stats"]["p50_ms"] for r in report["results"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory to prune (default: train --student on --data)")
    ap.add_argument("--student", default="small:resnet8")
    ap.add_argument("--data", default="pneumoniamnist")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget-fraction", type=float, default=0.75, help="budget = this * unpruned p50, in (0.5, 1)")
    ap.add_argument("--recovery-epochs", type=int, default=1)
    ap.add_argument("--bench-s", type=float, default=3.0, help="edgekd bench --min-s")
    ap.add_argument("--work", default="runs/bench/prune_latency")
    ap.add_argument("--out", default="runs/bench/prune_latency.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 training steps per epoch, 1 s timings")
    args = ap.parse_args()
    if not 0.5 <= args.budget_fraction < 1:
        ap.error("--budget-fraction must lie in [0.5, 1): the budget sits between the p50 and half of it")
    if args.quick:
        args.bench_s = min(args.bench_s, 1.0)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = get_model(args, work)
    unpruned = bench_p50([model], args, work / "bench_before.json")[model.name]
    budget = round(args.budget_fraction * unpruned, 4)
    pruned_dir = work / "pruned"
    prune_args = [
        "prune",
        str(model),
        "--target-latency-ms",
        str(budget),
        "--batch",
        str(args.batch),
        "--round-to",
        "auto",
        "--recovery-epochs",
        str(args.recovery_epochs),
        "--out",
        str(pruned_dir),
        "--overwrite",
        "--quiet",
    ] + (["--max-steps-per-epoch", "10"] if args.quick else [])
    t_prune = time.perf_counter()
    report = run_json(prune_args, work / "prune_report.json")
    t_prune = time.perf_counter() - t_prune
    after = bench_p50([model, pruned_dir], args, work / "bench_after.json")
    lat, widths = report["latency_target"], report["round_to"]
    payload = {
        "benchmark": "prune_latency",
        "environment": environment(),
        "settings": {k: v for k, v in vars(args).items()},
        "model": str(model),
        "batch": args.batch,
        "unpruned_p50_ms_bench": unpruned,
        "budget_ms": budget,
        "prune": {
            "aim_ms": lat["aim_ms"],
            "unpruned_ms": lat["unpruned_ms"],
            "final_ms": lat["final_ms"],
            "already_met": lat["already_met"],
            "threads": lat["threads"],
            "seconds": round(t_prune, 1),
            "steps": [
                {k: s.get(k) for k in ("step", "macs_kept", "latency_ms", "faster", "met")} for s in report["steps"]
            ],
            "macs_kept": report["after"]["macs"] / report["before"]["macs"],
            "round_to": {k: widths.get(k) for k in ("requested", "multiple", "source", "fingerprint", "costs")},
            "test_auroc_before": report["metrics_before"]["test"].get("auroc"),
            "test_auroc_after": report["metrics_after"]["test"].get("auroc"),
        },
        "bench_after": {
            "unpruned_p50_ms": after[model.name],
            "pruned_p50_ms": after[pruned_dir.name],
            "speedup": after[model.name] / after[pruned_dir.name],
        },
        "met_by_bench": after[pruned_dir.name] <= budget,
        "note": NOTE_ALREADY_MET if lat["already_met"] else None,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_json(args.out, payload)
    print(
        f"unpruned {unpruned:.3f} ms, budget {budget:.3f} ms; pruned: prune says {lat['final_ms']:.3f} ms, "
        f"bench says {after[pruned_dir.name]:.3f} ms (met: {payload['met_by_bench']}); "
        f"widths multiple {widths.get('multiple')} ({widths.get('source')})"
    )


if __name__ == "__main__":
    main()
