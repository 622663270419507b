"""Stage records: what decides whether a stage of `edgekd run` is skipped, resumed or run again.

Each stage writes ``RUN/stages/NAME.json`` (a :class:`StageRecord`): its *key* (sha256 over its resolved
settings and the hashes of its inputs), its output path and the output's hash, and its status. A record is
written ``running`` before the stage starts and ``done`` after its output is complete, both atomically. On
the next run a stage is

* **skipped** when its record is ``done``, the key is the same and the output still has the recorded hash;
* **resumed** when the record is ``running`` with the same key and the stage can continue (a training run
  left a checkpoint in its work directory);
* **run** otherwise, replacing its earlier output (an edgekd artifact inside the run directory).

A stage's inputs are the outputs of earlier stages, identified by their hashes, so a stage that changes its
output re-runs every stage after it that reads it, and nothing else.

Example:
    >>> key = stage_key({"epochs": 4}, {"teacher": "ab12..."})
    >>> rec = read_record(run_dir, "student")
    >>> rec is not None and rec.done and rec.key == key
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from edgekd import __version__
from edgekd._io import atomic_write_text, sha256_file

__all__ = ["StageRecord", "stage_key", "artifact_hash", "read_record", "write_record", "RECORDS_DIR", "now"]

RECORDS_DIR = "stages"
_MAIN_FILES = ("model.safetensors", "manifest.json")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class StageRecord(BaseModel):
    """``RUN/stages/NAME.json``.

    Attributes:
        name: the stage (``teacher``, ``student-s1``, ``int8-cpu-x86``, ...).
        kind: what it does (``train``, ``distill``, ``prune``, ``quantize``, ``export``, ``evaluate``, ...).
        key: sha256 of the settings and input hashes (see :func:`stage_key`).
        settings: the resolved settings that went into the key.
        inputs: ``{input name: sha256}``.
        output: the output path, relative to the run directory (absolute for an artifact outside it).
        output_sha256: :func:`artifact_hash` of the output.
        status: ``running`` or ``done``.
        resumed: this run continued an interrupted one.
        seconds: wall time of the last execution.
        result: a small summary (metrics, chosen model, ...) for the final table.
    """

    name: str
    kind: str
    key: str
    settings: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    output: str
    output_sha256: str | None = None
    status: str = "running"
    resumed: bool = False
    started: str = Field(default_factory=now)
    finished: str | None = None
    seconds: float | None = None
    edgekd_version: str = __version__
    result: dict[str, Any] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status == "done"


def stage_key(settings: dict[str, Any], inputs: dict[str, str]) -> str:
    """sha256 of the canonical JSON of the settings, the input hashes and the edgekd version."""
    blob = json.dumps({"settings": settings, "inputs": inputs, "edgekd": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def artifact_hash(path: str | Path) -> str | None:
    """The hash that identifies an artifact: its weights (model directory), manifest (bundle) or the file itself.

    None when it does not exist.
    """
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    for name in _MAIN_FILES:
        if (p / name).is_file():
            return sha256_file(p / name)
    return None


def _path(root: Path, name: str) -> Path:
    return root / RECORDS_DIR / f"{name}.json"


def read_record(root: Path, name: str) -> StageRecord | None:
    """The stage's record, or None when there is none or it is unreadable (the stage then runs)."""
    p = _path(root, name)
    if not p.is_file():
        return None
    try:
        return StageRecord.model_validate_json(p.read_text())
    except (ValidationError, ValueError, OSError):
        return None


def write_record(root: Path, record: StageRecord) -> None:
    atomic_write_text(_path(root, record.name), record.model_dump_json(indent=2) + "\n")
