"""Answers a user can trust (issue 23, serving half): intended use, out-of-distribution scores, the operating point.

A tiny model is trained on synthetic 16 px images with 1200 samples (so that its validation split of 120
images gives a drift reference), declared for chest radiographs; its INT8 and FP32 bundles carry the reference
and the operating point. Real DICOM files come from the ``pydicom-data`` package (the tests skip without it);
nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from PIL import Image
from scipy.spatial.distance import mahalanobis
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import load_data, make_loader
from edgekd.data._dicom import dicom_attributes, non_image_kind
from edgekd.distill import RunSettings, TrainConfig, train_model
from edgekd.errors import InvalidInputError
from edgekd.export import export_bundle, feature_tensor, input_statistics, ort_session, read_manifest
from edgekd.metrics import probabilities, threshold_for_sensitivity
from edgekd.monitor import read_reference
from edgekd.monitor._reference import image_statistics
from edgekd.quantize import QuantizeConfig, quantize_model_dir
from edgekd.serve import evaluate_bundle, fhir_bundle, load_model, predict
from edgekd.serve._model import FEATURES
from edgekd.specs import IntendedUse

from .test_dicom import write_dicom
from .test_pipeline import SYNTH, TRAIN

runner = CliRunner()
DATA = "synthetic:classes=2,n=1200,size=16,channels=1,seed=5"
CHEST = "modality=CR,DX body_part=CHEST"


def pydicom_file(name: str) -> Path:
    data = pytest.importorskip("pydicom.data", reason="pydicom-data is not installed")
    try:
        path = data.get_testdata_file(name, download=False)
    except Exception:  # pydicom raises when a file is neither shipped nor downloadable offline
        path = None
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return Path(path)


def trusted_bundles(tmp_path_factory) -> dict[str, Path]:
    """A tiny binary model declared for chest CR/DX, and its INT8 and FP32 bundles with the operating point
    (built once per session; also used by test_serve_fuzz.py)."""
    root = tmp_path_factory.getbasetemp() / "trust"
    out = {"model": root / "model", "fp32": root / "fp32", "int8": root / "int8"}
    if not (out["int8"] / "manifest.json").is_file():
        cfg = TrainConfig(epochs=2, batch_size=64, lr=5e-3, warmup_epochs=0.2)
        train_model(
            RunSettings(student="small:tinycnn", data=DATA, train=cfg, intended_use=CHEST),
            out["model"],
            progress=False,
            overwrite=True,
        )
        export_bundle(out["model"], out["fp32"], n_samples=16, target_sensitivity=0.9, overwrite=True)
        quantize_model_dir(
            out["model"],
            out["int8"],
            QuantizeConfig(target="cpu-x86", calib_samples=64),
            progress=False,
            target_sensitivity=0.9,
            overwrite=True,
        )
    return out


@pytest.fixture(scope="module")
def trusted(tmp_path_factory) -> dict[str, Path]:
    return trusted_bundles(tmp_path_factory)


# -- intended use ------------------------------------------------------------------------------------------------


def test_intended_use_parses_checks_and_refuses_bad_values():
    use = IntendedUse.parse([CHEST, "view=PA;photometric=MONOCHROME2"])
    assert use.modality == ("CR", "DX") and use.body_part == ("CHEST",) and use.view == ("PA",)
    chest = {
        "Modality": "CR",
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        "PhotometricInterpretation": "MONOCHROME1",
    }
    assert use.check(chest).status == "in-scope"  # MONOCHROME1 is inverted on reading: the same family
    hand = use.check({**chest, "BodyPartExamined": "EXTREMITY"})
    assert hand.status == "out-of-scope" and hand.refused and "BodyPartExamined EXTREMITY" in hand.reason
    assert use.check({**chest, "Modality": "CT", "ViewPosition": "AP"}).reason.count("outside") == 2
    assert use.check({**chest, "PhotometricInterpretation": "RGB"}).status == "out-of-scope"
    missing = use.check({**chest, "BodyPartExamined": ""})
    assert missing.status == "not-checkable" and not missing.refused and "BodyPartExamined" in missing.reason
    assert use.check(None).status == "not-checkable" and "not a DICOM file" in use.check(None).reason
    assert IntendedUse().check({"Modality": "MR"}).status == "unrestricted"
    for bad in ("modality", "organ=CHEST", "modality=", "body_part=chest<script>"):
        with pytest.raises(InvalidInputError):
            IntendedUse.parse(bad)


def test_non_image_dicom_objects_are_recognised_by_sop_class_or_modality():
    assert non_image_kind({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4"}) == "segmentation (SEG)"
    assert non_image_kind({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.59"}) == "key object selection (KOS)"
    assert non_image_kind({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.33"}) == "structured report (SR)"
    assert non_image_kind({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.2"}) == "radiotherapy (RT) object"
    assert non_image_kind({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.104.1"}).startswith("encapsulated document")
    assert non_image_kind({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.11.1"}) == "presentation state"
    assert non_image_kind({"Modality": "ECG"}) == "waveform"
    for image in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1"):
        assert non_image_kind({"SOPClassUID": image, "Modality": "CR"}) is None  # CR, CT, US images


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_dicom_training_records_what_it_saw_and_no_identifier(tmp_path):
    for i in range(24):
        px = np.full((16, 16), 600.0) + (i % 2) * 400 * np.eye(16)
        path = write_dicom(
            tmp_path / "ct" / ("a" if i % 2 else "b") / f"{i}.dcm", px, modality="CT", photometric="MONOCHROME2"
        )
        if i % 3 == 0:  # a coarse attribute the files hold, and free text that must never be copied
            ds = pydicom.dcmread(path)
            ds.BodyPartExamined = "CHEST" if i % 2 else "Patricia's chest"
            ds.save_as(path, enforce_file_format=True)
    bundle = load_data(f"dicom:{tmp_path / 'ct'},size=16")
    use = bundle.intended_use
    assert use is not None and use.source == "dicom" and use.modality == ("CT",)
    assert use.photometric == ("MONOCHROME2",) and use.body_part == () and use.view == ()  # absent from some files
    attrs = dicom_attributes(tmp_path / "ct" / "b" / "0.dcm")
    assert attrs["BodyPartExamined"] == "(non-standard)" and "Patricia" not in json.dumps(attrs)
    out = tmp_path / "m"
    r = runner.invoke(
        app,
        [
            "train",
            "--model",
            "small:tinycnn",
            "--data",
            f"dicom:{tmp_path / 'ct'},size=16",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    card = json.loads((out / "edgekd.json").read_text())
    assert card["intended_use"]["modality"] == ["CT"] and "Patricia" not in (out / "edgekd.json").read_text()


def test_declared_intended_use_reaches_the_card_the_bundle_and_its_model_card(trusted):
    card = json.loads((trusted["model"] / "edgekd.json").read_text())
    assert card["intended_use"] == {
        "modality": ["CR", "DX"],
        "body_part": ["CHEST"],
        "view": [],
        "photometric": [],
        "source": "declared",
    }
    for b in ("fp32", "int8"):
        m = read_manifest(trusted[b])
        assert m.intended_use == IntendedUse.parse(CHEST)
        text = (trusted[b] / "MODEL_CARD.md").read_text()
        assert "**Intended use** (declared): modality CR, DX; body_part CHEST" in text and "Operating threshold" in text


def test_predict_refuses_out_of_scope_dicom_and_never_classifies_a_seg(trusted, tmp_path):
    chest, hand = pydicom_file("RG1_UNCI.dcm"), pydicom_file("RG3_UNCI.dcm")
    ct, us, seg, sr = (pydicom_file(n) for n in ("CT_small.dcm", "US1_UNCR.dcm", "liver_1frame.dcm", "reportsi.dcm"))
    png = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(png)
    files = [chest, hand, ct, us, seg, sr, png]
    res = predict(trusted["int8"], [str(f) for f in files], progress=False)
    by = {Path(p.source).name: p for p in res.predictions}
    assert set(by) == {"RG1_UNCI.dcm", "x.png"}
    assert by["RG1_UNCI.dcm"].intended_use == "in-scope" and by["x.png"].intended_use == "not-checkable"
    refused = {Path(s.source).name: s for s in res.skipped}
    assert {n: s.kind for n, s in refused.items()} == {
        "RG3_UNCI.dcm": "out-of-scope",
        "CT_small.dcm": "out-of-scope",
        "US1_UNCR.dcm": "out-of-scope",
        "liver_1frame.dcm": "not-an-image",
        "reportsi.dcm": "not-an-image",
    }
    assert "BodyPartExamined EXTREMITY" in refused["RG3_UNCI.dcm"].reason
    assert (
        "Modality US is outside" in refused["US1_UNCR.dcm"].reason
        and "segmentation" in refused["liver_1frame.dcm"].reason
    )
    allowed = predict(trusted["int8"], [str(f) for f in files], progress=False, allow_out_of_scope=True)
    got = {Path(p.source).name: p for p in allowed.predictions}
    assert got["RG3_UNCI.dcm"].intended_use == "out-of-scope" and "out of scope" in got["RG3_UNCI.dcm"].flags
    assert {Path(s.source).name for s in allowed.skipped} == {"liver_1frame.dcm", "reportsi.dcm"}  # never classified
    fhir = fhir_bundle(allowed.predictions, allowed.model, [(s.source, s.reason, s.kind) for s in allowed.skipped])
    outcome = fhir["entry"][-1]["resource"]
    assert outcome["resourceType"] == "OperationOutcome" and {i["code"] for i in outcome["issue"]} == {"not-supported"}
    tags = {t["code"] for e in fhir["entry"][:-1] for t in e["resource"]["meta"]["tag"]}
    assert "out-of-scope" in tags and "not-checkable" in tags
    # the CLI: refused inputs are rows of the CSV with their kind, exit 3 (nothing unreadable)
    out = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", str(trusted["int8"]), str(chest), str(hand), str(seg), "--out", str(out)])
    assert r.exit_code == 3 and "2 of 3 input(s) were refused" in r.output, r.output
    rows = {Path(row["path"]).name: row for row in csv.DictReader(out.open())}
    assert rows["RG3_UNCI.dcm"]["intended_use"] == "out-of-scope" and rows["liver_1frame.dcm"]["error"]
    assert rows["RG1_UNCI.dcm"]["label"] and rows["RG1_UNCI.dcm"]["ood_score"]


# -- out-of-distribution scores -----------------------------------------------------------------------------------


def test_bundles_carry_a_reference_computed_by_their_own_file(trusted):
    for b, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        m = read_manifest(trusted[b])
        entry = {f.name: f.kind for f in m.files}
        assert entry["drift_reference.npz"] == "ood-reference" and m.ood["available"] and m.ood["model_file"] == file
        assert m.ood["feature_tensor"] == feature_tensor(trusted[b] / file) and m.ood["spaces"] == ["features", "image"]
        ref = read_reference(trusted[b])
        assert ref.meta["model_file"] == file and ref.meta["images"] == len(load_data(DATA).val) >= 100


def test_references_are_fitted_on_train_and_calibrated_on_held_out_validation_images(trusted):
    """The stored distances are the validation images' under the deployed Gaussian, by the bundle's own file;
    the Gaussian itself is fitted on the training split (tests/test_ood.py pins why)."""
    data = load_data(DATA)
    for b in ("model", "fp32", "int8"):
        meta = read_reference(trusted[b]).meta
        assert meta["fit"] == "train" and meta["fit_images"] == len(data.train) and meta["calibrated_on"] == "val"
    for b in ("fp32", "int8"):
        assert read_manifest(trusted[b]).ood["calibrated_on"] == "val"
        model, ref = load_model(trusted[b]), read_reference(trusted[b])
        x = model.prepare([data.val[i][0].numpy() for i in range(len(data.val))])
        features = model.run({model.inputs[0].name: x})[FEATURES]
        np.testing.assert_allclose(ref.spaces["features"].ref_d2, ref.d2("features", features), rtol=1e-4)
        image = input_statistics(x, model.preprocess)
        np.testing.assert_allclose(ref.spaces["image"].ref_d2, ref.d2("image", image), rtol=1e-4)


def test_mahalanobis_and_image_statistics_match_reference_implementations(trusted):
    ref = read_reference(trusted["int8"])
    g = ref.spaces["image"]
    x = np.random.default_rng(0).normal(g.mean, 0.05, size=(3, len(g.mean)))
    ours = ref.d2("image", x)
    theirs = [mahalanobis(row, g.mean, g.precision) ** 2 for row in x]  # scipy's distance, squared
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    model = load_model(trusted["int8"])
    raw = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 1, 40, 40), dtype=np.uint8))
    x = model.prepare(list(raw.numpy()))  # resized to 16 x 16 and normalised, as predict does
    np.testing.assert_allclose(
        input_statistics(x, model.preprocess), image_statistics(raw, (16, 16)).numpy(), rtol=1e-5, atol=1e-6
    )


def test_predictions_carry_scores_in_distribution_rarely_flagged_shifted_images_flagged(trusted):
    res = predict(trusted["int8"], [], data=DATA, split="test", progress=False)
    flags = np.array([p.out_of_distribution for p in res.predictions])
    assert len(flags) == 300 and flags.mean() <= 0.05  # about 1 % expected
    assert all(p.ood_score is not None and set(p.ood_spaces) == {"features", "image"} for p in res.predictions)
    model = load_model(trusted["int8"])
    ds = load_data(DATA).test
    images = [ds[i][0].numpy() for i in range(40)]
    shifted = [np.clip(255 - im.astype(int) // 2 + 60, 0, 255).astype(np.uint8) for im in images]  # another "scanner"
    _, ood = model.forward(model.prepare(shifted))
    assert np.mean([s.out_of_distribution for s in ood]) >= 0.9
    _, ood = model.forward(np.full((2, 1, 16, 16), np.nan, np.float32))
    assert all(s.out_of_distribution and s.to_json()["ood_score"] is None for s in ood)


def test_outputs_carry_the_score_in_every_format(trusted, tmp_path):
    ds = load_data(DATA).test
    for i in range(3):
        Image.fromarray(ds[i][0].numpy()[0]).save(tmp_path / f"{i}.png")
    predict(trusted["fp32"], [str(tmp_path)], out=tmp_path / "p.json", progress=False)
    row = json.loads((tmp_path / "p.json").read_text())["predictions"][0]
    assert {"ood_score", "out_of_distribution", "ood_spaces", "intended_use", "scope_reason"} <= set(row)
    predict(trusted["fp32"], [str(tmp_path)], out=tmp_path / "f.json", fhir=True, progress=False)
    report = json.loads((tmp_path / "f.json").read_text())["entry"][0]["resource"]
    ood = next(c for c in report["contained"] if c["id"] == "ood")
    assert ood["code"]["coding"][0]["code"] == "ood-score" and "valueQuantity" in ood
    assert ood["interpretation"][0]["coding"][0]["code"] in ("in-distribution", "out-of-distribution")


# -- the operating point ------------------------------------------------------------------------------------------


def test_the_operating_point_is_the_bundle_files_own_and_predict_decides_at_it(trusted, tmp_path):
    data = load_data(DATA)
    for b, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        point = read_manifest(trusted[b]).extra["operating_point"]
        session = ort_session(trusted[b] / file, threads=1)
        model = load_model(trusted[b])
        z, y = [], []
        for images, t in make_loader(data.val, 64, shuffle=False):
            z.append(session.run(None, {"input": model.preprocess.numpy(images.numpy())})[0])
            y.append(t.numpy())
        p = probabilities(np.concatenate(z), data.task)[:, 1]
        assert point["threshold"] == pytest.approx(threshold_for_sensitivity(p, np.concatenate(y), 0.9), abs=1e-7)
        assert point["target_sensitivity"] == 0.9 and point["sensitivity"] >= 0.9 and file in point["source"]
        assert model.info.threshold == point["threshold"] and "sensitivity >= 0.9" in model.info.threshold_source
    res = evaluate_bundle(trusted["int8"], split="test")
    at = res["at_threshold"]
    preds = predict(trusted["int8"], [], data=DATA, split="test", progress=False).predictions
    y = data.labels("test")
    decided = np.array([p.decision == "class_1" for p in preds])
    assert at["sensitivity"] == pytest.approx(decided[y == 1].mean()) and at["specificity"] == pytest.approx(
        (~decided[y == 0]).mean()
    )
    r = runner.invoke(app, ["eval", str(trusted["int8"]), "--json", str(tmp_path / "e.json")])
    assert r.exit_code == 0 and "at the operating threshold" in r.output, r.output
    assert json.loads((tmp_path / "e.json").read_text())["at_threshold"]["threshold"] == at["threshold"]


@pytest.mark.slow
def test_run_then_predict_on_its_handoff_bundle_gives_the_reports_sensitivity_and_specificity(tmp_path):
    """Acceptance: the operating point `edgekd run` validated is the one its INT8 and exported bundles decide at."""
    cfg = {
        "name": "op",
        "data": SYNTH,
        "target_sensitivity": 0.9,
        "intended_use": CHEST,
        "teacher": {"model": "small:tinycnn", "train": dict(TRAIN)},
        "student": {"model": "small:tinycnn", "train": dict(TRAIN)},
        "distill": {"baseline": False, "diagnose_samples": 16},
        "quantize": [{"method": "ptq", "target": "cpu-x86", "calib_samples": 32, "parity_samples": 16}],
        "export": {"formats": ["onnx"], "n_samples": 8},
        "bench": None,
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["run", str(tmp_path / "p.yaml"), "--out", str(run), "--no-report", "--json", str(tmp_path / "t.json"), "-q"],
    )
    assert r.exit_code == 0, r.output
    row = next(x for x in json.loads((tmp_path / "t.json").read_text())["rows"] if x["name"] == "int8-cpu-x86")
    y = load_data(SYNTH).labels("test")
    for bundle in ("int8-cpu-x86", "bundle"):
        m = read_manifest(run / bundle)
        assert m.extra["operating_point"]["target_sensitivity"] == 0.9 and m.intended_use == IntendedUse.parse(CHEST)
    evaluation = json.loads((run / "eval" / "int8-cpu-x86.json").read_text())["operating_point"]
    assert read_manifest(run / "int8-cpu-x86").extra["operating_point"]["threshold"] == pytest.approx(
        evaluation["threshold"], abs=1e-9
    )
    out = tmp_path / "p.csv"
    r = runner.invoke(
        app, ["predict", str(run / "int8-cpu-x86"), "--data", SYNTH, "--split", "test", "--out", str(out)]
    )
    assert r.exit_code == 0 and "operating point: sensitivity >= 0.9" in r.output.replace("\n", ""), r.output
    decided = np.array([row_["decision"] == "class_1" for row_ in csv.DictReader(out.open())])
    assert decided[y == 1].mean() == pytest.approx(row["operating_point"]["sensitivity"])
    assert (~decided[y == 0]).mean() == pytest.approx(row["operating_point"]["specificity"])
