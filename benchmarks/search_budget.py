"""Acceptance of `edgekd search` (issue 25): the most accurate student under a measured latency budget.

On the bundled PneumoniaMNIST, for two budgets (batch 1 at half the demo student's p50, batch 32 at a third of it):

1. the teacher (``--teacher DIR``, e.g. ``runs/pneumonia/teacher`` of `make demo`; else the demo's teacher is
   trained here: small:resnet18, 4 epochs, medical augmentation; reused when there);
2. the demo student (small:resnet8) distilled with the search's own schedule (the rungs 2 + 2 + 2 epochs, warm
   started, same losses, augmentation and class weighting) and its p50 at batch 1 and 32 measured by `edgekd bench`
   (ONNX Runtime, FP32) -> the two budgets;
3. per budget: `edgekd search` (its wall time; the default space and 30-minute limit), the chosen bundle timed
   again by `edgekd bench` on its own, and the two alternatives a user would try, trained with the same schedule:
   (a) the demo student pruned with `edgekd prune --target-latency-ms BUDGET --batch B` (recovery with the teacher;
   a budget it cannot reach is recorded as such), (b) the best single zoo student that fits (each family's zoo model
   as it is, in the search's device table at the budget; trained through every rung, the search's segments reused);
4. validation and test AUROC of all three; the latency predictor's held-out MAPE.

    python benchmarks/search_budget.py --teacher runs/pneumonia/teacher          # ~45-70 min on 2 quiet cores
    python benchmarks/search_budget.py --quick                                   # smoke: tiny space, few steps

Writes ``--out`` (default benchmarks/results/cpu-DATE/search_budget.json). Timings on a shared machine move; run
it when quiet, and never read its figures as acceptance numbers from a loaded machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402

from edgekd.data import load_data  # noqa: E402
from edgekd.modeldir import is_model_dir  # noqa: E402
from edgekd.search import Architecture, SearchConfig  # noqa: E402
from edgekd.search._train import teacher_identity, train_chain  # noqa: E402

QUICK_SPACE = {
    "families": [
        {"model": "small:tinycnn", "widths": [0.5, 1.0], "depths": [2, 4]},
        {"model": "small:resnet8", "widths": [0.5, 1.0]},
    ],
    "precisions": ["fp32", "int8"],
}


def edgekd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgekd", *args]


def run(args: list[str], json_path: Path | None = None) -> Any:
    print("$ edgekd " + " ".join(args), flush=True)
    if json_path is not None:
        json_path.unlink(missing_ok=True)
        args = [*args, "--json", str(json_path)]
    proc = subprocess.run(edgekd(*args), capture_output=json_path is not None, text=True)
    if proc.returncode != 0:
        return {"exit_code": proc.returncode, "error": (proc.stdout or "")[-600:] + (proc.stderr or "")[-600:]}
    return json.loads(json_path.read_text()) if json_path is not None else None


def search_file(args, work: Path) -> Path:
    """The search settings every run here shares (``--config`` of `edgekd search`)."""
    cfg: dict[str, Any] = {"halving": {"rungs": args.rungs}}
    if args.quick:
        cfg.update(space=QUICK_SPACE, train={"max_steps_per_epoch": 4}, profile={"min_s": 0.2})
    path = work / "search.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def teacher(args, work: Path) -> Path:
    if args.teacher:
        return Path(args.teacher)
    path = work / "teacher"
    if not is_model_dir(path):
        steps = ["--max-steps-per-epoch", "4"] if args.quick else []
        run(
            [
                "train",
                "--model",
                "small:resnet18",
                "--data",
                args.data,
                "--epochs",
                "1" if args.quick else "4",
                "--batch-size",
                "128",
                "--lr",
                "0.002",
                "--augment",
                "medical",
                *steps,
                "--out",
                str(path),
                "--quiet",
            ]
        )
    return path


def chain(cfg: SearchConfig, arch: Architecture, out: Path, bundle) -> dict[str, Any]:
    """``arch`` distilled through every rung of the search's schedule (segments shared with the search)."""
    t = train_chain(cfg, arch, out, bundle, teacher_identity(cfg.teacher), len(cfg.halving.rungs))[-1]
    return {
        "label": t.label,
        "dir": t.dir,
        "epochs": t.epochs,
        "failed": t.failed,
        "val_auroc": t.val.get("auroc"),
        "test_auroc": t.test.get("auroc"),
    }


