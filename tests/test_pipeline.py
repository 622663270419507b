"""`edgekd run`: configuration errors, --set, the final table, the report, skipping, re-running and resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import InvalidInputError
from edgekd.modeldir import read_card
from edgekd.pipeline import (
    KDDiagnosis,
    SeedStats,
    bootstrap_gain,
    compare_students,
    load_pipeline_config,
    read_record,
    stage_key,
    suggestions,
)
from edgekd.report import SECTION_IDS
from edgekd.specs import Task

from .conftest import SYNTH

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

TRAIN = {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "warmup_epochs": 0}
FAST_BENCH = {"batches": [1, 4], "min_s": 0.02, "min_iters": 3, "warmup_s": 0.0, "warmup_iters": 1, "roofline": False}


def _config(**over) -> dict:
    cfg = {
        "name": "synthetic",
        "data": SYNTH,
        "teacher": {"model": "small:tinycnn", "train": dict(TRAIN)},
        "student": {"model": "small:tinycnn", "train": {**TRAIN, "augment": "light"}},
        "distill": {"diagnose_samples": 32},
        "prune": {"target_macs": 0.7, "recovery_epochs": 1, "latency_batch": None, "train": dict(TRAIN)},
        "quantize": [{"method": "ptq", "target": "cpu-x86", "calib_samples": 32, "parity_samples": 16}],
        "export": {"formats": ["onnx", "onnx-fp16"], "n_samples": 8},
        "bench": FAST_BENCH,
        "report": {"gradcam_images": 4, "gradcam_misclassified": 2, "augment_samples": 4},
    }
    cfg.update(over)
    return cfg


def _write(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run(*args):
    return runner.invoke(app, ["run", *map(str, args), "-q"])


# -- configuration ------------------------------------------------------------------------------------------------


def test_unknown_key_names_key_and_line_exit_3(tmp_path):
    text = "name: x\nteacher:\n  model: small:tinycnn\nstudent:\n  model: small:tinycnn\n  train:\n    epoch: 3\n"
    (tmp_path / "p.yaml").write_text(text)
    r = _run(tmp_path / "p.yaml", "--out", tmp_path / "run")
    assert r.exit_code == 3, r.output
    assert "line 7" in r.output and "student.train.epoch" in r.output and "epochs" in r.output
    assert not (tmp_path / "run").exists()  # nothing written for an invalid file


def test_wrong_type_names_key_exit_3(tmp_path):
    p = _write(tmp_path / "p.yaml", _config(prune={"target_macs": "half"}))
    r = _run(p, "--out", tmp_path / "run")
    assert r.exit_code == 3 and "prune" in r.output, r.output
    p = _write(tmp_path / "q.yaml", _config())
    r = _run(p, "--set", "student.train.epochs=many", "--out", tmp_path / "run")
    assert r.exit_code == 3 and "--set student.train.epochs" in r.output and "integer" in r.output, r.output


def test_set_overrides_any_key(tmp_path):
    p = _write(tmp_path / "p.yaml", _config())
    cfg = load_pipeline_config(p, ["student.train.epochs=3", "quantize=[]", "export.formats=[onnx]", "seeds=2"])
    assert cfg.student.train.epochs == 3 and cfg.quantize == [] and cfg.export.formats == ["onnx"] and cfg.seeds == 2
    with pytest.raises(InvalidInputError, match="unknown key student.modle"):
        load_pipeline_config(p, ["student.modle=small:resnet8"])
    with pytest.raises(InvalidInputError, match="top-level `seed`"):
        load_pipeline_config(p, ["student.train.seed=3"])


@pytest.mark.parametrize("example", ["pneumonia.yaml", "imagefolder-gpu.yaml"])
def test_examples_validate(example):
    cfg = load_pipeline_config(REPO / "examples" / example)
    assert cfg.teacher.model and cfg.student.model and cfg.distill.baseline


def test_stage_key_depends_on_settings_and_inputs():
    k = stage_key({"epochs": 1}, {"teacher": "a"})
    assert k == stage_key({"epochs": 1}, {"teacher": "a"})
    assert k != stage_key({"epochs": 2}, {"teacher": "a"}) and k != stage_key({"epochs": 1}, {"teacher": "b"})


# -- is the teacher helping ----------------------------------------------------------------------------------------


def _card(tiny_model_dir, val: float, test: float):
    card = read_card(tiny_model_dir)
    return card.model_copy(
        update={"metrics": {"val": {"auroc": val, "acc": val}, "test": {"auroc": test, "acc": test}}}
    )


def test_compare_students_keeps_the_better_and_says_so(tiny_model_dir):
    diag = KDDiagnosis(
        samples=64,
        augment="light",
        teacher_params=2_000_000,
        student_params=50_000,
        params_ratio=40.0,
        teacher_acc_train=0.98,
        teacher_acc_augmented=0.80,
        augmented_drop=0.18,
        teacher_confidence_train=0.995,
        teacher_confident_fraction=0.9,
        agreement={"student": {"train": 0.85, "val": 0.84}},
    )
    cmp = compare_students(
        [_card(tiny_model_dir, 0.90, 0.91)], [_card(tiny_model_dir, 0.93, 0.92)], metric="auroc", diagnosis=diag
    )
    assert cmp.helps is False and cmp.chosen == "baseline"
    assert cmp.gain_val == pytest.approx(-0.03) and cmp.gain_test == pytest.approx(-0.01)
    assert "does NOT beat" in cmp.message
    text = " ".join(cmp.suggestions)
    assert "augmentation" in text and "80.0%" in text  # the teacher's accuracy on augmented views
    assert "temperature" in text and "capacity gap" in text and "--seeds 3" in text
    forced = compare_students(
        [_card(tiny_model_dir, 0.90, 0.91)], [_card(tiny_model_dir, 0.93, 0.92)], metric="auroc", keep="distilled"
    )
    assert forced.chosen == "student"
    better = compare_students(
        [_card(tiny_model_dir, 0.95, 0.95)] * 2, [_card(tiny_model_dir, 0.93, 0.92)] * 2, metric="auroc"
    )
    assert better.helps and better.chosen == "student" and better.gain_val_std == 0.0 and better.suggestions == []
    # the findings are suggestions whatever the verdict; the one-seed line only when distillation does not help
    when_helps = " ".join(suggestions(diag, helps=True, seeds=1, gain=0.01))
    assert "augmentation" in when_helps and "capacity gap" in when_helps and "--seeds" not in when_helps
    # a baseline ahead by less than the noise of the validation set: not told apart, the distilled student stays
    tie = compare_students(
        [_card(tiny_model_dir, 0.995, 0.97)],
        [_card(tiny_model_dir, 0.996, 0.96)],
        metric="auroc",
        diagnosis=diag,
        val_ci=(-0.004, 0.003),
    )
    assert tie.helps is False and tie.significant is False and tie.chosen == "student"
    assert "does NOT beat" in tie.message and "within the noise" in tie.message and tie.suggestions
    sure = compare_students(
        [_card(tiny_model_dir, 0.95, 0.97)], [_card(tiny_model_dir, 0.99, 0.96)], metric="auroc", val_ci=(-0.06, -0.02)
    )
    assert sure.significant is True and sure.chosen == "baseline"
    # a positive gain whose interval contains 0 is not called a gain: "not shown to help", the student stays
    noisy = compare_students(
        [_card(tiny_model_dir, 0.952, 0.95)],
        [_card(tiny_model_dir, 0.950, 0.95)],
        metric="auroc",
        diagnosis=diag,
        val_ci=(-0.003, 0.007),
    )
    assert noisy.gain_val == pytest.approx(0.002) and noisy.helps is False and noisy.chosen == "student"
    assert "NOT shown to help" in noisy.message and "within the noise" in noisy.message
    assert "--seeds 3" in " ".join(noisy.suggestions)  # a verdict that did not find a gain gets the advice
    clear = compare_students(
        [_card(tiny_model_dir, 0.96, 0.95)], [_card(tiny_model_dir, 0.95, 0.95)], metric="auroc", val_ci=(0.002, 0.02)
    )
    assert clear.helps and clear.significant and clear.message.startswith("distillation helps")


def test_bootstrap_gain_interval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.stack([np.zeros(400), 3.0 * (2 * y - 1) + rng.normal(size=400)], 1)  # separates the classes
    poor = np.stack([np.zeros(400), 0.5 * (2 * y - 1) + rng.normal(size=400)], 1)
    lo, hi = bootstrap_gain([good], [poor], y, Task.BINARY, "auroc", n=200)
    assert 0 < lo < hi  # clearly better: the interval excludes 0
    lo, hi = bootstrap_gain([good], [good], y, Task.BINARY, "acc", n=50)
    assert lo == hi == 0.0
    lo, hi = bootstrap_gain([poor], [good], y, Task.BINARY, "auroc", n=200)
    assert lo < hi < 0


def test_seed_stats_spread(tiny_model_dir):
    s = SeedStats(val=[0.9, 0.92], test=[0.8, 0.84])
    summary = s.summary()
    assert summary["val_mean"] == pytest.approx(0.91) and summary["test_std"] == pytest.approx(0.02828427, rel=1e-5)


# -- a whole run ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One run of every stage on synthetic data (tiny models, a few steps), then the same command again."""
    tmp = tmp_path_factory.mktemp("pipeline")
    p = _write(tmp / "p.yaml", _config())
    first = _run(p, "--out", tmp / "run", "--json", tmp / "first.json")
    second = _run(p, "--out", tmp / "run", "--json", tmp / "second.json")
    return tmp, first, second


