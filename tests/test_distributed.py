"""Distributed training on torch.distributed (gloo on CPU): equivalent to one process, and the CLI's --nproc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekd.distill import DistContext, per_rank_batch
from edgekd.errors import InvalidInputError
from edgekd.modeldir import load_model_dir

from .conftest import SYNTH

ROOT = Path(__file__).resolve().parents[1]


def test_global_batch_must_divide_by_the_world_size():
    assert per_rank_batch(32, DistContext(world=2)) == 16
    with pytest.raises(InvalidInputError, match="does not divide by the 3 processes"):
        per_rank_batch(32, DistContext(world=3))


@pytest.mark.slow
def test_two_process_gloo_distillation_equals_one_process(tmp_path):
    """Per-step losses and final weights of a 2-process run match one process with the same global batch."""
    out = tmp_path / "ddp.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ddp_equivalence.py"),
            "--nproc",
            "2",
            "--epochs",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())
    assert r["steps_equal_count"] and r["steps"] >= 10
    assert r["max_step_loss_diff"] <= 1e-4 and r["max_weight_diff"] <= 1e-4, r


@pytest.mark.slow
def test_cli_nproc_distils_with_a_shared_teacher_cache(tiny_model_dir, tmp_path):
    """`edgekd distill --nproc 2` re-runs itself under torch.distributed.run; rank 0 writes one model directory."""
    out = tmp_path / "student"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "edgekd",
        "distill",
        "--student",
        "small:tinycnn",
        "--teacher",
        tiny_model_dir,
        "--data",
        SYNTH,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--cache-teacher",
        "--nproc",
        "2",
        "-q",
        "--out",
        str(out),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    model, card = load_model_dir(out)
    notes = card.lineage.notes
    assert notes["cache"]["status"] == "created"
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["world_size"] == 2
    assert not list(tmp_path.glob(".student*"))
    # Each rank filled its own half of the samples; merged, every entry is marked filled, and in epoch 2 rank 0
    # read even the other rank's entries from the cache: it ran the teacher only in epoch 1.
    import numpy as np

    filled = np.load(out / "teacher_cache" / "filled.npy")
    assert filled.shape[0] == 1 and filled.all()
    assert notes["cache"]["hits"] > 0 and notes["cache"]["misses"] == notes["cache"]["hits"]


@pytest.mark.slow
def test_cli_nproc_with_a_batch_that_does_not_divide_fails_clearly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "edgekd",
        "train",
        "--model",
        "small:tinycnn",
        "--data",
        SYNTH,
        "--epochs",
        "1",
        "--batch-size",
        "15",
        "--nproc",
        "2",
        "-q",
        "--out",
        str(tmp_path / "m"),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode != 0
    assert "does not divide by the 2 processes" in proc.stderr
    assert not (tmp_path / "m").exists()
