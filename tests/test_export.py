"""ONNX export, parity, FP16, bundles, verify and the export CLI."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import ArtifactError, InvalidInputError, VerificationError
from edgekd.export import (
    FORMATS,
    MANIFEST_FILE,
    TOLERANCES,
    BundleFile,
    ExportConfig,
    ExportFormat,
    FormatKind,
    Precision,
    Reference,
    Tolerance,
    choose_exporter,
    export_bundle,
    export_onnx,
    has_fake_quant,
    make_samples,
    onnx_io,
    ort_session,
    parity_check,
    read_manifest,
    resolve_export_config,
    run_onnx,
    to_fp16,
    torch_logits,
    verify_bundle,
    write_bundle,
)
from edgekd.export import _onnx as onnx_mod
from edgekd.modeldir import Lineage, ModelCard, ModelSpec, load_model_dir, save_model_dir
from edgekd.specs import Preprocess, Task
from edgekd.students import build_model, list_models

runner = CliRunner()

NATIVE = [
    n
    for n in list_models("small")
    if n.split(":")[1]
    in {
        "tinycnn",
        "resnet8",
        "resnet14",
        "resnet20",
        "resnet32",
        "resnet8x4",
        "resnet32x4",
        "wrn_16_2",
        "wrn_40_2",
        "mobilenetv2_x0_5",
    }
]
# The deeper native students take 5-15 s each on a shared 2-core CPU: they run with -m slow.
_SLOW_NATIVE = {"small:resnet32", "small:resnet32x4", "small:wrn_40_2", "small:mobilenetv2_x0_5"}
# small:<torchvision> variants are not compact students by construction; the mobile-regime ones run with -m slow.
SMALL_TV = [
    f"small:{n}"
    for n in (
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "shufflenet_v2_x0_5",
        "shufflenet_v2_x1_0",
        "mnasnet0_5",
        "mnasnet1_0",
        "efficientnet_b0",
        "regnet_x_400mf",
        "regnet_y_400mf",
        "resnet18",
    )
]


def _card(name: str, *, classes: int = 3, chans: int = 1, size: int = 16, data: str | None = None) -> ModelCard:
    spec = ModelSpec(name=name, num_classes=classes, in_chans=chans)
    pre = Preprocess(
        input_size=(size, size), data_channels=chans, in_chans=chans, mean=(0.5,) * chans, std=(0.25,) * chans
    )
    labels = [f"c{i}" for i in range(classes)]
    return ModelCard(spec=spec, task=Task.MULTICLASS, label_names=labels, preprocess=pre, lineage=Lineage(data=data))


@torch.no_grad()
def _calibrate_bn(model: torch.nn.Module, card: ModelCard, seed: int = 0) -> torch.nn.Module:
    """Make a random-init model behave like a trained one for parity tests.

    BN statistics come from preprocessed sample batches (random affine terms undo zero-init gammas) and
    the last linear layer is rescaled so the largest logit is about 5. Random weights otherwise give
    logits of 1e-9 (trivial comparisons) or 1e3 (where float32's ~1e-6 relative error exceeds 1e-4).
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
            m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.75)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    x = torch.from_numpy(make_samples(card, n=64, seed=seed + 1).inputs)
    model.train()
    for chunk in x.split(32):
        model(chunk)
    model.eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    scale = 5.0 / float(model(x).abs().max())
    head.weight.mul_(scale)
    if head.bias is not None:
        head.bias.mul_(scale)
    return model