def bench(path: str, batch: int, args, out: Path) -> dict[str, float]:
    report = run(
        [
            "bench",
            path,
            "--backend",
            "ort",
            "--device",
            "cpu",
            "--batch",
            str(batch),
            "--min-s",
            str(args.bench_s),
            "--no-roofline",
            "--no-times",
            "--quiet",
        ],
        out,
    )
    r = report["results"][0]
    return {"p50_ms": r["stats"]["p50_ms"], "p90_ms": r["stats"]["p90_ms"], "precision": r["precision"]}


def pruned_alternative(demo: dict, budget: float, batch: int, teacher_dir: Path, args, work: Path) -> dict:
    out = work / f"demo-pruned-b{batch}"
    rep = run(
        [
            "prune",
            demo["dir"],
            "--target-latency-ms",
            f"{budget:.5f}",
            "--batch",
            str(batch),
            "--teacher",
            str(teacher_dir),
            "--recovery-epochs",
            "2",
            "--augment",
            "medical",
            *(["--max-steps-per-epoch", "4"] if args.quick else []),
            "--out",
            str(out),
            "--overwrite",
            "--quiet",
        ],
        work / f"prune-b{batch}.json",
    )
    if "exit_code" in rep:
        return {"met": False, "reason": rep["error"].strip().splitlines()[-1] if rep["error"].strip() else "failed"}
    timed = bench(str(out), batch, args, work / f"bench-pruned-b{batch}.json")
    return {
        "met": timed["p50_ms"] <= budget,
        "bench": timed,
        "macs_kept": rep["after"]["macs"] / rep["before"]["macs"],
        "val_auroc": rep["metrics_after"]["val"].get("auroc"),
        "test_auroc": rep["metrics_after"]["test"].get("auroc"),
    }


def zoo_alternative(result: dict, cfg: SearchConfig, out: Path, bundle) -> dict:
    """The best of each family's zoo model as it is that fits the budget in the search's own table."""
    fits = [
        (Architecture(**c["candidate"]["arch"]), c["latency_ms"])
        for c in result["candidates"]
        if c["fits"] and c["deployed"]
    ]
    trained = [
        {**chain(cfg, arch, out, bundle), "table_ms": ms} for arch, ms in fits if arch.key in result["alternatives"]
    ]
    trained = [t for t in trained if not t["failed"]]
    if not trained:
        return {"fits": False}
    return {"fits": True, **max(trained, key=lambda t: t["val_auroc"] or 0.0), "considered": len(trained)}


