"""One typed config per stage (issue 22): :func:`edgekd._config.build_config` and the commands built on it."""

from __future__ import annotations

import functools
import importlib
import typing
from enum import Enum
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import typer
import yaml
from pydantic import BaseModel, Field, ValidationError
from typer.testing import CliRunner

from edgekd._config import StageConfig, build_config, config_default, config_fields
from edgekd.cli import app  # edgekd.cli._app.app, with every command registered
from edgekd.cli._options import default_text
from edgekd.distill import DistillConfig, TrainConfig, UpdateConfig
from edgekd.errors import InvalidInputError
from edgekd.prune import PruneConfig
from edgekd.quantize import QuantizeConfig
from edgekd.specs import IntendedUse

runner = CliRunner()

# ------------------------------------------------------------------------------------------- the mechanism


class _Target(StageConfig):
    ratio: float | None = None
    macs: float | None = None
    batch: int | None = None
    exclusive: ClassVar = (frozenset({"ratio", "macs"}),)


class _Stage(StageConfig):
    steps: int = Field(1, ge=1)
    target: _Target = Field(default_factory=_Target)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_epochs=0.0))
    flat_keys: ClassVar = {"epochs": "train.epochs"}


def _yaml(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_file_given_precedence_and_deep_merge(tmp_path):
    path = _yaml(tmp_path, "steps: 3\ntrain:\n  batch-size: 7\n  lr: 0.5\nepochs: 4\n")
    cfg = build_config(_Stage, path, {"train.lr": 0.25})
    assert cfg.steps == 3 and cfg.train.batch_size == 7 and cfg.train.epochs == 4
    assert cfg.train.lr == 0.25  # given wins over the file
    assert cfg.train.warmup_epochs == 0.0  # the section's default of this stage, not TrainConfig's 1.0
    assert build_config(_Stage, None, {}).train.lr == 1e-3
    assert _Stage.build(path, {"steps": 2}).steps == 2


def test_exclusive_group_replaced_by_the_upper_layer(tmp_path):
    path = _yaml(tmp_path, "target: {ratio: 0.3, batch: 4}\n")
    cfg = build_config(_Stage, path, {"target.macs": 0.5})
    assert cfg.target.macs == 0.5 and cfg.target.ratio is None and cfg.target.batch == 4


def test_section_of_a_larger_file(tmp_path):
    path = _yaml(tmp_path, "other: 1\nstage:\n  steps: 5\n")
    assert build_config(_Stage, path, {}, section="stage").steps == 5


@pytest.mark.parametrize(
    ("text", "name"),
    [("stepz: 3\n", "stepz"), ("train:\n  epochz: 3\n", "train.epochz"), ("target: {kind: macs}\n", "target.kind")],
)
def test_unknown_key_at_any_depth_is_named(tmp_path, text, name):
    with pytest.raises(InvalidInputError, match=f"unknown key {name}") as e:
        build_config(_Stage, _yaml(tmp_path, text), {})
    assert "valid keys" in e.value.hint


def test_unknown_given_path_and_bad_value():
    with pytest.raises(InvalidInputError, match="unknown key train.nope"):
        build_config(_Stage, None, {"train.nope": 1})
    with pytest.raises(InvalidInputError, match="invalid option steps"):
        build_config(_Stage, None, {"steps": 0})


def test_config_fields_walks_sections():
    paths = config_fields(_Stage)
    assert {"steps", "target.ratio", "train.lr", "train.epochs"} <= set(paths)


# ------------------------------------------------------------------------------------------- the commands

# What each command builds, the library function it hands the config to, and its options that are no key of the
# config (an explicit, short list: outputs, how they are shown, the file itself, launch and run inputs).
COMMANDS = {
    "train": (
        DistillConfig,
        "edgekd.cli._train",
        "train_model",
        {"model": "student"},
        {"out", "overwrite", "config", "json_out", "quiet", "nproc"},
    ),
    "distill": (
        DistillConfig,
        "edgekd.cli._distill",
        "distill_model",
        {"teacher": "teachers", "loss": "losses", "teacher_weight": "teacher_weights"},
        {"out", "overwrite", "config", "json_out", "quiet", "nproc", "baseline"},
    ),
    "prune": (
        PruneConfig,
        "edgekd.cli._prune",
        "prune_model_dir",
        {},
        {"model_dir", "out", "overwrite", "config", "json_out", "quiet", "data"},
    ),
    "quantize": (
        QuantizeConfig,
        "edgekd.cli._quantize",
        "quantize_model_dir",
        {},
        {"model_dir", "out", "overwrite", "config", "json_out", "quiet", "data", "target_sensitivity"},
    ),
    "update": (
        UpdateConfig,
        "edgekd.cli._hospital",
        "update_model",
        {},
        {"model_dir", "out", "overwrite", "config", "json_out", "quiet", "data", "download"},
    ),
}
ARGS = {"train": [], "distill": [], "prune": ["runs/m"], "quantize": ["runs/m"], "update": ["runs/m", "-d", "x"]}


def _capture(monkeypatch, command: str) -> list:
    """Replace the library function the command calls; return the list its config is appended to."""
    _, module, func, _, _ = COMMANDS[command]
    seen: list = []

    def fake(*args, **kwargs):
        seen.append(next(a for a in args if isinstance(a, BaseModel)))
        return SimpleNamespace(metrics={}, params=0, lineage=None)

    monkeypatch.setattr(importlib.import_module(module), func, fake)
    return seen


def _invoke(command: str, *args: str, tmp_path):
    return runner.invoke(app, [command, *ARGS[command], *args, "--out", str(tmp_path / "out"), "--quiet"])


def _resolve(model: type[BaseModel], path: str) -> str:
    """The field path an option or flat key sets (``lr`` -> ``train.lr``)."""
    head, _, rest = path.partition(".")
    head = getattr(model, "flat_keys", {}).get(head, head)
    return f"{head}.{rest}" if rest else head


def _is_key(model: type[BaseModel], path: str) -> bool:
    head, _, rest = path.partition(".")
    if head not in model.model_fields:
        return False
    if not rest:
        return True
    sub = next(
        a
        for a in (model.model_fields[head].annotation, *typing.get_args(model.model_fields[head].annotation))
        if isinstance(a, type) and issubclass(a, StageConfig)
    )
    return rest in sub.input_keys or _is_key(sub, rest)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_a_config_key_and_has_no_default_of_its_own(command):
    model, _, _, fields, not_config = COMMANDS[command]
    click_cmd = typer.main.get_command(app).commands[command]
    options = [p for p in click_cmd.params if p.param_type_name == "option" and p.name != "help"]
    assert not_config - {"model_dir"} <= {p.name for p in options}
    for p in options:
        if p.name in not_config:
            continue
        path = _resolve(model, fields.get(p.name, p.name))
        assert _is_key(model, path), f"--{p.name} sets {path}, no key of {model.__name__}"
        default = p.default() if callable(p.default) else p.default
        if default is not None:  # a default of its own must be the config's
            assert default == config_default(model, path), f"--{p.name}: {default!r}"
        shown = default_text(model, path)  # the help shows the config's default, rendered from it
        assert not shown or shown in (p.help or ""), f"--{p.name}: {p.help!r}"


SYNTH_SPEC = "synthetic:classes=2,n=64,size=16,channels=1,seed=3"
# Values no generic rule can pick (names, specs, lists that must agree, a target); each differs from the default.
SPECIAL = {
    "student": "small:resnet8",
    "data": SYNTH_SPEC,
    "teachers": ["t1", "t2"],
    "losses": ["ce:1", "kd:0.5,T=2"],
    "teacher_weights": [1.0, 3.0],
    "cache.enabled": True,
    "cache.dir": "cachedir",
    "unlabeled": "folder:unl",
    "intended_use": "modality=CR",
    "train.augment": "light",
    "train.select_metric": "acc",
    "importance": "lamp",
    "target.kind": "latency",
    "target.value": 2.5,
    "target.batch": 16,
    "target.backend": "ort",
    "round_to": 8,
    "keep": ["layer1"],
    "teacher": "runs/t",
    "target": "cpu-arm",
    "metric": "auroc",
    "qat_backend": "torch",
    "eval_split": "val",
}


def _other_value(model: type[BaseModel], path: str, info) -> Any:
    """A valid value of the field at ``path`` that is not its default."""
    if path in SPECIAL:
        return SPECIAL[path]
    try:
        default = config_default(model, path)
    except KeyError:
        default = None
    ann = info.annotation
    kinds = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type)]
    if bool in kinds:
        return not default if default is not None else True
    enum = next((a for a in kinds if issubclass(a, Enum)), None)
    if enum is not None:
        return next(m.value for m in enum if m != default)
    if int in kinds:
        return default + 1 if isinstance(default, int) else 3
    if float in kinds:
        return default / 2 if default else 0.1
    raise AssertionError(f"no rule for {model.__name__}.{path}: add it to SPECIAL")


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in values.items():
        *parents, leaf = path.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json")
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_key_of_the_config_is_honoured_from_the_file(command, monkeypatch, tmp_path):
    model = COMMANDS[command][0]
    fields = {path: info for path, info in config_fields(model).items() if path not in model.unread}
    values = {path: _other_value(model, path, info) for path, info in fields.items()}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_nest(values)))
    seen = _capture(monkeypatch, command)
    r = _invoke(command, "--config", str(path), tmp_path=tmp_path)
    assert r.exit_code == 0, r.output
    (cfg,) = seen
    expected = {"intended_use": _norm(IntendedUse.parse("modality=CR"))}
    for key, value in values.items():
        got = functools.reduce(getattr, key.split("."), cfg)
        assert _norm(got) == expected.get(key, value), key