def _export_and_check(name: str, tmp_path: Path, *, allow_fp32_rounding: bool = False) -> None:
    card = _card(name)
    torch.manual_seed(0)
    model = _calibrate_bn(build_model(card.spec), card)
    info = export_onnx(model, card, tmp_path / "m.onnx")
    assert info["exporter"] == "torchscript" and info["opset"] == 17
    assert info["inputs"] == [{"name": "input", "shape": ["batch", 1, 16, 16], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "logits", "shape": ["batch", 3], "dtype": "float32"}]
    samples = make_samples(card, n=8)
    res = parity_check(tmp_path / "m.onnx", model, card, samples=samples.inputs)
    assert res.batch_sizes == [1, 7] and res.n == 8 and res.top1_agreement == 1.0
    assert np.abs(torch_logits(model, samples.inputs)).max() > 1e-3  # the comparison is not trivial
    if allow_fp32_rounding and not res.passed:
        # Some random-init networks are ill-conditioned: PyTorch's own float32 result is then as far from
        # the float64 truth as ONNX Runtime's. The export is exact if ORT is no further from it than PyTorch.
        with torch.no_grad():
            exact = copy.deepcopy(model).double()(torch.from_numpy(samples.inputs).double()).numpy()
        ort_out = run_onnx(ort_session(tmp_path / "m.onnx"), samples.inputs, 1)
        torch_err = np.abs(torch_logits(model, samples.inputs) - exact).max()
        assert np.abs(ort_out - exact).max() <= 2 * torch_err, res.summary()
        return
    assert res.passed and res.max_abs <= 1e-4, res.summary()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_NATIVE else n for n in NATIVE])
def test_every_native_student_exports_with_parity(name, tmp_path):
    _export_and_check(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_TV)
def test_small_torchvision_students_export_with_parity(name, tmp_path):
    _export_and_check(name, tmp_path, allow_fp32_rounding=True)


def test_all_native_students_are_covered():
    assert len(NATIVE) == 10


# ---------------------------------------------------------------- exporters