def one_budget(name: str, budget: float, batch: int, demo: dict, teacher_dir: Path, args, work: Path, bundle) -> dict:
    out = work / f"search-b{batch}"
    t0 = time.perf_counter()
    result = run(
        [
            "search",
            "--data",
            args.data,
            "--teacher",
            str(teacher_dir),
            "--budget-ms",
            f"{budget:.5f}",
            "--batch",
            str(batch),
            "--time-limit",
            args.time_limit,
            "--config",
            str(search_file(args, work)),
            "--out",
            str(out),
            "--quiet",
        ],
        work / f"search-b{batch}.json",
    )
    wall = time.perf_counter() - t0
    if "exit_code" in result:
        return {"budget_ms": budget, "batch": batch, "search": result, "wall_s": wall}
    chosen = result["chosen"]
    timed = bench(chosen["bundle"], batch, args, work / f"bench-chosen-b{batch}.json")
    cfg = SearchConfig.model_validate(result["config"])
    pruned = pruned_alternative(demo, budget, batch, teacher_dir, args, work)
    zoo = zoo_alternative(result, cfg, out, bundle)
    mine = {"val": chosen["val"].get("auroc"), "test": chosen["test"].get("auroc")}
    alts = [a for a in (pruned if pruned.get("met") else None, zoo if zoo.get("fits") else None) if a]
    return {
        "name": name,
        "budget_ms": budget,
        "batch": batch,
        "wall_s": round(wall, 1),
        "within_30_min": wall <= 1800,
        "time_limit_reached": result["time_limit_reached"],
        "chosen": {
            "label": chosen["label"],
            "table_ms": chosen["table_ms"],
            "search_measured_ms": chosen["measured_ms"],
            "bench": timed,
            "meets_budget_by_bench": timed["p50_ms"] <= budget,
            "val_auroc": mine["val"],
            "test_auroc": mine["test"],
            "pruned": chosen["pruned"],
        },
        "alternatives": {"demo_pruned_to_budget": pruned, "best_zoo_student_that_fits": zoo},
        "at_least_alternatives": all(
            (mine["val"] or 0) >= (a["val_auroc"] or 0) and (mine["test"] or 0) >= (a["test_auroc"] or 0) for a in alts
        ),
        "predictor": {
            "holdout_mape": result["predictor"]["holdout_mape"],
            "n_holdout": result["predictor"]["n_holdout"],
        },
        "candidates": len(result["candidates"]),
        "fitting": sum(c["fits"] for c in result["candidates"]),
        "trainings": len(result["trainings"]),
        "rungs_reached": result["rungs_reached"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", help="teacher model directory (default: train the demo's teacher here)")
    ap.add_argument("--data", default="pneumoniamnist")
    ap.add_argument("--rungs", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 6])
    ap.add_argument("--time-limit", default="30m")
    ap.add_argument("--bench-s", type=float, default=3.0)
    ap.add_argument("--work", default="runs/bench/search_budget")
    ap.add_argument("--out", default=f"benchmarks/results/cpu-{datetime.date.today()}/search_budget.json")
    ap.add_argument("--quick", action="store_true", help="smoke run: a small space, 4 steps per epoch, short timings")
    args = ap.parse_args()
    if args.quick:
        args.bench_s, args.rungs = 0.5, [1, 2]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    teacher_dir = teacher(args, work)
    bundle = load_data(args.data)
    base = SearchConfig.build(search_file(args, work), {"teacher": str(teacher_dir), "data": args.data, "budget_ms": 1})
    demo_arch = Architecture(family="small:resnet8", model="small:resnet8")
    demo = chain(base, demo_arch, work / "demo", bundle)
    p50 = {b: bench(demo["dir"], b, args, work / f"bench-demo-b{b}.json")["p50_ms"] for b in (1, 32)}
    budgets = [
        ("batch 1 at half the demo student's p50", p50[1] / 2, 1),
        ("batch 32 at a third of the demo student's p50", p50[32] / 3, 32),
    ]
    rows = [one_budget(n, b, batch, demo, teacher_dir, args, work, bundle) for n, b, batch in budgets]
    payload = {
        "benchmark": "search_budget",
        "environment": environment(),
        "settings": vars(args),
        "teacher": str(teacher_dir),
        "demo_student": {**demo, "p50_ms": p50},
        "budgets": rows,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    write_json(args.out, payload)
    for r in rows:
        c = r.get("chosen", {})
        print(
            f"{r['budget_ms']:.4f} ms @ batch {r['batch']}: {c.get('label')} bench p50 {c.get('bench', {}).get('p50_ms')}"
            f" val/test AUROC {c.get('val_auroc')}/{c.get('test_auroc')}; search {r['wall_s']} s; "
            f"MAPE {r.get('predictor', {}).get('holdout_mape')}"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
