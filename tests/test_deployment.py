"""Deployment mode: `flwr run .` against a real SuperLink and two phone-host SuperNodes on loopback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from deploy_helpers import REPO, assert_all_gone, assert_same_result, descendants, metrics, reference_run, write_config
from simulate_helpers import tiny_config

from fedkey.deploy import LocalDeployment


@pytest.mark.slow
def test_flwr_run_on_superlink_and_supernodes_writes_the_run_folder(prepared, tmp_path: Path):
    config = tiny_config("simulate.rounds=2", "simulate.cohort_size=4", "simulate.phone_hosts=2")
    config_file = write_config(config, tmp_path / "run.toml")
    out = tmp_path / "run"
    run_config = {"out": str(out), "data-dir": str(prepared.root), "config-file": str(config_file)}
    with LocalDeployment(tmp_path / "deploy", hosts=2, data_dir=prepared.root) as deployment:
        started = descendants([p.pid for p in deployment.processes.procs.values()])
        log = deployment.run(REPO, run_config, timeout_s=300)
        started += descendants([p.pid for p in deployment.processes.procs.values()])
    assert_all_gone(started)
    with socket.socket() as sock:  # nothing listens on the SuperLink's port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", deployment.port))

    assert "round 2/2" in log, log[-2000:]
    lines = metrics(out)
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["reported"] == 4 and line["rejected"] == 0 for line in lines)
    final = json.loads((out / "final.json").read_text())
    assert final["rounds"] == 2 and final["stopped_by"] == "rounds"
    assert final["phone_hosts"]["flower_nodes"] == 2 and final["phone_hosts"]["ray_nodes"] == []
    for name in ("config.toml", "checkpoint.pt", "participation.json"):
        assert (out / name).is_file(), name

    reference_run(config, prepared.root, tmp_path / "reference")
    assert_same_result(out, tmp_path / "reference")