class _FakeQuantNet(torch.nn.Module):
    """Conv-BN-ReLU-pool-linear under eager-mode QAT with symmetric INT8 fake quantization."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(8, 3),
        )

    def forward(self, x):
        return self.net(x)


def _fake_quant_model() -> torch.nn.Module:
    from torch.ao import quantization as tq

    model = _FakeQuantNet().train()
    act = tq.FakeQuantize.with_args(
        observer=tq.MovingAverageMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_tensor_symmetric,
    )
    model.qconfig = tq.QConfig(activation=act, weight=tq.default_per_channel_weight_fake_quant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization points to torchao
        tq.prepare_qat(model, inplace=True)
    torch.manual_seed(0)
    for _ in range(3):
        model(torch.randn(16, 1, 16, 16))
    return model.eval()


def test_choose_exporter(monkeypatch):
    plain = build_model(ModelSpec(name="small:tinycnn", num_classes=2, in_chans=1))
    assert choose_exporter(plain, 17)[0] == "torchscript" and "opset" in choose_exporter(plain, 17)[1]
    monkeypatch.setattr(onnx_mod, "_dynamo_available", lambda: False)
    assert choose_exporter(plain, 18) == ("torchscript", "the dynamo exporter needs onnxscript, which is not installed")
    monkeypatch.setattr(onnx_mod, "_dynamo_available", lambda: True)
    assert choose_exporter(plain, 18)[0] == "dynamo"
    fq = _fake_quant_model()
    assert has_fake_quant(fq) and not has_fake_quant(plain)
    name, why = choose_exporter(fq, 18)
    assert name == "torchscript" and "fake-quantized" in why
    with pytest.raises(InvalidInputError, match="fake-quantized"):
        choose_exporter(fq, 18, "dynamo")
    with pytest.raises(InvalidInputError, match="unknown exporter"):
        choose_exporter(plain, 17, "tflite")


def test_fake_quant_model_exports_qdq_with_int8_parity_and_clean_lint(tmp_path):
    from edgekd.export import lint_errors, lint_onnx

    model, card = _fake_quant_model(), _card("small:tinycnn")
    info = export_onnx(model, card, tmp_path / "q.onnx")
    assert info["exporter"] == "torchscript" and info["fake_quant"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert has_fake_quant(model)  # exporting froze a copy, not the caller's model
    res = parity_check(tmp_path / "q.onnx", model, card, precision=Precision.INT8)
    assert res.passed and res.tolerance == TOLERANCES[Precision.INT8]
    profile = {"min_batch": 1, "opt_batch": 8, "max_batch": 32}
    assert lint_errors(lint_onnx(tmp_path / "q.onnx", profile=profile)) == []


def test_dynamo_exporter_when_onnxscript_is_installed(tmp_path):
    pytest.importorskip("onnxscript")
    card = _card("small:tinycnn")
    model = _calibrate_bn(build_model(card.spec), card)
    info = export_onnx(model, card, tmp_path / "d.onnx", opset=18)
    assert info["exporter"] == "dynamo" and info["opset"] == 18
    assert parity_check(tmp_path / "d.onnx", model, card, samples=make_samples(card, n=8).inputs).passed


def test_dynamo_failure_falls_back_to_torchscript_with_the_reason(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("data-dependent branch")

    monkeypatch.setattr(onnx_mod, "_dynamo_available", lambda: True)
    monkeypatch.setattr(onnx_mod, "_export_dynamo", broken)
    card = _card("small:tinycnn")
    info = export_onnx(build_model(card.spec), card, tmp_path / "f.onnx", opset=18)
    assert info["exporter"] == "torchscript" and info["opset"] == 18
    assert info["exporter_reason"].startswith("fell back from dynamo") and "data-dependent" in info["exporter_reason"]
    with pytest.raises(ArtifactError, match="dynamo exporter failed"):
        export_onnx(build_model(card.spec), card, tmp_path / "g.onnx", opset=18, exporter="dynamo")


def test_static_export_checks_its_own_batch(tmp_path):
    card = _card("small:tinycnn")
    model = _calibrate_bn(build_model(card.spec), card)
    export_onnx(model, card, tmp_path / "s.onnx", dynamic_batch=False)
    assert onnx_io(tmp_path / "s.onnx")[0][0].shape == [1, 1, 16, 16]
    res = parity_check(tmp_path / "s.onnx", model, card, samples=make_samples(card, n=5).inputs)
    assert res.passed and res.batch_sizes == [1]


def test_bad_opset_is_rejected(tmp_path):
    card = _card("small:tinycnn")
    with pytest.raises(InvalidInputError, match="opset"):
        export_onnx(build_model(card.spec), card, tmp_path / "x.onnx", opset=5)


# ---------------------------------------------------------------- FP16


def test_fp16_keeps_float32_io_and_casts_fp32_only_ops(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    # Conv -> Resize (scales must stay float32) -> Relu, with a shared float initializer.
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(2, 1, 3, 3)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="linear"),
        helper.make_node("Relu", ["r"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [w, scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(tmp_path / "a.onnx"))
    to_fp16(tmp_path / "a.onnx", tmp_path / "b.onnx")
    m = onnx.load(str(tmp_path / "b.onnx"))
    inputs, outputs = onnx_io(m)
    assert inputs[0].dtype == "float32" and outputs[0].dtype == "float32"
    types = {t.name: t.data_type for t in m.graph.initializer}
    assert types == {"w": TensorProto.FLOAT16, "scales": TensorProto.FLOAT}
    from edgekd.export import ort_session

    x = np.random.default_rng(1).normal(size=(2, 1, 4, 4)).astype(np.float32)
    a = ort_session(tmp_path / "a.onnx").run(None, {"input": x})[0]
    b = ort_session(tmp_path / "b.onnx").run(None, {"input": x})[0]
    assert b.dtype == np.float32 and np.abs(a - b).max() < 1e-2


# ---------------------------------------------------------------- bundles


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "b"
    export_bundle(tiny_model_dir, out, formats="onnx,onnx-fp16", check=("tensorrt",), n_samples=32)
    return out


@pytest.fixture()
def bundle_copy(bundle, tmp_path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def test_bundle_contents_and_manifest(bundle, tiny_model_dir):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(
        [
            "model.onnx",
            "model.fp16.onnx",
            "labels.json",
            "preprocess.json",
            "parity.npz",
            "MODEL_CARD.md",
            MANIFEST_FILE,
        ]
    )
    raw = json.loads((bundle / MANIFEST_FILE).read_text())
    assert raw["schema_version"] == 1 and raw["target"] == "tensorrt"
    assert all(set(f) == {"name", "sha256", "kind", "precision", "bytes"} for f in raw["files"])
    assert {f["name"]: f["precision"] for f in raw["files"] if f["kind"] == "onnx"} == {
        "model.onnx": "fp32",
        "model.fp16.onnx": "fp16",
    }
    assert raw["inputs"] == [{"name": "input", "shape": ["batch", 1, 16, 16], "dtype": "float32"}]
    assert raw["outputs"] == [{"name": "logits", "shape": ["batch", 2], "dtype": "float32"}]
    assert raw["exporter"]["exporter"] == "torchscript" and raw["exporter"]["exporter_reason"]
    assert raw["metrics"]["test"]["n"] > 0 and raw["lineage"]["data"].startswith("synthetic")
    assert [p["precision"] for p in raw["parity"]] == ["fp32", "fp16"] and all(p["passed"] for p in raw["parity"])
    assert raw["parity"][0]["batch_sizes"] == [1, 7] and raw["parity"][0]["samples"].startswith("synthetic:")
    assert raw["profile"] == {"min_batch": 1, "opt_batch": 8, "max_batch": 32}
    assert {"torch", "onnx", "onnxruntime"} <= set(raw["versions"])
    assert raw["extra"]["source_sha256"] and raw["params"] > 0 and raw["macs"] > 0
    _, card = load_model_dir(tiny_model_dir)
    assert json.loads((bundle / "labels.json").read_text()) == {"task": "binary", "labels": card.label_names}
    pre = json.loads((bundle / "preprocess.json").read_text())
    assert pre["mean"] == list(card.preprocess.mean) and "formula" in pre and pre["input_name"] == "input"


def test_fp16_file_has_float32_io_and_fp16_weights(bundle):
    m = onnx.load(str(bundle / "model.fp16.onnx"))
    inputs, outputs = onnx_io(m)
    assert inputs[0].dtype == outputs[0].dtype == "float32"
    assert {t.data_type for t in m.graph.initializer if t.data_type in (1, 10)} == {onnx.TensorProto.FLOAT16}


def test_model_card_sections_and_runnable_snippet(bundle):
    from PIL import Image

    text = (bundle / "MODEL_CARD.md").read_text()
    for section in ("## Data", "## Metrics", "## Intended use and limits", "## How to run it"):
        assert section in text
    assert "not a medical device" not in text.lower()  # synthetic data
    code = text.split("```python\n")[1].split("```")[0]
    assert len(code.strip().splitlines()) <= 12 and "torch" not in code
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(bundle.parent / "image.png")
    work = bundle.parent / "run"
    shutil.copytree(bundle, work, dirs_exist_ok=True)
    shutil.copy(bundle.parent / "image.png", work / "image.png")
    out = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] in ("class_0", "class_1")


def test_medical_data_gets_the_not_a_medical_device_note():
    from edgekd.export._model_card import is_medical

    assert is_medical(_card("small:tinycnn", data="pneumoniamnist"))
    assert is_medical(_card("small:tinycnn", data="medmnist:/d/dermamnist.npz"))
    assert not is_medical(_card("small:tinycnn", data="synthetic:classes=3"))


def test_verify_passes_on_a_fresh_bundle(bundle):
    res = verify_bundle(bundle)
    assert res.ok and all(f.ok for f in res.files) and len(res.files) == 6
    assert [p.file for p in res.parity] == ["model.onnx", "model.fp16.onnx"] and all(p.passed for p in res.parity)


def test_verify_detects_a_tampered_file(bundle_copy):
    model = onnx.load(str(bundle_copy / "model.onnx"))
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(bundle_copy / "model.onnx"))
    with pytest.raises(VerificationError, match="model.onnx"):
        verify_bundle(bundle_copy)


def test_verify_detects_a_missing_file_and_lists_unlisted_ones(bundle_copy):
    (bundle_copy / "notes.txt").write_text("hello")
    (bundle_copy / "labels.json").unlink()
    with pytest.raises(VerificationError, match="labels.json: missing"):
        verify_bundle(bundle_copy)


def test_verify_detects_a_changed_reference(bundle_copy):
    # Re-hashing alone would catch this too; re-writing the manifest hash shows parity catches it as well.
    with np.load(bundle_copy / "parity.npz") as z:
        x, y = z["inputs"], z["logits"] + 1.0
    np.savez(bundle_copy / "parity.npz", inputs=x, logits=y)
    raw = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    from edgekd.modeldir import sha256_file

    for f in raw["files"]:
        if f["name"] == "parity.npz":
            f["sha256"], f["bytes"] = (
                sha256_file(bundle_copy / "parity.npz"),
                (bundle_copy / "parity.npz").stat().st_size,
            )
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(VerificationError, match="parity FAILED"):
        verify_bundle(bundle_copy)


def test_verify_of_a_non_bundle_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError):
        verify_bundle(tmp_path)


def test_export_without_data_uses_synthetic_inputs(tmp_path):
    card = _card("small:tinycnn", classes=2)
    model = _calibrate_bn(build_model(card.spec), card)
    save_model_dir(model, card, tmp_path / "m")
    m = export_bundle(tmp_path / "m", tmp_path / "b", n_samples=8)
    assert m.extra["parity_samples"].startswith("synthetic") and m.parity[0].passed
    assert m.target == "onnxruntime" and [f.name for f in m.model_files()] == ["model.onnx"]


def test_unavailable_recorded_data_falls_back_to_synthetic_with_reason():
    samples = make_samples(_card("small:tinycnn", data="medmnist:/nonexistent/x.npz"), n=4)
    assert samples.inputs.shape == (4, 1, 16, 16) and "unavailable" in samples.source


def test_explicit_data_must_load():
    with pytest.raises(ArtifactError):
        make_samples(_card("small:tinycnn"), "medmnist:/nonexistent/x.npz", n=4)


def test_failing_parity_leaves_no_bundle_and_keeps_an_old_one(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "b"
    export_bundle(tiny_model_dir, out, n_samples=8)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setitem(TOLERANCES, Precision.FP32, Tolerance(max_abs=-1.0))
    with pytest.raises(VerificationError, match="parity FAILED"):
        export_bundle(tiny_model_dir, out, n_samples=8, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier bundle, untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b")]  # no temp dirs left


def test_a_perturbed_graph_fails_parity(tiny_model_dir, tmp_path, monkeypatch):
    real = onnx_mod._simplify

    def perturb(path):
        done = real(path)
        model = onnx.load(str(path))
        init = max(model.graph.initializer, key=lambda t: len(t.raw_data))
        arr = onnx.numpy_helper.to_array(init) * 1.5
        init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
        onnx.save(model, str(path))
        return done

    monkeypatch.setattr(onnx_mod, "_simplify", perturb)
    with pytest.raises(VerificationError, match="model.onnx"):
        export_bundle(tiny_model_dir, tmp_path / "b", n_samples=8)
    assert not (tmp_path / "b").exists()


def test_write_bundle_for_an_int8_file(tmp_path, tiny_model_dir):
    """The path quantization takes: an existing ONNX file, INT8 parity and a stored reference."""
    model, card = load_model_dir(tiny_model_dir)
    export_onnx(model, card, tmp_path / "q.onnx")
    samples = make_samples(card, n=8)
    ref = torch_logits(model, samples.inputs)
    res = parity_check(
        tmp_path / "q.onnx", None, card, samples=samples.inputs, reference_logits=ref, precision=Precision.INT8
    )
    files = [BundleFile(source=tmp_path / "q.onnx", name="model.int8.onnx", kind="onnx", precision=Precision.INT8)]
    m = write_bundle(
        tmp_path / "b",
        card=card,
        files=files,
        parity=[res],
        target="tensorrt",
        reference=Reference(samples.inputs, ref),
        extra={"quantizer": "test"},
    )
    assert m.precision is Precision.INT8 and read_manifest(tmp_path / "b").extra == {"quantizer": "test"}
    assert verify_bundle(tmp_path / "b").parity[0].precision is Precision.INT8
    with pytest.raises(ArtifactError, match="already exists"):
        write_bundle(tmp_path / "b", card=card, files=files, parity=[res], target="tensorrt", overwrite=False)
    with pytest.raises(InvalidInputError, match="reserved"):
        write_bundle(
            tmp_path / "c",
            card=card,
            target="x",
            parity=[],
            files=[BundleFile(source=tmp_path / "q.onnx", name="manifest.json")],
        )


# ---------------------------------------------------------------- CLI


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("cmd", ["export", "lint-onnx", "verify"])
def test_commands_have_help_with_example(cmd):
    r = run(cmd, "--help")
    assert r.exit_code == 0 and "Example" in r.output


def test_cli_export_verify_and_tamper(tiny_model_dir, tmp_path):
    out = tmp_path / "b"
    r = run(
        "export", tiny_model_dir, "--out", out, "--samples", 8, "--check", "tensorrt", "--json", tmp_path / "m.json"
    )
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "m.json").read_text())["files"][0]["name"] == "model.onnx"
    r = run("verify", out, "--json", "-")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ok"] is True
    (out / "preprocess.json").write_text("{}")
    r = run("verify", out)
    assert r.exit_code == 6 and "preprocess.json" in r.output


def test_cli_engine_without_tensorrt_exits_5_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, even where installed
    r = run("export", tiny_model_dir, "--format", "onnx,engine", "--out", tmp_path / "b")
    assert r.exit_code == 5, r.output
    assert "TensorRT" in r.output and len(r.output.strip().splitlines()) <= 3
    assert not (tmp_path / "b").exists()


def test_cli_failing_parity_exits_6(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(TOLERANCES, Precision.FP32, Tolerance(max_abs=-1.0))
    r = run("export", tiny_model_dir, "--out", tmp_path / "b", "--samples", 4)
    assert r.exit_code == 6 and "parity FAILED" in r.output
    assert not (tmp_path / "b").exists()


def test_cli_bad_format_exits_3(tiny_model_dir, tmp_path):
    r = run("export", tiny_model_dir, "--format", "tflite", "--out", tmp_path / "b")
    assert r.exit_code == 3 and "onnx-fp16" in r.output


def test_cli_lint_exit_codes(tmp_path, bundle):
    from onnx import TensorProto, helper

    r = run("lint-onnx", bundle / "model.onnx", "--json", "-")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ok"] is True
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Det", ["input"], ["logits"], name="det0")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "bad.onnx"))
    r = run("lint-onnx", tmp_path / "bad.onnx")
    assert r.exit_code == 6 and "det0" in r.output and "unsupported-op" in r.output
    assert run("lint-onnx", tmp_path / "nope.onnx").exit_code == 4


def test_verify_with_data_compares_fp16_with_fp32_on_real_samples(bundle, tiny_model_dir):
    _, card = load_model_dir(tiny_model_dir)
    res = verify_bundle(bundle, data=card.lineage.data)
    cross = [p for p in res.parity if "vs model.onnx" in p.samples]
    assert [p.file for p in cross] == ["model.fp16.onnx"] and cross[0].passed


# ---------------------------------------------------------------- the formats table and ExportConfig


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_is_one_complete_table_entry(name):
    fmt = FORMATS[name]
    assert fmt.name == name and callable(fmt.write) and fmt.description
    if fmt.kind is FormatKind.FILE:
        assert fmt.suffix and not fmt.picks
    else:
        assert not fmt.suffix and all(FORMATS[p].kind is FormatKind.FILE for p in fmt.picks)
    suffixes = [f.suffix for f in FORMATS.values() if f.kind is FormatKind.FILE]
    assert len(set(suffixes)) == len(suffixes)


def test_export_config_validates_formats_checks_and_the_profile():
    assert ExportConfig(formats="ONNX, onnx-fp16,onnx").formats == ["onnx", "onnx-fp16"]
    assert ExportConfig(formats="onnx-fp16,triton").output is FORMATS["triton"]
    bad_options = [
        ({"formats": "tflite"}, "onnx-fp16"),
        ({"formats": "onnx,monai-bundle"}, "alone"),
        ({"formats": "triton,engine"}, "one ONNX model"),
        ({"check": "trt"}, "tensorrt"),
        ({"min_batch": 9}, "min-batch"),
        ({"exporter": "x"}, "torchscript"),
        ({"opsett": 17}, "opsett"),
    ]
    for bad, match in bad_options:
        with pytest.raises(InvalidInputError, match=match):
            resolve_export_config(**bad)
    cfg = resolve_export_config(ExportConfig(opset=18), n_samples=8)
    assert (cfg.opset, cfg.n_samples, cfg.formats) == (18, 8, ["onnx"])


def test_cli_export_reads_a_config_file_and_flags_override_it(tiny_model_dir, tmp_path):
    (tmp_path / "export.yaml").write_text("export:\n  formats: [onnx, onnx-fp16]\n  n_samples: 4\n  opset: 16\n")
    config, out, m_json = tmp_path / "export.yaml", tmp_path / "b", tmp_path / "m.json"
    r = run("export", tiny_model_dir, "--config", config, "--opset", 17, "--out", out, "--json", m_json)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert [f["name"] for f in m["files"] if f["kind"] == "onnx"] == ["model.onnx", "model.fp16.onnx"]
    assert m["exporter"]["opset"] == 17 and m["parity"][0]["n"] == 4
    assert m["extra"]["config"]["opset"] == 17 and m["extra"]["config"]["n_samples"] == 4  # the resolved config
    (tmp_path / "bad.yaml").write_text("formats: [onnx]\nsample: 4\n")
    r = run("export", tiny_model_dir, "--config", tmp_path / "bad.yaml", "--out", tmp_path / "c")
    assert r.exit_code == 3 and "sample" in r.output and not (tmp_path / "c").exists()


def test_a_new_format_is_one_table_entry_and_its_writer(tiny_model_dir, tmp_path, monkeypatch):
    """What adding e.g. ``openvino`` takes: the entry and the writer, nothing else (issue 22)."""

    def write_copy(job):
        path = job.path("onnx-copy")
        shutil.copyfile(job.onnx_files()[0].source, path)
        return [BundleFile(source=path, name=path.name, kind="copy", precision=Precision.FP32)]

    entry = ExportFormat("onnx-copy", FormatKind.FILE, "a copy", write_copy, suffix=".copy.bin", target="copy-rt")
    monkeypatch.setitem(FORMATS, "onnx-copy", entry)
    m = export_bundle(tiny_model_dir, tmp_path / "b", formats="onnx,onnx-copy", n_samples=8)
    assert [(f.name, f.kind) for f in m.model_files()] == [("model.onnx", "onnx"), ("model.copy.bin", "copy")]
    assert m.target == "copy-rt" and read_manifest(tmp_path / "b").model_files()[1].precision is Precision.FP32
    assert verify_bundle(tmp_path / "b").ok
