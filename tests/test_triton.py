"""`edgekd export --format triton`: the repository is parsed with Triton's own ModelConfig protobuf."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import InvalidInputError, VerificationError
from edgekd.export import export_bundle, export_triton, read_manifest
from edgekd.modeldir import sha256_file

from .test_serve import ort_reference, preprocess_of, synthetic_images, tiny_bundles

runner = CliRunner()
DT = model_config_pb2.DataType


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def parse(model_dir: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    return tiny_bundles(tmp_path_factory, tiny_model_dir)


@pytest.mark.parametrize(
    "precision,bundle,file",
    [
        ("fp32", "fp32", "model.onnx"),
        ("fp16", "fp32", "model.fp16.onnx"),
        ("int8", "int8", "model.int8.onnx"),
    ],
)
def test_repository_for_each_precision(bundles, tmp_path, precision, bundle, file):
    repo = tmp_path / "repo"
    manifest = export_triton(bundles[bundle], repo, precision=precision, max_batch=16)
    model = repo / "small_tinycnn"
    cfg = parse(model)
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == (
        "small_tinycnn",
        "onnxruntime_onnx",
        "onnxruntime",
        16,
    )
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("input", DT.TYPE_FP32, [1, 16, 16])]
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in cfg.output] == [
        ("logits", DT.TYPE_FP32, [2], "labels.txt")
    ]
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 5000
    assert (model / "labels.txt").read_text().splitlines() == read_manifest(bundles[bundle]).label_names
    assert sha256_file(model / "1" / "model.onnx") == sha256_file(bundles[bundle] / file)
    x = preprocess_of(bundles[bundle]).numpy(np.stack(synthetic_images(4)))
    np.testing.assert_array_equal(
        ort_reference(model / "1" / "model.onnx", x), ort_reference(bundles[bundle] / file, x)
    )
    info = manifest.extra["triton"]
    assert manifest.target == "triton" and [f.name for f in manifest.files] == [file] and info["precision"] == precision
    assert info["validated_with"] == "tritonclient model_config protobuf"
    assert json.loads((model / "edgekd-triton.json").read_text())["sha256"] == info["sha256"]
    assert (model / "preprocess.json").is_file() and (model / "MODEL_CARD.md").is_file()


def test_static_batch_model_gets_max_batch_size_0_and_full_dims(tiny_model_dir, tmp_path):
    bundle = tmp_path / "static"
    export_bundle(tiny_model_dir, bundle, static=True, n_samples=8)
    export_triton(bundle, tmp_path / "repo", name="tiny_static")
    cfg = parse(tmp_path / "repo" / "tiny_static")
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 1, 16, 16] and list(cfg.output[0].dims) == [1, 2]
    assert not cfg.HasField("dynamic_batching")


def test_overwrite_rules_and_other_models_are_left_alone(bundles, tmp_path):
    repo = tmp_path / "repo"
    export_triton(bundles["int8"], repo, name="a")
    export_triton(bundles["fp32"], repo, name="b")
    with pytest.raises(InvalidInputError, match="already exists"):
        export_triton(bundles["fp32"], repo, name="a")
    export_triton(bundles["fp32"], repo, name="a", overwrite=True)
    assert json.loads((repo / "a" / "edgekd-triton.json").read_text())["precision"] == "fp32"
    assert parse(repo / "b").name == "b" and sorted(p.name for p in repo.iterdir()) == ["a", "b"]
    (repo / "mine").mkdir()
    (repo / "mine" / "config.pbtxt").write_text('name: "mine"\n')
    with pytest.raises(InvalidInputError, match="not written by edgekd"):
        export_triton(bundles["fp32"], repo, name="mine", overwrite=True)
    with pytest.raises(InvalidInputError, match="not directory-safe"):
        export_triton(bundles["fp32"], repo, name="a/b")


def test_a_tampered_bundle_is_not_exported(bundles, tmp_path):
    bad = Path(shutil.copytree(bundles["int8"], tmp_path / "bad"))
    data = bytearray((bad / "model.int8.onnx").read_bytes())
    data[-1] ^= 1
    (bad / "model.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="model.int8.onnx"):
        export_triton(bad, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    r = run("export", bad, "--format", "triton", "--out", tmp_path / "repo")
    assert r.exit_code == 6


def test_cli_from_a_bundle_and_from_a_model_directory(bundles, tiny_model_dir, tmp_path):
    r = run("export", bundles["int8"], "--format", "triton", "--out", tmp_path / "r1", "--json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m.json").read_text())["extra"]["triton"]["precision"] == "int8"
    assert parse(tmp_path / "r1" / "small_tinycnn").max_batch_size == 32
    r = run("export", tiny_model_dir, "--format", "onnx-fp16,triton", "--out", tmp_path / "r2", "--samples", 8)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "r2" / "small_tinycnn" / "edgekd-triton.json").read_text())
    assert info["precision"] == "fp16" and info["source"] == str(tiny_model_dir)
    for fmt in ("triton,engine", "triton,onnx,onnx-fp16"):
        r = run("export", tiny_model_dir, "--format", fmt, "--out", tmp_path / "r3")
        assert r.exit_code == 3 and "one ONNX model" in r.output
    r = run("export", bundles["int8"], "--format", "triton,onnx-fp16", "--out", tmp_path / "r4")
    assert r.exit_code == 3 and "has no fp16 ONNX file" in r.output
