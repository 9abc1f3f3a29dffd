"""Deployment mode on one machine: a Flower SuperLink and phone-host SuperNodes as real processes.

``flwr run`` sends the project (a FAB built from this folder) to the SuperLink, which runs the ServerApp
(``fedkey.server.app:app``) in a ``flwr-serverapp`` process; each SuperNode runs the phone-host ClientApp
(``fedkey.device_sim.phone_host:app``) in ``flwr-clientapp`` processes. :class:`LocalDeployment` starts
the SuperLink and ``simulate.phone_hosts`` SuperNodes on loopback (insecure), writes a SuperLink
connection for ``flwr run``, runs the app and stops every process it started (process groups plus
their descendants), even when something fails. ``fedkey deploy`` (``fedkey/cli_deploy.py``) is its
command line; ``docs/simulate.md`` shows the same steps by hand, across machines.

What Flower 1.42 wants (read and measured here):

- The SuperLink serves the Fleet, Control and runtime APIs over HTTP on one port (``--host``/``--port``);
  each SuperNode serves a runtime API for its ClientApp processes on its own ``--port`` (default 9094,
  so several SuperNodes on one machine need one port each).
- SuperLink and SuperNode start ``flower-superexec`` (then ``flwr-serverapp`` / ``flwr-clientapp``) by
  name, so the environment's ``bin`` folder must be on ``PATH``; the SuperLink's ``flower-superexec``
  runs in a session of its own.
- ``flwr run . NAME`` reads the SuperLink connection ``[superlink.NAME]`` from ``$FLWR_HOME/config.toml``.
  ``[tool.flwr.federations]`` in pyproject.toml is legacy: ``flwr`` migrates it there and comments it
  out of pyproject.toml, so the project keeps none.
- By default the app's dependencies are installed with ``uv`` at run time, which fails offline;
  ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` turns that off (fedkey must then be installed on
  every node, as it is here).
- ``--run-config`` may only set keys that ``[tool.flwr.app.config]`` lists (``out``, ``data-dir``,
  ``config-file``, ``resume``); every other setting travels in the fedkey TOML named by ``config-file``.
- The FAB that ``flwr run`` ships is unpacked into ``$FLWR_HOME/apps/`` and put first on ``sys.path``:
  its top-level ``fedkey/`` folder shadows the installed ``fedkey`` package, while the subpackages
  (``fedkey.server``, ``fedkey.device_sim``, ...) still come from the installation. Run the same
  fedkey version on every node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil
import tomli_w

from fedkey.config import FedkeyConfig, to_toml
from fedkey.simulate import backend_config

#: name of the SuperLink connection written for ``flwr run``
CONNECTION = "fedkey-local"


class DeploymentError(RuntimeError):
    """A process did not start, or ``flwr run`` failed (the message names the log to read)."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower's processes: this Python's ``bin`` on PATH, no runtime installs, offline."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def write_connection(flwr_home: Path, address: str, name: str = CONNECTION) -> Path:
    """``$FLWR_HOME/config.toml`` with one insecure SuperLink connection (the default) for ``flwr run``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": name, name: {"address": address, "insecure": True}}}))
    return path


def running(proc: psutil.Process) -> bool:
    """The process (the same one: psutil checks its start time) still runs and is not a zombie."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class ProcessSet:
    """Processes started in their own process groups, all stopped together (descendants included).

    Flower and Ray start processes of their own, some in new sessions, some left behind by a parent
    that exits; :meth:`snapshot` remembers the descendants seen so far, so :meth:`stop` ends them even
    once they are orphaned (``psutil`` checks each one's start time, so a reused pid is never hit).
    """

    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    known: dict[int, psutil.Process] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in a new session, output to ``log_dir/NAME.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        """Raise if a started process has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise DeploymentError(f"{name} exited with code {proc.returncode}; see {self.log_dir / name}.log")

    def snapshot(self) -> None:
        """Remember the started processes and all their current descendants."""
        for proc in self.procs.values():
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    self.known.setdefault(p.pid, p)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every process, its group and what :meth:`snapshot` saw; SIGKILL what is left after ``grace_s``."""
        self.snapshot()
        victims = [p for p in self.known.values() if running(p)]
        groups = [proc.pid for proc in self.procs.values()]
        self._signal(groups, victims, signal.SIGTERM)
        _, alive = psutil.wait_procs(victims, timeout=grace_s)
        self._signal(groups, alive, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=grace_s)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace_s)
        for log in self._logs:
            log.close()
        self.procs.clear()
        self._logs.clear()

    @staticmethod
    def _signal(groups: list[int], procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)


