"""Report files (--json, --csv, --markdown): an existing file is never replaced silently, an input never."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgekd._io import check_report_path
from edgekd.cli._app import app
from edgekd.errors import ArtifactError, InvalidInputError


def test_a_new_file_and_stdout_are_accepted(tmp_path):
    check_report_path(tmp_path / "r.json")
    check_report_path(tmp_path / "not-yet" / "r.json")  # the folder is created when the report is written
    check_report_path("-")
    check_report_path(None)


def test_an_existing_file_needs_overwrite(tmp_path):
    existing = tmp_path / "r.json"
    existing.write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists.*--overwrite"):
        check_report_path(existing)
    check_report_path(existing, overwrite=True)
    assert existing.read_text() == "mine"  # checking never writes


def test_an_input_is_refused_even_with_overwrite(tmp_path):
    baseline = tmp_path / "base.json"
    baseline.write_text("{}")
    with pytest.raises(InvalidInputError, match="is an input"):
        check_report_path(baseline, overwrite=True, inputs=(baseline, None))


def test_a_folder_or_a_file_as_parent_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="is a folder"):
        check_report_path(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ArtifactError, match=f"{blocker} is a file, not a folder"):
        check_report_path(blocker / "r.json", "--csv")


def test_cli_refuses_an_existing_json_before_any_work(tmp_path):
    existing = tmp_path / "summary.json"
    existing.write_text("keep me")
    r = CliRunner().invoke(app, ["run", str(tmp_path / "missing.yaml"), "--json", str(existing)])
    assert r.exit_code == 3, r.output
    assert "already exists" in r.output and "Traceback" not in r.output
    assert existing.read_text() == "keep me"
    # with --overwrite the check passes and the command goes on to its own validation (the missing config file)
    r = CliRunner().invoke(app, ["run", str(tmp_path / "missing.yaml"), "--json", str(existing), "--overwrite"])
    assert "already exists" not in r.output and existing.read_text() == "keep me"
