"""MONAI Bundles in (``--teacher monai:DIR``) and out (``edgekd export --format monai-bundle``), checked with
MONAI's own tools (``monai.bundle`` ConfigParser, ``verify_net_in_out`` and, with a local schema, ``verify_metadata``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.data import load_data
from edgekd.errors import ArtifactError, DependencyError, InvalidInputError
from edgekd.export import export_bundle
from edgekd.modeldir import load_model_dir
from edgekd.teachers import load_teacher
from tests.conftest import SYNTH

monai_bundle = pytest.importorskip("monai.bundle")
runner = CliRunner()
# verify_metadata downloads the schema its metadata names unless the file is already at `filepath`: CI (offline)
# keeps MONAI's schema in ../shared/monai/ beside the repository; EDGEKD_MONAI_META_SCHEMA points elsewhere.
SCHEMA_ENV = "EDGEKD_MONAI_META_SCHEMA"
SCHEMA_FILE = Path(__file__).resolve().parents[1].parent / "shared" / "monai" / "meta_schema_20240725.json"
NET = {
    "_target_": "monai.networks.nets.Classifier",
    "in_shape": [1, 16, 16],
    "classes": 2,
    "channels": [4, 8],
    "strides": [2, 2],
}


def make_bundle(root: Path, *, fmt: str = "classes", network_def: object = None, weights: str = "model.pt") -> Path:
    """A tiny classification bundle written the way MONAI bundles are: metadata, inference config, state dict."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = {
        "version": "0.1.0",
        "task": "classification of synthetic images",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": [16, 16],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": fmt,
                    "num_channels": 2,
                    "spatial_shape": [1, 2],
                    "dtype": "float32",
                    "channel_def": {"0": "a", "1": "b"},
                }
            },
        },
    }
    config = {"imports": ["$import torch"], "bundle_root": ".", "network_def": network_def or NET}
    (root / "configs/metadata.json").write_text(json.dumps(meta))
    (root / "configs/inference.json").write_text(json.dumps(config))
    parser = monai_bundle.ConfigParser(config)
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    if weights == "model.ts":
        torch.jit.script(net).save(str(root / "models" / weights))
    else:
        torch.save(net.state_dict(), root / "models" / weights)
    return root


@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("monai") / "teacher")


