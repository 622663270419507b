"""`edgekd import BUNDLE_DIR`: a MONAI Bundle becomes a model directory (spec ``monai:bundle``) whose network is
MONAI's own, rebuilt from the stored ``network_def``."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.errors import InvalidInputError
from edgekd.modeldir import load_model_dir
from edgekd.specs import ModelSpec
from edgekd.students import build_model
from tests.conftest import SYNTH

monai_bundle = pytest.importorskip("monai.bundle")
from tests.test_monai import NET, make_bundle  # noqa: E402  (after the importorskip: it imports monai)

runner = CliRunner()


def _monai_net(bundle):
    parser = monai_bundle.ConfigParser()
    parser.read_config(str(bundle / "configs/inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models/model.pt", weights_only=True))
    return net.eval()


@pytest.mark.parametrize("model_opt", [[], ["--model", "monai:"]])
def test_import_a_bundle_as_a_model_dir_with_monais_outputs(tmp_path, model_opt):
    bundle = make_bundle(tmp_path / "bundle")
    out = tmp_path / "imported"
    res = runner.invoke(app, ["import", str(bundle), *model_opt, "--data", SYNTH, "--out", str(out)])
    assert res.exit_code == 0, res.output
    model, card = load_model_dir(out)
    assert card.spec.name == "monai:bundle" and card.spec.kwargs["network_def"] == NET
    assert card.preprocess.input_size == (16, 16) and card.preprocess.mean == (0.0,) and card.preprocess.std == (1.0,)
    assert len(card.label_names) == 2 and (out / "model.safetensors").is_file()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        diff = (model.eval()(x) - _monai_net(bundle)(x)).abs().max().item()
    assert diff <= 1e-5
    res = runner.invoke(app, ["eval", str(out), "--data", SYNTH, "--json", "-"])
    assert res.exit_code == 0, res.output


def test_torchscript_weights_need_trust_pickle(tmp_path):
    bundle = make_bundle(tmp_path / "ts", weights="model.ts")
    args = ["import", str(bundle), "--data", SYNTH, "--out", str(tmp_path / "o")]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "TorchScript" in res.output and not (tmp_path / "o").exists()
    res = runner.invoke(app, [*args, "--trust-pickle"])
    assert res.exit_code == 0, res.output
    assert load_model_dir(tmp_path / "o")[1].spec.name == "monai:bundle"


def test_network_defs_that_need_more_than_themselves_are_refused(tmp_path):
    expr = make_bundle(tmp_path / "expr", network_def={**NET, "classes": "$1 + 1"})
    res = runner.invoke(app, ["import", str(expr), "--data", SYNTH, "--out", str(tmp_path / "o"), "--trust-pickle"])
    assert res.exit_code != 0 and "$1 + 1" in res.output and not (tmp_path / "o").exists()
    with pytest.raises(InvalidInputError, match="@num_classes"):
        build_model(
            ModelSpec(name="monai:bundle", num_classes=2, kwargs={"network_def": {**NET, "classes": "@num_classes"}})
        )
    inner = {**NET, "classes": 2, "strides": "@network_def#channels"}  # resolvable within network_def
    assert isinstance(
        build_model(ModelSpec(name="monai:bundle", num_classes=2, kwargs={"network_def": inner})), torch.nn.Module
    )
    assert json.dumps(NET)  # the spec's kwargs are plain JSON