@pytest.mark.slow
def test_run_writes_table_report_and_resolved_config(full_run):
    tmp, first, _ = full_run
    assert first.exit_code == 0, first.output
    table = json.loads((tmp / "first.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["teacher", "baseline", "student", "pruned", "int8-cpu-x86", "fp16"]
    for row in table["rows"]:
        assert {"acc", "auroc", "ece"} <= set(row["test"]) and row["params"] and row["macs"] and row["size_bytes"]
        assert {"threshold", "sensitivity", "specificity"} <= set(row["operating_point"])
        assert set(row["latency"]) == {"1", "4"} and row["latency"]["4"]["p50_ms"] > 0
    assert table["rows"][0]["latency"]["4"]["speedup"] == pytest.approx(1.0)
    assert table["kd"]["chosen"] in ("student", "baseline") and "gain_val" in table["kd"]
    assert table["kd"]["diagnosis"]["teacher_acc_augmented"] is not None  # light augmentation: views were checked
    run = tmp / "run"
    resolved = yaml.safe_load((run / "pipeline.yaml").read_text())
    assert resolved["student"]["train"]["epochs"] == 1 and resolved["prune"]["target"]["kind"] == "macs"
    html = (run / "report" / "index.html").read_text()
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html, sid
    assert html.count('src="data:image/png;base64,') >= 8 and "http://" not in html and "https://" not in html
    cams = json.loads((run / "report" / "gradcam.json").read_text())
    assert set(cams["mean"]) == {"baseline", "student", "pruned"} and len(cams["images"]) == 4
    assert table["gradcam"]["mean"] == cams["mean"] and "Grad-CAM agreement with the teacher" in first.output
    assert str(run / "report" / "index.html") in first.output.replace("\n", "")
    # every compression stage was measured against its parent: one line each, printed and in the report
    decisions = table["handoff"]["decisions"]
    assert [d["stage"] for d in decisions] == ["pruned", "int8-cpu-x86", "fp16"]
    for d in decisions:
        assert d["line"] in first.output and html_escape(d["line"]) in html
    assert "<th>hand-off</th>" in html and sum(bool(r["handoff"]) for r in table["rows"]) >= 1


@pytest.mark.slow
def test_rerun_skips_every_stage(full_run):
    tmp, _, second = full_run
    assert second.exit_code == 0, second.output
    stages = json.loads((tmp / "second.json").read_text())["stages"]
    assert stages and all(s["status"] == "skipped" for s in stages), [(s["name"], s["status"]) for s in stages]
    first = json.loads((tmp / "first.json").read_text())["rows"]
    assert [r["test"] for r in json.loads((tmp / "second.json").read_text())["rows"]] == [r["test"] for r in first]


@pytest.mark.slow
def test_changed_key_reruns_that_stage_and_later_ones(full_run):
    tmp, _, _ = full_run
    r = _run(
        tmp / "p.yaml",
        "--out",
        tmp / "run",
        "--set",
        "quantize.0.calib_samples=24",
        "--no-report",
        "--json",
        tmp / "third.json",
    )
    assert r.exit_code == 0, r.output
    status = {s["name"]: s["status"] for s in json.loads((tmp / "third.json").read_text())["stages"]}
    for name in ("teacher", "baseline", "student", "select", "pruned", "bundle", "eval-teacher", "eval-fp16"):
        assert status[name] == "skipped", (name, status)
    for name in ("int8-cpu-x86", "eval-int8-cpu-x86", "bench"):
        assert status[name] == "ran", (name, status)
    assert "report" not in status  # --no-report
    assert read_record(tmp / "run", "int8-cpu-x86").settings["quantize"]["calib_samples"] == 24


def test_run_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = _run(_write(tmp_path / "p.yaml", _config()), "--out", tmp_path / "mine")
    assert r.exit_code == 3 and "did not write" in r.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# -- kill -9 and resume --------------------------------------------------------------------------------------------


def _small(tmp: Path, name: str) -> Path:
    student = {**TRAIN, "epochs": 12, "max_steps_per_epoch": 1, "deterministic": True}
    cfg = _config(
        student={"model": "small:tinycnn", "train": student},
        prune=None,
        quantize=[],
        export=None,
        bench=None,
        report={"enabled": False},
        distill={"diagnose_samples": 16, "cache_teacher": False},
    )
    return _write(tmp / name, cfg)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "edgekd", "run", *map(str, args), "-q"]


@pytest.mark.slow
def test_kill_9_mid_stage_then_resume_matches_uninterrupted(tmp_path):
    cfg = _small(tmp_path, "p.yaml")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cli(cfg, "--out", tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = tmp_path / "killed" / ".student.edgekd-run" / "checkpoint" / "last.safetensors"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert read_record(tmp_path / "killed", "student").status == "running"  # killed inside the student stage
    again = subprocess.run(
        _cli(cfg, "--out", tmp_path / "killed", "--json", tmp_path / "resumed.json"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    status = {s["name"]: s["status"] for s in json.loads((tmp_path / "resumed.json").read_text())["stages"]}
    assert status["teacher"] == status["baseline"] == "skipped" and status["student"] == "resumed", status
    clean = subprocess.run(
        _cli(cfg, "--out", tmp_path / "clean", "--json", tmp_path / "clean.json"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert clean.returncode == 0, clean.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "resumed.json").read_text())["rows"]}
    ref = {r["name"]: r for r in json.loads((tmp_path / "clean.json").read_text())["rows"]}
    for name in ("teacher", "baseline", "student"):
        for k in ("acc", "auroc", "ece"):
            assert rows[name]["test"][k] == pytest.approx(ref[name]["test"][k], abs=1e-6), (name, k)


@pytest.mark.parametrize("example", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_the_saved_pipeline_yaml_reads_back_as_the_same_config(example, tmp_path):
    from edgekd.pipeline import config_from_mapping

    cfg = load_pipeline_config(example)
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg.resolved(), sort_keys=False))
    assert load_pipeline_config(tmp_path / "pipeline.yaml") == cfg == config_from_mapping(cfg.resolved())


def test_each_stage_carries_its_typed_config_and_the_key_hashes_its_json():
    from edgekd.bench import BenchConfig
    from edgekd.distill import DistillConfig
    from edgekd.export import ExportConfig
    from edgekd.pipeline import config_from_mapping, plan
    from edgekd.prune import PruneConfig

    tiny = {"model": "small:tinycnn"}
    prune = {"ratio": 0.5, "recovery_teacher": "teacher"}
    cfg = config_from_mapping({"teacher": tiny, "student": dict(tiny), "prune": prune, "seed": 3})
    stages = {s.name: s for s in plan(cfg)}
    assert isinstance(stages["student"].config, DistillConfig) and stages["student"].config.teachers == ["teacher"]
    assert stages["student"].config.train.seed == 3
    assert isinstance(stages["bundle"].config, ExportConfig) and stages["bundle"].config.data == cfg.data
    assert isinstance(stages["bench"].config.bench, BenchConfig)
    pruned = stages["pruned"]
    assert isinstance(pruned.config.prune, PruneConfig) and pruned.config.recovery_teacher == "teacher"
    assert "teacher" in pruned.inputs and pruned.settings["prune"] == pruned.config.prune.model_dump(mode="json")
