"""A KD verdict that cannot mislead (issue 23, item 9): the deciding metric fits the task, the other metrics are
bootstrapped beside it and a disagreement beyond their noise is never called a gain, the diagnosis's findings are
suggestions whatever the verdict, and a run where distillation lowers accuracy says so."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import InvalidInputError
from edgekd.metrics import compute_metrics
from edgekd.modeldir import read_card
from edgekd.pipeline import (
    KDDiagnosis,
    bootstrap_gain,
    bootstrap_gains,
    compare_students,
    load_pipeline_config,
    resolve_metric,
    secondary_metrics,
)
from edgekd.pipeline._diagnose import _metric
from edgekd.report._report import deciding_metric
from edgekd.specs import Task

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _logits(rng, y: np.ndarray, k: int, strength: float) -> np.ndarray:
    z = rng.normal(size=(len(y), k))
    z[np.arange(len(y)), y] += strength
    return z


@pytest.mark.parametrize("task,k", [(Task.BINARY, 2), (Task.MULTICLASS, 5)])
def test_bootstrap_metrics_equal_compute_metrics(task, k):
    """The cheap metrics of the bootstrap are sklearn's (through compute_metrics), also on unbalanced draws."""
    rng = np.random.default_rng(3)
    y = rng.choice(k, size=300, p=np.linspace(1, 2, k) / np.linspace(1, 2, k).sum())
    logits = _logits(rng, y, k, 1.0)
    ref = compute_metrics(logits, y, task)
    for m in ("acc", "balanced_acc", "auroc"):
        assert _metric(logits, y, task, m) == pytest.approx(ref[m], abs=1e-12), m
    missing = y[y != 0]  # a draw without class 0: AUROC undefined, as in compute_metrics
    if task is Task.MULTICLASS:
        assert np.isnan(_metric(logits[y != 0], missing, task, "auroc"))


def test_deciding_and_secondary_metrics_by_task():
    assert resolve_metric("auto", Task.BINARY) == "auroc"  # a threshold is chosen later (the operating point)
    assert resolve_metric("auto", Task.MULTICLASS) == "balanced_acc"
    assert resolve_metric("auto", Task.MULTILABEL) == "auroc"
    assert resolve_metric("acc", Task.MULTICLASS) == "acc"
    with pytest.raises(InvalidInputError, match="unknown KD metric"):
        resolve_metric("aucroc", Task.BINARY)
    assert secondary_metrics("auroc", Task.BINARY) == ["acc"]
    assert secondary_metrics("balanced_acc", Task.MULTICLASS) == ["acc", "auroc"]
    assert secondary_metrics("auroc", Task.MULTICLASS) == ["balanced_acc", "acc"]
    assert secondary_metrics("auroc", Task.MULTILABEL) == []


def test_bootstrap_gains_use_the_same_draws_for_every_metric():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    a, b = _logits(rng, y, 4, 2.0), _logits(rng, y, 4, 1.0)
    both = bootstrap_gains([a], [b], y, Task.MULTICLASS, ["balanced_acc", "auroc"], n=100, seed=5)
    assert both["balanced_acc"] == bootstrap_gain([a], [b], y, Task.MULTICLASS, "balanced_acc", n=100, seed=5)
    assert both["auroc"] == bootstrap_gain([a], [b], y, Task.MULTICLASS, "auroc", n=100, seed=5)
    assert 0 < both["balanced_acc"][0] < both["balanced_acc"][1]  # the stronger logits win beyond noise
    assert bootstrap_gains([a], [b], y, Task.MULTILABEL, ["auroc"]) == {}


def _card(tiny_model_dir, task: Task, **val_test):
    card = read_card(tiny_model_dir)
    metrics = {split: {m: v[i] for m, v in val_test.items()} for i, split in enumerate(("val", "test"))}
    return card.model_copy(update={"task": task, "metrics": metrics})


DIAG = KDDiagnosis(
    samples=64,
    augment="light",
    teacher_params=2_000_000,
    student_params=500_000,
    params_ratio=4.0,
    teacher_acc_train=1.0,
    teacher_acc_augmented=0.56,
    augmented_drop=0.44,
    teacher_confidence_train=0.9,
    teacher_confident_fraction=0.3,
    agreement={"student": {"train": 0.7, "val": 0.6}},
)


def test_the_issue_case_an_auroc_gain_with_an_accuracy_loss_is_not_a_gain(tiny_model_dir):
    """The issue's run: val AUROC +0.0103 (CI +0.0054 to +0.0157) with accuracy 0.47 against 0.64."""
    task = Task.MULTICLASS
    student = _card(tiny_model_dir, task, auroc=(0.9503, 0.95), acc=(0.47, 0.475), balanced_acc=(0.47, 0.47))
    baseline = _card(tiny_model_dir, task, auroc=(0.94, 0.94), acc=(0.64, 0.621), balanced_acc=(0.64, 0.62))
    cis = {"auroc": (0.0054, 0.0157), "acc": (-0.25, -0.09), "balanced_acc": (-0.25, -0.09)}
    old = compare_students([student], [baseline], metric="auroc", diagnosis=DIAG, val_ci=cis["auroc"], secondary_ci=cis)
    assert old.helps is False and old.gain_val == pytest.approx(0.0103) and old.chosen == "baseline"
    assert old.disagree == ["balanced_acc", "acc"] and old.secondary["acc"].significant is True
    assert old.message.startswith("distillation is NOT a gain: the metrics disagree: val auroc +0.0103")
    assert "but val balanced_acc -0.1700" in old.message and "no-teacher baseline" in old.message
    assert any("augmentation 'light' changes what the images show" in t for t in old.suggestions)
    auto = compare_students(
        [student],
        [baseline],
        metric=resolve_metric("auto", task),
        diagnosis=DIAG,
        val_ci=cis["balanced_acc"],
        secondary_ci=cis,
    )
    assert auto.metric == "balanced_acc" and auto.helps is False and auto.chosen == "baseline"
    assert "does NOT beat" in auto.message and "though val auroc +0.0103" in auto.message
    forced = compare_students([student], [baseline], metric="auroc", keep="distilled", secondary_ci=cis)
    assert forced.chosen == "student" and forced.helps is False


