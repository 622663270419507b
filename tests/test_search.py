"""edgekd.search: the space, the device table, the predictor, successive halving, `edgekd search` end to end."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.modeldir import read_card
from edgekd.report import section_ids
from edgekd.search import (
    Architecture,
    Candidate,
    FamilySpace,
    HalvingConfig,
    Precision,
    SearchConfig,
    SearchSpace,
    TableEntry,
    architectures,
    default_space,
    enumerate_candidates,
    fit_predictor,
    mape,
    pareto_front,
    read_table,
    segment_key,
)
from edgekd.specs import ModelSpec
from edgekd.students import build_model, count_params

from .conftest import SYNTH

runner = CliRunner()
TINY_SPACE = {
    "families": [{"model": "small:tinycnn", "widths": [0.5, 1.0], "depths": [2]}],
    "precisions": ["fp32", "int8"],
}
FAST_PROFILE = {"min_s": 0.05, "min_iters": 5, "warmup_s": 0.0}
TRAIN = {"batch_size": 32, "augment": "none", "warmup_epochs": 0, "max_steps_per_epoch": 2}


# -- the space ----------------------------------------------------------------------------------------------------


def test_default_space_is_zoo_families_times_widths_depths_precisions():
    archs = architectures(default_space())
    assert len(archs) == 14 and len({a.key for a in archs}) == 14
    cands = enumerate_candidates(default_space())
    assert len(cands) == 28 and {c.precision for c in cands} == {Precision.FP32, Precision.INT8}
    r14 = next(a for a in archs if a.label == "resnet14-w0.5")
    assert r14.model == "small:resnet14" and r14.kwargs == {"width_mult": 0.5}


def test_width_one_is_the_zoo_model_and_widths_are_multiples_of_8():
    # width 1 builds exactly the zoo's network (the paper's ResNet-8: 16/16/32/64)
    spec = ModelSpec(name="small:resnet8", num_classes=2, in_chans=1)
    assert count_params(build_model(spec)) == count_params(build_model(spec.model_copy(update={"kwargs": {}})))
    net = build_model(spec.model_copy(update={"kwargs": {"width_mult": 1.5}}))
    widths = [m.out_channels for m in net.modules() if hasattr(m, "out_channels")]
    assert widths and all(w % 8 == 0 for w in widths) and max(widths) == 96


def test_fp16_and_int8_only_on_onnx_runtime():
    space = SearchSpace(
        families=[FamilySpace(model="small:tinycnn")], precisions=["fp32", "fp16", "int8"], runtimes=["ort", "openvino"]
    )
    labels = {c.label for c in enumerate_candidates(space)}
    assert labels == {"tinycnn-w1/fp32/ort", "tinycnn-w1/fp16/ort", "tinycnn-w1/int8/ort", "tinycnn-w1/fp32/openvino"}


def test_space_errors_are_one_line():
    with pytest.raises(InvalidInputError, match="depth must be 8, 14, 20 or 32"):
        architectures(SearchSpace(families=[FamilySpace(model="small:resnet8", depths=[9])]))
    with pytest.raises(InvalidInputError, match="no width or depth knob"):
        architectures(SearchSpace(families=[FamilySpace(model="small:wrn_16_2", widths=[0.5])]))
    with pytest.raises(InvalidInputError, match="unknown key"):
        SearchSpace.build(None, {"familes": []})


def test_config_reads_durations_and_refuses_unread_epochs():
    cfg = SearchConfig.build(None, {"teacher": "t", "budget_ms": 1, "time_limit": "30m"})
    assert cfg.time_limit_s == 1800 and cfg.halving.segments == [2, 2, 2]
    assert SearchConfig.build(None, {"teacher": "t", "budget_ms": 1, "time_limit": "1h"}).time_limit_s == 3600
    with pytest.raises(InvalidInputError, match="halving.rungs"):
        SearchConfig.build(None, {"teacher": "t", "budget_ms": 1, "train.epochs": 3})
    with pytest.raises(InvalidInputError, match="rungs must be increasing"):
        HalvingConfig.build(None, {"rungs": [2, 2]})


# -- predictor and Pareto front -----------------------------------------------------------------------------------


def _entry(
    i: int, macs: int, params: int, act: int, ms: float, batch: int = 1, layers: int | None = None
) -> TableEntry:
    arch = Architecture(family="small:tinycnn", model="small:tinycnn", kwargs={"widths": [8 * (i + 1)]})
    c = Candidate(arch=arch, precision=Precision.FP32, runtime="ort")
    return TableEntry(
        key=c.key,
        label=c.label,
        candidate=c,
        batch=batch,
        macs=macs,
        params=params,
        act_bytes=act,
        layers=layers,
        percentiles={"p50": ms, "p90": ms * 1.1, "p95": ms, "p99": ms},
        mean_ms=ms,
        n=10,
        cv=0.01,
    )


def test_predictor_recovers_a_known_additive_cost_model():
    # ms = 0.02 + 3 ms/GMAC + 0.5 ms/activation-MB + 0.1 ms/weight-MB: the model the predictor assumes; the
    # held-out error must be ~0 and predictions exact.
    rng = np.random.default_rng(1)
    truth = lambda m, p, a: 0.02 + 3 * m / 1e9 + 0.5 * a / 1e6 + 0.1 * p * 4 / 1e6  # noqa: E731
    rows = [(int(rng.integers(1e5, 5e7)), int(rng.integers(1e3, 1e6)), int(rng.integers(1e4, 2e6))) for _ in range(24)]
    entries = [_entry(i, m, p, a, truth(m, p, a)) for i, (m, p, a) in enumerate(rows)]
    pred = fit_predictor(entries)
    assert pred.n_holdout == 6 and pred.holdout_mape < 0.5
    assert pred.predict("ort", "fp32", 10**7, 10**5, 10**6, 1) == pytest.approx(truth(1e7, 1e5, 1e6), rel=0.01)
    assert pred.predict("ort", "int8", 10**7, 10**5, 10**6, 1) is None  # a group the table never measured


def test_predictor_prices_each_layer():
    # a small network's latency is mostly a fixed cost per layer: two networks of equal MACs, one twice as deep,
    # differ by that cost; without the layer term no additive model could tell them apart
    rng = np.random.default_rng(3)
    truth = lambda m, n: 0.005 + 1.5 * m / 1e9 + 0.004 * n  # noqa: E731
    rows = [(int(rng.integers(1e5, 2e7)), int(rng.integers(3, 60))) for _ in range(24)]
    entries = [_entry(i, m, 1000, 1000, truth(m, n), layers=n) for i, (m, n) in enumerate(rows)]
    pred = fit_predictor(entries)
    assert pred.holdout_mape < 0.5
    shallow = pred.predict("ort", "fp32", 10**6, 1000, 1000, 1, layers=5)
    deep = pred.predict("ort", "fp32", 10**6, 1000, 1000, 1, layers=50)
    assert shallow == pytest.approx(truth(1e6, 5), rel=0.02) and deep == pytest.approx(truth(1e6, 50), rel=0.02)
    # a table written before layers were recorded still fits and predicts (the layer term is zero)
    old = [_entry(i, m, 1000, 1000, 0.01 + 2 * m / 1e9) for i, (m, _) in enumerate(rows)]
    assert fit_predictor(old).predict("ort", "fp32", 10**7, 1000, 1000, 1) == pytest.approx(0.03, rel=0.02)


def test_predictor_error_is_the_noise_it_is_given():
    rng = np.random.default_rng(2)
    rows = [int(rng.integers(1e5, 5e7)) for _ in range(40)]
    noisy = [_entry(i, m, 1000, 1000, (0.01 + 2 * m / 1e9) * (1 + 0.2 * (-1) ** i)) for i, m in enumerate(rows)]
    err = fit_predictor(noisy).holdout_mape
    assert 10 < err < 30  # +-20 % noise: no cost model can do better than ~20 % MAPE on it
    assert mape([1.1, 0.9], [1.0, 1.0]) == pytest.approx(10.0)


def test_pareto_front_matches_the_definition():
    rng = np.random.default_rng(3)
    pts = [(float(x), float(y)) for x, y in rng.random((30, 2))]
    dominated = {p for p in pts if any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts)}
    assert set(pareto_front(pts)) == set(pts) - dominated


# -- the segment keys ---------------------------------------------------------------------------------------------


def test_segment_keys_change_with_what_the_training_depends_on():
    cfg = SearchConfig.build(None, {"teacher": "t", "budget_ms": 1})
    arch = architectures(default_space())[0]
    k = segment_key(arch, cfg, SYNTH, "sha", 0, "init")
    assert k == segment_key(arch, cfg, SYNTH, "sha", 0, "init")
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.01})})
    assert (
        len(
            {
                k,
                segment_key(arch, other, SYNTH, "sha", 0, "init"),
                segment_key(arch, cfg, SYNTH, "sha2", 0, "init"),
                segment_key(arch, cfg, SYNTH, "sha", 1, "init"),
                segment_key(arch, cfg, "synthetic:n=9", "sha", 0, "init"),
                segment_key(architectures(default_space())[1], cfg, SYNTH, "sha", 0, "init"),
            }
        )
        == 6
    )


# -- device profile and the search end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """`edgekd device profile` of a 2-architecture space at the synthetic data's input (1x16x16)."""
    tmp = tmp_path_factory.mktemp("profile")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    out = tmp / "device.json"
    r = runner.invoke(
        app,
        [
            "device",
            "profile",
            "--space",
            str(space),
            "--batch",
            "1,2",
            "--input-shape",
            "1,16,16",
            "--out",
            str(out),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    return out


def test_device_profile_writes_a_latency_table(tiny_table):
    table = read_table(tiny_table)
    assert table.input_shape == [1, 16, 16] and table.num_classes == 2
    assert table.device["cpu"]["model"] and "onnxruntime" in table.runtimes and table.scheme
    assert {(e.label, e.batch) for e in table.entries} == {
        (f"tinycnn-d2-w{w}/{p}/ort", b) for w in ("0.5", "1") for p in ("fp32", "int8") for b in (1, 2)
    }
    for e in table.entries:
        assert 0 < e.percentiles["p50"] <= e.percentiles["p90"] <= e.percentiles["p99"] and e.macs > 0
    small = next(e for e in table.entries if e.label.startswith("tinycnn-d2-w0.5"))
    big = next(e for e in table.entries if e.label.startswith("tinycnn-d2-w1"))
    assert small.macs < big.macs and small.params < big.params
    assert small.layers == big.layers == 3  # tinycnn at depth 2: two convolutions and the classifier


def test_read_table_refuses_other_files(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ArtifactError, match="not an edgekd device table"):
        read_table(tmp_path / "x.json")
    with pytest.raises(ArtifactError, match="does not exist"):
        read_table(tmp_path / "missing.json")


def _slow_table(src, dst, slow_label: str) -> None:
    """The table as if measured on a device where one architecture is 50 ms (a table from another device)."""
    data = json.loads(src.read_text())
    for e in data["entries"]:
        if e["label"].startswith(slow_label):
            e["percentiles"] = {k: 50.0 for k in e["percentiles"]}
    dst.write_text(json.dumps(data))


def _search_args(tmp_path, teacher, table, out, budget="1.0", prune=True):
    space = {**TINY_SPACE, "prune": prune}
    cfg = {"space": space, "halving": {"rungs": [1, 2], "eta": 2}, "train": TRAIN, "profile": FAST_PROFILE}
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(cfg))
    return [
        "search",
        "--data",
        SYNTH,
        "--teacher",
        teacher,
        "--budget-ms",
        budget,
        "--batch",
        "1",
        "--device-table",
        str(table),
        "--config",
        str(tmp_path / "search.yaml"),
        "--out",
        str(out),
        "-q",
    ]


def test_search_trains_only_what_fits_and_measures_the_winner_again(tmp_path, tiny_model_dir, tiny_table):
    table = tmp_path / "device.json"
    _slow_table(tiny_table, table, "tinycnn-d2-w1/")
    out = tmp_path / "search"
    r = runner.invoke(app, [*_search_args(tmp_path, tiny_model_dir, table, out), "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    result = json.loads((out / "search.json").read_text())
    trained = {t["label"] for t in result["trainings"]}
    assert trained == {"tinycnn-d2-w0.5"}  # the 50 ms architecture is over the 1 ms budget: never trained
    slow = [c for c in result["candidates"] if c["label"].startswith("tinycnn-d2-w1/")]
    assert slow and all(not c["fits"] and c["trained_epochs"] == 0 for c in slow)
    assert [t["epochs"] for t in result["trainings"]] == [1, 2] and result["rungs_reached"] == 2
    chosen = result["chosen"]
    assert chosen["label"] == "tinycnn-d2-w0.5/fp32/ort" and chosen["meets_budget"]
    assert chosen["measured_ms"] <= 1.0 and chosen["bench"]["p50_ms"] > 0  # measured again, not the table's
    assert read_card(out / "model").spec.kwargs == {"widths": [8, 16]}
    assert (out / "bundle" / "manifest.json").is_file() and (out / "pareto.png").stat().st_size > 1000
    assert "budget" in (out / "report.html").read_text() and json.loads((tmp_path / "r.json").read_text())["chosen"]
    assert chosen["pruned"]["macs_kept"] == 1.0  # pruned to the budget as a last step: it met it, nothing removed
    # a re-run skips every finished training (content hash; the last step's pruning is off this time)
    r = runner.invoke(app, _search_args(tmp_path, tiny_model_dir, table, out, prune=False))
    assert r.exit_code == 0, r.output
    again = json.loads((out / "search.json").read_text())
    assert all(t["reused"] for t in again["trainings"]) and again["chosen"]["label"] == chosen["label"]


def test_no_candidate_within_the_budget_is_exit_3(tmp_path, tiny_model_dir, tiny_table):
    r = runner.invoke(app, _search_args(tmp_path, tiny_model_dir, tiny_table, tmp_path / "s", budget="0.000001"))
    assert r.exit_code == 3, r.output
    assert "no candidate meets" in r.output and "the fastest is" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "s" / "trainings").exists()


def test_search_refuses_a_folder_it_did_not_write(tmp_path, tiny_model_dir, tiny_table):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    r = runner.invoke(app, _search_args(tmp_path, tiny_model_dir, tiny_table, tmp_path / "s"))
    assert r.exit_code == 3 and "not an edgekd search directory" in r.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["notes.txt"]


def test_a_table_for_another_input_is_refused(tmp_path, tiny_model_dir, tiny_table):
    data = json.loads(tiny_table.read_text())
    data["input_shape"] = [3, 32, 32]
    (tmp_path / "t.json").write_text(json.dumps(data))
    r = runner.invoke(app, _search_args(tmp_path, tiny_model_dir, tmp_path / "t.json", tmp_path / "s"))
    assert r.exit_code == 3 and "measured for input [3, 32, 32]" in r.output


# -- `budget:` in a pipeline file ---------------------------------------------------------------------------------


def _budget_pipeline(tmp_path, budget: dict, report: dict | None = None):
    cfg = {
        "name": "budget",
        "data": SYNTH,
        "teacher": {"model": "small:tinycnn", "train": {"epochs": 1, **TRAIN}},
        "student": {"model": "small:tinycnn", "train": dict(TRAIN)},
        "distill": {"baseline": False, "diagnose_samples": 32},
        "budget": budget,
        "prune": None,
        "quantize": [],
        "export": None,
        "bench": None,
        "report": report or {"enabled": False},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_a_budget_section_makes_edgekd_run_search_for_its_student(tmp_path):
    budget = {
        "budget_ms": 1.0,
        "batch": 1,
        "time_limit": "10m",
        "halving": {"rungs": [1]},
        "profile": FAST_PROFILE,
        "space": {"families": [{"model": "small:tinycnn", "widths": [0.5], "depths": [2]}], "prune": False},
    }
    report = {"gradcam_images": 2, "gradcam_misclassified": 0}
    path = _budget_pipeline(tmp_path, budget, report)
    r = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run"), "-q"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    result = json.loads((run / "search" / "search.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["search"] == "search/search.json"
    # the run's report carries the search: its section in page order, the Pareto figure, the chosen model
    html = (run / "report" / "index.html").read_text()
    ids = re.findall(r'<section id="([\w-]+)">', html)
    assert tuple(ids) == section_ids(summary["task"], search=True) and ids[1] == "search"
    part = html.split('<section id="search">')[1].split("</section>")[0]
    assert "tinycnn-d2-w0.5/fp32/ort" in part and "measured again" in part and "data:image/png;base64," in part
    assert (run / "report" / "figures" / "search.png").stat().st_size > 1000
    assert result["chosen"]["label"] == "tinycnn-d2-w0.5/fp32/ort" and result["chosen"]["meets_budget"]
    assert read_card(run / "student").spec.kwargs == {"widths": [8, 16]}  # the searched student goes on
    record = json.loads((run / "stages" / "student.json").read_text())
    assert record["kind"] == "search"


def test_a_budget_run_refuses_a_baseline():
    from edgekd.pipeline import config_from_mapping

    raw = {"teacher": {"model": "small:tinycnn"}, "student": {"model": "small:tinycnn"}, "budget": {"budget_ms": 1}}
    with pytest.raises(InvalidInputError, match="distill.baseline: false"):
        config_from_mapping(raw)


def test_array_tasks_train_one_segment_each_and_need_the_rung_before(tmp_path, tiny_model_dir, tiny_table):
    args = _search_args(tmp_path, tiny_model_dir, tiny_table, tmp_path / "s")
    r = runner.invoke(app, [*args, "--rung", "1", "--task", "0"])
    assert r.exit_code == 3 and "rung 0 is not finished" in r.output
    r = runner.invoke(app, [*args, "--rung", "0", "--task", "1", "--json", str(tmp_path / "t.json")])
    assert r.exit_code == 0, r.output
    done = json.loads((tmp_path / "t.json").read_text())
    assert [(t["label"], t["rung"]) for t in done] == [("tinycnn-d2-w1", 0)]  # the second architecture only
    assert len(list((tmp_path / "s" / "trainings").iterdir())) == 1
    r = runner.invoke(app, [*args, "--rung", "0", "--task", "7"])  # past the last architecture: nothing to do
    assert r.exit_code == 0 and len(list((tmp_path / "s" / "trainings").iterdir())) == 1
    r = runner.invoke(app, [*args, "--rung", "0"])
    assert r.exit_code == 3 and "--rung and --task go together" in r.output


def test_search_refuses_a_pipeline_run_directory_and_an_existing_report(tmp_path, tiny_model_dir, tiny_table):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".edgekd").write_text("edgekd run directory: `edgekd run` continues it\n")
    (run_dir / "summary.json").write_text("{}")
    r = runner.invoke(app, _search_args(tmp_path, tiny_model_dir, tiny_table, run_dir))
    assert r.exit_code == 3 and "not an edgekd search directory" in r.output
    (tmp_path / "r.json").write_text("{}")
    r = runner.invoke(
        app, [*_search_args(tmp_path, tiny_model_dir, tiny_table, tmp_path / "s"), "--json", str(tmp_path / "r.json")]
    )
    assert r.exit_code == 3 and not (tmp_path / "s").exists()


def test_a_missing_teacher_fails_before_any_measurement(tmp_path, tiny_table):
    r = runner.invoke(app, _search_args(tmp_path, str(tmp_path / "no-teacher"), tiny_table, tmp_path / "s"))
    assert r.exit_code in (3, 4) and "Traceback" not in r.output, r.output
    assert not (tmp_path / "s").exists()  # nothing written


def test_halving_keeps_the_better_third_and_the_zoo_model_as_it_is(tmp_path, tiny_model_dir):
    from edgekd.data import load_data
    from edgekd.search._search import _halving

    cfg = SearchConfig.build(
        None,
        {
            "teacher": tiny_model_dir,
            "data": SYNTH,
            "budget_ms": 1,
            "train": TRAIN,
            "space": {"families": [{"model": "small:tinycnn", "widths": [0.5, 1.0], "depths": [2, 4]}]},
            "halving": {"rungs": [1, 2], "eta": 4},
        },
    )
    archs = architectures(cfg.space)
    trainings, reached, _ = _halving(cfg, archs, tmp_path, load_data(SYNTH), float("inf"), False, lambda _m: None)
    first = sorted((t for t in trainings if t.rung == 0), key=lambda t: (-t.score, t.label))
    second = {t.label for t in trainings if t.rung == 1}
    assert len(first) == 4 and reached == 2
    assert second == {first[0].label, "tinycnn-d4-w1"}  # ceil(4/4) = 1 best, plus the zoo's tinycnn as it is


def test_the_budget_section_shares_the_search_fields_and_their_checks():
    from pydantic import ValidationError

    from edgekd.pipeline._budget import BudgetSection
    from edgekd.search import BudgetSettings, SearchConfig

    assert issubclass(BudgetSection, BudgetSettings) and issubclass(SearchConfig, BudgetSettings)
    assert BudgetSection(budget_ms=1, time_limit="30m", backends="ort,openvino").backends == ["ort", "openvino"]
    with pytest.raises(ValidationError, match="unknown backend 'bogus'"):
        BudgetSection(budget_ms=1, backends="ort,bogus")