def federation_config(config: FedkeyConfig) -> dict[str, Any]:
    """``flwr run --federation-config`` entries of a simulation SuperLink for this config.

    The same Ray resources as ``fedkey simulate`` (:func:`fedkey.simulate.backend_config`); Flower's
    federation config names no Ray cluster, so ``simulate.ray_address`` has no effect here.
    """
    backend = backend_config(config)
    entries = {
        "num-supernodes": config.simulate.phone_hosts,
        "client-resources-num-cpus": backend["client_resources"]["num_cpus"],
        "init-args-num-cpus": backend["init_args"].get("num_cpus"),
    }
    return {k: v for k, v in entries.items() if v is not None}


@dataclass
class LocalDeployment:
    """A SuperLink and ``simulate.phone_hosts`` phone-host SuperNodes on loopback; a context manager.

    With ``simulation`` the SuperLink runs Flower's simulation runtime instead (``--simulation``, the
    phone hosts are virtual SuperNodes on Ray) and no SuperNode process is started. ``workdir`` holds
    ``flwr-home/`` (Flower's config and installed FABs), ``logs/``, the run's ``config.toml`` and
    ``run-config.toml``. Each SuperNode gets the node config ``data-dir`` and ``threads``.
    """

    workdir: Path
    config: FedkeyConfig
    data_dir: Path
    simulation: bool = False
    start_timeout_s: float = 60.0
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.data_dir = Path(self.data_dir).resolve()
        self.flwr_home = self.workdir / "flwr-home"
        self.processes = ProcessSet(self.workdir / "logs")
        self.env = flower_env(self.flwr_home)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.processes.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.processes.stop()

    def start(self) -> None:
        """SuperLink (waits until it answers), then the SuperNodes; writes the ``flwr run`` connection."""
        superlink = [_bin("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port)]
        self.processes.start("superlink", superlink + (["--simulation"] if self.simulation else []), self.env)
        self._wait_healthy()
        node_config = f"data-dir='{self.data_dir}' threads={self.config.simulate.threads}"
        for i in range(0 if self.simulation else self.config.simulate.phone_hosts):
            self.processes.start(
                f"supernode-{i}",
                [
                    _bin("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    self.address,
                    "--port",
                    str(free_port()),
                    "--node-config",
                    node_config,
                ],
                self.env,
            )
        write_connection(self.flwr_home, self.address)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            self.processes.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{self.address}/health", timeout=1.0).is_success:
                    return
            time.sleep(0.3)
        raise DeploymentError(f"the SuperLink did not answer within {self.start_timeout_s:.0f} s")

    def run(
        self,
        out: Path,
        app_dir: Path = Path("."),
        resume: bool = False,
        timeout_s: float | None = None,
        echo: bool = False,
    ) -> str:
        """``flwr run APP_DIR`` of this config into the run folder ``out``; returns the streamed run log.

        The config travels as ``config-file``; the run config as a TOML file (``--run-config FILE``,
        so paths with spaces or quotes arrive intact). With ``echo`` the log goes to this terminal as it
        comes (and "" is returned). Raises :class:`DeploymentError` if ``flwr run`` fails or a Flower
        process died; a ServerApp that fails ends the log with its traceback and Flower's exit code
        (``flwr run`` itself still exits 0), so callers check the run folder's ``final.json``.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "config.toml"
        config_file.write_text(to_toml(self.config))
        run_config = {
            "out": str(Path(out).resolve()),
            "data-dir": str(self.data_dir),
            "config-file": str(config_file),
            "resume": resume,
        }
        overrides = self.workdir / "run-config.toml"
        overrides.write_text(tomli_w.dumps(run_config))
        argv = [
            _bin("flwr"),
            "run",
            str(Path(app_dir).resolve()),
            CONNECTION,
            "--stream",
            "--run-config",
            str(overrides),
        ]
        if self.simulation:
            entries = " ".join(f"{k}={v}" for k, v in federation_config(self.config).items())
            argv += ["--federation-config", entries]
        try:
            proc = subprocess.run(argv, env=self.env, capture_output=not echo, text=True, timeout=timeout_s)
        finally:
            self.processes.snapshot()  # what the run left shutting down (Ray processes of a simulation)
        output = "" if echo else proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise DeploymentError(f"flwr run failed with exit code {proc.returncode}\n{output[-3000:]}")
        self.processes.check_alive()
        return output


def _bin(name: str) -> str:
    """A console script of this environment (Flower's and Ray's commands live next to this Python)."""
    return str(Path(sys.executable).parent / name)
