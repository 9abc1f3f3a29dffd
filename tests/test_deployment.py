"""`flwr run .` against a real SuperLink: phone-host SuperNode processes on loopback (deployment mode),
and the SuperLink's simulation runtime (the project's simulation federation)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from deploy_helpers import REPO, assert_all_gone, assert_same_result, descendants, metrics, reference_run
from simulate_helpers import tiny_config

from fedkey.deploy import LocalDeployment

CONFIG = ("simulate.rounds=2", "simulate.cohort_size=4", "simulate.phone_hosts=2")


def run_flwr(prepared, tmp_path: Path, simulation: bool) -> tuple[Path, str]:
    """Run the tiny config through `flwr run .`; check every process is gone and the port is free again."""
    out = tmp_path / "run"
    deployment = LocalDeployment(tmp_path / "deploy", tiny_config(*CONFIG), prepared.root, simulation=simulation)
    with deployment:
        started = descendants([p.pid for p in deployment.processes.procs.values()])
        log = deployment.run(out, app_dir=REPO, timeout_s=300)
        started += descendants([p.pid for p in deployment.processes.procs.values()])
    assert_all_gone(started)
    with socket.socket() as sock:  # nothing listens on the SuperLink's port any more
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", deployment.port))
    assert "round 2/2" in log, log[-2000:]
    lines = metrics(out)
    assert [line["round"] for line in lines] == [1, 2]
    assert all(line["reported"] == 4 and line["rejected"] == 0 for line in lines)
    for name in ("config.toml", "checkpoint.pt", "participation.json", "final.json", "report.html"):
        assert (out / name).is_file(), name
    reference_run(tiny_config(*CONFIG), prepared.root, tmp_path / "reference")
    assert_same_result(out, tmp_path / "reference")
    return out, log


@pytest.mark.slow
def test_deployment_mode_superlink_and_two_supernodes(prepared, tmp_path: Path):
    out, _ = run_flwr(prepared, tmp_path, simulation=False)
    final = json.loads((out / "final.json").read_text())
    assert final["rounds"] == 2 and final["stopped_by"] == "rounds"
    assert final["phone_hosts"]["flower_nodes"] == 2 and final["phone_hosts"]["ray_nodes"] == []


@pytest.mark.slow
def test_flwr_run_on_a_simulation_superlink(prepared, tmp_path: Path):
    out, log = run_flwr(prepared, tmp_path, simulation=True)
    assert "2 simulated SuperNodes" in log
    final = json.loads((out / "final.json").read_text())
    assert final["phone_hosts"]["flower_nodes"] == 2 and len(final["phone_hosts"]["ray_nodes"]) == 1
