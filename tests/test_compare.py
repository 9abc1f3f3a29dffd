"""`fedkey compare`: real run folders side by side, refusals, and rendering in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from report_helpers import assert_renders, needs_chromium, simulate_in_process
from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.compare import differing_settings, run_labels, write_comparison
from fedkey.report import RunFolder


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two finished runs that differ in the local passes, and the first one cut back to round 1 without
    its final outputs: what a stopped run's folder holds."""
    root = tmp_path_factory.mktemp("compare")
    one = simulate_in_process(prepared, root / "a" / "run", "simulate.rounds=2")
    two = simulate_in_process(prepared, root / "b" / "run", "simulate.rounds=2", "simulate.local_epochs=2")
    stopped = root / "stopped"
    shutil.copytree(one, stopped)
    (stopped / "final.json").unlink()
    first = (stopped / "metrics.jsonl").read_text().splitlines()[0]
    (stopped / "metrics.jsonl").write_text(first + "\n")
    return [one, two, stopped]


def test_comparison_names_what_differs_and_each_runs_figures(runs: list[Path], tmp_path: Path):
    page = write_comparison(runs, tmp_path / "compare.html").read_text()
    assert run_labels(runs) == ["a/run", "b/run", f"{runs[2].parent.name}/stopped"]  # as deep as tells all apart
    assert differing_settings([RunFolder.load(r) for r in runs[:2]]) == {"simulate.local_epochs": ["1.0", "2.0"]}
    assert "<th>simulate.local_epochs</th><td>1.0</td><td>2.0</td><td>1.0</td>" in page
    for run in runs[:2]:
        final = json.loads((run / "final.json").read_text())
        assert f"<td>{final['held_out_users']['recall@1']:.4f}</td>" in page
    assert "<td>finished: 2 rounds (stopped by rounds)</td>" in page
    assert "<td>unfinished: 1 of 2 rounds</td>" in page
    stopped_rows = [json.loads(line) for line in (runs[2] / "metrics.jsonl").read_text().splitlines()]
    assert f"<td>{stopped_rows[0]['bytes_up'] / 1e6:.1f} MB</td>" in page
    assert page.count("<img") == 4


def test_same_settings_are_said_to_be_the_same(runs: list[Path], tmp_path: Path):
    page = write_comparison([runs[0], runs[2]], tmp_path / "compare.html").read_text()
    assert "The runs have the same settings." in page


def test_compare_command_writes_the_page_and_refuses_what_it_cannot_compare(prepared, runs: list[Path], tmp_path):
    out = tmp_path / "c.html"
    result = CliRunner().invoke(app, ["compare", *map(str, runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    for args, message in [
        ([str(runs[0])], "at least two run folders"),
        ([str(runs[0]), str(runs[0])], "given twice"),
        ([str(runs[0]), str(prepared.root)], "is not a `fedkey simulate` run folder"),
    ]:
        result = CliRunner().invoke(app, ["compare", *args, "--out", str(tmp_path / "x.html")])
        assert result.exit_code == 2, result.output
        assert message in result.output
    assert not (tmp_path / "x.html").exists()


@needs_chromium
def test_comparison_renders_in_a_real_browser(runs: list[Path], tmp_path: Path):
    assert_renders(write_comparison(runs, tmp_path / "compare.html"), tmp_path, images=4, rows=10)
