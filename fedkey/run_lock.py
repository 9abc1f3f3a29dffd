"""One writer per run folder: an exclusive lock that refuses a second run into a folder in use.

Two `fedkey simulate --resume` (or `train-central`) into one folder would both append to its
metrics.jsonl and overwrite each other's checkpoints; a fresh run into a folder in use would delete the
running one's metrics. The lock is ``flock`` on ``RUN/.lock``, which holds the owner's pid: the kernel
drops it when the owning process ends, however it ends, so a crashed run never leaves a folder locked.
It is re-entrant within a process, because `fedkey simulate` takes it before writing config.toml and
its in-process ServerApp (another thread) takes it again, as a ServerApp under `flwr run` or in
deployment mode must. `fedkey deploy`, whose ServerApp runs in a process of its own, only checks that
the folder is free before it starts any Flower process.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"

_guard = threading.Lock()
_held: dict[Path, list[int]] = {}  # folder -> [file descriptor, depth] for the folders this process holds


class RunFolderBusyError(RuntimeError):
    """Another process is running into this run folder."""


@contextmanager
def run_folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock for the block (creating the folder); raises :class:`RunFolderBusyError`,
    changing nothing, if another process holds it."""
    key = Path(out).resolve()
    with _guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _held[key] = [_acquire(key), 1]
    try:
        yield
    finally:
        with _guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                os.close(_held.pop(key)[0])  # closing the descriptor releases the flock


def refuse_if_in_use(out: Path) -> None:
    """Raise :class:`RunFolderBusyError` if another process holds ``out``'s lock: the check of a command
    whose run takes the lock in another process (`fedkey deploy`: the ServerApp runs under the SuperLink)."""
    if (Path(out) / LOCK_FILE).is_file():
        with run_folder_lock(out):
            pass


def _acquire(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusyError(
            f"{folder} is in use by another run (pid {owner}): wait for it to end or stop it "
            "(SIGTERM stops a simulation resumably), or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
