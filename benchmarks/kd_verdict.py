"""A KD verdict that cannot mislead (issue 23): a multi-class run where distillation lowers accuracy.

Data: asymmetric glyphs, 8 classes (:mod:`_glyphs`): one random 5x5 bitmap per class, drawn with jitter and noise.
The teacher (``small:resnet14``) trains on the clean images; the student (``small:tinycnn``) trains with the
``light`` augmentation (pad-crop and **horizontal flips**), once with the teacher (``ce:1`` + ``kd:1,T=4``) and once
without. A flipped glyph is a shape of no class that keeps its label: the labels still say which glyph it was, the
teacher, which never saw one, answers something else with confidence, and its soft labels teach wrong answers on
half of the student's views. Distillation then lowers the student's accuracy while its macro one-vs-rest AUROC can
rise: the trap of the issue, where a run said "distillation helps: val auroc +0.0103" for a 17-point accuracy loss.

The script runs ``edgekd run`` on it (the select stage decides with ``distill.metric: auto``, balanced accuracy for
a multi-class task), then the same run with ``--set distill.metric=auroc`` (only the select stage and the report run
again) to show the old deciding metric and whether the secondary metrics now stop it being called a gain, then, with
``--fix``, the student stages again with ``student.train.augment=none``: the fix the run suggests.

    python benchmarks/kd_verdict.py                  # 1000 training images, 2 seeds (writes benchmarks/results/...)
    python benchmarks/kd_verdict.py --quick          # the test's scale: 400 images, 1 seed
    python benchmarks/kd_verdict.py --fix            # also the suggested fix (no flips)

The JSON holds each verdict (metric, gains with their 95 % intervals, the secondary metrics and whether they
disagree, the message, the suggestions), the final table's test metrics per stage, the diagnosis, timings and the
environment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_json  # noqa: E402
from _glyphs import data_spec, write_glyphs  # noqa: E402

from edgekd.pipeline import run_pipeline  # noqa: E402
from edgekd.report import write_report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_config(data: str, *, epochs_teacher: int, epochs_student: int, seeds: int, samples: int = 256) -> dict:
    """The pipeline of this benchmark (and of its test): teacher, baseline, student, select and the report."""
    train = {"batch_size": 64, "lr": 0.003, "warmup_epochs": 0.5, "select_metric": "acc", "deterministic": True}
    return {
        "name": "glyphs-flip",
        "data": data,
        "seeds": seeds,
        "teacher": {"model": "small:resnet14", "train": {**train, "epochs": epochs_teacher, "augment": "none"}},
        "student": {"model": "small:tinycnn", "train": {**train, "epochs": epochs_student, "augment": "light"}},
        "distill": {"losses": ["ce:1", "kd:1,T=4"], "diagnose_samples": samples, "metric": "auto"},
        "prune": None,
        "quantize": [],
        "export": None,
        "bench": None,
        "report": {"gradcam_images": 2, "gradcam_misclassified": 1, "augment_samples": 4},
    }


def verdict(summary) -> dict[str, Any]:
    """The KD comparison of a run and the test metrics of its rows."""
    kd = summary.kd
    keep = (
        "metric",
        "helps",
        "chosen",
        "gain_val",
        "gain_test",
        "gain_val_ci",
        "significant",
        "secondary",
        "disagree",
        "message",
        "suggestions",
    )
    rows = {r.name: {m: r.test.get(m) for m in ("acc", "balanced_acc", "auroc")} for r in summary.rows}
    return {**{k: kd.get(k) for k in keep}, "test": rows}


def run(out: Path, cfg: dict, overrides: list[str]) -> tuple[dict[str, Any], float]:
    path = out / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    summary = run_pipeline(path, out / "run", overrides=overrides, report=write_report, progress=False)
    return verdict(summary), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench/kd_verdict")
    ap.add_argument("--json", default=None, help="default: benchmarks/results/cpu-YYYY-MM-DD/kd_verdict.json")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs-teacher", type=int, default=10)
    ap.add_argument("--epochs-student", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="the test's scale: 400 images, 1 seed, 8 epochs")
    ap.add_argument("--fix", action="store_true", help="also run the suggested fix (student.train.augment=none)")
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.seeds, args.epochs_teacher, args.epochs_student = 400, 1, 8, 8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    npz = write_glyphs(out / "glyphs.npz", n_train=args.n_train, size=20, seed=0)
    cfg = make_config(
        data_spec(npz), epochs_teacher=args.epochs_teacher, epochs_student=args.epochs_student, seeds=args.seeds
    )
    result: dict[str, Any] = {"config": cfg, "n_train": args.n_train, "n_val": args.n_train // 2}
    result["auto"], result["time_s_auto"] = run(out, cfg, [])
    result["auroc_decides"], result["time_s_auroc"] = run(out, cfg, ["distill.metric=auroc"])
    if args.fix:
        result["fix_no_flips"], result["time_s_fix"] = run(out, cfg, ["student.train.augment=none"])
    diagnosis = json.loads((out / "run" / "kd.json").read_text()).get("diagnosis")
    result["diagnosis"] = diagnosis
    result["environment"] = environment()
    day = time.strftime("%Y-%m-%d")
    dest = Path(args.json) if args.json else REPO / "benchmarks" / "results" / f"cpu-{day}" / "kd_verdict.json"
    write_json(dest, result)
    for key in ("auto", "auroc_decides", "fix_no_flips"):
        if key in result:
            print(f"{key}: {result[key]['message']}")
            for tip in result[key]["suggestions"]:
                print(f"  - try: {tip}")


if __name__ == "__main__":
    main()
