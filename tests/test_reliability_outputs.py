"""Reliability of what edgekd writes: never destroy what exists, refuse bad outputs before working, survive
Ctrl-C and kill -9, trust no bundle. Every case runs the real CLI and checks the exit code, the one-line
message and what is (not) left on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgekd.cli import app
from edgekd.modeldir import load_model_dir

from .conftest import SYNTH

runner = CliRunner()
TRAIN = ["train", "--model", "small:tinycnn", "--data", SYNTH, "--epochs", "1", "--batch-size", "32", "-q"]


def _run(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(result, code: int, *needles: str) -> str:
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:"), out
    text = " ".join(lines)
    for n in needles:
        assert n in text, text
    return text


def _user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "notes.txt").write_text("the user's own file")
    (path / "scan.png").write_bytes(b"\x89PNG not really")
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- never destroy what exists ---------------------------------------------------------------------------------


def test_train_refuses_a_folder_of_user_files(tmp_path):
    out = tmp_path / "mine"
    before = _user_folder(out)
    _one_error_line(_run([*TRAIN, "--out", out]), 3, "not empty", "--overwrite")
    assert _snapshot(out) == before
    _one_error_line(_run([*TRAIN, "--out", out, "--overwrite"]), 3, "edgekd did not write")
    assert _snapshot(out) == before
    assert not list(tmp_path.glob(".mine*"))  # no work folder was started


def test_train_refuses_an_existing_model_without_overwrite(tiny_model_dir, tmp_path):
    before = _snapshot(Path(tiny_model_dir))
    _one_error_line(_run([*TRAIN, "--out", tiny_model_dir]), 3, "already exists")
    assert _snapshot(Path(tiny_model_dir)) == before


def test_export_refuses_its_own_input_and_its_parent(tiny_model_dir):
    src = Path(tiny_model_dir)
    before = _snapshot(src.parent)
    _one_error_line(_run(["export", src, "--out", src]), 3, "is the input")
    _one_error_line(_run(["export", src, "--out", src.parent, "--overwrite"]), 3, "contains the input")
    assert _snapshot(src.parent) == before


def test_prune_and_quantize_refuse_user_folders(tiny_model_dir, tmp_path):
    out = tmp_path / "mine"
    before = _user_folder(out)
    _one_error_line(_run(["prune", tiny_model_dir, "--out", out, "--ratio", "0.3", "--recovery-epochs", "0"]), 3)
    _one_error_line(_run(["quantize", tiny_model_dir, "--out", out, "--overwrite"]), 3, "edgekd did not write")
    assert _snapshot(out) == before


def test_out_below_a_file_is_refused_before_work(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    _one_error_line(_run([*TRAIN, "--out", blocker / "model"]), 4, "is a file")
    assert blocker.read_text() == "x"


def test_unwritable_output_folder_is_refused_before_work(tmp_path, monkeypatch):
    # Tests run as root in CI, where permission bits do not stop writes; the check itself is what is tested.
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real(p, mode))
    _one_error_line(_run([*TRAIN, "--out", locked / "model"]), 4, "permission denied")
    assert not (locked / "model").exists()


def test_json_pointing_at_a_folder_is_refused_before_training(tmp_path):
    (tmp_path / "report").mkdir()
    _one_error_line(_run([*TRAIN, "--out", tmp_path / "m", "--json", tmp_path / "report"]), 3, "--json")
    assert not (tmp_path / "m").exists()


def test_cache_dir_that_is_a_file_is_refused(tiny_model_dir, tmp_path):
    f = tmp_path / "cache"
    f.write_text("not a folder")
    args = [
        "distill",
        "--student",
        "small:tinycnn",
        "--teacher",
        tiny_model_dir,
        "--data",
        SYNTH,
        "--epochs",
        "1",
        "--cache-teacher",
        "--cache-dir",
        f,
        "--out",
        tmp_path / "s",
        "-q",
    ]
    _one_error_line(_run(args), 3, "is a file")
    assert f.read_text() == "not a folder" and not (tmp_path / "s").exists()


def test_unknown_selection_metric_is_refused_before_any_epoch(tmp_path):
    _one_error_line(_run([*TRAIN, "--out", tmp_path / "m", "--select-metric", "aucroc"]), 3, "select_metric")
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.*"))


@pytest.mark.parametrize("stage", ["train", "distill"])
def test_diverged_run_names_the_step_and_leaves_the_existing_model(stage, tiny_model_dir, tmp_path):
    out = tmp_path / "m"
    assert _run([*TRAIN, "--out", out]).exit_code == 0
    before = _snapshot(out)
    if stage == "train":
        args = [*TRAIN, "--lr", "1e30"]
    else:
        args = [
            "distill",
            "--student",
            "small:tinycnn",
            "--teacher",
            tiny_model_dir,
            "--data",
            SYNTH,
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--lr",
            "1e30",
            "-q",
        ]
    text = _one_error_line(_run([*args, "--out", out, "--overwrite"]), 8, "the loss became", "step")
    assert "no model was written" in text and "learning rate" in text
    assert _snapshot(out) == before  # the finished model, its config.yaml and checkpoint: untouched


# --- trust no file -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle"
    assert _run(["export", tiny_model_dir, "--out", out, "--samples", "8"]).exit_code == 0
    return out


def test_bench_refuses_a_tampered_bundle_unless_no_verify(bundle, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in bundle.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    onnx_file = bad / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the weights
    onnx_file.write_bytes(bytes(data))
    fast = [
        "--batch",
        "1",
        "--backend",
        "ort",
        "--min-s",
        "0.01",
        "--min-iters",
        "2",
        "--warmup-s",
        "0",
        "--warmup-iters",
        "1",
        "--no-roofline",
        "-q",
    ]
    _one_error_line(_run(["bench", bad, *fast]), 6, "failed verification", "model.onnx")
    r = _run(["bench", bad, *fast, "--no-verify", "--json", tmp_path / "b.json"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output and "--no-verify" in r.output
    assert json.loads((tmp_path / "b.json").read_text())["results"]


# --- interruption ------------------------------------------------------------------------------------------------


def _edgekd(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "edgekd", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


LONG = [
    "train",
    "--model",
    "small:tinycnn",
    "--data",
    "synthetic:classes=2,n=2000,size=16,channels=1,seed=0",
    "--batch-size",
    "16",
    "--epochs",
    "3",
    "--deterministic",
    "-q",
]


@pytest.mark.slow
def test_ctrl_c_during_training_keeps_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "m"
    proc = _edgekd([*LONG, "--out", out])
    _wait_for(out.with_name(".m.edgekd-run") / "checkpoint" / "last.safetensors", proc)  # epoch 1 finished
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().startswith("error: interrupted")
    assert "--resume" in err and not out.exists()
    resumed = _edgekd([*LONG, "--out", out, "--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert load_model_dir(out)[1].metrics["best_epoch"]["epoch"] >= 1


@pytest.mark.slow
def test_ctrl_c_at_start_up_is_one_line(tmp_path):
    proc = _edgekd([*LONG, "--out", tmp_path / "m"])
    time.sleep(0.3)  # still importing torch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().startswith("error: interrupted")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """On CPU with --deterministic the resumed run's final weights equal an uninterrupted run's, bit for bit."""
    full = _edgekd([*LONG, "--out", tmp_path / "full"])
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err
    part = tmp_path / "part"
    proc = _edgekd([*LONG, "--out", part])
    ckpt = part.with_name(".part.edgekd-run") / "checkpoint" / "last.safetensors"
    _wait_for(ckpt, proc)
    time.sleep(0.5)  # somewhere inside epoch 2
    proc.kill()
    proc.wait()
    assert not part.exists()  # killed: no model directory appeared
    resumed = _edgekd([*LONG, "--out", part, "--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    a, _ = load_model_dir(tmp_path / "full")
    b, _ = load_model_dir(part)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k


_KILL_ON_RENAME = """
import os, signal, sys
real = os.replace
target = os.sep + sys.argv[1]
def replace(src, dst, *a, **k):
    if str(dst).endswith(target):
        os.kill(os.getpid(), signal.SIGKILL)  # killed at the very moment the artifact would appear
    return real(src, dst, *a, **k)
