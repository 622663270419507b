"""Shared fixtures: tiny synthetic data and a trained tiny model directory (built once per session)."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores: keep torch from oversubscribing when pytest runs beside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SYNTH = "synthetic:classes=2,n=128,size=16,channels=1,seed=0"
SYNTH3 = "synthetic:classes=3,n=150,size=16,channels=3,seed=1"


@pytest.fixture(scope="session")
def synth_spec() -> str:
    return SYNTH


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A small:tinycnn trained for 2 epochs on the binary synthetic data."""
    from edgekd.distill import RunSettings, TrainConfig, train_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    cfg = TrainConfig(epochs=2, batch_size=32, lr=5e-3, warmup_epochs=0.5)
    train_model(RunSettings(student="small:tinycnn", data=SYNTH, train=cfg), out, progress=False)
    return str(out)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Measured caches (the width probe of `--round-to auto`) go to a temporary folder, never ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEKD_CACHE_DIR", str(tmp_path_factory.mktemp("edgekd-cache")))
    yield
    mp.undo()
