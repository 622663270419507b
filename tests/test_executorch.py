"""ExecuTorch: XNNPACK programs in the bundle with parity, PT2E INT8 on the quantize calibration samples, a
mismatch caught, the bench backend and its thread pool, predict agreeing with ORT.

Real ExecuTorch (``edgekd[executorch]``, part of ``dev``) on the tiny model of the conftest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekd.bench import BenchSettings, benchmark
from edgekd.cli import app
from edgekd.data import load_data
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.export import Precision, export_bundle, read_manifest, verify_bundle
from edgekd.export._executorch import (
    calibration_samples,
    et_threads,
    executorch_parity,
    export_pte,
    require_executorch,
)
from edgekd.export._runtimes import stored_reference
from edgekd.modeldir import load_model_dir, save_model_dir
from edgekd.quantize import QuantizeConfig, quantize_model_dir, split_inputs
from edgekd.serve import load_model, predict

from .conftest import SYNTH

pytest.importorskip("executorch.runtime", reason="edgekd[executorch] is not installed")
runner = CliRunner()
FAST = BenchSettings(warmup_s=0, warmup_iters=2, min_s=0.05, min_iters=5, threads=1, roofline=False)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("et") / "fp32"
    r = runner.invoke(
        app, ["export", tiny_model_dir, "--format", "onnx,executorch", "--max-batch", "16", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def int8(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("et-int8")
    quantize_model_dir(tiny_model_dir, root / "q", QuantizeConfig(calib_samples=64), progress=False)
    export_bundle(root / "q", root / "q-et", formats="executorch")
    return root / "q-et"


def test_fp32_program_joins_the_bundle_with_a_dynamic_batch(fp32):
    m = read_manifest(fp32)
    pte = next(f for f in m.files if f.name == "model.pte")
    assert pte.kind == "executorch" and pte.precision is Precision.FP32 and pte.sha256
    res = next(p for p in m.parity if p.file == "model.pte")
    assert res.passed and res.max_abs <= 1e-4 and res.batch_sizes == [1, 7]
    info = m.extra["runtimes"]["executorch"]
    made = info["programs"]["model.pte"]
    assert made["dynamic_batch"] and made["delegated"] and info["max_batch"] == 17 and made["trace_batch"] == 16
    assert "executorch" in m.versions
    card = (fp32 / "MODEL_CARD.md").read_text()
    assert "How to run it with executorch" in card and 'load_program("model.pte")' in card
    assert verify_bundle(fp32).ok


@pytest.mark.slow  # quantize + PT2E + lowering: ~25 s on a shared 2-core VM
def test_int8_program_is_pt2e_on_the_quantize_calibration_samples(int8, tiny_model_dir):
    m = read_manifest(int8)
    res = next(p for p in m.parity if p.file == "model.int8.pte")
    assert res.passed and res.precision is Precision.INT8 and res.top1_agreement >= 0.99
    calib = m.extra["runtimes"]["executorch"]["calibration"]
    assert calib["samples"] == 64 and calib["split"] == "train" and calib["seed"] == 0
    assert "XNNPACKQuantizer" in m.extra["runtimes"]["executorch"]["programs"]["model.int8.pte"]["quantizer"]
    # the same samples as edgekd.quantize's calibration reader
    _, card = load_model_dir(tiny_model_dir)
    ours = calibration_samples(card, SYNTH, 64, seed=0)
    theirs = split_inputs(load_data(SYNTH, seed=0), "train", card.preprocess, n=64, seed=0)[0]
    np.testing.assert_array_equal(ours, theirs)
    assert verify_bundle(int8).ok


@pytest.mark.slow
def test_perturbed_weights_fail_parity_and_another_model_is_refused(fp32, tiny_model_dir, tmp_path):
    model, card = load_model_dir(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5).add_(0.05)
    export_pte(model, card, tmp_path / "bad.pte", max_batch=16)
    x, ref = stored_reference(fp32)
    res = executorch_parity(tmp_path / "bad.pte", Precision.FP32, card.task, x, ref)
    assert not res.passed and res.max_abs > 1e-4
    other = tmp_path / "other"
    save_model_dir(model, card, other)
    with pytest.raises(ArtifactError, match="not the model the bundle was made from"):
        from edgekd.export import add_executorch

        add_executorch(fp32, model_dir=other)


def test_bench_backend_sizes_the_thread_pool_and_skips_batches_above_the_bound(fp32):
    report = benchmark([str(fp32)], backends=["ort", "executorch"], batches=(1, 4, 32), settings=FAST)
    rows = [r for r in report.results if r.backend == "executorch"]
    assert {r.batch for r in rows} == {1, 4}
    assert rows[0].options["threads"] == 1 == et_threads() and rows[0].options["delegate"] == "xnnpack"
    skipped = [s for s in report.skipped if s.backend == "executorch"]
    assert [s.batch for s in skipped] == [32] and "does not take batch 32" in skipped[0].reason


@pytest.mark.parametrize(
    "which,precision,floor", [("fp32", "fp32", 1.0), pytest.param("int8", "int8", 0.99, marks=pytest.mark.slow)]
)
def test_predict_through_executorch_agrees_with_ort(which, precision, floor, fp32, int8):
    bundle = fp32 if which == "fp32" else int8

    def decisions(runtime: str) -> list[str]:
        res = predict(
            bundle, [], data=SYNTH, split="test", precision=precision, runtime=runtime, batch=32, progress=False
        )
        assert res.model.runtime == runtime
        return [p.decision or p.label for p in res.predictions]

    ort, et = decisions("ort"), decisions("executorch")
    assert len(ort) >= 20 and np.mean([a == b for a, b in zip(ort, et)]) >= floor
    assert load_model(bundle, runtime="executorch", precision=precision).info.file.endswith(".pte")


def test_missing_executorch_is_exit_5_naming_the_extra(monkeypatch, tiny_model_dir, tmp_path, fp32):
    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(DependencyError) as e:
        require_executorch("--format executorch")
    assert e.value.exit_code == 5 and "edgekd[executorch]" in str(e.value)
    r = runner.invoke(app, ["export", tiny_model_dir, "--format", "executorch", "--out", str(tmp_path / "b")])
    assert r.exit_code == 5 and "edgekd[executorch]" in r.output and not (tmp_path / "b").exists()
    r = runner.invoke(app, ["bench", str(fp32), "--backend", "executorch", "--min-s", "0.01", "--no-roofline"])
    assert r.exit_code == 5 and "edgekd[executorch]" in r.output
    r = runner.invoke(app, ["predict", str(fp32), "--data", SYNTH, "--runtime", "executorch"])
    assert r.exit_code == 5 and "edgekd[executorch]" in r.output


def test_a_program_nobody_holds_no_longer_blocks_resizing_the_thread_pool(fp32):
    """The pool is process-wide; a program dropped without release() (a finished predict) is forgotten when
    collected, while one still held keeps the count fixed."""
    from edgekd.export._executorch import load_pte, set_et_threads

    pte = fp32 / "model.pte"
    before = et_threads()
    other = 2 if before != 2 else 1
    held = load_pte(pte, threads=before)
    with pytest.raises(InvalidInputError, match=r"while \d+ program"):
        set_et_threads(other)
    del held  # dropped, never released
    load_pte(pte, threads=other).release()
    assert et_threads() == other
    set_et_threads(before)
