"""Hand-off decisions of `edgekd run`: a compressed child is carried forward only when measured faster than its
parent (interleaved) within the accuracy budget; the final table marks the hand-off; re-runs skip the decisions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.bench import BenchSettings, PairLatency, bench_devices, compare_latency
from edgekd.errors import InvalidInputError
from edgekd.pipeline import HandoffKeep, _stages, config_from_mapping, plan, read_record, run_pipeline
from edgekd.pipeline._handoff import HandoffDecision, HandoffTarget, decide, handoff_targets, recheck
from edgekd.pipeline._run import Latency

from .conftest import SYNTH

# -- the decision, on injected measurements --------------------------------------------------------------------


def _pair(batch: int, parent_ms: float, child_ms: float, device: str = "cpu") -> PairLatency:
    return PairLatency(
        backend="ort",
        device=device,
        batch=batch,
        parent_precision="fp32",
        child_precision="fp32",
        parent_p50_ms=parent_ms,
        child_p50_ms=child_ms,
        ratio=child_ms / parent_ms,
    )


def _decide(latency, *, parent_val=0.90, child_val=0.899, keep="auto", **kw) -> HandoffDecision:
    return decide(
        stage="pruned",
        parent="student",
        keep=keep,
        metric="auroc",
        parent_val=parent_val,
        child_val=child_val,
        max_drop=0.5,
        latency=latency,
        **kw,
    )


def test_slower_child_is_dropped_and_the_line_names_the_worst_batch():
    d = _decide([_pair(1, 0.20, 0.36), _pair(32, 4.59, 8.81)])
    assert d.kept is False and d.faster is False and d.within_budget is True
    assert d.line.startswith(
        "pruned: not carried forward: 1.92x slower than student at batch 32 (8.81 vs 4.59 ms p50, ORT CPU)"
    )
    assert "\n" not in d.line


def test_child_slower_at_one_batch_only_is_dropped():
    d = _decide([_pair(1, 0.20, 0.21), _pair(32, 4.59, 3.00)])
    assert d.kept is False and "1.05x slower than student at batch 1" in d.line


def test_faster_child_within_budget_is_kept():
    d = _decide([_pair(1, 0.20, 0.15), _pair(32, 4.59, 3.00)])
    assert d.kept is True and d.faster is True
    assert d.line.startswith("pruned: carried forward: 1.33x faster than student at every batch, least at batch 1")
    assert d.drop_points == pytest.approx(0.1) and "budget" in d.line


def test_faster_child_over_the_accuracy_budget_is_dropped():
    d = _decide([_pair(1, 0.20, 0.10), _pair(32, 4.59, 2.00)], child_val=0.89)  # 1.0 point below, budget 0.5
    assert d.kept is False and d.faster is True and d.within_budget is False
    assert d.line.startswith("pruned: not carried forward: val auroc 1.00 points below student (budget 0.5)")
    assert "faster than student" in d.line  # the rest of the evidence is still said
    assert _decide([_pair(1, 0.2, 0.1)], child_val=0.896).kept is True  # 0.4 points: within 0.5


def test_keep_always_forces_and_says_so():
    d = _decide([_pair(32, 4.59, 8.81)], child_val=0.5, keep="always")
    assert d.kept is True and d.keep is HandoffKeep.ALWAYS
    assert d.line.startswith("pruned: carried forward (keep: always): 1.92x slower than student at batch 32")


def test_undefined_metric_is_not_within_budget():
    d = _decide([_pair(1, 0.2, 0.1)], child_val=float("nan"))
    assert d.kept is False and d.within_budget is None and "not defined" in d.line


def test_fp16_unmeasurable_on_cpu_is_not_a_cpu_candidate():
    why = "cuda is not among the bench devices (cpu)"
    d = decide(
        stage="fp16",
        parent="pruned",
        keep="auto",
        metric="auroc",
        parent_val=0.9,
        child_val=0.9,
        max_drop=0.5,
        unmeasured=why,
        target_device="cuda",
    )
    assert d.kept is False and d.measured is False and d.faster is None and not d.cpu_candidate()
    assert d.line == (
        f"fp16: not carried forward: cannot be measured on its target: {why}; not a CPU hand-off "
        "candidate; val auroc +0.00 points vs pruned, within the 0.5-point budget"
    )
    forced = decide(
        stage="fp16",
        parent="pruned",
        keep="always",
        metric="auroc",
        parent_val=0.9,
        child_val=0.9,
        max_drop=0.5,
        unmeasured=why,
        target_device="cuda",
    )
    assert forced.kept and forced.line.startswith("fp16: carried forward (keep: always): cannot be measured")
    cpu = _decide([_pair(1, 0.2, 0.1)], target_device="cpu")
    assert cpu.cpu_candidate()


def test_handoff_targets_one_per_target_and_recheck():
    int8 = _decide([_pair(1, 0.2, 0.3)]).model_copy(update={"stage": "int8-cpu-x86", "kept": False})
    fp16 = decide(
        stage="fp16",
        parent="student",
        keep="auto",
        metric="auroc",
        parent_val=0.9,
        child_val=0.9,
        max_drop=0.5,
        unmeasured="no CUDA",
        target_device="cuda",
    )
    targets = handoff_targets(
        [("cpu-x86", "cpu", "int8-cpu-x86"), ("fp16", "cuda", "fp16")], {"int8-cpu-x86": int8, "fp16": fp16}, "pruned"
    )
    assert [(t.target, t.stage) for t in targets] == [("cpu-x86", "pruned"), ("fp16", None)]
    kept = int8.model_copy(update={"kept": True})
    assert handoff_targets([("cpu-x86", "cpu", "int8-cpu-x86")], {"int8-cpu-x86": kept}, "pruned")[0].stage == (
        "int8-cpu-x86"
    )
    only_gpu = handoff_targets([("fp16", "cuda", "fp16")], {"fp16": fp16}, "student")
    assert only_gpu[-1].model_dump(include={"target", "device", "stage"}) == {
        "target": "fp32",
        "device": "cpu",
        "stage": "student",
    }

    def lat(ms: float) -> Latency:
        return Latency(batch=32, backend="ort", device="cpu", p50_ms=ms, p90_ms=ms)

    table = {"student": {"32": lat(4.59)}, "pruned": {"32": lat(5.00)}, "int8-cpu-x86": {"32": lat(3.0)}}
    labels = {"student": "student, distilled", "pruned": "pruned"}
    lines = recheck(targets, table, labels, "student")
    assert lines == [
        "hand-off for cpu-x86 (pruned) is 1.09x slower than student, distilled at batch 32 in the final "
        "benchmark (5.00 vs 4.59 ms p50, ORT CPU)"
    ]
    faster = [HandoffTarget(target="cpu-x86", device="cpu", stage="int8-cpu-x86")]
    assert recheck(faster, table, labels, "student") == []


# -- the interleaved comparison, on two real tiny ONNX files -------------------------------------------------------


def _tiny_onnx(path: Path, hidden: int, batch: int | str = "N") -> Path:
    rng = np.random.default_rng(hidden)
    w1 = numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((hidden, 2)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 2])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


FAST = BenchSettings(warmup_s=0.0, warmup_iters=1, min_s=0.01, min_iters=6, roofline=False, include_hostname=False)


def test_compare_latency_interleaves_rounds(tmp_path):
    parent, child = _tiny_onnx(tmp_path / "parent.onnx", 8), _tiny_onnx(tmp_path / "child.onnx", 32)
    cmp = compare_latency(
        str(parent), str(child), backends=["ort"], devices=["cpu"], batches=(1, 2), settings=FAST, rounds=4
    )
    assert cmp.parent == str(parent) and cmp.child == str(child) and cmp.skipped == []
    assert [(p.backend, p.device, p.batch) for p in cmp.results] == [("ort", "cpu", 1), ("ort", "cpu", 2)]
    for p in cmp.results:
        # ABBA: each round alternates who goes first, every round times both
        assert [r.order for r in p.rounds] == [["parent", "child"], ["child", "parent"]] * 2
        assert [r.round for r in p.rounds] == [0, 1, 2, 3]
        assert all(r.parent_n >= 2 and r.child_n >= 2 for r in p.rounds)  # ceil(6 / 4) iterations at least
        assert p.parent_p50_ms == pytest.approx(float(np.median([r.parent_p50_ms for r in p.rounds])))
        assert p.child_p50_ms == pytest.approx(float(np.median([r.child_p50_ms for r in p.rounds])))
        assert p.ratio == pytest.approx(p.child_p50_ms / p.parent_p50_ms) and p.threads >= 1
    assert cmp.child_faster() == all(p.child_p50_ms < p.parent_p50_ms for p in cmp.results)
    assert cmp.slowest().ratio == max(p.ratio for p in cmp.results)
    assert cmp.environment.cpu.model


def test_compare_latency_skips_what_one_side_cannot_run(tmp_path):
    parent, fixed = _tiny_onnx(tmp_path / "parent.onnx", 8), _tiny_onnx(tmp_path / "fixed.onnx", 8, batch=1)
    cmp = compare_latency(
        str(parent), str(fixed), backends=["ort"], devices=["cpu"], batches=(1, 2), settings=FAST, rounds=2
    )
    assert [p.batch for p in cmp.results] == [1]
    assert [(s.artifact, s.batch) for s in cmp.skipped] == [(str(fixed), 2)] and "fixed batch" in cmp.skipped[0].reason
    with pytest.raises(InvalidInputError, match="at least 2"):
        compare_latency(str(parent), str(fixed), rounds=1)
    assert bench_devices(["ort"], ["cpu"]) == ["cpu"]


# -- configuration -------------------------------------------------------------------------------------------------

TRAIN = {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "warmup_epochs": 0}
FAST_BENCH = {"batches": [1, 4], "min_s": 0.02, "min_iters": 3, "warmup_s": 0.0, "warmup_iters": 1, "roofline": False}


def _config(**over) -> dict:
    cfg = {
        "name": "handoff",
        "data": SYNTH,
        "teacher": {"model": "small:tinycnn", "train": dict(TRAIN)},
        "student": {"model": "small:tinycnn", "train": dict(TRAIN)},
        "distill": {"diagnose_samples": 16, "baseline": False, "cache_teacher": False},
        "prune": {"target_macs": 0.7, "recovery_epochs": 0, "latency_batch": None, "keep": "always"},
        "quantize": [{"method": "ptq", "target": "cpu-x86", "calib_samples": 16, "parity_samples": 8}],
        "export": {"formats": ["onnx", "onnx-fp16"], "n_samples": 8},
        "bench": FAST_BENCH,
        "report": {"enabled": False},
    }
    cfg.update(over)
    return cfg


def test_prune_keep_takes_the_handoff_choice_or_module_paths():
    cfg = config_from_mapping(_config())
    assert cfg.prune.handoff_keep is HandoffKeep.ALWAYS and cfg.prune.module_keep == []
    paths = config_from_mapping(_config(), overrides=["prune.keep=[conv1]"])
    assert paths.prune.handoff_keep is HandoffKeep.AUTO and paths.prune.module_keep == ["conv1"]
    with pytest.raises(InvalidInputError, match="prune.keep: give auto or always"):
        config_from_mapping(_config(), overrides=["prune.keep=sometimes"])
    with pytest.raises(InvalidInputError, match="quantize.0.keep"):
        config_from_mapping(_config(), overrides=["quantize.0.keep=never"])
    stages = {s.name: s for s in plan(cfg)}
    auto = {s.name: s for s in plan(config_from_mapping(_config(), overrides=["prune.keep=auto"]))}
    # the hand-off choice is the decision's setting, never pruning's: changing it does not re-prune
    assert stages["pruned"].settings == auto["pruned"].settings and stages["pruned"].settings["prune"]["keep"] == []
    assert stages["keep-pruned"].settings["keep"] == "always" and auto["keep-pruned"].settings["keep"] == "auto"
    assert "keep" not in stages["int8-cpu-x86"].settings and "keep" not in stages["bundle"].settings
    order = [s.name for s in plan(cfg)]
    assert (
        order.index("pruned")
        < order.index("keep-pruned")
        < order.index("int8-cpu-x86")
        < order.index("keep-int8-cpu-x86")
        < order.index("bundle")
        < order.index("keep-fp16")
    )
    assert stages["int8-cpu-x86"].carry == "pruned" and stages["bundle"].carry == "pruned"


# -- a whole run, then the same run again, then the decision re-made ---------------------------------------------


def _status(summary) -> dict[str, str]:
    return {s.name: s.status for s in summary.stages}


@pytest.mark.slow
def test_run_records_decisions_marks_the_handoff_and_skips_them_on_rerun(tmp_path, monkeypatch):
    cfg = config_from_mapping(_config())
    run = tmp_path / "run"
    lines: list[str] = []
    first = run_pipeline(cfg, run, progress=False, log=lines.append)
    decisions = {d.stage: d for d in first.handoff.decisions}
    assert set(decisions) == {"pruned", "int8-cpu-x86", "fp16"}
    pruned = decisions["pruned"]
    assert pruned.kept and pruned.keep is HandoffKeep.ALWAYS and pruned.parent == "student"
    assert pruned.line.startswith("pruned: carried forward (keep: always): ") and any(pruned.line in x for x in lines)
    assert [(p.device, p.batch) for p in pruned.latency] == [("cpu", 1), ("cpu", 4)]
    # the compression after it starts from the pruned model, and its decision is measured against it
    assert read_record(run, "int8-cpu-x86").settings["source"] == "pruned"
    assert read_record(run, "bundle").settings["source"] == "pruned"
    assert decisions["int8-cpu-x86"].parent == "pruned" and decisions["int8-cpu-x86"].target_device == "cpu"
    if "cuda" not in bench_devices(["ort"], None):  # FP16 is for the GPU: on a CPU-only machine it is not measured
        fp16 = decisions["fp16"]
        assert not fp16.kept and not fp16.measured and "not a CPU hand-off candidate" in fp16.line
    on_disk = json.loads((run / "handoff" / "pruned.json").read_text())
    assert on_disk["kept"] is True and on_disk["comparison"]["rounds"] == 5 and on_disk["child_artifact"] == "pruned"
    assert [r["order"][0] for r in on_disk["latency"][0]["rounds"]] == ["parent", "child"] * 2 + ["parent"]
    assert read_record(run, "keep-pruned").result["line"] == pruned.line
    # one hand-off per target, marked in the table and in summary.json
    cpu = next(t for t in first.handoff.targets if t.target == "cpu-x86")
    assert cpu.stage == ("int8-cpu-x86" if decisions["int8-cpu-x86"].kept else "pruned")
    rows = {r.name: r for r in first.rows}
    assert rows[cpu.stage].handoff == ["cpu-x86"] and rows["teacher"].handoff == []
    saved = json.loads((run / "summary.json").read_text())
    assert saved["handoff"]["targets"] == [t.model_dump(mode="json") for t in first.handoff.targets]
    assert {r["name"]: r["handoff"] for r in saved["rows"]}[cpu.stage] == ["cpu-x86"]

    again = run_pipeline(cfg, run, progress=False, log=lambda _: None)
    assert set(_status(again).values()) == {"skipped"}, _status(again)
    assert [d.line for d in again.handoff.decisions] == [d.line for d in first.handoff.decisions]

    # the decision is re-made when its settings change, pruning itself is not re-run; with measurements that show
    # the child slower (injected: which model is faster here is the machine's business), the pruned model is not
    # carried forward and INT8 and the bundle compress the chosen student instead
    real = _stages.compare_latency

    def slower_child(*args, **kwargs):
        cmp = real(*args, **kwargs)
        cmp.results = [p.model_copy(update={"child_p50_ms": 2 * p.parent_p50_ms, "ratio": 2.0}) for p in cmp.results]
        return cmp

    monkeypatch.setattr(_stages, "compare_latency", slower_child)
    auto = run_pipeline(
        config_from_mapping(_config(), overrides=["prune.keep=auto"]), run, progress=False, log=lambda _: None
    )
    status = _status(auto)
    assert status["pruned"] == status["student"] == status["eval-pruned"] == "skipped", status
    assert status["keep-pruned"] == status["int8-cpu-x86"] == status["bundle"] == status["eval-int8-cpu-x86"] == "ran"
    decisions = {d.stage: d for d in auto.handoff.decisions}
    assert not decisions["pruned"].kept and decisions["pruned"].line.startswith(
        "pruned: not carried forward: 2.00x slower than student at batch"
    )
    assert (
        read_record(run, "int8-cpu-x86").settings["source"]
        == read_record(run, "bundle").settings["source"]
        == ("select")
    )
    assert decisions["int8-cpu-x86"].parent == "student" and not decisions["int8-cpu-x86"].kept
    assert next(t for t in auto.handoff.targets if t.target == "cpu-x86").stage == "student"
    assert {r.name: r.handoff for r in auto.rows}["student"] == ["cpu-x86"] and auto.handoff.recheck == []
    assert all(r.macs for r in auto.rows)  # INT8 of the student: the MACs of the graph it was made from
