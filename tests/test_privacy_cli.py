"""`fedkey privacy account`: what-if flags, inverse questions, a TOML config, report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.privacy.accountant import RoundSpec, epsilon_of

runner = CliRunner()

WHAT_IF = ["privacy", "account", "--noise-multiplier", "1.1", "--sampling-rate", "0.004", "--rounds", "1000"]


def run(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_what_if_from_flags_prints_epsilon_and_delta() -> None:
    out = run([*WHAT_IF, "--delta", "1e-5", "--sampling", "poisson", "--accountant", "rdp", "--json"])
    expected = epsilon_of([(RoundSpec(1.1, "poisson", 0.004), 1000)], 1e-5, "rdp")
    assert out["epsilon"] == pytest.approx(expected) and out["delta"] == 1e-5


def test_target_epsilon_answers_the_inverse_questions() -> None:
    out = run([*WHAT_IF, "--delta", "1e-5", "--accountant", "rdp", "--target-epsilon", "0.5", "--json"])
    central = out["central_dp"]
    assert central["rounds_allowed_by_budget"] < central["rounds"] == 1000
    assert central["noise_multiplier_for_target"] > 1.1
    # Without a noise multiplier the command solves for it and accounts with it.
    args = ["privacy", "account", "--sampling-rate", "0.004", "--rounds", "1000", "--target-epsilon", "0.5"]
    solved = run([*args, "--accountant", "rdp", "--json"])
    assert solved["epsilon"] <= 0.5
    assert solved["central_dp"]["noise_multiplier"] == pytest.approx(central["noise_multiplier_for_target"])


def test_config_file_with_local_and_central_dp_writes_reports(tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        """
[model]
preset = "small"

[[pipeline]]
kind = "clip"
norm = 0.5
[[pipeline]]
kind = "random_k"
fraction = 0.01
[[pipeline]]
kind = "gaussian_noise"
epsilon = 2.0
delta = 1e-6
[[pipeline]]
kind = "quantize"
bits = 4

[central_dp]
noise_multiplier = 0.9
sampling = "fixed"
cohort_size = 200
population = 20000
rounds = 300
delta = 1e-6
accountant = "rdp"

[local_accounting]
delta = 1e-6
participations = [1, 5]
reports_per_round = 1000
"""
    )
    out = run(["privacy", "account", "--config", str(cfg), "--out", str(tmp_path / "rep"), "--json"])
    local = out["local_dp"]
    assert local["epsilon_per_report"] == 2.0 and local["sensitivity"] == 1.0
    assert local["calibration"]["delta_at_sigma"] <= 1e-6
    assert local["per_device"][0]["epsilon"] == pytest.approx(2.0, rel=0.01)
    assert local["per_device"][1]["epsilon"] > local["per_device"][0]["epsilon"]
    shuffled = local["shuffled"]["over_participations"]
    assert 0 < shuffled[0]["epsilon"] <= local["per_device"][0]["epsilon"]
    assert shuffled[1]["bound"] in ("shuffle", "local")
    assert out["central_dp"]["sampling"] == "fixed" and out["epsilon"] == out["central_dp"]["epsilon"]
    md = (tmp_path / "rep" / "privacy_report.md").read_text()
    assert "analytic Gaussian" in md and "δ" in md
    assert json.loads((tmp_path / "rep" / "privacy_report.json").read_text()) == out


def test_unsafe_pipeline_and_bad_settings_are_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[[pipeline]]\nkind = "clip"\nnorm = 1.0\n[[pipeline]]\nkind = "top_k"\nk = 10\n'
        '[[pipeline]]\nkind = "laplace_noise"\nepsilon = 1.0\n'
    )
    result = runner.invoke(app, ["privacy", "account", "--config", str(cfg)])
    assert result.exit_code == 2 and "DP safety rule" in result.output
    result = runner.invoke(app, [*WHAT_IF[:4], "--sampling-rate", "1.5"])
    assert result.exit_code == 2
    assert runner.invoke(app, ["privacy", "account"]).exit_code != 0


def test_local_what_if_flags() -> None:
    args = [
        "privacy",
        "account",
        "--local-epsilon",
        "1.0",
        "--local-delta",
        "1e-6",
        "--participations",
        "1,3",
    ]
    out = run([*args, "--json"])
    assert out["local_dp"]["mechanism"] == "gaussian"
    assert out["delta"] == 1e-8 and len(out["local_dp"]["per_device"]) == 2
