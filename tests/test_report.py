"""RUN/report.html: content from a real run folder, `fedkey report`, and rendering in a real browser."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from report_helpers import assert_renders, needs_chromium, simulate_in_process
from simulate_helpers import TINY, run_fedkey
from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.plots import SMOOTH_ABOVE, SMOOTHING_NOTE
from fedkey.report import REFERENCE, REPORT, write_report

POISSON = ("simulate.sampling='poisson'", "simulate.poisson_rate=0.3")


@pytest.fixture(scope="module")
def dp_run(prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-round run with central DP and a reference baseline."""
    out = simulate_in_process(
        prepared, tmp_path_factory.mktemp("dp") / "run", *POISSON, "central_dp.noise_multiplier=0.5"
    )
    (out / REFERENCE).write_text(json.dumps({"name": "trigram", "recall@1": 0.2, "recall@3": 0.3}))
    return out


def test_report_of_a_dp_run_has_every_plot_and_the_summary(dp_run: Path):
    page = write_report(dp_run).read_text()
    final = json.loads((dp_run / "final.json").read_text())
    assert page.count("<img") == 6  # recall x3, loss, ε, participation
    assert "Privacy spent: central DP-FedAvg ε at δ = 1e-05" in page
    assert f"{final['held_out_users']['recall@1']:.4f}" in page
    assert "the first 60 word positions of the held-out users" in page  # eval.max_positions=60 caps it
    assert "3 of 3 (stopped by rounds)" in page
    assert "reference: trigram" in page
    assert "rotate(block=1024) → quantize(bits=4, chunk=512)" in page  # the default pipeline
    participation = json.loads((dp_run / "participation.json").read_text())
    assert f"{len(participation['counts'])} of {participation['phones']} phones reported" in page


def test_report_without_dp_says_so(prepared, tmp_path: Path):
    out = simulate_in_process(prepared, tmp_path / "run", "simulate.rounds=1")
    page = write_report(out).read_text()
    assert "no DP" in page and "Privacy spent" not in page
    assert "the first 60 word positions" in page
    assert page.count("<img") == 5
    assert "less than a day: phones whose eligible hours fall outside the run never train" in page


def test_report_of_a_run_paced_over_more_than_a_day_has_no_coverage_warning(prepared, tmp_path: Path):
    out = simulate_in_process(
        prepared, tmp_path / "run", "simulate.rounds=1", "simulate.round_interval_s=90000", "eval.max_positions=0"
    )
    page = write_report(out).read_text()
    assert "25.00 h" in page and "less than a day" not in page
    positions = json.loads((out / "final.json").read_text())["held_out_users"]["positions"]
    assert f"{int(positions)} word positions: all of the held-out users" in page


def test_byte_totals_read_in_a_unit_that_fits_them(dp_run: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(dp_run, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row, up in zip(rows, (60e9, 50e9, 38.4e9), strict=True):  # a long run: 148.4 GB up
        row["bytes_up"], row["bytes_down"] = up, 2_345_678
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    page = write_report(run).read_text()
    assert "<td>148.4 GB</td>" in page
    assert "<td>7.0 MB</td>" in page  # 3 x 2.35 MB down


def test_a_long_runs_noisy_curves_are_said_to_be_moving_means(dp_run: Path, tmp_path: Path):
    assert SMOOTHING_NOTE not in write_report(dp_run).read_text()  # 3 rounds: every point drawn
    run = tmp_path / "run"
    shutil.copytree(dp_run, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    long = [{**rows[i % len(rows)], "round": i + 1} for i in range(SMOOTH_ABOVE + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in long))
    page = write_report(run).read_text()
    assert SMOOTHING_NOTE in page and page.count("<img") == 6


def test_report_command_regenerates_and_refuses_a_non_run_folder(prepared, tmp_path: Path):
    out = simulate_in_process(prepared, tmp_path / "run", "simulate.rounds=1")
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / REPORT).is_file()
    result = CliRunner().invoke(app, ["report", str(prepared.root)])
    assert result.exit_code == 2
    assert "is not a `fedkey simulate` run folder" in result.output


@needs_chromium
def test_report_renders_in_a_real_browser(dp_run: Path, tmp_path: Path):
    assert_renders(write_report(dp_run), tmp_path, images=6)


@pytest.mark.slow
@needs_chromium
def test_simulate_writes_the_report_at_the_end_of_a_run_and_of_a_resumed_run(prepared, tmp_path: Path):
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("simulate.rounds")]
    for extra in (["--rounds", "1"], ["--rounds", "2", "--resume"]):
        proc = run_fedkey("simulate", "--data", str(prepared.root), "--out", str(out), *extra, overrides=overrides)
        assert f"report: {out / REPORT}" in proc.stderr
        rounds = extra[1]
        assert f"{rounds} of {rounds} (stopped by rounds)" in (out / REPORT).read_text()
    assert_renders(out / REPORT, tmp_path, images=5)
