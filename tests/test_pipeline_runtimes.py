"""`edgekd run` across runtimes: `bench.backends: [ort, openvino, executorch]` exports each benchmarked row's runtime
bundle, the hand-off compares the fastest runtime of child and parent, and the table shows each row's fastest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekd.bench import BenchConfig, PairLatency
from edgekd.bench._api import _default_devices
from edgekd.export import read_manifest
from edgekd.pipeline import config_from_mapping, plan, read_record, run_pipeline
from edgekd.pipeline._handoff import HandoffTarget, best_of_runtimes, decide, recheck
from edgekd.pipeline._run import Latency
from edgekd.pipeline._runtimes import runtime_formats, usable_backends
from edgekd.report._report import _runtime_parts

from .conftest import SYNTH

pytest.importorskip("openvino")
pytest.importorskip("executorch.runtime")

RUNTIMES = ["ort", "openvino", "executorch"]
TRAIN = {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "warmup_epochs": 0}
BENCH = {"batches": [1, 2], "min_s": 0.005, "min_iters": 3, "warmup_s": 0.0, "warmup_iters": 1, "roofline": False}


def _config(teacher: str, backends: list[str]) -> dict:
    return {
        "name": "runtimes",
        "data": SYNTH,
        "teacher": {"path": teacher},
        "student": {"model": "small:tinycnn", "train": dict(TRAIN)},
        "distill": {"diagnose_samples": 16, "baseline": False},
        "prune": None,
        "quantize": [{"method": "ptq", "target": "cpu-x86", "calib_samples": 16, "parity_samples": 8}],
        "export": None,
        "handoff": {"rounds": 2},
        "bench": {**BENCH, "backends": backends},
        "report": {"enabled": False},
    }


# -- the rule, on injected measurements ---------------------------------------------------------------------------


def _pair(backend: str, batch: int, parent_ms: float, child_ms: float) -> PairLatency:
    return PairLatency(
        backend=backend,
        device="cpu",
        batch=batch,
        parent_precision="fp32",
        child_precision="int8",
        parent_p50_ms=parent_ms,
        child_p50_ms=child_ms,
        ratio=child_ms / parent_ms,
    )


def _decide(latency):
    kw = {"metric": "auroc", "parent_val": 0.9, "child_val": 0.9, "max_drop": 0.5}
    return decide(stage="int8-cpu-x86", parent="student", keep="auto", latency=latency, **kw)


def test_the_child_fastest_runtime_against_the_parent_fastest_decides():
    # slower than its parent on ORT, but its fastest runtime (OpenVINO) beats the parent's fastest (ORT)
    d = _decide([_pair("ort", 1, 1.0, 1.1), _pair("openvino", 1, 3.0, 0.8)])
    assert d.kept and [(b.parent_backend, b.child_backend, b.ratio) for b in d.best] == [("ort", "openvino", 0.8)]
    assert "1.25x faster than student at batch 1 (0.80 ms p50 on OpenVINO CPU vs 1.00 ms on ORT CPU)" in d.line
    # faster than its parent on OpenVINO, but its fastest is still slower than the parent's fastest: not kept
    d = _decide([_pair("ort", 1, 1.0, 1.5), _pair("openvino", 1, 2.0, 1.2), _pair("ort", 32, 9.0, 4.0)])
    assert (
        not d.kept and "1.20x slower than student at batch 1 (1.20 ms p50 on OpenVINO CPU vs 1.00 ms on ORT" in d.line
    )
    assert [b.batch for b in d.best] == [1, 32] and d.best[1].child_faster
    # one runtime: the line is the one of an ORT-only run
    assert _decide([_pair("ort", 1, 2.0, 1.0)]).line.startswith(
        "int8-cpu-x86: carried forward: 2.00x faster than student at batch 1 (1.00 vs 2.00 ms p50, ORT CPU)"
    )


def test_best_of_runtimes_is_per_device_and_batch():
    best = best_of_runtimes(
        [_pair("ort", 1, 1.0, 2.0), _pair("executorch", 1, 0.5, 3.0), _pair("openvino", 4, 5.0, 4.0)]
    )
    assert [(b.batch, b.parent_backend, b.parent_p50_ms, b.child_backend, b.child_p50_ms) for b in best] == [
        (1, "executorch", 0.5, "ort", 2.0),
        (4, "openvino", 5.0, "openvino", 4.0),
    ]


def test_recheck_compares_fastest_runtimes_on_the_same_device():
    lat = {
        "student": {"1": Latency(batch=1, backend="ort", device="cpu", p50_ms=1.0, p90_ms=1.0)},
        "int8": {"1": Latency(batch=1, backend="openvino", device="cpu", p50_ms=1.5, p90_ms=1.6)},
    }
    target = HandoffTarget(target="cpu-x86", device="cpu", stage="int8")
    (line,) = recheck([target], lat, {"int8": "INT8 cpu-x86"}, "student")
    assert "1.50x slower than student at batch 1 in the final benchmark (1.50 ms p50 on OpenVINO CPU vs 1.00 ms" in line


def test_cpu_runtimes_default_to_the_cpu_and_only_runtime_backends_add_stages(tiny_model_dir):
    assert _default_devices("openvino") == _default_devices("executorch") == ["cpu"]
    # a CUDA-only hand-off (an FP16 file) leaves the CPU runtimes out instead of failing on them
    assert usable_backends(RUNTIMES, ["cuda"], BenchConfig()) in ([], ["ort"])
    assert usable_backends(RUNTIMES, ["cpu"], BenchConfig()) == RUNTIMES
    assert runtime_formats(["ort", "torch"]) == [] and runtime_formats(RUNTIMES) == ["openvino", "executorch"]
    plain = [s.name for s in plan(config_from_mapping(_config(tiny_model_dir, ["ort"])))]
    assert not any(n.startswith("runtimes-") for n in plain)
    stages = plan(config_from_mapping(_config(tiny_model_dir, RUNTIMES)))
    names = [s.name for s in stages]
    for row in ("teacher", "student", "int8-cpu-x86"):  # right after the stage that made the row's artifact
        assert names.index(f"runtimes-{row}") == names.index(row) + 1
    keep = next(s for s in stages if s.name == "keep-int8-cpu-x86")
    assert {"runtimes-student", "runtimes-int8-cpu-x86"} <= set(keep.inputs)
    assert [n for n in names if n not in plain] == ["runtimes-teacher", "runtimes-student", "runtimes-int8-cpu-x86"]


def test_report_shows_every_runtime_and_marks_the_fastest():
    rows = [
        {
            "label": "INT8",
            "latency": {"1": {"backend": "openvino", "device": "cpu", "runtimes": {"ort": 0.2, "openvino": 0.1}}},
        }
    ]
    html = "".join(_runtime_parts(rows, [1]))
    assert "<th>openvino</th>" in html and "<b>0.1000 *</b>" in html and "<td>0.2000</td>" in html
    one = [{"label": "x", "latency": {"1": {"backend": "ort", "device": "cpu", "runtimes": {"ort": 0.2}}}}]
    assert _runtime_parts(one, [1]) == []


# -- a whole run ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("rt") / "run"
    cfg = config_from_mapping(_config(tiny_model_dir, RUNTIMES))
    first = run_pipeline(cfg, out, progress=False, log=lambda _: None)
    again = run_pipeline(cfg, out, progress=False, log=lambda _: None)
    return out, first, again


@pytest.mark.slow
def test_each_benchmarked_row_gets_a_parity_checked_runtime_bundle(run):
    out, _, _ = run
    files = {
        row: {(f.name, f.kind, f.precision and f.precision.value) for f in read_manifest(out / "runtimes" / row).files}
        for row in ("teacher", "student", "int8-cpu-x86")
    }
    assert {("model.xml", "openvino", "fp32"), ("model.pte", "executorch", "fp32")} <= files["student"]
    assert {("model.int8.xml", "openvino", "int8"), ("model.int8.pte", "executorch", "int8")} <= files["int8-cpu-x86"]
    manifest = read_manifest(out / "runtimes" / "int8-cpu-x86")
    assert all(p.passed for p in manifest.parity) and {p.file for p in manifest.parity} >= {"model.int8.pte"}
    calib = manifest.extra["runtimes"]["executorch"]["calibration"]
    assert calib["samples"] == 16 and calib["seed"] == 0  # the quantize stage's subset and the run's seed


@pytest.mark.slow
def test_the_handoff_times_every_runtime_and_decides_on_the_fastest(run):
    out, first, _ = run
    (d,) = first.handoff.decisions
    assert {(p.backend, p.batch, p.parent_precision, p.child_precision) for p in d.latency} == {
        (b, n, "fp32", "int8") for b in RUNTIMES for n in (1, 2)
    }
    for best in d.best:
        here = [p for p in d.latency if p.batch == best.batch]
        assert best.child_p50_ms == min(p.child_p50_ms for p in here)
        assert best.parent_p50_ms == min(p.parent_p50_ms for p in here)
    assert d.faster == all(b.child_faster for b in d.best)
    on_disk = json.loads((out / "handoff" / "int8-cpu-x86.json").read_text())
    assert on_disk["best"] == [b.model_dump(mode="json") for b in d.best]


@pytest.mark.slow
def test_the_table_shows_each_row_fastest_runtime_and_every_runtime(run):
    out, first, _ = run
    bench = json.loads((out / "bench.json").read_text())
    got = {(Path(r["artifact"]).name, r["backend"], r["precision"], r["batch"]) for r in bench["results"]}
    assert got == {
        (row, b, p, n)
        for row, p in (("teacher", "fp32"), ("student", "fp32"), ("int8-cpu-x86", "int8"))
        for b in RUNTIMES
        for n in (1, 2)
    }
    for row in first.rows:
        assert set(row.latency) == {"1", "2"}, row.name
        for lat in row.latency.values():
            assert set(lat.runtimes) == set(RUNTIMES)
            assert lat.backend == min(lat.runtimes, key=lat.runtimes.get)
            assert lat.p50_ms == lat.runtimes[lat.backend]
    teacher = first.rows[0].latency["1"]
    assert first.rows[0].name == "teacher" and teacher.speedup == pytest.approx(1.0)


@pytest.mark.slow
def test_a_rerun_skips_every_stage_runtimes_included(run):
    out, _, again = run
    assert {s.status for s in again.stages} == {"skipped"}, [(s.name, s.status) for s in again.stages]
    assert read_record(out, "runtimes-int8-cpu-x86").inputs.keys() >= {"int8-cpu-x86"}


@pytest.mark.slow
def test_an_int8_runtime_failing_parity_is_left_out_with_its_reason(run, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from edgekd.errors import VerificationError
    from edgekd.pipeline import _runtimes

    out, _, _ = run

    def fails(*_a, **_k):
        raise VerificationError("openvino: parity FAILED: model.int8.xml [int8] top1=0.9883")

    monkeypatch.setattr(_runtimes, "add_openvino", fails)
    lines: list[str] = []
    rt = _runtimes.RuntimesStage(
        row="int8-cpu-x86",
        precision="int8",
        formats=["openvino", "executorch"],
        max_batch=32,
        n_samples=8,
        data=SYNTH,
        calib_seed=0,
    )
    manifest, failed = _runtimes._add_runtimes(
        SimpleNamespace(log=lines.append), out / "int8-cpu-x86", tmp_path / "b", rt
    )
    assert set(failed) == {"openvino"} and "parity FAILED" in failed["openvino"] and "no openvino file" in lines[0]
    kinds = {f.kind for f in manifest.files}
    assert "executorch" in kinds and "openvino" not in kinds and (tmp_path / "b" / "model.int8.pte").is_file()
