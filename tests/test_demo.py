"""`fedkey demo` (what `make demo` runs): the preset the issue asks for, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from simulate_helpers import TINY, run_fedkey
from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.cli_demo import DEMO_SETTINGS
from fedkey.config import load_config
from fedkey.report import REFERENCE, REPORT


def test_demo_preset_is_chitchat_small_model_hundreds_of_phones_compressed_without_dp():
    cfg = load_config(None, list(DEMO_SETTINGS))
    assert cfg.data.corpus == "chitchat" and cfg.model.preset == "small"
    assert cfg.simulate.cohort_size >= 200
    assert cfg.central_dp is None and cfg.pipeline.noise() is None
    assert cfg.pipeline.kinds() == ["rotate", "quantize"]
    assert cfg.simulate.eval_every and cfg.simulate.rounds >= 4 * cfg.simulate.eval_every  # a visible curve
    assert cfg.simulate.rounds * cfg.simulate.round_interval_s >= 24 * 3600  # every time zone's night


def test_demo_help_lists_the_preset():
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for setting in DEMO_SETTINGS:
        assert setting in result.output


@pytest.mark.slow
def test_demo_runs_simulate_and_reports_against_the_trigram(prepared, tmp_path: Path):
    out = tmp_path / "demo"
    proc = run_fedkey("demo", "--data", str(prepared.root), "--out", str(out), overrides=TINY)
    assert f"report: {out / REPORT}" in proc.stderr
    reference = json.loads((out / REFERENCE).read_text())
    final = json.loads((out / "final.json").read_text())
    assert reference["positions"] == final["held_out_users"]["positions"]  # the same word positions
    page = (out / REPORT).read_text()
    assert "reference: Kneser-Ney trigram" in page and f"{reference['recall@1']:.4f}" in page
    assert load_config(out / "config.toml").model.preset == "small"
