"""docs/artifacts.md's worked example runs as written against a real bundle."""

from __future__ import annotations

import re
from pathlib import Path

import export_fixtures as fx

DOC = Path(__file__).resolve().parents[1] / "docs" / "artifacts.md"


def test_worked_example_runs(capsys) -> None:
    section = DOC.read_text().split("## 8. Worked example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    exec(compile(code.group(1), str(DOC), "exec"), {"BUNDLE": str(fx.bundle_dir())})
    out = capsys.readouterr().out
    assert "next piece suggestions" in out and "losses per step" in out
