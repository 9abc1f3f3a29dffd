"""A multi-process Ray cluster on this machine (head + worker node, `ray start`), `fedkey simulate` attached.

Never `ray stop`: it kills every Ray process of the machine, other runs' included. The cluster's
processes are stopped by process group (``fedkey.deploy.ProcessSet``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_helpers import assert_all_gone, assert_same_result, descendants, reference_run, write_config
from simulate_helpers import tiny_config

from fedkey.deploy import ProcessSet, free_port

BIN = Path(sys.executable).parent
ENV = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}


def ray_node_args(name: str) -> list[str]:
    """One CPU and a resource named after the node: each node fits exactly one phone host."""
    return [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        f'--resources={{"fedkey_{name}": 1}}',
        f"--dashboard-agent-listen-port={free_port()}",
        "--disable-usage-stats",
        "--block",
    ]


def cluster_nodes(address: str) -> set[str]:
    """Ids of the cluster's active nodes (from `ray status`)."""
    status = subprocess.run(
        [str(BIN / "ray"), "status", f"--address={address}"], capture_output=True, text=True, env=ENV, timeout=60
    )
    active = status.stdout.split("Active:")[-1].split("Pending:")[0]
    return set(re.findall(r"node_([0-9a-f]+)", active))


@pytest.fixture
def ray_cluster(tmp_path: Path) -> Iterator[tuple[str, set[str]]]:
    """(address, node ids) of a head and a worker node; torn down even if the test fails."""
    # a short temp dir of its own: Ray's socket paths must stay under 107 bytes
    temp_dir = Path(tempfile.mkdtemp(prefix="fkray", dir="/tmp"))
    address = f"127.0.0.1:{free_port()}"
    processes = ProcessSet(tmp_path / "ray-logs")
    try:
        processes.start(
            "head",
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={address.split(':')[1]}",
                f"--temp-dir={temp_dir}",
                "--include-dashboard=false",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                *ray_node_args("head"),
            ],
            ENV,
        )
        wait_for(lambda: started_log(processes, "head"), processes, "the head node")
        processes.start("worker", [str(BIN / "ray"), "start", f"--address={address}", *ray_node_args("worker")], ENV)
        wait_for(lambda: started_log(processes, "worker") and len(cluster_nodes(address)) == 2, processes, "the worker")
        started = descendants([p.pid for p in processes.procs.values()])
        yield address, cluster_nodes(address)
        started += descendants([p.pid for p in processes.procs.values()])
    finally:
        processes.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert_all_gone(started)


def started_log(processes: ProcessSet, name: str) -> bool:
    """`ray start` has printed that its node runs."""
    return "Ray runtime started" in (processes.log_dir / f"{name}.log").read_text()


def wait_for(ready, processes: ProcessSet, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        processes.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not join within {timeout_s:.0f} s")
        time.sleep(1)


@pytest.mark.slow
def test_simulate_on_a_two_node_ray_cluster_equals_the_in_process_run(prepared, ray_cluster, tmp_path: Path):
    address, nodes = ray_cluster
    config = tiny_config("simulate.rounds=2", "simulate.cohort_size=4", "simulate.phone_hosts=2")
    config_file = write_config(config, tmp_path / "run.toml")
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            str(BIN / "fedkey"),
            "simulate",
            "--config",
            str(config_file),
            "--data",
            str(prepared.root),
            "--out",
            str(out),
            "--set",
            f'simulate.ray_address="{address}"',
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    hosts = json.loads((out / "final.json").read_text())["phone_hosts"]
    assert set(hosts["ray_nodes"]) == nodes and len(nodes) == 2  # a phone host ran on each node
    assert hosts["flower_nodes"] == 2

    reference_run(config, prepared.root, tmp_path / "reference")
    assert_same_result(out, tmp_path / "reference")
