"""Measure, don't assume: latency targets (NetAdapt loop with injected latency), round_to auto, the width probe."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from torch import nn
from typer.testing import CliRunner

from edgekd.bench import _widths, cached_width_probe, choose_multiple, probe_spatial, width_multiple
from edgekd.bench._widths import WidthTiming, cache_dir, probe_widths_for
from edgekd.cli import app
from edgekd.errors import InvalidInputError
from edgekd.modeldir import ModelSpec, load_model_dir, read_card
from edgekd.pipeline._config import PruneSection
from edgekd.prune import REPORT_FILE, ChannelPruner, PruneConfig, PruneTarget, parse_round_to, prune_model_dir
from edgekd.students import build_model, count_macs

runner = CliRunner()
INPUT = (1, 1, 16, 16)


class FakeLatency:
    """A deterministic :class:`~edgekd.prune.LatencyFn`: ms from the MACs kept, or a scripted sequence."""

    def __init__(self, base_macs: int, curve=None, script=None) -> None:
        self.base, self.curve, self.script = base_macs, curve, list(script or [])
        self.calls: list[tuple[int, int]] = []  # (number of models, batch)

    def ms(self, model: nn.Module) -> float:
        if self.script:
            return self.script.pop(0)
        return self.curve(count_macs(model, INPUT) / self.base)

    def __call__(self, models, card, *, batch, seconds):
        self.calls.append((len(models), batch))
        return [(self.ms(m), 2) for m in models]


def _cfg(**target) -> PruneConfig:
    return PruneConfig(target=PruneTarget.from_options(**target), recovery_epochs=0, round_to=None, latency_batch=None)


def _base_macs(model_dir: str) -> int:
    return count_macs(load_model_dir(model_dir)[0], INPUT)


# ---------------------------------------------------------------------------------------------------------------
# Targets and options


def test_latency_target_options():
    t = PruneTarget.from_options(target_latency_ms=2.5)
    assert (t.kind.value, t.value, t.batch, t.backend.value) == ("latency", 2.5, 32, "ort")
    assert t.describe() == "p50 latency <= 2.5 ms at batch 32 (ort)"
    assert PruneTarget.model_validate(t.model_dump(mode="json")) == t
    assert PruneTarget.from_options(target_latency_ms=40, batch=1).batch == 1  # a budget may exceed 1 ms
    assert PruneTarget.from_options(target_macs=0.5).model_dump(mode="json") == {"kind": "macs", "value": 0.5}
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(InvalidInputError, match="positive number of milliseconds"):
            PruneTarget.from_options(target_latency_ms=bad)
    with pytest.raises(InvalidInputError, match="exactly one"):
        PruneTarget.from_options(target_latency_ms=2, target_macs=0.5)
    with pytest.raises(InvalidInputError, match="only apply to --target-latency-ms"):
        PruneTarget.from_options(target_macs=0.5, batch=8)
    with pytest.raises(InvalidInputError, match="latency backend"):
        PruneTarget.from_options(target_latency_ms=2, backend="trt")
    with pytest.raises(InvalidInputError, match="no per-step goals"):
        t.goals(1)


def test_parse_round_to_and_config_default():
    assert [parse_round_to(v) for v in ("auto", "AUTO", "none", "null", None, "8", 8)] == [
        "auto",
        "auto",
        None,
        None,
        None,
        8,
        8,
    ]
    for bad in ("foo", "0", "-4", "2.5", True):
        with pytest.raises(InvalidInputError, match="--round-to must be auto, none or a positive integer"):
            parse_round_to(bad)
    cfg = PruneConfig(target=PruneTarget.from_options(ratio=0.3))
    assert cfg.round_to == "auto" and PruneConfig(target=cfg.target, round_to="none").round_to is None
    with pytest.raises(InvalidInputError, match="--steps does not apply"):
        PruneConfig(target=PruneTarget.from_options(target_latency_ms=1), steps=2).check()


def test_pipeline_prune_section_takes_a_latency_target():
    s = PruneSection.model_validate({"target_latency_ms": 3, "batch": 8, "backend": "ort", "round_to": 16})
    assert (s.target.kind.value, s.target.value, s.target.batch, s.round_to) == ("latency", 3.0, 8, 16)
    again = PruneSection.model_validate(s.model_dump(mode="json"))  # the pipeline re-validates its dump
    assert again.target == s.target
    with pytest.raises(ValueError, match="positive number of milliseconds"):
        PruneSection.model_validate({"target_latency_ms": 0})
    with pytest.raises(ValueError, match="only apply"):
        PruneSection.model_validate({"target_macs": 0.5, "batch": 8})


# ---------------------------------------------------------------------------------------------------------------
# The latency loop, with an injected latency function


def test_latency_loop_stops_when_met(tiny_model_dir, tmp_path):
    fake = FakeLatency(_base_macs(tiny_model_dir), curve=lambda kept: 10.0 * kept)
    cfg = _cfg(target_latency_ms=6.0, batch=4)
    report = prune_model_dir(tiny_model_dir, tmp_path / "p", cfg, latency=fake, progress=False)
    steps, lat = report.steps, report.latency_target
    assert report.target_met and lat["met"] and not lat["already_met"]
    assert lat["unpruned_ms"] == pytest.approx(10.0) and lat["aim_ms"] == pytest.approx(6.0 * 0.95)
    assert steps[-1]["latency_ms"] <= lat["aim_ms"] < min(s["latency_ms"] for s in steps[:-1] or [{"latency_ms": 99}])
    assert all({"latency_ms", "batch", "threads", "macs_kept"} <= set(s) and s["batch"] == 4 for s in steps)
    kept = [s["macs_kept"] for s in steps]
    assert kept == sorted(kept, reverse=True) and kept[-1] == pytest.approx(report.after.macs / report.before.macs)
    assert all((n, b) == (1, 4) for n, b in fake.calls[:-1]) and fake.calls[-1] == (2, 4)  # last: before vs after
    assert report.after.latency_ms == pytest.approx(steps[-1]["latency_ms"]) and report.after.latency_batch == 4
    on_disk = json.loads((tmp_path / "p" / REPORT_FILE).read_text())
    assert [s["latency_ms"] for s in on_disk["steps"]] == [s["latency_ms"] for s in steps]
    card = read_card(tmp_path / "p")
    assert card.lineage.notes["latency"]["budget_ms"] == 6.0 and card.lineage.notes["target"]["kind"] == "latency"
    assert load_model_dir(tmp_path / "p")[1].macs == report.after.macs


def test_latency_loop_keeps_going_past_a_slower_step(tiny_model_dir, tmp_path):
    # unpruned 10 ms; the proposals measure 8, 9 (slower than the one before), 7, then 4.5 (<= 5 * 0.95: met);
    # the last two values are the final before/after measurement
    fake = FakeLatency(_base_macs(tiny_model_dir), script=[10.0, 8.0, 9.0, 7.0, 4.5, 10.0, 4.5])
    report = prune_model_dir(tiny_model_dir, tmp_path / "p", _cfg(target_latency_ms=5.0), latency=fake, progress=False)
    assert [s["latency_ms"] for s in report.steps] == [8.0, 9.0, 7.0, 4.5]
    assert [s["faster"] for s in report.steps] == [True, False, True, True]
    assert [s["met"] for s in report.steps] == [False, False, False, True] and report.target_met
    assert fake.calls[0] == (1, 32)  # the default batch of a latency target


@pytest.mark.parametrize("round_to", [None, 8])
def test_unreachable_budget_fails_cleanly_and_writes_nothing(round_to, tiny_model_dir, tmp_path):
    fake = FakeLatency(_base_macs(tiny_model_dir), curve=lambda kept: 3.0 + 10.0 * kept)  # never under 3 ms
    cfg = _cfg(target_latency_ms=2.0).model_copy(update={"max_layer_ratio": 0.6, "round_to": round_to})
    with pytest.raises(
        InvalidInputError, match=r"cannot be reached: smallest measured [\d.]+ ms at \d+% of the MACs \(unpruned 13 ms"
    ) as err:
        prune_model_dir(tiny_model_dir, tmp_path / "p", cfg, latency=fake, progress=False)
    assert ("smaller multiple than 8" in err.value.hint) == (round_to == 8)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder
    assert len(fake.calls) > 2  # it measured proposals before giving up


def test_budget_already_met_prunes_nothing(tiny_model_dir, tmp_path):
    fake = FakeLatency(_base_macs(tiny_model_dir), curve=lambda kept: 10.0 * kept)
    cfg = _cfg(target_latency_ms=50.0).model_copy(update={"recovery_epochs": 1})
    report = prune_model_dir(tiny_model_dir, tmp_path / "p", cfg, latency=fake, progress=False)
    assert report.latency_target["already_met"] and report.target_met and report.steps == []
    assert report.after.macs == report.before.macs and report.recovery == "none"
    assert read_card(tmp_path / "p").lineage.notes["recovery"] == "none"


def test_latency_target_needs_a_latency_function(tiny_model_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="needs a latency function"):
        prune_model_dir(tiny_model_dir, tmp_path / "p", _cfg(target_latency_ms=1.0), progress=False)
    assert not (tmp_path / "p").exists()


# ---------------------------------------------------------------------------------------------------------------
# round_to: auto from an injected probe; rounding never removes a layer


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_round_to_auto_uses_the_probe(tiny_model_dir, tmp_path):
    seen = []

    def probe(card):
        seen.append(card.preprocess.input_size)
        return 8, {"source": "cached", "fingerprint": {"cpu_model": "test", "isa": ["avx2"]}, "fingerprint_id": "f00"}

    cfg = PruneConfig(target=PruneTarget.from_options(ratio=0.3), recovery_epochs=0, latency_batch=None)
    report = prune_model_dir(tiny_model_dir, tmp_path / "p", cfg, width_probe=probe, progress=False)
    assert seen and report.round_to["multiple"] == 8 and report.round_to["source"] == "cached"
    model, card = load_model_dir(tmp_path / "p")
    assert card.structure and all(w % 8 == 0 for w in _conv_widths(model))  # tinycnn: convs only, Linear head
    notes = card.lineage.notes
    assert (notes["round_to"], notes["round_to_requested"], notes["round_to_source"]) == (8, "auto", "cached")
    assert notes["width_fingerprint"] == "f00"


def test_round_to_auto_without_a_probe_warns_and_does_not_round(tiny_model_dir, tmp_path):
    cfg = PruneConfig(target=PruneTarget.from_options(ratio=0.3), recovery_epochs=0, latency_batch=None)
    with pytest.warns(UserWarning, match="without a width probe: channel counts are not rounded"):
        report = prune_model_dir(tiny_model_dir, tmp_path / "p", cfg, progress=False)
    assert report.round_to == {"requested": "auto", "multiple": None, "source": "not rounded: no width probe given"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit value needs no probe and warns nothing
        fixed = prune_model_dir(tiny_model_dir, tmp_path / "q", cfg.model_copy(update={"round_to": 4}), progress=False)
    assert fixed.round_to["source"] == "config" and fixed.round_to["multiple"] == 4


def test_round_to_keeps_one_multiple_and_narrow_layers():
    model = build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1))  # convs 16/32/48/64
    ChannelPruner(
        model,
        INPUT,
        importance="l2",
        target=PruneTarget.from_options(ratio=0.5),
        round_to=32,
        global_pruning=False,
        num_classes=2,
    ).step()
    widths = _conv_widths(model)
    assert widths == [16, 32, 32, 32]  # 48 * 0.5 rounds below 32: one multiple kept (Torch-Pruning alone: 48)
    model(__import__("torch").zeros(INPUT))  # still a working network


# ---------------------------------------------------------------------------------------------------------------
# The width probe


def _timings(cost) -> list[WidthTiming]:
    return [WidthTiming(width=w, ms=cost(w), macs=1_000_000, ns_per_mac=cost(w)) for w in probe_widths_for()]


def test_choose_multiple_picks_the_smallest_fast_multiple():
    assert choose_multiple(_timings(lambda w: 1.0 if w % 8 == 0 else 1.6))[0] == 8
    assert choose_multiple(_timings(lambda w: 1.0 if w % 16 == 0 else 1.6))[0] == 16
    assert choose_multiple(_timings(lambda w: 1.0))[0] == 1  # nothing is faster: no rounding needed
    assert choose_multiple(_timings(lambda w: 1.0 if w % 8 == 0 else 1.05))[0] == 1  # within the tolerance
    # a steep size trend (cost per MAC falls with width): compared size-adjusted, multiples of 8 still win; by
    # plain medians the trend swamps the classes (32's widths 32 and 64 average the dearest) and 1 was chosen
    assert choose_multiple(_timings(lambda w: (48 / w) ** 2 * (1.0 if w % 8 == 0 else 1.3)))[0] == 8
    multiple, costs = choose_multiple(_timings(lambda w: 1.0 if w % 4 == 0 else 2.0), tolerance=0.0)
    assert multiple == 4 and {c.multiple for c in costs} == {1, 2, 4, 8, 16, 32}
    widths = probe_widths_for()
    assert {32, 48, 64, 40, 44, 47} <= set(widths) and probe_spatial((28, 28)) == 14 and probe_spatial((224, 224)) == 32


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEKD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "edgekd"
    monkeypatch.setenv("EDGEKD_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


@pytest.fixture
def real_probe(monkeypatch):
    """The real ORT measurement with its ``stable`` flag forced (a busy CI machine must not decide what is cached)."""
    real, measured = _widths.probe_widths, []

    def install(stable: bool) -> list:
        def probe(**kw):
            measured.append(real(**kw))
            return measured[-1].model_copy(update={"stable": stable})

        monkeypatch.setattr(_widths, "probe_widths", probe)
        return measured

    return install


def test_real_probe_on_ort_is_cached_and_survives_a_corrupt_cache(tmp_path, real_probe):
    measured = real_probe(True)
    kw = {"spatial": 6, "budget_s": 0.05, "threads": 1, "cache": tmp_path}
    first = cached_width_probe(**kw)
    assert first.source == "measured" and first.multiple in first.candidates and first.rounds >= 4
    assert all(m in first.candidates for m in first.half_multiples) and len(first.half_multiples) == 2
    assert 0 < first.cpu_share < 10
    files = list(tmp_path.glob("widths-ort-*.json"))
    assert len(files) == 1 and str(files[0]) == first.cache_file
    saved = json.loads(files[0].read_text())
    assert saved["multiple"] == first.multiple and saved["fingerprint"]["threads"] == 1
    assert {"cpu_model", "isa", "onnxruntime", "backend"} <= set(saved["fingerprint"])
    assert {t["width"] for t in saved["timings"]} == set(probe_widths_for())
    assert all(t["ms"] > 0 and t["ns_per_mac"] > 0 for t in saved["timings"])
    again = cached_width_probe(**kw)
    assert again.source == "cached" and again.measured_at == first.measured_at and again.multiple == first.multiple
    assert len(measured) == 1  # the cache answered
    files[0].write_text("{not json")
    redone = cached_width_probe(**kw)
    assert redone.source == "measured" and "could not be read" in redone.note and len(measured) == 2
    assert json.loads(files[0].read_text())["key"] == first.key  # rewritten, valid again
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_unstable_probe_is_used_but_not_cached(tmp_path, real_probe):
    measured = real_probe(False)
    kw = {"spatial": 6, "budget_s": 0.0, "threads": 1, "cache": tmp_path}
    first = cached_width_probe(**kw)
    assert first.cache_file is None and "unstable" in first.note and list(tmp_path.iterdir()) == []
    assert cached_width_probe(**kw).source == "measured" and len(measured) == 2  # measured again, not kept


def test_unstable_rounds_use_the_smallest_choice(monkeypatch, tmp_path):
    # even rounds: multiples of 16 fast; odd rounds: every width equally slow (what a busy machine can produce)
    def rounds(runs, budget_s):
        cost = [lambda w: 1.0 if w % 16 == 0 else 1.6, lambda w: 1.3]
        return {w: [cost[k % 2](w) * 3 * w * w * 9 * 36 / 1e6 for k in range(4)] for w in runs}

    monkeypatch.setattr(_widths, "_time_widths", rounds)
    probe = cached_width_probe(spatial=6, threads=1, cache=tmp_path)
    assert (probe.all_rounds_multiple, probe.half_multiples, probe.stable) == (16, [16, 1], False)
    assert probe.multiple == 1 and "using the smallest, 1" in probe.note and list(tmp_path.iterdir()) == []


def test_width_multiple_is_a_width_probe_fn(tiny_model_dir, tmp_path, real_probe):
    real_probe(True)
    card = read_card(tiny_model_dir)
    multiple, record = width_multiple(card, threads=1, cache=tmp_path)
    assert multiple == record["multiple"] and record["fingerprint_id"] == record["key"]
    assert record["workload"]["spatial"] == probe_spatial(card.preprocess.input_size) == 8
    assert Path(record["cache_file"]).is_file()


# ---------------------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-latency-ms", "0"], "positive number of milliseconds"),
        (["--target-latency-ms", "-3"], "positive number of milliseconds"),
        (["--target-latency-ms", "2", "--target-macs", "0.5"], "exactly one pruning target"),
        (["--target-macs", "0.5", "--round-to", "foo"], "--round-to must be auto, none or a positive integer"),
        (["--target-macs", "0.5", "--batch", "8"], "only apply to --target-latency-ms"),
        (["--target-latency-ms", "2", "--steps", "2"], "--steps does not apply"),
        (["--target-latency-ms", "2", "--latency-margin", "0.9"], "latency_margin"),
    ],
    ids=["zero", "negative", "two-targets", "round-to-foo", "batch-without-latency", "steps", "margin"],
)
def test_cli_bad_values_exit_3_in_one_line(extra, message, tiny_model_dir, tmp_path):
    res = runner.invoke(app, ["prune", tiny_model_dir, "--out", str(tmp_path / "p"), *extra])
    assert res.exit_code == 3, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
    assert not (tmp_path / "p").exists()


def test_cli_latency_target_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    from edgekd.cli import _prune
    from edgekd.prune import LatencyBackend

    fake = FakeLatency(_base_macs(tiny_model_dir), curve=lambda kept: 10.0 * kept)
    monkeypatch.setitem(_prune.LATENCY_FNS, LatencyBackend.ORT, fake)
    args = [
        "prune",
        tiny_model_dir,
        "--out",
        str(tmp_path / "p"),
        "--target-latency-ms",
        "7",
        "--batch",
        "2",
        "--recovery-epochs",
        "0",
        "--round-to",
        "none",
        "--json",
        "-",
        "--quiet",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["target"] == {"kind": "latency", "value": 7.0, "batch": 2, "backend": "ort"}
    assert payload["target_met"] and payload["steps"][-1]["latency_ms"] <= 7.0 * 0.95
    assert payload["round_to"]["source"] == "config" and {b for _, b in fake.calls} == {2}
    shown = runner.invoke(app, [*args[:3], str(tmp_path / "q"), *args[4:-3]])  # the table and summary lines
    assert shown.exit_code == 0 and "measured proposals" in shown.output, shown.output