os.replace = replace
sys.argv = ["edgekd", *sys.argv[2:]]
from edgekd._entry import main
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["last.safetensors", "m"])
def test_a_process_killed_during_the_final_save_leaves_nothing_that_loads(target, tmp_path):
    script = tmp_path / "kill.py"
    script.write_text(_KILL_ON_RENAME)
    out = tmp_path / "m"
    args = [*TRAIN, "--out", out]
    proc = subprocess.run(
        [sys.executable, str(script), target, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # the model directory never appeared
    ckpt = out.with_name(".m.edgekd-run") / "checkpoint" / "last.safetensors"
    if target == "last.safetensors":  # killed before the first checkpoint was renamed into place
        assert not ckpt.exists()
        r = _run([*TRAIN, "--out", out, "--resume"])
        _one_error_line(r, 4, "no checkpoint")
    else:  # killed as the finished run was renamed: the complete checkpoint resumes to the model
        r = _run([*TRAIN, "--out", out, "--resume"])
        assert r.exit_code == 0, r.output
        load_model_dir(out)


def test_resume_with_another_model_or_a_corrupt_checkpoint(tmp_path):
    out = tmp_path / "m"
    proc_args = [*TRAIN, "--out", out]
    assert _run(proc_args).exit_code == 0
    ckpt = out / "checkpoint" / "last.safetensors"
    assert ckpt.is_file()
    other = [a if a != "small:tinycnn" else "small:resnet8" for a in proc_args]
    _one_error_line(_run([*other, "--resume"]), 4, "another model")
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    _one_error_line(_run([*proc_args, "--resume"]), 4, "corrupt or truncated")
