"""One typed config per stage (issue 22): :func:`edgekd._config.build_config` and the commands built on it."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import Field

from edgekd._config import StageConfig, build_config, config_fields
from edgekd.distill import TrainConfig
from edgekd.errors import InvalidInputError

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
