"""Training that cannot be trusted is refused (issue 23, items 4, 5 and 7): diverged or non-learning runs exit 8
with one line and no model; a full disk, a read-only folder or a crash leaves nothing beside the output; an input
size the architecture cannot take is refused before the model is built."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekd import _io
from edgekd.cli import app
from edgekd.distill._checkpoint import TrainState
from edgekd.distill._loop import EXPLODE_FACTOR, check_learned
from edgekd.distill._objective import SupervisedObjective
from edgekd.errors import InvalidInputError, TrainingDivergedError
from edgekd.modeldir import read_card
from edgekd.specs import ModelSpec, Task
from edgekd.students import build_model, check_spec_input_size, min_input_size

from .conftest import SYNTH

runner = CliRunner()
TRAIN = ["train", "--model", "small:tinycnn", "--data", SYNTH, "--batch-size", "32", "-q"]


def _run(args: list) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _one_error_line(result, code: int, *needles: str, progress: bool = False) -> str:
    """The output is one error line (``progress``: the last line, after progress lines), holding ``needles``."""
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    assert lines and (progress or len(lines) == 1) and lines[-1].startswith("error:"), out
    assert sum(ln.startswith("error:") for ln in lines) == 1, out
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


def _nothing_beside(parent: Path, *allowed: str) -> None:
    """Nothing but ``allowed`` in ``parent``: no output, no hidden work folder, no temporary file."""
    assert sorted(p.name for p in parent.iterdir()) == sorted(allowed)


# --- divergence is an error (exit 8) -------------------------------------------------------------------------------


def test_train_with_lr_1e6_exits_8_and_writes_nothing(tmp_path):
    line = _one_error_line(
        _run([*TRAIN, "--epochs", "2", "--lr", "1e6", "--out", tmp_path / "m"]),
        8,
        "training diverged",
        "learning rate",
        "--lr",
        "no model was written",
    )
    assert f"over {EXPLODE_FACTOR:g}x its first value" in line
    _nothing_beside(tmp_path)


def test_distill_with_sgd_lr_1e6_exits_8_and_writes_nothing(tiny_model_dir, tmp_path):
    args = [
        "distill",
        "--student",
        "small:tinycnn",
        "--teacher",
        tiny_model_dir,
        "--data",
        SYNTH,
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--optimizer",
        "sgd",
        "--lr",
        "1e6",
        "--out",
        tmp_path / "s",
        "-q",
    ]
    _one_error_line(_run(args), 8, "training diverged", "learning rate", "no model was written")
    _nothing_beside(tmp_path)


def test_divergence_after_a_good_epoch_keeps_it_and_resume_continues(tmp_path, monkeypatch):
    real = SupervisedObjective.forward

    def explodes_in_epoch_2(self, model, images, targets, indices=None, epoch=0):
        loss, terms = real(self, model, images, targets, indices, epoch)
        return (loss * 1e6 if epoch == 1 else loss), terms

    monkeypatch.setattr(SupervisedObjective, "forward", explodes_in_epoch_2)
    out = tmp_path / "m"
    args = [*TRAIN, "--epochs", "3", "--deterministic", "--out", out]
    line = _one_error_line(_run(args), 8, "at epoch 2, step 1", "the checkpoint after epoch 1", "--resume")
    work = tmp_path / ".m.edgekd-run"
    assert str(work) in line and not out.exists()
    assert (work / "checkpoint" / "last.safetensors").is_file()
    monkeypatch.setattr(SupervisedObjective, "forward", real)  # the user lowers the learning rate
    res = _run([*args, "--resume", "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
    history = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[1]["lr"] <= 1e-3  # epoch 1 kept, 2 and 3 new
    assert read_card(out).metrics["test"]["acc"] > 0
    _nothing_beside(tmp_path, "m")


def _state(losses: list[float], accs: list[float], aurocs: list[float] | None, first: float) -> TrainState:
    hist = [
        {"epoch": i + 1, "loss": loss, "val_acc": a, **({"val_auroc": aurocs[i]} if aurocs else {})}
        for i, (loss, a) in enumerate(zip(losses, accs))
    ]
    return TrainState(select_metric="acc", history=hist, loss_reference=first, epoch=len(hist))


def test_validation_at_chance_with_a_loss_that_never_fell_is_refused():
    y = np.array([0] * 30 + [1] * 10)  # the majority class is 75 %
    flat = _state([0.70, 0.71, 0.70], [0.75, 0.75, 0.70], [0.5, 0.48, 0.5], first=0.69)
    with pytest.raises(TrainingDivergedError, match="did not learn") as err:
        check_learned(flat, y, Task.BINARY, lr=0.5)
    assert err.value.exit_code == 8 and "0.750" in err.value.message and "--lr" in err.value.hint
    # a hard data set: validation still at chance, but the loss falls -> not refused
    check_learned(_state([0.68, 0.60, 0.52], [0.75, 0.75, 0.75], [0.5, 0.5, 0.5], first=0.69), y, Task.BINARY, lr=0.5)
    # one epoch above chance (accuracy, or AUROC) -> not refused
    check_learned(_state([0.70, 0.70], [0.75, 0.775], [0.5, 0.5], first=0.69), y, Task.BINARY, lr=0.5)
    check_learned(_state([0.70, 0.70], [0.75, 0.75], [0.5, 0.61], first=0.69), y, Task.BINARY, lr=0.5)
    # multi-class: chance is the most frequent class's share; AUROC undefined (NaN) is ignored
    y3 = np.array([0, 1, 2] * 10)
    with pytest.raises(TrainingDivergedError):
        check_learned(_state([1.2, 1.2], [0.3333, 0.30], [math.nan, math.nan], first=1.1), y3, Task.MULTICLASS, lr=1)
    check_learned(_state([1.2], [0.30], None, first=1.1), None, Task.MULTICLASS, lr=1)  # no validation: not checked


# --- no leftovers after ENOSPC, EACCES or a crash --------------------------------------------------------------------


def _fail_writes(monkeypatch, module, code: int, after: int = 0):
    """``module.atomic_write_bytes`` raises ``OSError(code)`` from its call number ``after + 1`` on."""
    real, calls = module.atomic_write_bytes, []

    def write(path, data):
        calls.append(path)
        if len(calls) > after:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, data)

    monkeypatch.setattr(module, "atomic_write_bytes", write)
    return calls


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied")])
def test_train_disk_error_in_the_checkpoint_leaves_nothing(tmp_path, monkeypatch, code, words):
    from edgekd.distill import _checkpoint

    calls = _fail_writes(monkeypatch, _checkpoint, code, after=1)  # epoch 1's checkpoint is written, epoch 2's fails
    line = _one_error_line(_run([*TRAIN, "--epochs", "3", "--out", tmp_path / "m"]), 4, words, "was removed")
    assert len(calls) == 2 and "last.safetensors" in line
    _nothing_beside(tmp_path)


def test_train_disk_full_while_writing_the_model_leaves_nothing(tmp_path, monkeypatch):
    from edgekd import modeldir

    real = modeldir.st_save
    monkeypatch.setattr(modeldir, "st_save", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    _one_error_line(_run([*TRAIN, "--epochs", "1", "--out", tmp_path / "m"]), 4, "no space left")
    _nothing_beside(tmp_path)
    monkeypatch.setattr(modeldir, "st_save", real)
    assert _run([*TRAIN, "--epochs", "1", "--out", tmp_path / "m"]).exit_code == 0  # the retry works
    _nothing_beside(tmp_path, "m")


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "No space left"), (errno.EACCES, "Permission denied")])
def test_export_disk_error_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch, code, words):
    from edgekd.export import _bundle

    sys_tmp = tmp_path / "systmp"
    sys_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(sys_tmp))  # export's scratch folder (ONNX, parity) goes here
    real = _bundle.shutil.copyfile
    calls = []

    def copy(src, dst, *a, **k):
        calls.append(dst)
        if len(calls) > 1:  # the second file of the bundle
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(_bundle.shutil, "copyfile", copy)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    args = ["export", tiny_model_dir, "--format", "onnx,onnx-fp16", "--samples", "8", "--out", out_parent / "b"]
    _one_error_line(_run(args), 4, words, progress=True)
    assert len(calls) == 2
    _nothing_beside(out_parent)
    _nothing_beside(sys_tmp)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    host = _io._host()
    dead = _dead_pid()
    stale_dir = tmp_path / f".bundle.edgekd-{host}-{dead}.abcd1234.tmp"
    stale_file = tmp_path / f".bundle.edgekd-{host}-{dead}.efgh5678.tmp"
    live = tmp_path / f".bundle.edgekd-{host}-{os.getppid()}.ijkl9012.tmp"  # a writer that still runs
    other_host = tmp_path / f".bundle.edgekd-{host}x-{dead}.mnop3456.tmp"  # another machine's (shared folder)
    foreign = tmp_path / ".bundle.user-notes.tmp"
    stale_dir.mkdir()
    (stale_dir / "model.onnx").write_bytes(b"half")
    for p in (stale_file, live, other_host, foreign):
        p.write_text("x")
    with _io.atomic_dir(tmp_path / "bundle") as tmp:
        assert tmp.name.startswith(f".bundle.edgekd-{host}-{os.getpid()}.")
        (tmp / "ok").write_text("done")
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and other_host.exists() and foreign.exists()
    assert (tmp_path / "bundle" / "ok").read_text() == "done"
    stale = tmp_path / "bundle" / f".x.json.edgekd-{host}-{dead}.q1w2e3r4.tmp"
    stale.write_text("{")
    _io.atomic_write_text(tmp_path / "bundle" / "x.json", "{}")
    assert not stale.exists()


def test_a_killed_runs_work_folder_is_replaced_by_the_next_run(tmp_path):
    """kill -9 cannot clean up: its work folder (with a half-written checkpoint temporary) is the next run's."""
    work = tmp_path / ".m.edgekd-run"
    (work / "checkpoint").mkdir(parents=True)
    (work / ".edgekd").write_text("edgekd training run in progress\n")
    (work / "checkpoint" / f".last.safetensors.edgekd-{_io._host()}-{_dead_pid()}.zz99zz99.tmp").write_bytes(b"ha")
    assert _run([*TRAIN, "--epochs", "1", "--out", tmp_path / "m"]).exit_code == 0
    _nothing_beside(tmp_path, "m")
    assert not [p for p in (tmp_path / "m").rglob("*") if p.name.endswith(".tmp")]


