"""`edgekd predict`: real image files through a real bundle, compared with ONNX Runtime run here."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import Task
from edgekd.errors import InvalidInputError
from edgekd.metrics import probabilities
from edgekd.serve import DISCLAIMER, LoadedModel, ModelInfo, load_model, predict

from .conftest import SYNTH
from .test_serve import ort_reference, preprocess_of, synthetic_images, tiny_bundles

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_dir) -> dict[str, Path]:
    return tiny_bundles(tmp_path_factory, tiny_model_dir)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Six PNGs of the test split, one larger RGB JPEG, a broken PNG, a DICOM file without an image, a hidden file."""
    root = tmp_path_factory.mktemp("scans")
    (root / "sub").mkdir()
    for i, im in enumerate(synthetic_images(6)):
        Image.fromarray(im[0]).save(root / ("sub" if i % 2 else ".") / f"img{i}.png")
    Image.fromarray(synthetic_images(7)[6][0]).resize((40, 40)).convert("RGB").save(root / "big.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "scan.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def _expected(bundle: Path, onnx_file: str, paths: list[Path]) -> np.ndarray:
    """Probabilities computed here: PIL decode, the bundle's preprocess.json, onnxruntime.InferenceSession."""
    pre = preprocess_of(bundle)
    images = [np.array(Image.open(p).convert("L"), dtype=np.uint8)[None] for p in paths]
    x = np.concatenate([pre.numpy(im[None]) for im in images])
    return probabilities(ort_reference(bundle / onnx_file, x), Task.BINARY)


def test_predict_equals_onnxruntime_and_lists_every_unreadable_file(bundles, scans):
    res = predict(bundles["int8"], [str(scans)], batch=3, progress=False)
    readable = sorted([*scans.glob("*.png"), *scans.glob("sub/*.png"), scans / "big.jpg"])
    readable = [p for p in readable if p.name not in ("broken.png", ".hidden.png")]
    assert sorted(p.source for p in res.predictions) == sorted(map(str, readable))
    expected = _expected(bundles["int8"], "model.int8.onnx", [Path(p.source) for p in res.predictions])
    got = np.array([[p.probabilities["class_0"], p.probabilities["class_1"]] for p in res.predictions])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert [p.label for p in res.predictions] == [f"class_{i}" for i in expected.argmax(1)]
    reasons = {Path(s.source).name: s.reason for s in res.skipped}
    assert set(reasons) == {"broken.png", "scan.dcm"}  # the hidden file is not an input; nothing else dropped
    assert "truncated" in reasons["broken.png"] or "not a readable image" in reasons["broken.png"]
    assert reasons["scan.dcm"].startswith("the DICOM data holds no image")  # DICM magic, no image in it
    info = res.model
    assert (info.precision, info.file, info.verified, info.threshold) == ("int8", "model.int8.onnx", True, 0.5)
    assert info.threshold_source == "default: the bundle records no operating threshold"


def test_cli_csv_has_a_row_per_input_and_exits_4_when_some_were_skipped(bundles, scans, tmp_path):
    out = tmp_path / "preds.csv"
    r = run(
        "predict",
        bundles["int8"],
        scans / "img0.png",
        scans / "broken.png",
        tmp_path / "gone.png",
        f"{scans}/sub/*.png",
        f"{scans}/none-*.png",
        "--out",
        out,
    )
    assert r.exit_code == 4, r.output
    assert "3 of 7 input(s) were skipped" in r.output and "gone.png: file does not exist" in r.output
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == [
        "path",
        "label",
        "p_class_0",
        "p_class_1",
        "decision",
        "threshold",
        "ood_score",
        "out_of_distribution",
        "intended_use",
        "scope_reason",
        "error",
    ]
    ok = [row for row in rows if not row["error"]]
    assert len(ok) == 4 and all(row["decision"] in ("class_0", "class_1") and row["threshold"] == "0.5" for row in ok)
    errors = {Path(row["path"]).name: row["error"] for row in rows if row["error"]}
    assert errors == {
        "broken.png": errors["broken.png"],
        "gone.png": "file does not exist",
        "none-*.png": "no file matches this pattern",
    }
    exp = _expected(bundles["int8"], "model.int8.onnx", [Path(row["path"]) for row in ok])
    np.testing.assert_allclose([[float(row["p_class_0"]), float(row["p_class_1"])] for row in ok], exp, atol=2e-6)


def test_output_is_never_replaced_without_overwrite(bundles, scans, tmp_path):
    out = tmp_path / "preds.json"
    out.write_text("keep me")
    r = run("predict", bundles["fp32"], scans / "img0.png", "--out", out)
    assert r.exit_code == 3 and "already exists" in r.output and out.read_text() == "keep me"
    r = run("predict", bundles["fp32"], scans / "img0.png", "--out", out, "--overwrite", "--json", "-")
    assert r.exit_code == 0, r.output
    written = json.loads(out.read_text())
    assert written["n_predicted"] == 1 and written["model"]["file"] == "model.onnx" and written["skipped"] == []
    assert json.loads(r.stdout)["predictions"] == written["predictions"]
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_operating_threshold_from_the_manifest_decides_binary_results(bundles, scans, tmp_path):
    bundle = Path(shutil.copytree(bundles["fp32"], tmp_path / "b"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["extra"]["operating_threshold"] = 0.999  # manifest.json itself is not hashed
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    res = predict(bundle, [str(scans / "sub")], progress=False)
    assert res.model.threshold == 0.999 and res.model.threshold_source == "manifest.extra.operating_threshold"
    assert all(p.decision == ("class_1" if p.probabilities["class_1"] >= 0.999 else "class_0") for p in res.predictions)
    assert any(p.label == "class_1" and p.decision == "class_0" for p in res.predictions)
    given = predict(bundle, [str(scans / "sub")], threshold=0.01, progress=False)
    assert given.model.threshold_source == "given" and {p.decision for p in given.predictions} == {"class_1"}
    with pytest.raises(InvalidInputError, match="not a probability"):
        predict(bundle, [str(scans / "sub")], threshold=1.5, progress=False)


def test_fhir_bundle_validates_and_says_decision_support(bundles, scans, tmp_path):
    from fhir.resources.R4B.bundle import Bundle

    out = tmp_path / "reports.json"
    r = run(
        "predict", bundles["int8"], scans / "img0.png", scans / "img2.png", scans / "broken.png", "--fhir", "--out", out
    )
    assert r.exit_code == 4
    raw = json.loads(out.read_text())
    bundle = Bundle.model_validate(raw)  # fhir.resources validates every contained resource
    reports = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "DiagnosticReport"]
    outcome = [e.resource for e in bundle.entry if e.resource.get_resource_type() == "OperationOutcome"]
    assert len(reports) == 2 and len(outcome) == 1 and "broken.png" in outcome[0].issue[0].diagnostics
    sha = next(
        f["sha256"]
        for f in json.loads((bundles["int8"] / "manifest.json").read_text())["files"]
        if f["name"] == "model.int8.onnx"
    )
    expected = _expected(bundles["int8"], "model.int8.onnx", [scans / "img0.png", scans / "img2.png"])
    for report, p in zip(reports, expected):
        assert report.status == "preliminary" and DISCLAIMER in report.conclusion
        assert "not a diagnosis" in report.text.div
        contained = {c.id: c for c in report.contained}
        assert contained["model"].identifier[0].value == sha
        findings = [contained[ref.reference.lstrip("#")] for ref in report.result]
        assert [f.code.text for f in findings] == ["class_0", "class_1"]
        np.testing.assert_allclose([float(f.valueQuantity.value) for f in findings], p, atol=1e-6)
        assert all(f.device.reference == "#model" for f in findings)
        assert findings[1].interpretation[0].coding[0].code == ("POS" if p[1] >= 0.5 else "NEG")
    ndjson = tmp_path / "reports.ndjson"
    assert run("predict", bundles["int8"], scans / "img0.png", "--fhir", "--out", ndjson).exit_code == 0
    lines = ndjson.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["resourceType"] == "DiagnosticReport"


def test_fhir_without_the_package_exits_5(bundles, scans, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "fhir.resources.R4B", None)
    r = run("predict", bundles["int8"], scans / "img0.png", "--fhir", "--out", tmp_path / "r.json")
    assert r.exit_code == 5 and "pip install 'edgekd[serve]'" in r.output and not (tmp_path / "r.json").exists()


def test_data_spec_and_model_directory_inputs(bundles, tiny_model_dir):
    from_data = predict(bundles["fp32"], data=SYNTH, split="test", progress=False)
    n = len(from_data.predictions)
    assert n > 10 and not from_data.skipped and from_data.predictions[0].source.endswith("#test[0]")
    torch_res = predict(tiny_model_dir, data=SYNTH, progress=False)
    assert torch_res.model.kind == "model_dir" and torch_res.model.file == "model.safetensors"
    a = np.array([list(p.probabilities.values()) for p in from_data.predictions])
    b = np.array([list(p.probabilities.values()) for p in torch_res.predictions])
    np.testing.assert_allclose(a, b, atol=1e-5)  # the FP32 bundle reproduces the PyTorch model
    with pytest.raises(InvalidInputError, match="3-channel images; the model reads 1"):
        predict(bundles["fp32"], data="synthetic:classes=2,n=40,size=16,channels=3", progress=False)


def test_precision_choice_and_verification(bundles, scans, tmp_path):
    fp16 = load_model(bundles["fp32"], precision="fp16")
    assert (fp16.info.file, fp16.info.precision) == ("model.fp16.onnx", "fp16")
    r = run("predict", bundles["fp32"], scans / "img0.png", "--precision", "int8")
    assert r.exit_code == 3 and "has no int8 ONNX file" in r.output and "fp16, fp32" in r.output
    bad = Path(shutil.copytree(bundles["fp32"], tmp_path / "bad"))
    (bad / "preprocess.json").write_text((bad / "preprocess.json").read_text().replace('"scale"', '"scale" '))
    r = run("predict", bad, scans / "img0.png")
    assert r.exit_code == 6 and "preprocess.json" in r.output
    r = run("predict", bad, scans / "img0.png", "--no-verify", "--json", "-")
    assert r.exit_code == 0 and "NOT verified" in r.stderr and json.loads(r.stdout)["model"]["verified"] is False


@pytest.mark.parametrize(
    "args,code,message",
    [
        ((), 3, "nothing to predict"),
        (("x.png", "--out", "p.txt"), 3, "cannot tell the output format"),
        (("x.png", "--out", "p.csv", "--fhir"), 3, "FHIR output is JSON"),
        (("x.png", "--out", "p.ndjson"), 3, "add --fhir"),
        (("x.png", "--batch", "0"), 3, "batch size must be >= 1"),
    ],
)
def test_bad_options_exit_3_before_any_work(bundles, args, code, message):
    r = run("predict", bundles["int8"], *args)
    assert r.exit_code == code and message in r.output


def test_not_a_model_exits_4(tmp_path):
    r = run("predict", tmp_path, "x.png")
    assert r.exit_code == 4 and "neither a bundle" in r.output


def _info(task: Task, labels: tuple[str, ...], threshold: float | None) -> ModelInfo:
    return ModelInfo(
        name="m",
        architecture="small:x",
        source="b",
        kind="bundle",
        file="model.onnx",
        precision="fp32",
        sha256="0" * 64,
        version="v",
        task=task,
        labels=labels,
        threshold=threshold,
        threshold_source="given",
        verified=True,
    )


def test_classify_multiclass_and_multilabel_logits():
    logits = np.array([[2.0, -0.1, -1.0], [-3.0, 1.0, 0.5]], np.float32)
    multi = LoadedModel(_info(Task.MULTICLASS, ("a", "b", "c"), None), None, [], [], None)  # type: ignore[arg-type]
    preds = multi.classify(logits, ["x", "y"])
    assert [p.label for p in preds] == ["a", "b"] and all(p.decision is None for p in preds)
    assert sum(preds[0].probabilities.values()) == pytest.approx(1.0)
    labels = LoadedModel(_info(Task.MULTILABEL, ("a", "b", "c"), None), None, [], [], None)  # type: ignore[arg-type]
    preds = labels.classify(logits, ["x", "y"])
    assert [p.label for p in preds] == ["a", "b;c"]
    assert preds[0].probabilities["a"] == pytest.approx(1 / (1 + np.exp(-2.0)))
