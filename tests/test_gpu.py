"""CUDA paths through the real CLI: AMP in both precisions, the teacher cache, channels-last, export and parity
of a model trained on the GPU, and --nproc on CUDA (marked gpu; skipped without a CUDA GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.modeldir import load_model_dir

from .conftest import SYNTH

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parents[1]


def edgekd(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edgekd", *args], capture_output=True, text=True, timeout=timeout)
    return proc


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def cuda_teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "teacher"
    _ok(
        edgekd(
            "train",
            "--model",
            "small:resnet8",
            "--data",
            SYNTH,
            "--epochs",
            "3",
            "--batch-size",
            "32",
            "--device",
            "cuda",
            "-q",
            "--out",
            str(out),
        )
    )
    return out


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_train_with_amp_on_cuda_records_what_ran_and_loads_on_the_cpu(tmp_path, dtype):
    out = tmp_path / "m"
    _ok(
        edgekd(
            "train",
            "--model",
            "small:resnet8",
            "--data",
            SYNTH,
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--device",
            "cuda",
            "--amp",
            "--amp-dtype",
            dtype,
            "-q",
            "--out",
            str(out),
        )
    )
    model, card = load_model_dir(out)
    runtime = card.lineage.notes["runtime"]
    assert runtime["device"] == "cuda" and runtime["gpu"] == torch.cuda.get_device_name(0)
    assert runtime["amp"] == {"bf16": "bfloat16", "fp16": "float16"}[dtype] and runtime["channels_last"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    x = torch.randn(8, 1, 16, 16)
    model.eval()
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    assert torch.isfinite(cpu).all()
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)  # FP32 weights: the same model on either device


def test_distill_on_cuda_with_the_teacher_cache_and_channels_last(cuda_teacher, tmp_path):
    out = tmp_path / "student"
    _ok(
        edgekd(
            "distill",
            "--student",
            "small:tinycnn",
            "--teacher",
            str(cuda_teacher),
            "--data",
            SYNTH,
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--device",
            "cuda",
            "--cache-teacher",
            "--channels-last",
            "-q",
            "--out",
            str(out),
        )
    )
    _, card = load_model_dir(out)
    notes = card.lineage.notes
    assert notes["runtime"]["device"] == "cuda" and notes["runtime"]["channels_last"]
    assert notes["cache"]["status"] == "created" and notes["cache"]["hits"] > 0  # epoch 2 ran no teacher
    assert 0.0 <= card.metrics["test"]["acc"] <= 1.0


def test_export_of_a_cuda_trained_model_passes_onnx_runtime_parity(cuda_teacher, tmp_path):
    out = tmp_path / "bundle"
    _ok(edgekd("export", str(cuda_teacher), "--out", str(out)))
    assert (out / "model.onnx").is_file()
    _ok(
        edgekd(
            "bench",
            str(out),
            "--backend",
            "ort",
            "--device",
            "cpu",
            "--batch",
            "1",
            "--min-iters",
            "3",
            "--min-s",
            "0.05",
            "--warmup-iters",
            "1",
            "--warmup-s",
            "0.01",
            "--no-roofline",
        )
    )


def test_nproc_beyond_the_gpus_fails_clearly(tmp_path):
    n = torch.cuda.device_count() + 1
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
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
            str(16 * n),
            "--device",
            "cuda",
            "--nproc",
            str(n),
            "-q",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode != 0
    assert "needs one GPU per process" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs one GPU per process")
def test_two_process_nccl_distillation_equals_one_process(tmp_path):
    out = tmp_path / "ddp.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "ddp_equivalence.py"),
            "--nproc",
            "2",
            "--device",
            "cuda",
            "--epochs",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    _ok(proc)
    r = json.loads(out.read_text())
    assert r["max_step_loss_diff"] <= 1e-4 and r["max_weight_diff"] <= 1e-4, r