# --- --input-size checked against the architecture ------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,least", [("tv:resnet18", 17), ("small:tinycnn", 5), ("small:resnet8", 3), ("tv:mobilenet_v3_small", 17)]
)
def test_input_size_below_the_architecture_is_refused_before_building(tmp_path, monkeypatch, model, least):
    from edgekd.distill import _train

    def no_real_build(spec, **kw):
        raise AssertionError("the model was built before its input size was checked")

    monkeypatch.setattr(_train, "build_model", no_real_build)
    line = _one_error_line(
        _run(
            [
                "train",
                "--model",
                model,
                "--data",
                SYNTH,
                "--input-size",
                "1",
                "--epochs",
                "1",
                "--out",
                tmp_path / "m",
                "-q",
            ]
        ),
        3,
        f"{model} cannot run at input size 1x1",
        f"--input-size {least}",
    )
    assert "(stride 2)" in line
    _nothing_beside(tmp_path)


@pytest.mark.parametrize("model", ["tv:resnet18", "small:tinycnn", "tv:mobilenet_v3_small", "tv:vit_b_16"])
def test_min_input_size_is_the_smallest_size_that_runs_on_the_cpu(model):
    """The meta-device answer holds for the real model: it runs at the minimum (train mode, batch 2: batch norm
    too), and the size below is refused."""
    spec = ModelSpec(name=model, num_classes=3, in_chans=1)
    with torch.device("meta"):
        least = min_input_size(build_model(spec), 1)
    net = build_model(spec).train()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, least, least)).shape == (2, 3)
    check_spec_input_size(spec, (least, least))
    with pytest.raises(InvalidInputError, match=f"--input-size {least}"):
        check_spec_input_size(spec, (least - 1, least - 1))


def test_input_size_28_still_fits_torchvision_resnet18():
    check_spec_input_size(ModelSpec(name="tv:resnet18", num_classes=2, in_chans=1), (28, 28))  # PneumoniaMNIST


def test_input_size_check_of_a_timm_model():
    pytest.importorskip("timm")
    spec = ModelSpec(name="timm:resnet18", num_classes=2, in_chans=1)
    with pytest.raises(InvalidInputError, match="--input-size 17"):
        check_spec_input_size(spec, (1, 1))
    check_spec_input_size(spec, (32, 32))