def test_a_secondary_move_within_its_noise_does_not_stop_a_gain(tiny_model_dir):
    task = Task.BINARY
    student = _card(tiny_model_dir, task, auroc=(0.95, 0.94), acc=(0.88, 0.87))
    baseline = _card(tiny_model_dir, task, auroc=(0.93, 0.93), acc=(0.89, 0.88))
    ok = compare_students(
        [student], [baseline], metric="auroc", diagnosis=DIAG, val_ci=(0.005, 0.03), secondary_ci={"acc": (-0.04, 0.02)}
    )
    assert ok.helps is True and ok.chosen == "student" and ok.disagree == []
    assert ok.message.startswith("distillation helps: val auroc +0.0200")
    # the findings are suggestions even when distillation helps; the seed advice is not
    assert any("augmentation" in t for t in ok.suggestions) and not any("--seeds" in t for t in ok.suggestions)
    bad = compare_students(
        [student], [baseline], metric="auroc", val_ci=(0.005, 0.03), secondary_ci={"acc": (-0.04, -0.001)}
    )
    assert bad.helps is False and bad.disagree == ["acc"] and "is NOT a gain" in bad.message
    alone = compare_students([student], None, metric="auroc", diagnosis=DIAG)
    assert alone.helps is None and any("augmentation" in t for t in alone.suggestions)


def test_distill_metric_key(tmp_path):
    base = {"name": "x", "teacher": {"model": "small:tinycnn"}, "student": {"model": "small:tinycnn"}}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(base))
    assert load_pipeline_config(path).distill.metric == "auto"
    assert load_pipeline_config(path, ["distill.metric=acc"]).distill.metric == "acc"
    with pytest.raises(InvalidInputError, match="distill.metric"):
        load_pipeline_config(path, ["distill.metric=aucroc"])


def test_report_shows_the_deciding_metric():
    rows = [{"test": {"acc": 0.6, "auroc": 0.9, "balanced_acc": 0.58}}]
    assert deciding_metric(SimpleNamespace(summary={"kd": {"metric": "balanced_acc"}}, rows=rows)) == "balanced_acc"
    assert deciding_metric(SimpleNamespace(summary={}, rows=rows)) == "auroc"  # no KD comparison: as before


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("kd_verdict_bench", REPO / "benchmarks" / "kd_verdict.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_run_where_distillation_lowers_accuracy_says_so_and_suggests_the_augmentation_fix(tmp_path):
    """Acceptance at the test's scale (benchmarks/kd_verdict.py --quick): flipped glyphs, a clean teacher."""
    bench = _benchmark_module()
    from _glyphs import data_spec, write_glyphs  # benchmarks/ is on the path now

    npz = write_glyphs(tmp_path / "glyphs.npz", n_train=400, size=20, seed=0)
    cfg = bench.make_config(data_spec(npz), epochs_teacher=8, epochs_student=8, seeds=1)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    res = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "s.json").read_text())
    test = {r["name"]: r["test"] for r in summary["rows"]}
    assert test["student"]["acc"] < test["baseline"]["acc"] - 0.03  # the premise: distillation lowers accuracy
    kd = summary["kd"]
    assert kd["metric"] == "balanced_acc" and kd["helps"] is False and kd["gain_val"] < 0
    assert "distillation does NOT beat the same student trained without the teacher" in kd["message"]
    fix = [t for t in kd["suggestions"] if "augmentation 'light' changes what the images show" in t]
    assert fix and "student.train.augment: none" in fix[0]
    assert kd["diagnosis"]["augmented_drop"] > 0.1
    assert "does NOT beat" in res.output and "bal. ACC*" in res.output  # the terminal: verdict and its metric
    html = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "balanced_acc" in html and "Test BALANCED_ACC against the p50 latency" in html
    # the old deciding metric (macro AUROC) on the same models: never called a gain while accuracy falls
    again = runner.invoke(
        app,
        [
            "run",
            str(path),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "distill.metric=auroc",
            "--json",
            str(tmp_path / "a.json"),
            "-q",
        ],
    )
    assert again.exit_code == 0, again.output
    kd = json.loads((tmp_path / "a.json").read_text())["kd"]
    assert kd["metric"] == "auroc" and kd["helps"] is False
    assert kd["gain_val"] <= 0 or kd["disagree"], kd["message"]  # a positive AUROC gain only with a disagreement