def test_a_monai_bundle_is_a_teacher_with_its_own_preprocessing(teacher_bundle):
    data = load_data(SYNTH)
    teacher = load_teacher(f"monai:{teacher_bundle}", data=data)
    assert teacher.num_classes == 2 and teacher.preprocess.input_size == (16, 16)
    assert teacher.preprocess.mean == (0.0,) and teacher.preprocess.std == (1.0,)
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    parser = monai_bundle.ConfigParser()
    parser.read_config(str(teacher_bundle / "configs/inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(teacher_bundle / "models/model.pt", weights_only=True))
    expected = net.eval()(images.float() / 255)
    assert torch.allclose(teacher.logits(images), expected, atol=1e-6)


def test_unsupported_or_unsafe_bundles_are_refused(tmp_path):
    data = load_data(SYNTH)
    seg = make_bundle(tmp_path / "seg", fmt="segmentation")
    with pytest.raises(InvalidInputError, match="classification bundles only"):
        load_teacher(f"monai:{seg}", data=data)
    ts = make_bundle(tmp_path / "ts", weights="model.ts")
    with pytest.raises(ArtifactError, match="TorchScript"):
        load_teacher(f"monai:{ts}", data=data).model
    assert load_teacher(f"monai:{ts}", data=data, trust_pickle=True).logits(torch.zeros(1, 1, 16, 16)).shape == (1, 2)
    expr = make_bundle(tmp_path / "expr", network_def={**NET, "classes": "$1 + 1"})
    with pytest.raises(ArtifactError, match="Python expressions"):
        load_teacher(f"monai:{expr}", data=data).model
    res = runner.invoke(
        app,
        [
            "distill",
            "--teacher",
            f"monai:{tmp_path / 'nope'}",
            "--student",
            "small:tinycnn",
            "--data",
            SYNTH,
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code == 4 and "does not exist" in res.output


def test_without_monai_the_message_names_the_extra(tmp_path, teacher_bundle, tiny_model_dir, monkeypatch):
    for name in [m for m in sys.modules if m == "monai" or m.startswith("monai.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "monai", None)  # `import monai` now raises ImportError
    with pytest.raises(DependencyError, match="MONAI") as e:
        load_teacher(f"monai:{teacher_bundle}", data=load_data(SYNTH))
    assert "edgekd[monai]" in e.value.hint
    res = runner.invoke(app, ["export", tiny_model_dir, "--format", "monai-bundle", "--out", str(tmp_path / "m")])
    assert res.exit_code == 5 and "edgekd[monai]" in res.output and not (tmp_path / "m").exists()


def _verify_cli(bundle: Path) -> subprocess.CompletedProcess:
    """MONAI's own command line, in a fresh process."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "--net_id",
        "network_def",
        "--meta_file",
        str(bundle / "configs/metadata.json"),
        "--config_file",
        str(bundle / "configs/inference.json"),
        "--device",
        "cpu",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=bundle)


def _monai_outputs(bundle: Path, images: torch.Tensor) -> torch.Tensor:
    """The bundle run the MONAI way: ConfigParser builds and loads the network, MONAI transforms preprocess."""
    parser = monai_bundle.ConfigParser()
    parser.read_config(str(bundle / "configs/inference.json"))
    parser.read_meta(str(bundle / "configs/metadata.json"))
    parser["bundle_root"], parser["device"] = str(bundle), "$torch.device('cpu')"
    parser.get_parsed_content("initialize")
    net, pre = parser.get_parsed_content("network"), parser.get_parsed_content("preprocessing")
    with torch.no_grad():
        return torch.as_tensor(net(torch.stack([torch.as_tensor(pre(x)) for x in images])))


@pytest.mark.slow
def test_round_trip_monai_teacher_to_monai_student(teacher_bundle, tmp_path):
    """MONAI bundle -> distil -> prune -> INT8 -> MONAI bundle, checked by MONAI, outputs equal to edgekd's."""
    student, pruned, int8 = tmp_path / "student", tmp_path / "pruned", tmp_path / "int8"
    steps = [
        [
            "distill",
            "--teacher",
            f"monai:{teacher_bundle}",
            "--student",
            "small:tinycnn",
            "--data",
            SYNTH,
            "--epochs",
            "1",
            "--max-steps-per-epoch",
            "2",
            "--out",
            str(student),
            "--quiet",
        ],
        [
            "prune",
            str(student),
            "--out",
            str(pruned),
            "--target-macs",
            "0.7",
            "--recovery-epochs",
            "0",
            "--latency-batch",
            "0",
            "--quiet",
        ],
        ["quantize", str(pruned), "--out", str(int8), "--target", "cpu-x86", "--calib-samples", "32", "--quiet"],
        ["export", str(pruned), "--format", "monai-bundle", "--out", str(tmp_path / "mb")],
        ["export", str(int8), "--format", "monai-bundle", "--out", str(tmp_path / "mb8")],
    ]
    for args in steps:
        res = runner.invoke(app, args)
        assert res.exit_code == 0, f"{args[0]}: {res.output}"
    model, card = load_model_dir(pruned)
    assert card.structure and load_model_dir(student)[1].lineage.teachers == [f"monai:{teacher_bundle}"]
    images = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(card.preprocess(images))
    figures = {}
    for name, files in (("mb", {"model.onnx"}), ("mb8", {"model.onnx", "model.int8.onnx"})):
        bundle = tmp_path / name
        assert {p.name for p in (bundle / "models").glob("*.onnx")} == files
        meta = json.loads((bundle / "configs/metadata.json").read_text())
        assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
        assert "decision support" in meta["intended_use"] and meta["edgekd"]["lineage"]["stage"] == "prune"
        assert meta["monai_version"] == sys.modules["monai"].__version__
        verified = _verify_cli(bundle)
        assert verified.returncode == 0, verified.stderr[-2000:]
        figures[name] = float((_monai_outputs(bundle, images) - ours).abs().max())
        assert figures[name] <= 1e-4
        # ... and back in as a teacher: the exported bundle reads as a MONAI teacher with the same outputs.
        back = load_teacher(f"monai:{bundle}", data=load_data(SYNTH))
        assert back.preprocess == card.preprocess
        assert float((back.logits(images) - ours).abs().max()) <= 1e-4
    print(f"MONAI vs edgekd max abs difference: {figures}")


def test_export_checks_and_records_monai_parity(tiny_model_dir, tmp_path):
    manifest = export_bundle(tiny_model_dir, tmp_path / "mb", formats="monai-bundle")
    record = manifest.extra["monai_bundle"]
    assert record["max_abs_error"] <= 1e-4 and "models/model.safetensors" in record["files"]
    with pytest.raises(InvalidInputError, match="alone"):
        export_bundle(tiny_model_dir, tmp_path / "x", formats="onnx,monai-bundle")
    again = runner.invoke(app, ["export", tiny_model_dir, "--format", "monai-bundle", "--out", str(tmp_path / "mb")])
    assert again.exit_code == 3 and "already exists" in again.output
    res = runner.invoke(
        app, ["export", tiny_model_dir, "--format", "monai-bundle", "--out", str(tmp_path / "mb"), "--overwrite"]
    )
    assert res.exit_code == 0, res.output


def test_verify_metadata_against_the_shared_schema(tiny_model_dir, tmp_path):
    import jsonschema  # noqa: F401  (a dev dependency through edgekd[monai]; verify_metadata needs it)

    schema = Path(os.environ.get(SCHEMA_ENV) or SCHEMA_FILE)
    assert schema.is_file(), f"MONAI's metadata schema is missing at {schema}: set {SCHEMA_ENV} to a copy of it"
    export_bundle(tiny_model_dir, tmp_path / "mb", formats="monai-bundle")
    meta = json.loads((tmp_path / "mb/configs/metadata.json").read_text())
    assert meta["schema"].endswith(schema.name)  # the schema the metadata names is the one checked against
    before = schema.stat().st_mtime_ns
    # The file is at `filepath`, so MONAI does not download; a failed check raises (ValidationError).
    monai_bundle.verify_metadata(meta_file=str(tmp_path / "mb/configs/metadata.json"), filepath=str(schema))
    assert schema.stat().st_mtime_ns == before  # read, not re-downloaded over the shared copy
    broken = {k: v for k, v in meta.items() if k != "network_data_format"}  # a required key missing
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="network_data_format"):
        monai_bundle.verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema))


def test_zoo_download_fails_clearly_offline(tmp_path, monkeypatch):
    def offline(**_kw):
        raise ConnectionError("Failed to resolve 'api.github.com'")

    monkeypatch.setattr(monai_bundle, "download", offline)
    monkeypatch.setenv("EDGEKD_MONAI_DIR", str(tmp_path))
    res = runner.invoke(
        app,
        [
            "distill",
            "--teacher",
            "monai:zoo:spleen_ct_segmentation",
            "--student",
            "small:tinycnn",
            "--data",
            SYNTH,
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code == 5 and "cannot download MONAI bundle 'spleen_ct_segmentation'" in res.output
    assert "monai:BUNDLE_DIR" in res.output and not (tmp_path / "x").exists()
