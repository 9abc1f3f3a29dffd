"""Peak memory of a process tree: summed RSS, and the footprint with shared pages counted once.

RSS summed over a tree counts a page once per process mapping it: the libraries of this CUDA build of
torch (about 270 MB resident in every process that imports it) and Ray's shared-memory object store
count again for every process. The footprint counts each process's private pages plus each shared
mapping's resident pages once (the largest count among the tree's processes mapping it), from
``/proc/PID/smaps``: what the tree holds in memory, whatever processes outside it map the same files
(unlike PSS, which also divides a page among processes outside the tree).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass

import psutil


@dataclass
class TreeMemory:
    """Bytes: peak summed RSS and peak footprint (each its own peak over the run)."""

    rss: int = 0
    footprint: int = 0


def process_tree(proc: psutil.Process) -> list[psutil.Process]:
    """A process and all its descendants (those that have exited by the time of the call are left out)."""
    with contextlib.suppress(psutil.Error):
        return [proc, *proc.children(recursive=True)]
    return []


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants, summed (shared pages once per process)."""
    total = 0
    for p in process_tree(proc):
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def tree_footprint(proc: psutil.Process) -> int:
    """Bytes the tree holds: private pages of every process, pages of shared mappings once."""
    private, shared = 0, {}
    for p in process_tree(proc):
        try:
            with open(f"/proc/{p.pid}/smaps") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        mine: dict[tuple[str, str, str], int] = {}
        key = None
        for line in lines:
            field, _, rest = line.partition(" ")
            if not field.endswith(":"):  # a mapping's header: address perms offset dev inode [path]
                parts = line.split()
                key = (parts[3], parts[4], parts[2]) if parts[4] != "0" else None
            elif field in ("Private_Clean:", "Private_Dirty:"):
                private += int(rest.split()[0]) * 1024
            elif field in ("Shared_Clean:", "Shared_Dirty:"):
                size = int(rest.split()[0]) * 1024
                if key is None:  # anonymous memory shared after a fork: counted with its process
                    private += size
                else:
                    mine[key] = mine.get(key, 0) + size
        for k, size in mine.items():
            shared[k] = max(shared.get(k, 0), size)
    return private + sum(shared.values())


def watch_peak(child: subprocess.Popen, period_s: float = 0.05, footprint_every_s: float = 1.0) -> TreeMemory:
    """Polls a running child's tree until it exits: RSS every ``period_s``, the footprint (slower to
    read) whenever the RSS sum reaches a new high and at least every ``footprint_every_s``."""
    proc, peak, last = psutil.Process(child.pid), TreeMemory(), 0.0
    while child.poll() is None:
        rss = tree_rss(proc)
        if rss > peak.rss or time.monotonic() - last >= footprint_every_s:
            peak.footprint = max(peak.footprint, tree_footprint(proc))
            last = time.monotonic()
        peak.rss = max(peak.rss, rss)
        time.sleep(period_s)
    return peak
