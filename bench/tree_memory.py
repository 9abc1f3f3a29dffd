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
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class Footprint:
    """Bytes a tree holds at one instant: private pages by kind of process, and shared pages once."""

    private: dict[str, int] = field(default_factory=dict)
    shared: int = 0

    @property
    def total(self) -> int:
        return sum(self.private.values()) + self.shared

    def describe(self, min_bytes: float = 5e6) -> str:
        """'kind MB, kind MB, ..., shared MB': private pages by kind of process, largest first."""
        parts = sorted(self.private.items(), key=lambda item: -item[1])
        listed = ", ".join(f"{name} {size / 1e6:.0f}" for name, size in parts if size >= min_bytes)
        return f"{listed}, shared {self.shared / 1e6:.0f}"


@dataclass
class TreeMemory:
    """Peak summed RSS and the footprint at its peak (each its own peak over the run)."""

    rss: int = 0
    at_peak: Footprint = field(default_factory=Footprint)

    @property
    def footprint(self) -> int:
        return self.at_peak.total


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


def kind(p: psutil.Process) -> str:
    """A process's kind: a Ray worker's task name (``ray::ClientAppActor``), a Python script's file name,
    else the program's name."""
    with contextlib.suppress(psutil.Error):
        command = p.cmdline()
        if command and command[0].startswith("ray::"):
            return command[0].split(".")[0]
        scripts = [Path(arg).name for arg in command[1:] if arg.endswith(".py")]
        return scripts[0] if scripts else Path(command[0]).name if command else p.name()
    return "?"


def tree_footprint(proc: psutil.Process) -> Footprint:
    """What the tree holds: private pages of every process (by kind), pages of shared mappings once."""
    result, shared = Footprint(), {}
    for p in process_tree(proc):
        try:
            with open(f"/proc/{p.pid}/smaps") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        private, mine = 0, {}
        key = None
        for line in lines:
            field_name, _, rest = line.partition(" ")
            if not field_name.endswith(":"):  # a mapping's header: address perms offset dev inode [path]
                parts = line.split()
                key = (parts[3], parts[4], parts[2]) if parts[4] != "0" else None
            elif field_name in ("Private_Clean:", "Private_Dirty:"):
                private += int(rest.split()[0]) * 1024
            elif field_name in ("Shared_Clean:", "Shared_Dirty:"):
                size = int(rest.split()[0]) * 1024
                if key is None:  # anonymous memory shared after a fork: counted with its process
                    private += size
                else:
                    mine[key] = mine.get(key, 0) + size
        name = kind(p)
        result.private[name] = result.private.get(name, 0) + private
        for k, size in mine.items():
            shared[k] = max(shared.get(k, 0), size)
    result.shared = sum(shared.values())
    return result


def watch_peak(child: subprocess.Popen, period_s: float = 0.05, footprint_every_s: float = 1.0) -> TreeMemory:
    """Polls a running child's tree until it exits: RSS every ``period_s``; the footprint (tens of ms
    per process to read) when the RSS sum has grown 1% past its value at the last reading, and at least
    every ``footprint_every_s``."""
    proc, peak = psutil.Process(child.pid), TreeMemory()
    last_time, last_rss = 0.0, 0
    while child.poll() is None:
        rss = tree_rss(proc)
        if rss > last_rss * 1.01 or time.monotonic() - last_time >= footprint_every_s:
            now = tree_footprint(proc)
            if now.total > peak.footprint:
                peak.at_peak = now
            last_time, last_rss = time.monotonic(), rss
        peak.rss = max(peak.rss, rss)
        time.sleep(period_s)
    return peak
