"""`edgekd search --engine ray`: two candidates through Ray Tune's ASHA scheduler on a local Ray instance."""

from __future__ import annotations

import pytest

from edgekd.data import load_data
from edgekd.search import SearchConfig, architectures
from edgekd.search._ray import halving_with_ray
from edgekd.search._search import _halving

from .conftest import SYNTH

ray = pytest.importorskip("ray")


def test_two_candidates_through_ray_tune_asha_then_reused_by_the_local_engine(tmp_path, tiny_model_dir):
    cfg = SearchConfig.build(
        None,
        {
            "teacher": tiny_model_dir,
            "data": SYNTH,
            "budget_ms": 1.0,
            "engine": "ray",
            "space": {"families": [{"model": "small:tinycnn", "widths": [0.5, 1.0], "depths": [2]}]},
            "halving": {"rungs": [1, 2], "eta": 2},
            "train": {"batch_size": 32, "augment": "none", "max_steps_per_epoch": 2, "warmup_epochs": 0},
        },
    )
    archs = architectures(cfg.space)
    bundle = load_data(SYNTH)
    lines: list[str] = []
    trainings, reached, timed_out = halving_with_ray(cfg, archs, tmp_path, bundle, 600, lines.append)
    assert {t.label for t in trainings} == {a.label for a in archs} and not timed_out
    assert reached == 2 and any(t.rung == 1 for t in trainings)
    assert len([ln for ln in lines if ln.startswith("ray trial")]) == 2
    assert (tmp_path / "ray" / "search").is_dir()  # Tune's own experiment state
    # the segments Ray trained are the ones the in-process schedule would train: same content keys, all reused
    again, _, _ = _halving(cfg, archs, tmp_path, bundle, float("inf"), False, lambda _m: None)
    assert again and all(t.reused for t in again)
    assert {t.key for t in again} <= {t.key for t in trainings}
