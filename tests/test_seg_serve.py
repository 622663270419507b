"""Segmentation where a model is deployed (issue 26 item 5): `edgekd predict --masks`, the Open Inference
Protocol's UINT8 ``mask`` output (tritonclient), and ``/classify`` answering with a mask PNG.

The model is a real U-Net with concatenating skip connections (MONAI's ``BasicUNet`` through the ``monai:``
route, a few hundred parameters wide), trained here for a few seconds on synthetic images whose foreground is
a bright ellipse on textured noise (the mask is the ellipse), so that the masks it answers are checked against
a ground truth, not only against themselves. Also used by test_dicom_seg.py and test_seg_export.py.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.export import export_bundle
from edgekd.modeldir import save_model_dir
from edgekd.serve import load_model, predict
from edgekd.serve._server import MASK_OUTPUT
from edgekd.specs import ModelCard, ModelSpec, Preprocess, Task
from edgekd.students import build_model

pytest.importorskip("monai", reason="the monai extra is not installed (pip install 'edgekd[monai]')")

runner = CliRunner()
SIZE = 32  # the model's input resolution
LABELS = ["background", "lung"]
NETWORK = {
    "_target_": "monai.networks.nets.BasicUNet",
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "features": [4, 4, 8, 8, 16, 4],
}


def ellipse_case(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``uint8 [1, H, W]`` image with a bright ellipse on noise, and its ``uint8 [H, W]`` 0/1 mask."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.18, 0.3) * h, rng.uniform(0.18, 0.3) * w
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.uint8)
    image = rng.normal(70, 20, (h, w)) + mask * rng.uniform(90, 130)
    return np.clip(image, 0, 255).astype(np.uint8)[None], mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


def _train(net: torch.nn.Module, pre: Preprocess, steps: int = 120) -> None:
    rng = np.random.default_rng(0)
    cases = [ellipse_case(rng, SIZE, SIZE) for _ in range(64)]
    x = pre(torch.from_numpy(np.stack([c[0] for c in cases])))
    y = torch.from_numpy(np.stack([c[1] for c in cases])).long()
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is ~10x faster than two on a shared 2-core VM
    try:
        net.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (16,))
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()


def seg_artifacts(tmp_path_factory) -> dict[str, Path]:
    """A trained segmentation model directory and its FP32 ONNX bundle (built once per session)."""
    root = tmp_path_factory.getbasetemp() / "seg"
    out = {"model": root / "model", "bundle": root / "bundle"}
    if not (out["bundle"] / "manifest.json").is_file():
        torch.manual_seed(0)
        spec = ModelSpec(name="monai:bundle", num_classes=2, in_chans=1, kwargs={"network_def": NETWORK})
        pre = Preprocess(input_size=(SIZE, SIZE), data_channels=1, in_chans=1, mean=(0.4,), std=(0.2,))
        net = build_model(spec)
        _train(net, pre)
        card = ModelCard(spec=spec, task=Task.SEGMENTATION, label_names=LABELS, preprocess=pre)
        save_model_dir(net, card, out["model"])
        export_bundle(out["model"], out["bundle"], n_samples=8, overwrite=True)
    return out


@pytest.fixture(scope="module")
def seg(tmp_path_factory) -> dict[str, Path]:
    return seg_artifacts(tmp_path_factory)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[0]).save(buf, format="PNG")
    return buf.getvalue()


def write_cases(folder: Path, n: int, shape: tuple[int, int] = (45, 38)) -> list[np.ndarray]:
    """``n`` ellipse PNGs at ``shape`` (not the model's size) in ``folder``; returns their true masks."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    truths = []
    for i in range(n):
        image, mask = ellipse_case(rng, *shape)
        (folder / f"case{i}.png").write_bytes(png_bytes(image))
        truths.append(mask)
    return truths


def test_predict_writes_class_index_masks_at_the_image_size_and_overlays(seg, tmp_path):
    truths = write_cases(tmp_path / "in", 4)
    out = tmp_path / "masks"
    res = predict(seg["bundle"], [str(tmp_path / "in")], masks=out, out=tmp_path / "p.csv", progress=False)
    assert len(res.predictions) == 4 and not res.skipped
    index = json.loads((out / "masks.json").read_text())["masks"]
    assert [Path(e["source"]).name for e in index] == [f"case{i}.png" for i in range(4)]
    for entry, truth, p in zip(index, truths, res.predictions):
        mask = np.array(Image.open(out / entry["mask"]))
        assert mask.dtype == np.uint8 and mask.shape == truth.shape  # the input's size, not the model's 32 x 32
        np.testing.assert_array_equal(mask, p.mask)
        assert set(np.unique(mask)) <= {0, 1}
        assert dice(mask == 1, truth == 1) > 0.8  # the trained model finds the ellipse
        assert abs(p.probabilities["lung"] - mask.mean()) < 1e-9 and p.label in LABELS
        overlay = np.array(Image.open(out / entry["overlay"]))
        assert overlay.shape == (*truth.shape, 3)
        # inside the mask the overlay is tinted (red channel above the others), outside it is the gray image
        inside, outside = overlay[mask == 1], overlay[mask == 0]
        assert (inside[:, 0] > inside[:, 2]).mean() > 0.9 and (outside[:, 0] == outside[:, 2]).all()
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert "p_background,p_lung" in header


def test_predict_masks_cli_refuses_an_existing_folder_and_a_classifier(seg, tmp_path, tiny_model_dir):
    write_cases(tmp_path / "in", 1)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("not edgekd's")
    r = runner.invoke(app, ["predict", str(seg["bundle"]), str(tmp_path / "in"), "--masks", str(tmp_path / "taken")])
    assert r.exit_code == 3 and "--masks" in r.output and "Traceback" not in r.output
    assert (tmp_path / "taken" / "mine.txt").read_text() == "not edgekd's"
    r = runner.invoke(app, ["predict", tiny_model_dir, str(tmp_path / "in"), "--masks", str(tmp_path / "m")])
    assert r.exit_code == 3 and "needs a segmentation model" in r.output and not (tmp_path / "m").exists()
    r = runner.invoke(app, ["predict", str(seg["bundle"]), str(tmp_path / "in"), "--masks", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "m").glob("*.overlay.png"))) == 1


