"""The README's "Python API" example, run on synthetic data: the same calls, small sizes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import SYNTH

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README has no Python API example"
    return match.group(1)


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    """Execute the README code with the data, epochs and timings shrunk; every stage must produce its artifact."""
    code = _readme_example()
    small = {
        'data = "pneumoniamnist"': f'data = "{SYNTH}"',
        "epochs=4, batch_size=128": "epochs=1, batch_size=32",
        "target_macs=0.5), steps=2)": "target_macs=0.7), steps=1, recovery_epochs=1, latency_s=0.2)",
        "min_s=1, min_iters=20": "min_s=0.05, min_iters=3, warmup_s=0.01, warmup_iters=1, roofline=False",
    }
    for old, new in small.items():
        assert old in code, f"the README example changed: {old!r} not found; update this test"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - our own README, the point of the test
    for d in ("teacher", "student", "pruned", "int8", "bundle"):
        assert (tmp_path / "runs" / d).is_dir(), d
    printed = capsys.readouterr().out.splitlines()
    # teacher (1 file) and the INT8 bundle (INT8 + its FP32 reference) at 2 batch sizes
    assert len([line for line in printed if line.endswith(" ms")]) == 6, printed
