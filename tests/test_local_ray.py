"""`fedkey simulate`'s own Ray (fedkey.simulate.start_local_ray): no autoscaler monitor, log monitor or
dashboard server, malloc arenas capped in its workers, and still a working Ray (a task runs, an actor
gets its CPUs)."""

from __future__ import annotations

import json
import subprocess
import sys

from simulate_helpers import tiny_config

from fedkey.config import to_toml
from fedkey.simulate import MALLOC_ARENAS

# Starts the local Ray, lists the command lines of this process's descendants, runs a task, shuts down.
SCRIPT = """
import json, os, sys, psutil, ray
from fedkey.config import load_config
from fedkey.simulate import start_local_ray
start_local_ray(load_config(sys.argv[1], []))
def command(p):
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # exited (or a zombie) since it was listed
        return ""
children = [command(p) for p in psutil.Process().children(recursive=True)]
answer = ray.get(ray.remote(lambda: 6 * 7).remote())
arenas = ray.get(ray.remote(lambda: os.environ.get("MALLOC_ARENA_MAX")).remote())
cpus = ray.cluster_resources().get("CPU")
ray.shutdown()
print(json.dumps({"children": children, "answer": answer, "cpus": cpus, "arenas": arenas}))
"""


def test_local_ray_runs_without_the_helpers_a_single_machine_run_does_not_need(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(to_toml(tiny_config("simulate.phone_hosts=2")))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["answer"] == 42 and seen["cpus"] == 2.0  # phone_hosts x threads
    assert seen["arenas"] == str(MALLOC_ARENAS)  # the workers (phone hosts) start with the cap
    children = "\n".join(seen["children"])
    assert "raylet" in children and "gcs_server" in children  # Ray itself runs
    for helper in ("/monitor.py", "/log_monitor.py", "/dashboard.py"):
        assert helper not in children, helper
