import json
import os

import pytest
import torch
from typer.testing import CliRunner

from edgekd import __version__
from edgekd.cli import app

from .conftest import SYNTH

runner = CliRunner()


def run(*args, env=None):
    return runner.invoke(app, list(args), env=env)


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def _registered_commands():
    """Every command the app registers, sub-commands of groups included (e.g. ``bench compare``)."""
    import typer

    def walk(cmd, path):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click: no isinstance check)
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, [*path, name])
        elif not getattr(cmd, "hidden", False):
            yield path

    return list(walk(typer.main.get_command(app), []))


def test_the_help_test_sees_every_command():
    names = {" ".join(p) for p in _registered_commands()}
    assert {"train", "distill", "prune", "quantize", "export", "run", "predict", "serve", "dicom-node"} <= names
    assert any(n.startswith("bench") for n in names)


@pytest.mark.parametrize("cmd", _registered_commands(), ids=" ".join)
def test_every_command_has_help_with_example(cmd):
    r = run(*cmd, "--help", env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "Example" in r.output, f"`edgekd {' '.join(cmd)} --help` shows no example"


def test_train_cli_end_to_end(tmp_path):
    out = tmp_path / "m"
    r = run(
        "train",
        "--model",
        "small:tinycnn",
        "--data",
        SYNTH,
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--quiet",
        "--json",
        str(tmp_path / "r.json"),
    )
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["metrics"]["test"]["n"] > 0
    r = run("eval", str(out), "--json", "-")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert ev["data"].startswith("synthetic:") and ev["metrics"]["acc"] == pytest.approx(res["metrics"]["test"]["acc"])


def test_unknown_model_suggests_and_exits_3(tmp_path):
    r = run("train", "--model", "small:resnet8x5", "--data", SYNTH, "--out", str(tmp_path / "x"))
    assert r.exit_code == 3
    assert "unknown model" in r.output and "small:resnet8x4" in r.output
    assert not (tmp_path / "x" / "edgekd.json").exists()


def test_unknown_data_source_suggests(tmp_path):
    r = run("train", "--model", "small:tinycnn", "--data", "pneumonia", "--out", str(tmp_path / "x"))
    assert r.exit_code == 3 and "pneumoniamnist" in r.output


def test_eval_missing_dir_exits_4(tmp_path):
    r = run("eval", str(tmp_path / "nope"))
    assert r.exit_code == 4 and "does not exist" in r.output


def test_bad_option_value_exits_2():
    r = run("train", "--model", "small:tinycnn", "--epochs", "abc", "--out", "x")
    assert r.exit_code == 2


def test_config_file_and_flag_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: small:tinycnn\ndata: '{SYNTH}'\nepochs: 1\nbatch_size: 16\nlr: 0.01\n")
    out = tmp_path / "m"
    r = run("train", "--config", str(cfg), "--batch-size", "32", "--out", str(out), "--quiet")
    assert r.exit_code == 0, r.output
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] == 32 and saved["lr"] == 0.01 and saved["epochs"] == 1


def test_config_unknown_key_exits_3(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: small:tinycnn\nepochz: 3\n")
    r = run("train", "--config", str(cfg), "--out", str(tmp_path / "m"))
    assert r.exit_code == 3 and "epochz" in r.output


def test_debug_env_shows_traceback(tmp_path):
    r = run("eval", str(tmp_path / "nope"), env={**os.environ, "EDGEKD_DEBUG": "1"})
    assert r.exit_code != 0 and r.exception is not None


def test_inspect_model_dir_and_name(tiny_model_dir):
    r = run("inspect", tiny_model_dir, "--json", "-")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["params"] > 0 and info["macs"] > 0 and info["tap_points"]
    assert info["input_shape"] == [1, 1, 16, 16]
    r = run("inspect", "small:resnet8x4", "--input-size", "32", "--json", "-")
    assert r.exit_code == 0 and json.loads(r.stdout)["params"] > 1_000_000


def test_zoo_lists_students():
    r = run("zoo", "--json", "-")
    assert r.exit_code == 0, r.output
    names = {row["name"] for row in json.loads(r.stdout)}
    assert {"small:resnet8x4", "small:tinycnn"} <= names


def test_import_state_dict_and_pickle_opt_in(tiny_model_dir, tmp_path):
    from edgekd.modeldir import load_model_dir

    model, _ = load_model_dir(tiny_model_dir)
    sd_path = tmp_path / "sd.pt"
    torch.save({"state_dict": model.state_dict()}, sd_path)
    r = run("import", str(sd_path), "--model", "small:tinycnn", "--data", SYNTH, "--out", str(tmp_path / "imp"))
    assert r.exit_code == 0, r.output
    m2, _ = load_model_dir(tmp_path / "imp")
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(model(x), m2(x))

    full_path = tmp_path / "full.pt"
    torch.save(model, full_path)
    r = run("import", str(full_path), "--model", "small:tinycnn", "--data", SYNTH, "--out", str(tmp_path / "p"))
    assert r.exit_code == 4 and "trust-pickle" in r.output
    assert not (tmp_path / "p").exists()
    r = run(
        "import",
        str(full_path),
        "--model",
        "small:tinycnn",
        "--data",
        SYNTH,
        "--out",
        str(tmp_path / "p"),
        "--trust-pickle",
    )
    assert r.exit_code == 0, r.output


def test_help_lists_commands_by_stage_in_pipeline_order():
    r = runner.invoke(app, ["--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0
    panels = [line for line in r.output.splitlines() if line.startswith("╭─ ") and ". " in line]
    numbers = [int(line.split("╭─ ")[1].split(".")[0]) for line in panels]
    assert numbers == sorted(numbers) and numbers[:5] == [1, 2, 3, 4, 5], panels
    text = r.output
    order = ["train", "distill", "prune", "quantize", "export", "bench"]
    positions = [text.index(f"│ {name} ") for name in order]
    assert positions == sorted(positions)
