"""`fedkey simulate` end to end through real Flower (simulation engine, Ray, two phone hosts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from simulate_helpers import FEDKEY, TINY, run_fedkey
from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.config import load_config, to_toml
from fedkey.models.checkpoint_file import CheckpointFile
from fedkey.models.manifest import load_bundle
from fedkey.server.app import METRIC_KEYS


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# `fedkey ARGS`, then report whether this process (the ServerApp's, under `fedkey simulate`) loaded torch
TORCH_FREE_CHECK = """
import sys
from fedkey.cli import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    assert not done.code, done.code
print("server process imported torch:", "torch" in sys.modules)
"""


@pytest.mark.slow
def test_cli_runs_rounds_through_flower_and_writes_every_output(prepared, tmp_path: Path):
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("simulate.rounds", "simulate.export_bundle"))]
    args = ["simulate", "--data", str(prepared.root), "--out", str(out), "--rounds", "2", "--cohort", "5"]
    proc = run_fedkey("-c", TORCH_FREE_CHECK, *args, overrides=[*overrides, "simulate.phone_hosts=2"], python=True)
    # the server holds numpy weights only: hosts initialise and evaluate, `fedkey export` makes the bundle
    assert "server process imported torch: False" in proc.stdout
    assert "autoscaler failed" not in proc.stdout + proc.stderr  # the helpers fedkey's own Ray stops leave no noise
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert all(tuple(line) == METRIC_KEYS for line in lines)
    assert all(line["reported"] == 5 and line["selected"] == 7 and line["bytes_up"] > 0 for line in lines)
    assert all(line["rejected"] == 0 for line in lines)  # every reply found its message (one per host here)
    assert lines[1]["recall@1"] is not None and lines[0]["sim_time_s"] < lines[1]["sim_time_s"]
    assert "rounds (stopped by rounds)" in proc.stderr
    for name in ("config.toml", "checkpoint.pt", "participation.json", "final.json"):
        assert (out / name).is_file(), name
    bundle = load_bundle(out / "bundle")
    assert bundle.manifest.model_version == 2
    assert (out / "bundle" / "lexicon.txt").read_text().split("\n")[:-1] == list(prepared.lexicon)


def test_cli_refuses_an_impossible_cohort_before_starting_flower(prepared, tmp_path: Path):
    result = CliRunner().invoke(
        app, ["simulate", "--data", str(prepared.root), "--out", str(tmp_path / "r"), "--cohort", "1000", *sets(*TINY)]
    )
    assert result.exit_code == 2
    assert "population has" in result.output
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.parametrize("interval", [0, 7200])
def test_plan_prints_who_would_report_and_writes_nothing(prepared, tmp_path: Path, interval: int):
    from fedkey.coverage import schedule_coverage
    from fedkey.simulate import build_setup

    overrides = [*TINY, f"simulate.round_interval_s={interval}"]
    args = ["simulate", "--data", str(prepared.root), "--out", str(tmp_path / "r"), "--plan", *sets(*overrides)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "r").exists()
    c = schedule_coverage(build_setup(load_config(None, overrides), prepared.root))
    assert f"span {c.span_s / 3600:.1f} simulated hours" in result.output
    assert f"({c.per_round.min()}-{c.per_round.max()})" in result.output
    assert f"{len(c.reports) - c.phones_never} of {len(c.reports)} phones report at least once" in result.output
    assert f"hold {c.text_never:.1%} of the training text" in result.output
    if interval:
        assert c.span_s >= interval * (c.rounds - 1)


def test_cli_refuses_to_resume_a_run_folder_missing_a_setting(prepared, tmp_path: Path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.toml").write_text(to_toml(load_config(None, list(TINY))).replace("local_dropout = 0.0\n", ""))
    args = ["simulate", "--data", str(prepared.root), "--out", str(run), "--resume", *sets(*TINY)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "simulate.local_dropout" in result.output
    assert not (run / "metrics.jsonl").exists()


def test_help_lists_every_simulate_setting():
    from fedkey.config import SimulateConfig

    result = CliRunner().invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in SimulateConfig.model_fields:
        assert f"simulate.{name}" in result.output


def test_docs_describe_every_simulate_setting():
    from fedkey.config import ServerOptimizerConfig, SimulateConfig

    doc = (Path(__file__).parents[1] / "docs" / "simulate.md").read_text()
    for name in SimulateConfig.model_fields:
        if name != "optimizer":
            assert f"`{name}`" in doc, name
    for name in ServerOptimizerConfig.model_fields:
        assert name in doc, name
    for key in METRIC_KEYS:
        assert key in doc, key


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_signal_stops_the_run_resumably_and_resume_finishes_it(prepared, tmp_path: Path, how: str):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) lets the round in progress finish;
    SIGTERM stops at once. Either way the run exits promptly (130 / 143), its folder holds the checkpoint
    of the last round in metrics.jsonl and no final outputs, and --resume completes it."""
    out = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("simulate.rounds")]
    args = ["simulate", "--data", str(prepared.root), "--out", str(out), *sets(*overrides)]
    proc = subprocess.Popen(
        [FEDKEY, *args, "--rounds", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.2)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)  # before, Ctrl-C left it waiting on its hosts for an hour
    assert proc.returncode == (130 if how == "ctrl-c" else 143), output[-2000:]
    rounds = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert 2 <= len(rounds) < 60 and rounds == list(range(1, len(rounds) + 1))
    assert f"stopped after round {rounds[-1]}: continue with fedkey simulate --out {out} --resume" in output
    assert CheckpointFile.load(out / "checkpoint.pt").meta["round"] == rounds[-1]
    assert not (out / "final.json").exists() and not (out / "report.html").exists()
    run_fedkey(*args, "--rounds", "60", "--resume")
    rounds = [json.loads(line)["round"] for line in metrics.read_text().splitlines()]
    assert rounds == list(range(1, 61))
    assert json.loads((out / "final.json").read_text())["rounds"] == 60
