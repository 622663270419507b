"""Damaged side files and mismatched inputs end as one ``error:`` line with exit 3 or 4, naming file and field.

Covers: an empty or corrupt ``parity.npz`` and an invalid manifest ``spec`` (``edgekd verify``), an invalid
``preprocess.json`` beside an ONNX teacher and inside a bundle, 16-bit and CMYK images in ``edgekd predict``
(listed as skipped with the reason, as the data sources refuse them), and data whose label names differ
from the model's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import load_data
from edgekd.errors import ArtifactError, InvalidInputError
from edgekd.export import export_bundle
from edgekd.modeldir import load_model_and_data, sha256_file
from edgekd.teachers import load_teacher

from .conftest import SYNTH

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    assert "pydantic" not in output and "http" not in output and "Traceback" not in output, output
    return lines[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("fixes") / "bundle"
    export_bundle(tiny_model_dir, out, n_samples=8)
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "b"))


def _rehash(root: Path, name: str) -> None:
    """Record ``name``'s new sha256 and size in the manifest, so the hash check passes and parsing is reached."""
    m = json.loads((root / "manifest.json").read_text())
    for f in m["files"]:
        if f["name"] == name:
            f["sha256"], f["bytes"] = sha256_file(root / name), (root / name).stat().st_size
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04" + b"\0" * 40])
def test_verify_empty_or_corrupt_parity_exits_4(bundle, tmp_path, content):
    root = _copy(bundle, tmp_path)
    (root / "parity.npz").write_bytes(content)
    _rehash(root, "parity.npz")
    r = run("verify", root)
    assert r.exit_code == 4, r.output
    assert "parity.npz" in _one_error_line(r.output)


def test_verify_invalid_manifest_spec_exits_4(bundle, tmp_path):
    root = _copy(bundle, tmp_path)
    m = json.loads((root / "manifest.json").read_text())
    m["spec"] = {"name": 3}
    (root / "manifest.json").write_text(json.dumps(m))
    r = run("verify", root)
    assert r.exit_code == 4, r.output
    line = _one_error_line(r.output)
    assert "manifest.json" in line and "spec" in line


def test_verify_invalid_manifest_preprocess_exits_4(bundle, tmp_path):
    root = _copy(bundle, tmp_path)
    m = json.loads((root / "manifest.json").read_text())
    m["preprocess"]["input_size"] = "big"
    (root / "manifest.json").write_text(json.dumps(m))
    r = run("verify", root)
    assert r.exit_code == 4, r.output
    line = _one_error_line(r.output)
    assert "manifest.json" in line and "preprocess.input_size" in line


def test_onnx_teacher_with_invalid_preprocess_json(bundle, tmp_path):
    onnx = Path(shutil.copy(bundle / "model.onnx", tmp_path / "teacher.onnx"))
    side = tmp_path / "preprocess.json"
    raw = json.loads((bundle / "preprocess.json").read_text())
    data = load_data(SYNTH)
    for text, field in [(json.dumps({**raw, "mean": "grey"}), "mean"), ("{not json", "not valid JSON")]:
        side.write_text(text)
        with pytest.raises(ArtifactError) as e:
            load_teacher(f"onnx:{onnx}", data=data)
        msg = e.value.message
        assert str(side) in msg and field in msg and "\n" not in msg and "pydantic" not in msg


def test_predict_bundle_with_invalid_preprocess_json_exits_4(bundle, tmp_path):
    root = _copy(bundle, tmp_path)
    raw = json.loads((root / "preprocess.json").read_text())
    (root / "preprocess.json").write_text(json.dumps({**raw, "std": [0.2, "x"]}))
    img = tmp_path / "a.png"
    Image.new("L", (16, 16), 90).save(img)
    r = run("predict", root, img, "--no-verify")
    assert r.exit_code == 4, r.output
    line = _one_error_line(r.output)
    assert "preprocess.json" in line and "std" in line
    (root / "preprocess.json").write_text("[1, 2]")
    r = run("predict", root, img, "--no-verify")
    assert r.exit_code == 4 and "preprocess.json" in _one_error_line(r.output)


def test_predict_lists_16bit_and_cmyk_images_as_skipped(bundle, tmp_path):
    good = tmp_path / "good.png"
    Image.new("L", (16, 16), 90).save(good)
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(wide)
    assert Image.open(wide).mode.startswith("I")
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 50, 100, 0)).save(cmyk)
    pal = tmp_path / "pal.png"
    Image.new("L", (16, 16), 90).convert("P").save(pal)
    out = tmp_path / "p.json"
    r = run("predict", bundle, good, wide, cmyk, pal, "--out", out)
    assert r.exit_code == 4, r.output
    assert "2 of 4 input(s) were skipped" in r.output
    text = out.read_text()
    assert "16-bit" in text and "CMYK" in text


def test_data_with_other_label_names_is_refused(tiny_model_dir):
    data = load_data(SYNTH)
    _, card, same = load_model_and_data(tiny_model_dir, data)
    assert list(same.label_names) == list(card.label_names)
    swapped = dataclasses.replace(data, label_names=list(reversed(data.label_names)))
    with pytest.raises(InvalidInputError) as e:
        load_model_and_data(tiny_model_dir, swapped)
    assert e.value.exit_code == 3
    msg = e.value.message
    assert "[class_1, class_0]" in msg and "[class_0, class_1]" in msg
