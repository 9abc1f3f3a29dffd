"""Helpers for the multi-process tests (Ray cluster, deployment mode): the in-process reference run and
checks that a run's results equal it and that no process outlived the test."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import psutil
import torch
from simulate_helpers import LocalGrid

from fedkey.config import FedkeyConfig, to_toml
from fedkey.deploy import running
from fedkey.models.checkpoint import Checkpoint
from fedkey.server.app import METRIC_KEYS, SimulationRun
from fedkey.simulate import RunSettings, build_setup

REPO = Path(__file__).resolve().parents[1]


def write_config(config: FedkeyConfig, path: Path) -> Path:
    path.write_text(to_toml(config))
    return path


def metrics(out: Path) -> list[dict]:
    """The run's metric lines without wall time (which differs from run to run)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(tuple(line) == METRIC_KEYS for line in lines)
    return [{k: v for k, v in line.items() if k != "wall_time_s"} for line in lines]


def reference_run(config: FedkeyConfig, data_dir: Path, out: Path) -> None:
    """The same run in this process: the ServerApp loop with phone hosts called directly (no Flower runtime)."""
    run = SimulationRun(RunSettings(config, data_dir, out, False, False), build_setup(config, data_dir))
    run.prepare_outputs()
    run.run(LocalGrid())


def assert_same_result(out: Path, reference: Path) -> None:
    """Same metrics (but wall time) and bit-identical final weights."""
    assert metrics(out) == metrics(reference)
    a = Checkpoint.load(out / "checkpoint.pt").model.named_tensors()
    b = Checkpoint.load(reference / "checkpoint.pt").model.named_tensors()
    for (name, x), (_, y) in zip(a, b, strict=True):
        assert torch.equal(x, y), name


def descendants(pids: list[int]) -> list[psutil.Process]:
    """These processes and all their descendants that are alive now."""
    found = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            found += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    return found


def assert_all_gone(procs: list[psutil.Process], wait_s: float = 10.0) -> None:
    """None of these processes runs any more after ``wait_s`` (a zombie counts as gone)."""
    deadline = time.monotonic() + wait_s
    while any(running(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = []
    for p in procs:
        if running(p):
            with contextlib.suppress(psutil.Error):  # gone since
                left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
    assert not left, f"processes left running: {left}"
