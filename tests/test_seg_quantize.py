"""INT8 of a segmentation model (issue 26 item 5): ONNX Runtime static QDQ with the device presets, judged on masks.

Parity of a segmentation file is the agreement of its argmax masks with the reference's (share of pixels) and the
Dice of its masks against the reference's (:func:`edgekd.export.mask_dice`; thresholds in
:data:`edgekd.export.SEG_TOLERANCES`); ``mask_dice`` is checked here against an independent count on the stored
logits. The model is ``small:unet_w4`` trained briefly on the bundled lung masks at 32 px.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgekd.distill import RunSettings, TrainConfig, train_model
from edgekd.export import SEG_TOLERANCES, Precision, mask_dice, parity_check
from edgekd.modeldir import read_card
from edgekd.quantize import QuantizeConfig, quantize_model_dir
from edgekd.quantize._api import _delta
from edgekd.serve import load_model, predict


def lung_student(tmp_path_factory):
    """``small:unet_w4`` trained 3 epochs on lungseg at 32 px (built once per session)."""
    out = tmp_path_factory.getbasetemp() / "seg-lung" / "student"
    if not (out / "edgekd.json").is_file():
        cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, warmup_epochs=0.0)
        train_model(
            RunSettings(student="small:unet_w4", data="lungseg", input_size=32, train=cfg),
            out,
            progress=False,
            overwrite=True,
        )
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return lung_student(tmp_path_factory)


def test_mask_dice_against_an_independent_count():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    out = ref.copy()
    out[0, :, 0, 0] = [0, 0, 9]  # one pixel moved to class 2
    a, b = out.argmax(1), ref.argmax(1)
    want = np.mean([2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()) for k in (1, 2)])
    assert mask_dice(out, ref) == pytest.approx(want) and mask_dice(ref, ref) == 1.0
    assert mask_dice(np.zeros_like(ref), np.zeros_like(ref)) == 1.0  # every foreground class absent from both
    assert SEG_TOLERANCES[Precision.INT8].min_dice == 0.98


def test_int8_ptq_of_a_unet_passes_mask_parity_and_reports_dice(student, tmp_path):
    res = quantize_model_dir(
        student,
        tmp_path / "int8",
        QuantizeConfig(target="cpu-x86", calib_samples=32, parity_samples=16),
        progress=False,
    )
    low = next(p for p in res.parity if p["precision"] == "int8")
    assert low["passed"] and low["mask_dice"] >= 0.98 and low["top1_agreement"] >= 0.99
    assert low["tolerance"]["min_dice"] == 0.98
    fp32, int8 = res.metrics["fp32"], res.metrics["int8"]
    assert {"dice", "iou", "hd95"} <= set(fp32) and fp32["dice"] > 0.5  # a lung segmenter, if a rough one
    assert res.delta["dice"] == pytest.approx(100 * (int8["dice"] - fp32["dice"]))
    assert res.delta["hd95"] == pytest.approx(int8["hd95"] - fp32["hd95"])  # pixels, not points
    # the shipped INT8 graph really is QDQ and its masks are the ones predict answers
    session = ort.InferenceSession(str(tmp_path / "int8" / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert any(
        n.op_type == "QuantizeLinear" for n in __import__("onnx").load(tmp_path / "int8" / "model.int8.onnx").graph.node
    )
    model = load_model(tmp_path / "int8")
    assert model.info.precision == "int8"
    pred = predict(model, data="lungseg", split="test", progress=False).predictions[0]
    assert pred.mask.shape == (256, 256)  # the data's size, not the model's 32 x 32
    x = model.prepare([np.zeros((1, 40, 40), np.uint8)])
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], model.logits(x))


def test_fp32_files_keep_the_logit_tolerance_and_delta_units():
    assert _delta({"dice": 0.9, "hd95": 4.0}, {"dice": 0.895, "hd95": 5.5}) == pytest.approx(
        {"dice": -0.5, "hd95": 1.5}
    )
    assert SEG_TOLERANCES[Precision.FP32].max_abs == 1e-4


def test_a_file_that_moves_masks_fails_parity(student, tmp_path):
    card = read_card(student)
    from edgekd.export import export_bundle

    export_bundle(student, tmp_path / "b", n_samples=8)
    x = np.random.default_rng(0).normal(size=(4, 1, 32, 32)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"input": x})[0]
    moved = ref.copy()
    moved[:, 1] += 0.5 * np.abs(ref).max()  # a file that grows the lungs everywhere
    res = parity_check(
        tmp_path / "b" / "model.onnx", None, card, samples=x, reference_logits=moved, precision=Precision.INT8
    )
    assert not res.passed and res.mask_dice < 0.98 and "mask_dice" in res.summary()
