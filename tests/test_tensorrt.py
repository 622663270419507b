"""TensorRT engine builds.

Tests marked ``tensorrt`` need the tensorrt package and a CUDA GPU and skip cleanly without them; the
unmarked ones check what happens when TensorRT is missing and run everywhere.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from edgekd.errors import DependencyError
from edgekd.export import (
    build_engine,
    export_bundle,
    export_onnx,
    make_samples,
    ort_session,
    require_tensorrt,
    run_engine,
    sidecar_path,
    tensorrt_available,
    to_fp16,
    verify_bundle,
)
from edgekd.modeldir import load_model_dir


@pytest.fixture()
def trt():
    if not tensorrt_available():
        pytest.skip("needs TensorRT and a CUDA GPU")
    return require_tensorrt()


@pytest.fixture()
def tiny_onnx(tiny_model_dir, tmp_path):
    model, card = load_model_dir(tiny_model_dir)
    export_onnx(model, card, tmp_path / "model.onnx")
    return tmp_path / "model.onnx", card


def test_build_engine_without_tensorrt_raises_and_writes_nothing(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    onnx_path, _ = tiny_onnx
    with pytest.raises(DependencyError, match="tensorrt package"):
        build_engine(
            onnx_path,
            tmp_path / "e.engine",
            min_batch=1,
            opt_batch=8,
            max_batch=32,
            workspace_mb=256,
            timing_cache=tmp_path / "cache",
        )
    assert not (tmp_path / "e.engine").exists() and not (tmp_path / "e.engine.json").exists()
    assert not (tmp_path / "cache").exists()
    assert not tensorrt_available()


def test_export_bundle_with_engine_needs_tensorrt_before_any_work(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DependencyError) as err:
        export_bundle(tiny_model_dir, tmp_path / "b", formats="onnx,engine")
    assert err.value.exit_code == 5 and "\n" not in str(err.value)
    assert not (tmp_path / "b").exists()


def _compare(engine_path, onnx_path, x, *, atol):
    ref = ort_session(onnx_path).run(None, {"input": x})[0]
    out = run_engine(engine_path, x)
    assert out.shape == ref.shape
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert np.abs(out - ref).max() <= atol


@pytest.mark.tensorrt
def test_engine_matches_onnxruntime_at_batch_1_and_7(trt, tiny_onnx, tmp_path):
    onnx_path, card = tiny_onnx
    cache = tmp_path / "timing.cache"
    meta = build_engine(
        onnx_path,
        tmp_path / "model.engine",
        min_batch=1,
        opt_batch=8,
        max_batch=32,
        workspace_mb=256,
        timing_cache=cache,
    )
    side = json.loads(sidecar_path(tmp_path / "model.engine").read_text())
    assert side == meta and meta["tensorrt"] == trt.__version__ and meta["gpu"] != "unknown"
    assert meta["profile"]["input"]["max"][0] == 32 and meta["strongly_typed"] and cache.is_file()
    assert (tmp_path / "model.engine").read_bytes()[:4] != b"{"  # a plain plan, no JSON header
    x = make_samples(card, n=7).inputs
    _compare(tmp_path / "model.engine", onnx_path, x[:1], atol=1e-2)  # TF32 may be used for FP32 layers
    _compare(tmp_path / "model.engine", onnx_path, x, atol=1e-2)


@pytest.mark.tensorrt
def test_timing_cache_is_reused_across_builds(trt, tiny_onnx, tmp_path):
    onnx_path, _ = tiny_onnx
    kw = dict(min_batch=1, opt_batch=4, max_batch=8, workspace_mb=256, timing_cache=tmp_path / "t.cache")
    assert build_engine(onnx_path, tmp_path / "a.engine", **kw)["timing_cache_reused"] is False
    assert build_engine(onnx_path, tmp_path / "b.engine", **kw)["timing_cache_reused"] is True


@pytest.mark.tensorrt
def test_fp16_engine_from_the_fp16_onnx(trt, tiny_onnx, tmp_path):
    onnx_path, card = tiny_onnx
    to_fp16(onnx_path, tmp_path / "model.fp16.onnx")
    build_engine(
        tmp_path / "model.fp16.onnx", tmp_path / "fp16.engine", min_batch=1, opt_batch=4, max_batch=8, workspace_mb=256
    )
    _compare(tmp_path / "fp16.engine", onnx_path, make_samples(card, n=7).inputs, atol=5e-2)


@pytest.mark.tensorrt
def test_export_bundle_with_engine_verifies(trt, tiny_model_dir, tmp_path):
    m = export_bundle(
        tiny_model_dir, tmp_path / "b", formats="onnx-fp16,engine", n_samples=16, timing_cache=tmp_path / "t.cache"
    )
    names = {f.name: (f.kind, f.precision) for f in m.files}
    assert names["model.engine"][0] == "engine" and names["model.engine.json"][0] == "engine-meta"
    assert "model.fp16.onnx" in names and m.target == "tensorrt" and m.versions["tensorrt"] == trt.__version__
    res = verify_bundle(tmp_path / "b")
    assert {p.file for p in res.parity} == {"model.fp16.onnx", "model.engine"} and res.ok