def test_model_directory_and_bundle_give_the_same_masks(seg, tmp_path):
    write_cases(tmp_path / "in", 3)
    a = predict(seg["model"], [str(tmp_path / "in")], progress=False)
    b = predict(seg["bundle"], [str(tmp_path / "in")], progress=False)
    for p, q in zip(a.predictions, b.predictions):
        assert (p.mask == q.mask).mean() > 0.99  # PyTorch vs ONNX Runtime: ties at a class boundary may differ
        assert "mask" not in p.to_json() and p.to_json()["mask_shape"] == list(p.mask.shape)


def test_open_inference_protocol_returns_the_uint8_mask_with_its_shape_in_metadata(seg):
    triton_http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed")
    from edgekd.serve import ServeConfig, running_server

    model = load_model(seg["bundle"], threads=1)
    rng = np.random.default_rng(3)
    images = [ellipse_case(rng, 50, 41)[0] for _ in range(3)]
    x = model.prepare(images)
    session = ort.InferenceSession(str(seg["bundle"] / "model.onnx"), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"input": x})[0]
    with running_server({"seg": model}, ServeConfig(port=0, max_batch=8, max_delay_ms=1)) as url:
        client = triton_http.InferenceServerClient(url.removeprefix("http://"))
        meta = client.get_model_metadata("seg")
        assert {"name": MASK_OUTPUT, "datatype": "UINT8", "shape": [-1, SIZE, SIZE]} in meta["outputs"]
        assert meta["parameters"]["task"] == "segmentation" and meta["parameters"]["labels"] == LABELS
        for binary in (True, False):
            inp = triton_http.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = triton_http.InferRequestedOutput(MASK_OUTPUT, binary_data=binary)
            res = client.infer("seg", [inp], outputs=[out])
            mask = res.as_numpy(MASK_OUTPUT)
            assert mask.dtype == np.uint8 and mask.shape == (3, SIZE, SIZE)
            np.testing.assert_array_equal(mask, ref.argmax(1).astype(np.uint8))
        client.close()
        import httpx

        r = httpx.post(
            f"{url}/v2/models/seg/classify", content=png_bytes(images[0]), headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        mask = np.array(Image.open(io.BytesIO(base64.b64decode(body["mask_png"]))))
        assert mask.shape == (50, 41) == tuple(body["mask_shape"])
        assert abs(body["area"]["lung"] - mask.mean()) < 1e-9
        r = httpx.post(
            f"{url}/v2/models/seg/classify?format=fhir",
            content=png_bytes(images[0]),
            headers={"Content-Type": "image/png"},
        )
        assert r.status_code == 400 and "segmentation model answers with a mask" in r.text
