"""bench/tree_memory.py: a process tree's footprint counts shared pages once, private pages per process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from tree_memory import tree_footprint, tree_rss, watch_peak

MB = 1 << 20
# each worker: 100 MB of its own (written) and the same 64 MB file mapped and read, then waits
WORKER = """
import mmap, sys, time
own = bytearray(100 << 20)
for i in range(0, len(own), 4096): own[i] = 1
with open(sys.argv[1], "rb") as f:
    shared = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    total = sum(shared[i] for i in range(0, len(shared), 4096))
print("ready", flush=True)
time.sleep(60)
"""
# the tree's root starts N workers and waits for them
ROOT = """
import subprocess, sys
kids = [subprocess.Popen([sys.executable, "-c", sys.argv[3], sys.argv[2]], stdout=subprocess.PIPE)
        for _ in range(int(sys.argv[1]))]
for k in kids: k.stdout.readline()
print("ready", flush=True)
for k in kids: k.wait()
"""


def measure(workers: int, file: Path) -> tuple[int, int]:
    root = subprocess.Popen(
        [sys.executable, "-c", ROOT, str(workers), str(file), WORKER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert root.stdout is not None and root.stdout.readline().strip() == "ready"
        proc = psutil.Process(root.pid)
        return tree_rss(proc), tree_footprint(proc).total
    finally:
        for p in psutil.Process(root.pid).children(recursive=True):
            p.kill()
        root.kill()
        root.wait()


@pytest.fixture
def shared_file(tmp_path: Path) -> Path:
    path = tmp_path / "shared.bin"
    path.write_bytes(b"\1" * (64 * MB))
    return path


def test_second_worker_adds_its_own_memory_but_not_the_shared_file_again(shared_file: Path) -> None:
    rss1, foot1 = measure(1, shared_file)
    rss2, foot2 = measure(2, shared_file)
    assert foot1 >= 164 * MB  # its own 100 MB and the file
    assert rss2 - rss1 >= 160 * MB  # summed RSS counts the file again
    assert 98 * MB <= foot2 - foot1 <= 130 * MB  # the footprint adds the worker's own memory only
    assert foot2 < rss2 - 60 * MB


def test_watch_peak_keeps_the_highest_values_until_the_child_exits(shared_file: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", WORKER.replace("time.sleep(60)", "time.sleep(1.5)"), str(shared_file)],
        stdout=subprocess.DEVNULL,
    )
    started = time.monotonic()
    peak = watch_peak(child, period_s=0.05, footprint_every_s=0.2)
    assert child.returncode == 0 and time.monotonic() - started >= 1.5
    assert peak.footprint >= 164 * MB
    assert peak.rss >= peak.footprint - 8 * MB  # one process: summed RSS and footprint nearly agree
    assert peak.at_peak.total == peak.footprint
    assert peak.at_peak.private[Path(sys.executable).name] >= 100 * MB  # its own bytearray
