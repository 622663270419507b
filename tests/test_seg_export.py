"""Export of segmentation models (issue 26 item 5): ONNX / FP16 / OpenVINO / ExecuTorch with mask parity, the
bundle verified on the receiving side, a MONAI Bundle for segmentation (checked with MONAI's own
``verify_metadata`` against the shared schema, offline, and run through MONAI's ConfigParser), and the drift
reference of a segmenter (per-image class shares, pooled decoder features).

The model is the U-Net trained on the bundled lung masks of test_seg_quantize.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.data import load_data
from edgekd.export import export_bundle, onnx_io, verify_bundle
from edgekd.modeldir import load_model_dir
from edgekd.monitor import compute_reference, image_probabilities
from edgekd.specs import Task

from .test_seg_quantize import lung_student

SCHEMA_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "monai" / "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return lung_student(tmp_path_factory)


def test_every_runtime_format_passes_mask_parity_and_verifies(student, tmp_path):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    m = export_bundle(student, tmp_path / "b", formats="onnx,onnx-fp16,openvino,executorch", n_samples=8)
    by_file = {p.file: p for p in m.parity}
    assert set(by_file) == {"model.onnx", "model.fp16.onnx", "model.xml", "model.pte"}
    for p in by_file.values():
        assert p.passed and p.mask_dice is not None, p.summary()
        assert "pixels=" in p.summary() and "mask_dice=" in p.summary()
    assert by_file["model.fp16.onnx"].tolerance.min_dice == 0.98  # masks, not top-1 labels, decide
    assert m.task is Task.SEGMENTATION
    [out] = onnx_io(tmp_path / "b" / "model.onnx")[1]
    assert out.shape[1:] == [2, 32, 32]  # per-pixel logits at the model's resolution
    res = verify_bundle(tmp_path / "b")
    assert all(p.passed and p.mask_dice is not None for p in res.parity)


def test_monai_bundle_for_segmentation_passes_monai_checks(student, tmp_path):
    monai_bundle = pytest.importorskip("monai.bundle")
    pytest.importorskip("jsonschema")
    schema = Path(os.environ.get("EDGEKD_MONAI_META_SCHEMA") or SCHEMA_FILE)
    if not schema.is_file():
        pytest.skip(f"MONAI's metadata schema is missing at {schema}")
    export_bundle(student, tmp_path / "mb", formats="monai-bundle")
    meta_file = tmp_path / "mb" / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["format"] == "segmentation" and pred["type"] == "image"
    assert pred["spatial_shape"] == [32, 32] and pred["channel_def"] == {"0": "background", "1": "lung"}
    assert "segmentation" in meta["task"] and meta["edgekd"]["task"] == "segmentation"
    monai_bundle.verify_metadata(meta_file=str(meta_file), filepath=str(schema))  # raises when invalid
    # MONAI builds the network and the post-processing from the bundle's configs: class-index masks come out
    parser = monai_bundle.ConfigParser()
    parser.read_config(str(tmp_path / "mb" / "configs" / "inference.json"))
    parser["bundle_root"] = str(tmp_path / "mb")
    parser["device"] = "$torch.device('cpu')"
    parser.get_parsed_content("initialize")
    net, pre = parser.get_parsed_content("network"), parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    image, _ = load_data("lungseg").test[0]
    logits = net(pre(image)[None])
    mask = post(logits[0])
    model, card = load_model_dir(student)
    ref = model.eval()(card.preprocess(image[None]))
    assert mask.shape == (1, 32, 32) and set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(mask[0].numpy(), ref[0].argmax(0).numpy())


def test_drift_reference_of_a_segmenter_uses_class_shares_and_pooled_decoder_features(student):
    model, card = load_model_dir(student)
    data = load_data("lungseg")
    ref = compute_reference(model, card.preprocess, data.val, card.task, card.spec.num_classes)
    # every per-image quantity has one row per image, not one per pixel
    assert ref.confidence.shape == (len(data.val),) and ref.prob_hist.shape[0] == 2
    assert ref.meta["task"] == "segmentation" and ref.meta["feature_dim"] == model.head.in_channels
    assert ref.spaces == {}  # 13 validation images: too few for the Gaussian spaces (MIN_IMAGES), and said so
    logits = torch.randn(2, 2, 4, 4)
    shares = image_probabilities(logits, Task.SEGMENTATION)
    np.testing.assert_allclose(shares.sum(1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(shares.numpy(), torch.softmax(logits, 1).mean((2, 3)).numpy())
