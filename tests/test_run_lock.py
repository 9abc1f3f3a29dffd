"""One writer per run folder: a second `fedkey simulate` / `train-central` into a folder in use is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from simulate_helpers import TINY
from typer.testing import CliRunner

from fedkey.cli import app
from fedkey.config import load_config, to_toml
from fedkey.run_lock import LOCK_FILE, RunFolderBusyError, run_folder_lock

HOLD = """
import sys
from pathlib import Path
from fedkey.run_lock import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def held_elsewhere(tmp_path: Path):
    """A run folder whose lock another process holds, with a run's files in it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.toml").write_text(to_toml(load_config(None, list(TINY))))
    for name in ("metrics.jsonl", "checkpoint.pt"):
        (out / name).write_text(f"the running run's {name}\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    yield out, holder
    holder.kill()
    holder.wait()


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("resume", [False, True])
def test_simulate_into_a_folder_in_use_is_refused_and_changes_nothing(prepared, held_elsewhere, resume: bool):
    out, holder = held_elsewhere
    before = contents(out)
    args = ["simulate", "--data", str(prepared.root), "--out", str(out), *(["--resume"] if resume else [])]
    result = CliRunner().invoke(app, [*args, *(a for item in TINY for a in ("--set", item))])
    assert result.exit_code == 2, result.output
    assert f"is in use by another run (pid {holder.pid})" in " ".join(result.output.split())
    assert contents(out) == before


def test_train_central_into_a_folder_in_use_is_refused(prepared, held_elsewhere):
    out, holder = held_elsewhere
    before = contents(out)
    result = CliRunner().invoke(app, ["train-central", "--data", str(prepared.root), "--out", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert f"pid {holder.pid}" in result.output
    assert contents(out) == before


def test_demo_into_a_folder_in_use_is_refused_before_it_writes_its_reference(prepared, held_elsewhere):
    out, holder = held_elsewhere
    before = contents(out)
    result = CliRunner().invoke(app, ["demo", "--data", str(prepared.root), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert f"pid {holder.pid}" in result.output
    assert contents(out) == before  # no reference.json


def test_deploy_into_a_folder_in_use_is_refused_before_any_flower_process_starts(prepared, held_elsewhere):
    out, holder = held_elsewhere
    before = contents(out)
    args = ["deploy", "--data", str(prepared.root), "--out", str(out), *(a for item in TINY for a in ("--set", item))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"pid {holder.pid}" in result.output
    assert contents(out) == before  # no deploy/ folder: nothing started


def test_the_lock_dies_with_its_process(held_elsewhere):
    out, holder = held_elsewhere
    with pytest.raises(RunFolderBusyError), run_folder_lock(out):
        pass
    holder.send_signal(signal.SIGKILL)  # a crash: no clean-up runs
    holder.wait()
    with run_folder_lock(out):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_the_lock_is_reentrant_in_one_process_and_released_after_the_outermost_block(tmp_path: Path):
    out = tmp_path / "run"
    probe = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from fedkey.run_lock import run_folder_lock\n"
        "with run_folder_lock(Path(sys.argv[1])): pass",
        str(out),
    ]
    with run_folder_lock(out):
        with run_folder_lock(out):  # the in-process ServerApp under `fedkey simulate`
            pass
        assert subprocess.run(probe, capture_output=True).returncode != 0  # still held by the outer block
    assert subprocess.run(probe, capture_output=True).returncode == 0