def test_prune_config_file_reaches_the_library(monkeypatch, tmp_path):
    """Issue 22: `importance: lamp` and `steps: 3` in --config ran as l2 with 1 step, silently."""
    path = tmp_path / "p.yaml"
    path.write_text("importance: lamp\nsteps: 3\ntarget_macs: 0.5\nrecovery:\n  lr: 0.01\n")
    seen = _capture(monkeypatch, "prune")
    r = _invoke("prune", "--config", str(path), tmp_path=tmp_path)
    assert r.exit_code == 0, r.output
    (cfg,) = seen
    assert cfg.importance == "lamp" and cfg.steps == 3
    assert cfg.target.kind.value == "macs" and cfg.target.value == 0.5 and cfg.train.lr == 0.01
    assert cfg.train.warmup_epochs == 0.0  # prune's own recovery default, kept beside the file's lr


@pytest.mark.parametrize(
    ("command", "text", "flags", "check"),
    [
        (
            "prune",
            "importance: lamp\nsteps: 3\ntarget: {ratio: 0.3}\ntrain: {lr: 0.01, batch_size: 8}\n",
            ["--steps", "2", "--lr", "0.02", "--target-macs", "0.6"],
            lambda c: (
                c.importance == "lamp"
                and c.steps == 2
                and c.train.lr == 0.02
                and c.train.batch_size == 8
                and c.target.kind.value == "macs"
                and c.target.value == 0.6
            ),
        ),
        (
            "quantize",
            "method: qat\ncalib_samples: 8\nqat: {epochs: 5}\nloss: ['ce:1']\n",
            ["--calib-samples", "16", "--epochs", "1", "--no-kd"],
            lambda c: (
                c.method.value == "qat"
                and c.calib_samples == 16
                and c.train.epochs == 1
                and not c.kd
                and c.losses == ["ce:1"]
            ),
        ),
        (
            "train",
            "model: small:tinycnn\nepochs: 4\nlr: 0.01\n",
            ["--epochs", "2", "--model", "small:resnet8"],
            lambda c: c.student == "small:resnet8" and c.train.epochs == 2 and c.train.lr == 0.01,
        ),
        (
            "distill",
            "student: small:tinycnn\nteacher: [t1]\ntrain: {epochs: 4}\ncache: {topk: 3}\n",
            ["--epochs", "2", "--teacher", "t2", "--cache-topk", "5", "--loss", "kd:1,T=2"],
            lambda c: (
                c.teachers == ["t2"] and c.train.epochs == 2 and c.cache.topk == 5 and c.loss_terms == ["kd:1,T=2"]
            ),
        ),
    ],
)
def test_flags_override_the_file(command, text, flags, check, monkeypatch, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    seen = _capture(monkeypatch, command)
    r = _invoke(command, "--config", str(path), *flags, tmp_path=tmp_path)
    assert r.exit_code == 0, r.output
    assert check(seen[0])


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("text", "name"), [("bogus_key: 1\n", "bogus_key"), ("train:\n  epochz: 3\n", "train.epochz")])
def test_unknown_key_exits_3_with_one_line_naming_it(command, text, name, monkeypatch, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    seen = _capture(monkeypatch, command)
    r = _invoke(command, "--config", str(path), tmp_path=tmp_path)
    assert r.exit_code == 3 and not seen
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"unknown key {name}" in lines[0] and "valid keys" in lines[0], r.output


def test_a_key_the_stage_never_reads_exits_3(monkeypatch, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("target_macs: 0.5\ntrain: {epochs: 5}\n")  # recovery_epochs decides pruning's fine-tuning
    seen = _capture(monkeypatch, "prune")
    r = _invoke("prune", "--config", str(path), tmp_path=tmp_path)
    assert r.exit_code == 3 and "train.epochs" in r.output and "recovery_epochs" in r.output and not seen


def test_unknown_nested_target_key_exits_3(monkeypatch, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("target: {macs: 0.5, bogus: 1}\n")
    seen = _capture(monkeypatch, "prune")
    r = _invoke("prune", "--config", str(path), tmp_path=tmp_path)
    assert r.exit_code == 3 and "unknown key target.bogus" in r.output and not seen


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("distill", ["--student", "small:tinycnn", "--teacher", "runs/t", "--loss", "kdd:1,T=4"]),
        ("train", ["--model", "small:tinycnn", "--config", "{cfg}"]),
        ("prune", ["--target-macs", "0.5", "--loss", "kdd:1"]),
        ("quantize", ["--loss", "kd:1,TT=4"]),
    ],
)
def test_a_loss_typo_fails_before_data_loads(command, args, monkeypatch, tmp_path):
    def no_data(*a, **k):
        raise AssertionError("data was loaded")

    monkeypatch.setattr("edgekd.modeldir.load_model_and_data", no_data)
    monkeypatch.setattr("edgekd.data.load_data", no_data)
    (tmp_path / "c.yaml").write_text("loss: ['ce:1', 'kdd:1']\n")  # train has no --loss: its file may have one
    seen = _capture(monkeypatch, command)
    r = _invoke(command, *(a.format(cfg=tmp_path / "c.yaml") for a in args), tmp_path=tmp_path)
    assert r.exit_code == 3 and not seen, r.output
    assert "kdd" in r.output or "TT" in r.output


def test_saved_distill_config_reads_back(tmp_path):
    s = DistillConfig(
        student="small:tinycnn",
        teachers="runs/t",
        losses=["ce:1", "kd:1,T=4"],
        cache={"topk": 3},
        intended_use="modality=CR",
        train=TrainConfig(epochs=2),
    )
    assert [str(t) for t in s.losses] == ["ce:1", "kd:1,T=4"] and s.cache.topk == 3
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(s.record()))
    assert DistillConfig.build(path) == s


@pytest.mark.parametrize(
    "target",
    [{"kind": "macs", "value": 0.5}, {"macs": 0.5}, "target_macs", {"latency_ms": 2.5, "batch": 8}, {"ratio": 0.3}],
)
def test_prune_target_forms(target):
    given = {"target_macs": 0.5} if target == "target_macs" else {"target": target}
    t = PruneConfig.build(None, given).target
    assert t.model_dump(mode="json") in (
        {"kind": "macs", "value": 0.5},
        {"kind": "latency", "value": 2.5, "batch": 8, "backend": "ort"},
        {"kind": "ratio", "value": 0.3},
    )
    with pytest.raises(InvalidInputError, match="exactly one pruning target"):
        PruneConfig.build(None, {"target.macs": 0.5, "target.ratio": 0.3})


def test_the_pipeline_checks_loss_terms_with_the_stages_validator():
    """One loss check for every config (distill.check_losses): a typo names the closest losses at load time."""
    from edgekd.pipeline._config import DistillSection

    assert DistillSection(losses="kd:T=4").losses == ["kd:T=4"]  # one term or a list, as in PruneConfig
    with pytest.raises(ValidationError, match="unknown"):
        DistillSection(losses=["kd:T=4", "kdd"])
